"""The one place tests build tiny models and run directories, offline, from fixed seeds.

- ``build_tiny_llama``: a random 2-layer Llama and its byte-level BPE tokenizer (TuluV2 template, BOS/EOS, pad) as
  an HF directory, shaped per STACK.md so vLLM's CPU kernel loads it; ``random_llama``: a smaller one in memory;
  ``model_copy``: a model with noise on its weights, its LM head tied or untied.
- The real models' architectures shrunk in width and depth only (same classes and weight names, their shipped
  ``config.json`` in ``recipes/model_configs`` with the sizes changed): ``sp_tokenizer`` (Mistral's / Llama's kind:
  ``▁`` word boundaries, byte fallback to ``<0x..>`` ids 3-258, ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, no pad),
  ``mistral_policy`` (bf16), ``ultrarm`` (UltraRM-13b's ``LlamaRewardModel`` layout in two .bin shards + index;
  ``ultrarm_state`` / ``ultrarm_backbone``: its tensors, and the backbone that scores them by hand) and
  ``pairrm_download`` (llm-blender/PairRM as downloaded, its DeBERTa-v3-large-shaped backbone beside it).
- Run directories in ``app/storage/rundir.py``'s layout: ``served_run`` (a resolved recipe, committed round
  models), ``committed_rollout`` (a round's pairs and KTO examples), ``report_run`` (rounds with eval manifests).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from tests.paths import RECIPES

CONFIGS = RECIPES / "model_configs"
TULU = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|assistant|>\n' + m['content'] + eos_token + '\n' }}"
        "{% else %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
MISTRAL_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] "
                    "+ ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
TOPICS = ["cats", "rivers", "bread", "trains", "music", "gardens", "stars", "boats", "tea", "maps", "birds", "snow",
          "clocks", "shoes", "lamps", "books"]
WORDS = ["tell", "me", "about", *TOPICS, "is", "good", "and", "kind", "bad", "no", "please", "the", "a", "very",
         "warm", "cold"]


# ---------------------------------------------------------------- tiny Llama


def world_text(rng: random.Random) -> list[str]:
    words = TOPICS + ["tell", "me", "about", "is", "good", "and", "kind", "bad", "no", "please", "the", "a", "very"]
    return [" ".join(rng.choice(words) for _ in range(8)) for _ in range(400)]


def build_tiny_llama(out: Path, seed: int = 0) -> Path:
    """A random-weight 2-layer Llama and its BPE tokenizer, saved as an HF directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(world_text(rng) + [f"Tell me about {t}." for t in TOPICS], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  padding_side="right", chat_template=TULU)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def random_llama(attn: str):
    """A random Llama in memory (vocabulary 64, hidden 32, 4 heads on 2 KV heads), ``attn`` its attention."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      attn_implementation=attn, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def model_copy(src, out, noise=0.0, tied=None):
    """A copy of ``src`` with optional Gaussian noise on every weight, its LM head untied (False) or tied (True).

    The tiny policy is built untied; its trained LM head is kept either way."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * noise)
    was_tied = model.lm_head.weight is model.get_input_embeddings().weight
    if tied is False and was_tied:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    if tied is True and not was_tied:
        # The trained LM head becomes the shared matrix: tying to the input embeddings instead would leave a
        # model that answers every prompt with runs of newlines (near-ties, so no test of greedy answers).
        model.config.tie_word_embeddings = True
        model.get_input_embeddings().weight = model.lm_head.weight
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


# ---------------------------------------------------------------- real architectures, shrunk


def corpus(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(300)]


def sp_tokenizer(seed: int = 0):
    """Byte-fallback BPE with Llama's special-token and byte-token layout, trained on a small corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    meta = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    draft = Tokenizer(models.BPE())
    draft.pre_tokenizer = meta
    draft.train_from_iterator(corpus(seed), trainers.BpeTrainer(vocab_size=300, show_progress=False))
    learned = json.loads(draft.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{i:02X}>": 3 + i for i in range(256)}}
    for token in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    core.pre_tokenizer = meta
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                        special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  chat_template=MISTRAL_TEMPLATE)
    assert tok.pad_token_id is None
    return tok


def shrunk(name: str, **sizes) -> dict:
    real = json.loads((CONFIGS / name / "config.json").read_text())
    return {**real, **sizes}


def mistral_policy(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    tok = sp_tokenizer(seed)
    cfg = shrunk("Mistral-7B-Instruct-v0.2", hidden_size=64, intermediate_size=224, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=32, vocab_size=len(tok),
                  max_position_embeddings=512)
    torch.manual_seed(seed)
    model = MistralForCausalLM(MistralConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def ultrarm_state(cfg: dict, seed: int = 0, head_scale: float = 0.5) -> dict:
    """UltraRM's tensors for the shrunk ``cfg``: a random ``LlamaModel`` as ``model.*`` and ``regression_head``."""
    import torch

    torch.manual_seed(seed)
    state = {f"model.{k}": v.clone() for k, v in ultrarm_backbone(cfg).state_dict().items()}
    state["regression_head.weight"] = torch.randn(1, cfg["hidden_size"]) * head_scale
    return state


def ultrarm_backbone(cfg: dict, state: dict | None = None):
    """The ``LlamaModel`` of an UltraRM-layout ``cfg`` (random, or ``state``'s ``model.*`` tensors: to score by
    hand)."""
    from transformers import LlamaConfig, LlamaModel

    base = LlamaModel(LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"})).eval()
    if state is not None:
        base.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    return base


def ultrarm(out: Path, seed: int = 0) -> Path:
    """UltraRM-13b's checkpoint layout, shrunk: two .bin shards + index, config architectures LlamaRewardModel."""
    import torch

    tok = sp_tokenizer(seed)
    cfg = shrunk("UltraRM-13b", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512)
    state = ultrarm_state(cfg, seed)
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, names in enumerate(shards, start=1):
        fname = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({k: state[k] for k in names}, out / fname)
        weight_map.update({k: fname for k in names})
    (out / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    tok.save_pretrained(out)
    return out


def deberta_v3_tokenizer(out: Path, seed: int = 0):
    """DeBERTa-v3's tokenizer kind: a sentencepiece unigram model (spm.model) in DebertaV2Tokenizer."""
    import sentencepiece as spm
    from transformers import DebertaV2Tokenizer

    out.mkdir(parents=True, exist_ok=True)
    text = out / "corpus.txt"
    text.write_text("\n".join(corpus(seed)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(out / "spm"), vocab_size=56,
                                   hard_vocab_limit=False,
                                   pad_id=0, unk_id=3, bos_id=1, eos_id=2, pad_piece="[PAD]", unk_piece="[UNK]",
                                   bos_piece="[CLS]", eos_piece="[SEP]", user_defined_symbols=["[MASK]"],
                                   minloglevel=2)
    text.unlink()
    (out / "spm.vocab").unlink()
    return DebertaV2Tokenizer(vocab_file=str(out / "spm.model"))


def pairrm_download(out: Path, seed: int = 0) -> Path:
    """llm-blender/PairRM as downloaded (ranker config.json + model.safetensors), its backbone beside it."""
    import safetensors.torch
    import torch
    from transformers import DebertaV2Config, DebertaV2Model

    from prefloop.actors.blender_compat import import_llm_blender

    backbone = out / "deberta-v3-large"
    tok = deberta_v3_tokenizer(backbone, seed)
    cfg = shrunk("deberta-v3-large", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, vocab_size=len(tok), position_buckets=64)
    torch.manual_seed(seed)
    DebertaV2Model(DebertaV2Config(**cfg)).save_pretrained(backbone)
    tok.save_pretrained(backbone)
    import_llm_blender()
    from llm_blender.blender.blender_utils import load_ranker
    from llm_blender.pair_ranker.config import RankerConfig

    ranker_cfg = json.loads((CONFIGS / "llm-blender-PairRM" / "config.json").read_text())
    build = dict(ranker_cfg, model_name=str(backbone), device="cpu", fp16=False)
    build.pop("cache_dir", None)
    ranker, _, _ = load_ranker(RankerConfig.from_dict(build))
    with torch.no_grad():  # weights of a larger scale than the init's 0.02, so random scores differ clearly
        for p in ranker.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    safetensors.torch.save_model(ranker, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(ranker_cfg, indent=2))  # model_name microsoft/deberta-v3-large
    return out


# ---------------------------------------------------------------- run directories


def served_run(root: Path, recipe: dict, models: dict[int, Path], **manifest):
    """A run directory with ``recipe`` resolved and ``models[r]`` copied in as round r's committed model."""
    from prefloop.app.storage.rundir import MODEL, RunDir, write_manifest
    from prefloop.core.config import dump_recipe, parse_recipe

    run = RunDir(root)
    run.save_text("recipe.yaml", dump_recipe(parse_recipe(recipe, "test")))
    for r, model in models.items():
        shutil.copytree(model, run.stage_dir(r, MODEL))
        write_manifest(run.stage_dir(r, MODEL), {"stage": MODEL, "round": r, **manifest})
    return run


def preference_pairs(prompt: str = "Tell me about {t} {i}.", chosen: str = "{t} is good and kind.",
                     rejected: str = "no no bad.", topics: list[str] = TOPICS) -> list[dict]:
    """Each topic twice as a DPO pair (ids ``p0``...), ``{t}`` the topic and ``{i}`` the pair's index."""
    out = []
    for i, t in enumerate(topics * 2):
        text = prompt.format(t=t, i=i)
        out.append({"prompt_id": f"p{i}", "prompt": text, "messages": [{"role": "user", "content": text}],
                    "chosen": chosen.format(t=t), "rejected": rejected, "score_chosen": 1.0, "score_rejected": 0.0,
                    "margin": 1.0})
    return out


def committed_rollout(run, pairs: list[dict], kto: bool = True) -> None:
    """Round 0's rollout committed: ``pairs.parquet`` and (``kto``) each pair's two KTO examples."""
    from prefloop.app.storage.rundir import ROLLOUT, write_manifest
    from prefloop.app.storage.tables import write_parquet

    with run.commit(0, ROLLOUT) as out:
        write_parquet(out / "pairs.parquet", pairs)
        if kto:
            write_parquet(out / "kto.parquet", [
                {"prompt_id": p["prompt_id"], "prompt": p["prompt"], "messages": p["messages"], "completion": p[k],
                 "label": label, "score": 0.0} for p in pairs for k, label in (("chosen", True), ("rejected", False))])
        write_manifest(out, {"stage": ROLLOUT})


def dead_pid() -> int:
    """The pid of a process that has exited (a crashed attempt's, a lost lock holder's)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


REPORT_PROMPTS = [f"Tell me about {t}." for t in ("rivers", "cats", "bread", "trains", "music", "stars")]


def eval_manifest(r: int) -> dict:
    """Round r's eval manifest with every key of the eval metrics (win_rate, scorer_win_rate, base_* ...)."""
    return {"stage": "eval", "round": r, "pairs": 40 + r, "method": "dpo", "n": len(REPORT_PROMPTS),
            "win_rate": 0.5 + 0.1 * r, "win_rate_stderr": 0.05, "scorer_win_rate": 0.6 + 0.1 * r,
            "lc_win_rate": 0.45 + 0.1 * r, "lc_unstable": False, "mean_score": 0.1 * r, "mean_length": 20.0 + r,
            "mean_base_length": 18.0, "base_mean_length": 18.0, "truncation_rate": 0.0,
            "repetition_rate": 0.2 - 0.05 * r, "base_repetition_rate": 0.25, "distinct_2": 0.7,
            "judge": "function", "judge_independent": True, "swap_s": 0.02, "serve_swap_s": None,
            "timings_s": {"rollout": 30.0, "train": 40.0, "eval": 5.0, "round": 80.0 + r}}


def write_stage(root: Path, r: int, stage: str, manifest: dict, answers: list[dict] | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / f"round_{r}" / stage
    folder.mkdir(parents=True, exist_ok=True)
    if answers is not None:
        pq.write_table(pa.Table.from_pylist(answers), folder / "answers.parquet")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def report_run(root: Path, rounds: int = 2, planned: int = 3) -> list[dict]:
    """``rounds`` committed rounds (base answers, rollout, model, eval) of a ``planned``-round recipe, written by
    hand; returns their eval manifests."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipe.yaml").write_text(f"name: demo\nloop:\n  rounds: {planned}\n  serve: false\n")
    base = [{"prompt_id": f"p{i}", "prompt": p, "answer": f"base answer {i} <b>bold?</b>", "num_tokens": 10 + i}
            for i, p in enumerate(REPORT_PROMPTS)]
    write_stage(root, 0, "base_answers", {"stage": "base_answers", "prompts": len(base)}, base)
    rows = []
    for r in range(rounds):
        answers = [dict(b, answer=f"round {r} answer {i} about {b['prompt'][14:-1]}", score=0.5 + r,
                        base_score=0.4, outcome="win" if i % 2 else "loss") for i, b in enumerate(base)]
        write_stage(root, r, "rollout", {"stage": "rollout"})
        write_stage(root, r, "model", {"stage": "model"})
        rows.append(eval_manifest(r))
        write_stage(root, r, "eval", rows[-1], answers)
    return rows
