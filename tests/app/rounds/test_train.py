"""The training stage on real Ray Train (2 CPU workers, gloo) with a tiny Llama: one fit per method.

DPO trains LoRA, KTO and SFT full weights, conditional SFT LoRA with trainable control-token embeddings. The
SFT fit has one worker killed mid-round. Each fit runs 4 epochs over 32 pairs (64 KTO rows).
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from prefloop.app.rounds.round import Round
from prefloop.app.rounds.train import run_train
from prefloop.app.storage.rundir import RunDir
from prefloop.core.config import parse_recipe
from prefloop.core.train_data import BAD, GOOD, TrainDataError
from tests.builders import committed_rollout, preference_pairs

pytestmark = pytest.mark.ray
LORA = {"r": 8, "alpha": 16}


def train_recipe(tmp, model, method, **train):
    """A recipe whose round 0 already has a committed rollout (pairs.parquet, kto.parquet)."""
    run = RunDir(tmp / "run")
    committed_rollout(run, preference_pairs())
    settings = {"method": method, "lr": 5e-3, "epochs": 4, "micro_batch_size": 4, "max_prompt_len": 32,
                "max_response_len": 16, "checkpoint_every_steps": 100, "log_every_steps": 100, **train}
    return parse_recipe({"name": f"t-{method}", "run_dir": str(run.root), "seed": 0,
                         "policy": {"model": str(model), "chat_template": "tokenizer"}, "data": {"train": "unused"},
                         "scorer": {"kind": "function", "function": "m:f"}, "train": settings}, "test")


@pytest.fixture(scope="module")
def trained(ray_cluster, tiny_llama, tmp_path_factory):
    """Lazily train each method once for the module: trained(method) -> (recipe, model folder)."""
    cache = {}
    plans = {"dpo": {"lora": LORA}, "kto": {}, "csft": {"lora": LORA},
             "sft": {"checkpoint_every_steps": 3, "kill": 6},  # checkpoints mid-epoch (4 steps an epoch)
             # FSDP (FSDP2, gloo on CPU) with a live reference model (kept by every worker) fixed to the base
             "dpo-fsdp-live": {"strategy": "fsdp", "reference_mode": "live", "reference": "base"}}

    def get(name):
        if name not in cache:
            plan = dict(plans[name])
            kill = plan.pop("kill", None)
            recipe = train_recipe(tmp_path_factory.mktemp(name), tiny_llama, name.split("-")[0], **plan)
            cache[name] = recipe, run_train(Round.of(recipe), kill_at_step=kill)
        return cache[name]
    return get


def logps(model_dir, prompts, responses):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefloop.core.batching import encode_pairs
    from prefloop.core.logprobs import sequence_logps

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    enc = encode_pairs(tok, prompts, responses, 32, 16, padding_side="right")
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    return sequence_logps(logits, enc["input_ids"], enc["loss_mask"])


def pair_accuracy(start, model):
    """Implicit-reward accuracy on the training pairs: log-ratio(chosen) > log-ratio(rejected)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    rows = preference_pairs()
    prompts = [tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True) for r in rows]
    ratio = {k: logps(model, prompts, [r[k] for r in rows]) - logps(start, prompts, [r[k] for r in rows])
             for k in ("chosen", "rejected")}
    return (ratio["chosen"] > ratio["rejected"]).float().mean().item()


def metrics(folder):
    return [json.loads(line) for line in (folder / "train_metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["dpo", "kto", "dpo-fsdp-live"])
def test_preference_methods_learn(trained, tiny_llama, method):
    recipe, folder = trained(method)
    manifest = json.loads((folder / "manifest.json").read_text())
    if method == "dpo-fsdp-live":
        assert manifest["train"]["strategy"] == "fsdp" and manifest["train"]["reference_mode"] == "live"
        assert manifest["reference"] == recipe.policy.model
    steps = 32 if method == "kto" else 16  # 32 pairs or 64 KTO rows, 2 workers, micro-batch 4, 4 epochs
    assert manifest["steps"]["done"] == manifest["steps"]["planned"] == steps
    history = metrics(folder)
    assert history[0]["reward_accuracy"] <= 0.5  # step 1 is measured before any update: all rewards are 0
    assert sum(m["reward_accuracy"] for m in history[-4:]) / 4 > 0.9
    assert all(m["grad_norm"] > 0 and m["tokens_per_s"] > 0 for m in history)  # every step had a gradient
    assert pair_accuracy(tiny_llama, folder) >= 0.9  # learning, measured independently of the trainer
    lines = (RunDir(recipe.run_dir).root / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(history) and json.loads(lines[0])["stage"] == "train"
    if method == "kto":
        assert all("kto_z" in m for m in history)


def test_sft_resumes_from_checkpoint_after_a_worker_dies(trained):
    _, folder = trained("sft")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["steps"]["restored_from"] and manifest["steps"]["restored_from"][0] >= 3
    assert manifest["steps"]["done"] == manifest["steps"]["planned"] == 16
    history = metrics(folder)
    assert [m["step"] for m in history] == list(range(1, 17))  # no step lost or done twice
    assert history[-1]["loss"] < history[0]["loss"] / 2
    # The examples trained after the kill are exactly those of the interrupted epoch not yet trained: per epoch,
    # the steps' example ids (all workers) are the seeded shares computed here independently, each once.
    from prefloop.core.train_data import worker_order

    steps = [json.loads(line) for line in (folder / "trained_examples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 17))
    n, world = manifest["counts"]["examples"], manifest["train"]["num_workers"]
    restored = manifest["steps"]["restored_from"][0]
    assert restored % 4 != 0  # the checkpoint is mid-epoch (4 steps an epoch): the resume skips part of an epoch
    for epoch in range(4):
        trained = [i for s in steps if s["epoch"] == epoch for i in s["example_ids"]]
        want = sorted(i for r in range(world) for i in worker_order(list(range(n)), 0, epoch, r, world))
        assert sorted(trained) == want and len(set(trained)) == len(trained), epoch
    epoch = restored // 4
    before = {i for s in steps if s["epoch"] == epoch and s["step"] <= restored for i in s["example_ids"]}
    after = {i for s in steps if s["epoch"] == epoch and s["step"] > restored for i in s["example_ids"]}
    assert before and after and not (before & after)  # across the kill: nothing trained twice, nothing skipped


def test_csft_control_tokens_condition_the_answer(trained):
    from transformers import AutoTokenizer

    _, folder = trained("csft")
    tok = AutoTokenizer.from_pretrained(folder)
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) == 1 for t in (GOOD, BAD))
    rows = preference_pairs()[:8]
    base = [tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True) for r in rows]
    good = [r["chosen"] for r in rows]
    assert (logps(folder, [p + GOOD for p in base], good) > logps(folder, [p + BAD for p in base], good)).all()


def test_committed_round_is_skipped(trained):
    recipe, folder = trained("dpo")
    assert run_train(Round.of(recipe)) == folder


def test_models_load_in_vllm_lora_merged_and_full(trained, tmp_path):
    (_, lora_model), (_, full_model) = trained("dpo"), trained("kto")
    script = tmp_path / "gen.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        if __name__ == "__main__":
            from vllm import SamplingParams
            from prefloop.actors.vllm_engine import build_llm, reload_in_place
            from prefloop.core.round_settings import EngineSettings
            llm = build_llm(sys.argv[1], EngineSettings(dtype="float32", max_model_len=128, kv_cache_gb=1 / 16),
                            seeded_requests=False, in_process=True)
            prompt = llm.get_tokenizer().apply_chat_template([{"role": "user", "content": "Tell me about cats 1."}],
                                                             tokenize=False, add_generation_prompt=True)
            params = SamplingParams(max_tokens=8, temperature=0.0)
            first = llm.generate([prompt], params)[0].outputs[0]
            reload_in_place(llm, sys.argv[2])  # the engine prefloop builds (in-process on CPU)
            second = llm.generate([prompt], params)[0].outputs[0]
            print("RESULT " + json.dumps([list(first.token_ids), list(second.token_ids)]))
    """))
    proc = subprocess.run([sys.executable, str(script), str(lora_model), str(full_model)], capture_output=True,
                          text=True, timeout=400)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    first, second = json.loads(line[0][len("RESULT "):])
    # vLLM's greedy answers are transformers' greedy answers of each model: after the in-place reload the engine
    # answers with the new weights, not the old ones
    want_first, want_second = hf_greedy_ids(lora_model), hf_greedy_ids(full_model)
    assert want_first != want_second, "the two models answer alike: the reload would go unseen"
    assert (first, second) == (want_first, want_second)


def hf_greedy_ids(model_dir, max_tokens=8):
    """Greedy answer token ids from transformers (up to and including EOS), rendered as the gen script does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()
    text = tok.apply_chat_template([{"role": "user", "content": "Tell me about cats 1."}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, add_special_tokens=True, return_tensors="pt")["input_ids"]  # as vLLM tokenises a text prompt
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


def test_bad_inputs_fail_early_with_clear_errors(tiny_llama, tmp_path):
    recipe = train_recipe(tmp_path / "a", tmp_path / "no-such-model", "dpo")
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        run_train(Round.of(recipe))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    recipe = train_recipe(tmp_path / "b", tiny_llama, "dpo", data=str(empty))
    with pytest.raises(TrainDataError, match="no rows"):
        run_train(Round.of(recipe))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}) + "\n")
    recipe = train_recipe(tmp_path / "c", tiny_llama, "dpo", data=str(bad))
    with pytest.raises(TrainDataError, match="line 1 rejected: identical"):
        run_train(Round.of(recipe))
    kto_file = tmp_path / "kto.jsonl"
    kto_file.write_text(json.dumps({"prompt": "q", "completion": "a", "label": True}) + "\n")
    recipe = train_recipe(tmp_path / "d", tiny_llama, "dpo", data=str(kto_file))
    with pytest.raises(TrainDataError, match="cannot train on kto"):
        run_train(Round.of(recipe))
    with pytest.raises(FileNotFoundError, match="round 0's model"):
        run_train(Round.of(train_recipe(tmp_path / "e", tiny_llama, "dpo"), 1))


def test_a_resume_continues_its_own_checkpoint_and_starts_over_from_another_trainings(ray_cluster, tiny_llama,
                                                                                          tmp_path):
    """A fit that dies after step 3's checkpoint (no retries) leaves the checkpoint; the rerun with the same
    settings resumes from it (``restored_from``), a rerun with another micro-batch size (the checkpoint's
    position counts other micro-batches) starts the round's training over and says why."""
    import shutil

    def failed_first(where):
        recipe = train_recipe(tmp_path / where, tiny_llama, "sft", checkpoint_every_steps=3, max_failures=0, epochs=2)
        with pytest.raises(Exception, match="(?i)training failed"):  # the worker death, no retry left
            run_train(Round.of(recipe), kill_at_step=3)
        return recipe

    same = failed_first("same")
    folder = run_train(Round.of(same))
    steps = json.loads((folder / "manifest.json").read_text())["steps"]
    assert steps["restored_from"] == [3] and steps["started_over"] is None and steps["done"] == 8

    changed = failed_first("changed")
    other = changed.model_copy(update={"train": changed.train.model_copy(update={"micro_batch_size": 8})})
    folder = run_train(Round.of(other))
    steps = json.loads((folder / "manifest.json").read_text())["steps"]
    assert steps["restored_from"] == [] and steps["done"] == steps["planned"] == 4
    assert steps["started_over"]["checkpoint_step"] == 3 and "micro_batch_size: 4 -> 8" in steps["started_over"]["why"]
    shutil.rmtree(tmp_path, ignore_errors=True)
