"""Serve under hostile input and under swaps: two replicas behind an API key (Ray Serve, vLLM-CPU, HTTP).

- Hostile requests, sent at the same time as good ones so they share batches: each gets its own 4xx naming the
  problem, the good ones all get 200. The round's tokenizer has a strict chat template (it raises on roles that
  do not alternate, as HF Llama/Mistral templates do), so a template error happens inside the server.
- Swaps under load with 2 replicas: one published from this driver, one from a second driver (a separate Python
  process joining the same Ray cluster). What Serve promises, and no more: a client that names no round gets no
  failure and answers from the old or the new round (replicas switch one by one, so during the swap one client
  may see both, in either order), and only the new round once ``publish`` returns; a client that names the old
  round gets that round or a 404, never another round's answer. The swap is in place: the same replica actors
  (names) and the same replica ids before and after.
"""

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from test_serve import PROMPTS, free_port, serve_run

from prefloop.app.serving.serve import (
    publish,
    replica_states,
    serve_run_dir,
    stop_serving,
)
from tests.builders import model_copy

pytestmark = pytest.mark.ray
KEY = "test-key-9f2c"
STRICT = ("{% for m in messages %}{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if m['role'] == 'assistant' %}{{ '<|assistant|>\n' + m['content'] + eos_token + '\n' }}"
          "{% else %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '\n' }}{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


def strict_copy(src, out, noise):
    from transformers import AutoTokenizer

    model_copy(src, out, noise=noise, tied=False)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = STRICT
    tok.save_pretrained(out)
    return out


def post(url, body=None, raw=None, key=KEY, timeout=120):
    import urllib.error
    import urllib.request

    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read().decode() or "null")
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        return err.code, json.loads(text) if text.startswith("{") else text


@pytest.fixture(scope="module")
def app(ray_cluster, tiny_assets, tmp_path_factory):
    from ray import serve

    tmp = tmp_path_factory.mktemp("hardening")
    run = serve_run(tmp / "run", tiny_assets, model=strict_copy(tiny_assets.policy, tmp / "r0", 0.0))
    served = serve_run_dir(run.root, port=free_port(), replicas=2, api_key=KEY, timeout_s=600)
    yield served, tmp
    stop_serving(served.name)
    serve.shutdown()


def user(text="Tell me about cats."):
    return [{"role": "user", "content": text}]


HOSTILE = [  # (what, body or raw bytes, key, expected status, param or None)
    ("no API key", {"messages": user()}, None, 401, None),
    ("wrong API key", {"messages": user()}, "nope", 401, None),
    ("1.2 MB body", {"messages": user("x" * 1_200_000)}, KEY, 413, None),
    ("300 messages", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 150
                      + user()}, KEY, 400, "messages"),
    ("near-miss field", {"messages": user(), "max_token": 5}, KEY, 400, "max_token"),
    ("roles the template refuses", {"messages": user("a") + user("b")}, KEY, 400, "messages"),
    ("prompt over the model length", {"messages": user("cats " * 300)}, KEY, 400, "messages"),
    ("temperature 7", {"messages": user(), "temperature": 7}, KEY, 400, "temperature"),
    ("not JSON", b"{nope", KEY, 400, None),
    ("another model", {"messages": user(), "model": "gpt-4"}, KEY, 400, "model"),
    ("tools", {"messages": user(), "tools": [{"type": "function"}]}, KEY, 400, "tools"),
]


def test_hostile_requests_get_their_own_4xx_and_their_batch_mates_answers(app):
    served, _ = app
    url = served.url + "/v1/chat/completions"
    out: dict = {}

    def send(i, body, key):
        raw = body if isinstance(body, bytes) else None
        out[i] = post(url, None if raw else body, raw=raw, key=key)

    jobs = [(f"good{i}", {"messages": user(PROMPTS[i % len(PROMPTS)]), "max_tokens": 6}, KEY) for i in range(12)]
    jobs += [(what, body, key) for what, body, key, _, _ in HOSTILE]
    threads = [threading.Thread(target=send, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    good = [out[f"good{i}"] for i in range(12)]
    assert all(status == 200 and body["choices"][0]["message"]["content"] is not None for status, body in good), good
    for what, _, _, status, param in HOSTILE:
        got, body = out[what]
        assert got == status, (what, got, body)
        if param is not None:
            assert body["error"]["param"] == param, (what, body)
    assert "did you mean 'max_tokens'" in out["near-miss field"][1]["error"]["message"]
    assert "alternate" in out["roles the template refuses"][1]["error"]["message"]
    print(f"\nhostile requests: {len(HOSTILE)} tried, all answered 4xx "
          f"({sorted(s for _, _, _, s, _ in HOSTILE)}); 12 batch-mates all 200")


def test_models_and_health_show_ids_not_paths(app):
    served, tmp = app
    assert post(served.url + "/v1/models", key=None)[0] == 401
    status, models = post(served.url + "/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["prefloop-round-0", "prefloop"]
    status, health = post(served.url + "/health", key=None)  # open: a load balancer's probe
    assert status == 200 and health["model"] == "prefloop-round-0"
    for text in (json.dumps(models), json.dumps(health)):
        assert str(tmp) not in text and "/model" not in text


def replica_actors():
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "PolicyServer" in a["name"])


def under_load(served, publish_call, pinned):
    """4 clients loop requests (a 5th names the model id ``pinned``) while ``publish_call()`` runs; returns (its
    result, per-client (status, round, received at), when publish returned)."""
    seen, stop = {k: [] for k in range(5)}, threading.Event()

    def client(k):
        for i in range(400):
            if stop.is_set():
                return
            body = {"messages": user(PROMPTS[(k + i) % len(PROMPTS)]), "max_tokens": 4}
            status, out = post(served.url + "/v1/chat/completions", {**body, **({"model": pinned} if k == 4 else {})})
            seen[k].append((status, out.get("prefloop_round") if status == 200 else out, time.monotonic()))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(5)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    result = publish_call()
    published = time.monotonic()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    return result, seen, published


def check_swap(seen, published, before_actors, before_ids, served, old, new):
    for k in range(4):  # no round named: never a failure; old or new during the swap, new once it returned
        runs = seen[k]
        assert not [x for x in runs if x[0] != 200], [x for x in runs if x[0] != 200][:3]
        assert {r for _, r, _ in runs} <= {old, new} and runs[0][1] == old and runs[-1][1] == new, (k, runs[:3])
        assert all(r == new for _, r, t in runs if t > published), k
    pinned = seen[4]  # named the old round: that round or a 404, never another round
    assert {s for s, _, _ in pinned} <= {200, 404}, pinned[:3]
    assert all(r == old for s, r, _ in pinned if s == 200) and pinned[0][0] == 200
    assert all(s == 404 for s, _, t in pinned if t > published) and pinned[-1][0] == 404
    assert replica_actors() == before_actors  # no new replica actor
    after = replica_states(served.name, want=2, until=lambda s: s["round"] == new)
    assert set(after) == before_ids  # the same replicas (their ids), now on the new round
    return sum(len(runs) for runs in seen.values())


def test_swaps_in_place_under_load_from_this_driver_and_from_a_second_driver(app, ray_cluster):
    served, tmp = app
    before_actors = replica_actors()
    before_ids = set(replica_states(served.name, want=2))
    assert len(before_actors) == 2 and len(before_ids) == 2
    r1 = strict_copy(tmp / "r0", tmp / "r1", 0.05)
    info, seen, done = under_load(served, lambda: publish(str(r1), 1, name=served.name, timeout_s=300),
                                  "prefloop-round-0")
    assert info["in_place"] and info["replicas"] == 2
    n1 = check_swap(seen, done, before_actors, before_ids, served, 0, 1)

    r2 = strict_copy(tmp / "r0", tmp / "r2", 0.08)
    code = ("import json, sys; from prefloop.app.dataflow.runtime import init_ray; from prefloop.core.config import "
            "ResourcesConfig; init_ray(ResourcesConfig()); from prefloop.app.serving.serve import publish; "
            "print('RESULT', json.dumps(publish(sys.argv[1], 2, timeout_s=300)), flush=True)")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}

    def second_driver():
        done = subprocess.run([sys.executable, "-c", code, str(r2)], env=env, capture_output=True, text=True,
                              timeout=480)
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        assert done.returncode == 0 and line, done.stderr[-3000:]
        return json.loads(line[0][7:])

    info2, seen2, done2 = under_load(served, second_driver, "prefloop-round-1")
    assert info2["in_place"] and info2["replicas"] == 2 and info2["round"] == 2
    n2 = check_swap(seen2, done2, before_actors, before_ids, served, 1, 2)
    print(f"\nswaps under load, 2 replicas: this driver {n1} requests, second driver {n2} requests, 0 failed, "
          f"in place (publish {info['publish_s']:.1f} s / {info2['publish_s']:.1f} s), same replicas {before_actors}")
