"""``Forwarder`` (actors/forwarder.py), the Ray Data stage in front of long-lived named actors, without Ray: the
named actors are stood in by handles whose calls answer, die or hang, through ``ray.get_actor`` / ``ray.get``
patched for the test (the unit under test is the forwarding and retry logic, not Ray)."""

from __future__ import annotations

import pytest
import ray
from ray.exceptions import GetTimeoutError, RayActorError

from prefloop.actors import forwarder as forwarder_mod
from prefloop.actors.forwarder import Forwarder

NAMES = ["gen-0", "gen-1", "gen-2"]


class Actors:
    """Stand-ins for the named actors: ``plan`` says what the next calls do ("ok", "die", "hang")."""

    def __init__(self, plan=()):
        self.plan, self.calls, self.restarts = list(plan), [], []

    def get_actor(self, name):
        return f"handle:{name}"

    def get(self, call, timeout):
        handle, batch = call
        self.calls.append(handle)
        what = self.plan.pop(0) if self.plan else "ok"
        if what == "die":
            raise RayActorError()
        if what == "hang":
            raise GetTimeoutError(f"no answer in {timeout}")
        return {"answered_by": handle, **batch}


class Echo(Forwarder):
    what = "generator"

    def send(self, handle, batch):
        return (handle, batch)  # the "object ref" that Actors.get resolves

    def ping(self, handle):
        return (handle, {})


@pytest.fixture
def actors(monkeypatch):
    fake = Actors()
    monkeypatch.setattr(ray, "get_actor", fake.get_actor)
    monkeypatch.setattr(ray, "get", fake.get)

    def restarted(name, ping, timeout_s, what):
        fake.restarts.append((name, timeout_s, what))
        return f"handle:{name}:restarted"

    monkeypatch.setattr(forwarder_mod, "wait_restarted", restarted)
    return fake


def test_batches_are_forwarded_round_robin_over_every_actor(actors):
    fwd = Echo(NAMES, timeout_s=5)
    out = [fwd({"i": i}) for i in range(6)]
    assert [o["i"] for o in out] == list(range(6))
    assert sorted(actors.calls[:3]) == [f"handle:{n}" for n in NAMES]  # each actor once before any twice
    assert actors.calls[3:] == actors.calls[:3]
    assert actors.restarts == []


def test_a_batch_whose_actor_died_is_sent_again_after_its_restart(actors):
    fwd = Echo(NAMES, timeout_s=7)
    actors.plan = ["die"]
    out = fwd({"i": 1})
    dead = actors.calls[0].removeprefix("handle:")
    assert actors.restarts == [(dead, 7, "generator")]  # waited for that actor, with the stage's timeout
    assert fwd.handles[NAMES.index(dead)] == f"handle:{dead}:restarted"
    assert len(actors.calls) == 2 and out["i"] == 1 and out["answered_by"] == actors.calls[1]


def test_an_actor_that_keeps_dying_fails_the_stage_after_the_retries(actors):
    fwd = Echo(NAMES, timeout_s=5)
    actors.plan = ["die"] * 10
    with pytest.raises(RuntimeError, match=r"generator gen-\d failed 4 times; giving up") as err:
        fwd({"i": 1})
    assert isinstance(err.value.__cause__, RayActorError)
    assert len(actors.calls) == Forwarder.retries + 1 and len(actors.restarts) == Forwarder.retries


def test_an_actor_that_does_not_answer_fails_at_once_naming_it(actors):
    fwd = Echo(NAMES, timeout_s=3)
    actors.plan = ["hang"]
    with pytest.raises(TimeoutError, match=r"generator gen-\d: no answer in 3 s"):
        fwd({"i": 1})
    assert len(actors.calls) == 1 and actors.restarts == []  # a hang is not a death: no resend
