"""The Ray Data stage in front of long-lived named actors: forward each batch, survive an actor's restart.

A Ray Data actor pool lives for one dataset execution, so a stage that loads a model (a vLLM engine, PairRM, a
reward model) would load it again for every stage of every round. The round loop instead keeps named actors
alive (``GeneratorPool``, ``ScorerPool``) and each stage reaches them through a ``Forwarder`` subclass: a
zero-CPU Ray Data actor that only holds handles. A call whose actor died is sent again once Ray has restarted
the actor (``max_restarts``); a call with no answer within ``timeout_s`` fails the stage naming the actor.
"""

from __future__ import annotations

import itertools
import logging
import random
from typing import Any

from prefloop.actors.common import wait_restarted
from prefloop.core.retry import retry

log = logging.getLogger(__name__)


class Forwarder:
    """Base of the forwarding stages; subclasses say what to call (``send``) and how to ping (``ping``)."""

    retries = 3
    what = "actor"

    def __init__(self, names: list[str], timeout_s: float):
        import ray

        self.ray, self.names, self.timeout_s = ray, names, timeout_s
        self.handles = [ray.get_actor(n) for n in names]
        # several forwarders of one stage start at different actors, so the first batches spread out
        self.turn = itertools.cycle(random.sample(range(len(names)), len(names)))

    def send(self, handle: Any, batch: dict[str, Any]) -> Any:
        raise NotImplementedError

    def ping(self, handle: Any) -> Any:
        raise NotImplementedError

    def __call__(self, batch: dict[str, Any]) -> Any:
        chosen: list[int] = []

        def send_once() -> Any:
            chosen.append(next(self.turn))
            i = chosen[-1]
            try:
                return self.ray.get(self.send(self.handles[i], batch), timeout=self.timeout_s)
            except self.ray.exceptions.GetTimeoutError:
                raise TimeoutError(f"{self.what} {self.names[i]}: no answer in {self.timeout_s:.0f} s") from None

        def before_retry(attempt: int, err: BaseException) -> None:
            log.warning("%s %s died during a batch (%s): waiting for its restart, then sending the batch "
                        "again", self.what, self.names[chosen[-1]], type(err).__name__)
            self.wait_alive(chosen[-1])

        return retry(send_once, attempts=self.retries + 1, transient=(self.ray.exceptions.RayActorError,),
                     before_retry=before_retry,
                     give_up=lambda n, err: RuntimeError(f"{self.what} {self.names[chosen[-1]]} failed {n} times; "
                                                         "giving up"))

    def wait_alive(self, i: int) -> None:
        """Until Ray has restarted actor ``i`` (a model load: seconds to minutes), at most ``timeout_s``."""
        self.handles[i] = wait_restarted(self.names[i], self.ping, self.timeout_s, self.what)
