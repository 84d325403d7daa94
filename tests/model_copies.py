"""Model copies that tests swap into running engines: a model saved with tied embeddings and noise on its weights."""

from __future__ import annotations

import json


def tied_copy(src, out, noise, seed=1, relative=False):
    """``src`` saved tied, with Gaussian noise on every weight (``relative``: scaled by each tensor's std).
    An untied source keeps its trained LM head as the shared matrix (tying to its input embeddings instead
    leaves a model that answers every prompt with near-ties)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    if model.lm_head.weight is not model.get_input_embeddings().weight:
        model.config.tie_word_embeddings = True
        model.get_input_embeddings().weight = model.lm_head.weight
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * noise * (p.std() if relative else 1.0))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    return out
