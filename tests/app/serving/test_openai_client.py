"""`prefloop serve` answers the official ``openai`` Python client: chat, streamed chat, n=2, a bad request.

``prefloop serve RUN_DIR`` runs as a user runs it (a subprocess, joining the session's Ray cluster) on a run
whose recipe names the model, so the base model is served with its own chat template. Two models: the tiny
policy (fast) and SmolLM2-135M-Instruct, whose ChatML template adds a default system prompt: the served greedy
answer and prompt token count must be transformers' on the model's own ``apply_chat_template`` rendering, so a
prompt rendered any other way (no system prompt, another template) shows. The streamed answer must arrive in
pieces as the engine makes them, and join to the non-streamed answer.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading

import pytest

from prefloop.app.storage.rundir import RunDir
from prefloop.core.config import dump_recipe, parse_recipe

pytestmark = pytest.mark.ray
openai = pytest.importorskip("openai")  # the `test` extra installs it

# prompts, answer tokens, max_model_len (the tiny policy's positions stop at 128)
CASES = {"tiny": (["Tell me about cats.", "Tell me about tea."], 12, 128),
         "smollm2": (["Name a colour.", "What is the capital of France?"], 24, 256)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_cli(run_root, port, timeout_s=400):
    """Start ``prefloop serve`` and return (process, base URL) once it prints where it serves."""
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "prefloop", "serve", str(run_root), "--port", str(port),
                             "--duration", "3600"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=timeout_s)
        except queue.Empty:
            proc.kill()
            pytest.fail(f"prefloop serve did not start in {timeout_s} s:\n{''.join(seen[-40:])}")
        seen.append(line)
        if line.startswith("serving ") and "/v1/chat/completions" in line:
            return proc, line.split(" at ", 1)[1].split("/v1/chat/completions")[0]
        if proc.poll() is not None and lines.empty():
            pytest.fail(f"prefloop serve exited {proc.returncode}:\n{''.join(seen[-40:])}")


@pytest.fixture(scope="module", params=["tiny", pytest.param("smollm2", marks=pytest.mark.slow)])
def server(request, ray_cluster, tiny_assets, tmp_path_factory):
    """(openai client, served model dir, prompts, max tokens) for ``prefloop serve`` on the base model."""
    from prefloop.app.models.catalog import ensure_models, model_placeholders

    if request.param == "smollm2":
        model = model_placeholders()["smollm2"]
        ensure_models({"policy": {"model": model}})
    else:
        model = str(tiny_assets.policy)
    prompts, max_tokens, max_model_len = CASES[request.param]
    root = tmp_path_factory.mktemp(f"openai-{request.param}") / "run"
    raw = {"name": "openai-client-test", "run_dir": str(root), "policy": {"model": model, "chat_template": "tokenizer"},
           "data": {"train": "unused.jsonl", "max_prompt_tokens": 64},
           "rollout": {"max_tokens": 32, "max_model_len": max_model_len},
           "scorer": {"kind": "pairrm", "model": str(tiny_assets.pairrm)}}
    RunDir(root).save_text("recipe.yaml", dump_recipe(parse_recipe(raw, "test")))
    proc, url = serve_cli(root, free_port())
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120, max_retries=0)
    yield client, model, prompts, max_tokens
    proc.send_signal(2)  # Ctrl-C: `prefloop serve` shuts Serve down and exits
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


def own_greedy(model_dir, prompt, max_tokens):
    """(answer text, prompt token count) from transformers on the model's own chat template rendering."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    # the template's own tokens, nothing added (a template that writes BOS itself gets it once)
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True,
                                  return_dict=True, return_tensors="pt")["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True), ids.shape[1]


def ask(client, prompt, **kwargs):
    return client.chat.completions.create(model="prefloop", messages=[{"role": "user", "content": prompt}], **kwargs)


def test_chat_renders_the_models_own_template_and_answers_its_greedy_answer(server):
    client, model_dir, prompts, max_tokens = server
    for prompt in prompts:
        out = ask(client, prompt, max_tokens=max_tokens, temperature=0)
        text, prompt_tokens = own_greedy(model_dir, prompt, max_tokens)
        assert out.usage.prompt_tokens == prompt_tokens  # the default system prompt is in, as the model renders it
        assert out.choices[0].message.content == text and out.model == "prefloop-base"


def test_streamed_chat_arrives_in_pieces_and_joins_to_the_answer(server):
    client, _, prompts, max_tokens = server
    whole = ask(client, prompts[0], max_tokens=max_tokens, temperature=0).choices[0].message.content
    pieces, finish = [], None
    for chunk in ask(client, prompts[0], max_tokens=max_tokens, temperature=0, stream=True):
        assert chunk.object == "chat.completion.chunk" and chunk.model == "prefloop-base"
        for choice in chunk.choices:
            pieces += [choice.delta.content] if choice.delta.content else []
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole and finish in ("stop", "length")
    assert len(pieces) >= 3, pieces  # sent as the engine made the tokens, not as one piece at the end


def test_n2_gives_two_choices_streamed_or_not(server):
    client, _, prompts, max_tokens = server
    out = ask(client, prompts[1], max_tokens=max_tokens, temperature=1.0, n=2, seed=3)
    assert [c.index for c in out.choices] == [0, 1] and all(c.message.content for c in out.choices)
    texts = {0: "", 1: ""}
    for chunk in ask(client, prompts[1], max_tokens=max_tokens, temperature=1.0, n=2, seed=3, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert all(texts.values()), texts


@pytest.mark.parametrize("stream", [False, True])
def test_a_bad_request_raises_bad_request_error_naming_the_field(server, stream):
    client, _, prompts, _ = server
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, prompts[0], max_tokens=8, temperature=7, stream=stream)
    assert err.value.status_code == 400 and err.value.param == "temperature", err.value.body
