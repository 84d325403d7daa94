"""The real models' architectures, shrunk in width and depth only, built offline for the tests.

Same classes and weight names as the checkpoints the cluster recipes load (their shipped ``config.json`` in
``recipes/model_configs``, with only the sizes changed):

- ``sp_tokenizer``: a tokenizer that behaves like Mistral's / Llama's: sentencepiece-style BPE (``▁`` word
  boundaries), byte fallback to ``<0x..>`` tokens (ids 3-258, as in Llama's vocab), ``<unk>`` 0, ``<s>`` 1,
  ``</s>`` 2, BOS added by tokenisation, no pad token;
- ``mistral_policy``: ``MistralForCausalLM`` from Mistral-7B-Instruct-v0.2's config (untied, 4:1 grouped KV
  heads, rope_theta 1e6, sliding_window null as the real one), saved in bf16;
- ``ultrarm``: UltraRM-13b's layout (``architectures: ["LlamaRewardModel"]``, ``model.*`` +
  ``regression_head.weight``) in sharded ``pytorch_model-0000N-of-00002.bin`` files with their index, as the
  real repository ships it;
- ``pairrm_download``: llm-blender/PairRM's layout: the ranker's config.json (model_name
  ``microsoft/deberta-v3-large``) and model.safetensors, with a DeBERTa-v3-large-shaped backbone (and a
  sentencepiece DeBERTa-v2 tokenizer) in ``deberta-v3-large/`` beside them, where prefloop looks for it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.paths import RECIPES

CONFIGS = RECIPES / "model_configs"
WORDS = ["tell", "me", "about", "cats", "rivers", "bread", "trains", "music", "gardens", "stars", "boats", "tea",
         "maps", "birds", "snow", "clocks", "shoes", "lamps", "books", "is", "good", "and", "kind", "bad", "no",
         "please", "the", "a", "very", "warm", "cold"]
MISTRAL_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] "
                    "+ ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")


def corpus(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(300)]


def sp_tokenizer(seed: int = 0):
    """Byte-fallback BPE with Llama's special-token and byte-token layout, trained on a small corpus."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
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


def _shrunk(name: str, **sizes) -> dict:
    real = json.loads((CONFIGS / name / "config.json").read_text())
    return {**real, **sizes}


def mistral_policy(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    tok = sp_tokenizer(seed)
    cfg = _shrunk("Mistral-7B-Instruct-v0.2", hidden_size=64, intermediate_size=224, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=32, vocab_size=len(tok),
                  max_position_embeddings=512)
    torch.manual_seed(seed)
    model = MistralForCausalLM(MistralConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def ultrarm(out: Path, seed: int = 0) -> Path:
    """UltraRM-13b's checkpoint layout, shrunk: two .bin shards + index, config architectures LlamaRewardModel."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    tok = sp_tokenizer(seed)
    cfg = _shrunk("UltraRM-13b", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512)
    torch.manual_seed(seed)
    base = LlamaModel(LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))
    state = {f"model.{k}": v.clone() for k, v in base.state_dict().items()}
    state["regression_head.weight"] = torch.randn(1, 64) * 0.5
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
    cfg = _shrunk("deberta-v3-large", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
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
