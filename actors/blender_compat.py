"""llm-blender 0.0.2 (PairRM) on transformers 5: the one place that patches it, and ``load_pairrm``.

llm-blender has been unmaintained since 2024-04 and was written for transformers 4. Three small things
stand between it and the transformers 5 / vLLM stack prefloop pins; each is fixed here, and only here:

1. ``llm_blender.blender`` imports ``TRANSFORMERS_CACHE`` from ``transformers.utils.hub`` (removed in
   transformers 5), so ``import llm_blender`` fails. We put the name back, pointing at the hub cache.
2. Its collator calls ``tokenizer.batch_encode_plus`` (also removed). Rather than patching every tokenizer
   class, we replace the collator module's ``encode_texts`` with the same call through ``tokenizer(...)``.
3. On import it probes ``import vllm`` (only for its optional best-of-n generation helper, unused here),
   which costs seconds of CPU per scorer process. When vLLM is not loaded yet, we hide it for that import.

One robustness fix, in ``ranker_safe``: the ranker finds the prompt and each candidate by marker tokens
(``<|source|>``, ``<|candidate|>``, ...) it adds to its tokenizer. A text that contains a marker verbatim
(a policy can sample one) makes the ranker count two candidates in one and crash on mismatched shapes, so
markers inside texts are defused before ranking.

And one cosmetic fix: ``RankerConfig`` types its None-defaulted fields as ``str``, so dataclasses_json
warns on every ranker load; that one warning is silenced.

``load_pairrm`` then loads a ranker from a local directory only: it never reaches for the hub.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from prefloop.core.model_dirs import check_ranker_dir

log = logging.getLogger(__name__)

_patched = False

# The marker tokens llm-blender's PairRM collator adds to its tokenizer (CrossCompareCollator defaults).
RANKER_MARKERS = ("<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>")


def ranker_safe(text: str) -> str:
    """``text`` with every PairRM marker defused (``<|candidate|>`` -> ``<candidate>``), else unchanged."""
    if "<|" not in text:
        return text
    for marker in RANKER_MARKERS:
        text = text.replace(marker, "<" + marker[2:-2] + ">")
    return text


def _encode_texts(texts, tokenizer, max_length=None):
    """Drop-in for ``llm_blender.pair_ranker.collator.encode_texts`` without ``batch_encode_plus``."""
    enc = tokenizer(list(texts), max_length=max_length, padding="max_length", return_tensors="pt",
                    truncation=True)
    return enc["input_ids"], enc["attention_mask"]


def import_llm_blender() -> Any:
    """Import ``llm_blender`` with the patches above applied (idempotent); returns the module."""
    global _patched
    import transformers.utils.hub as hub

    if not hasattr(hub, "TRANSFORMERS_CACHE"):  # (1)
        from huggingface_hub import constants

        hub.TRANSFORMERS_CACHE = constants.HF_HUB_CACHE
    hide_vllm = "vllm" not in sys.modules  # (3): a None entry makes `import vllm` raise ImportError
    if hide_vllm:
        sys.modules["vllm"] = None  # type: ignore[assignment]
    try:
        import llm_blender
        from llm_blender.pair_ranker import collator
    finally:
        if hide_vllm and sys.modules.get("vllm", 0) is None:
            del sys.modules["vllm"]
    if not _patched:
        collator.encode_texts = _encode_texts  # (2): looked up as a module global at call time
        _patched = True
    # Re-added on every call: test runners reset warning filters between tests (no duplicates are kept).
    warnings.filterwarnings("ignore", message=r".*non-optional type \w+ detected when decoding RankerConfig")
    return llm_blender


def load_pairrm(ranker_dir: str | os.PathLike, device: str = "cpu") -> Any:
    """A ready ``llm_blender.Blender`` with the PairRM-format ranker in ``ranker_dir`` loaded on ``device``."""
    backbone = check_ranker_dir(ranker_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local ranker must never trigger a download attempt
    llm_blender = import_llm_blender()
    blender = llm_blender.Blender(llm_blender.BlenderConfig(device=device, use_tqdm=False))
    # model_name is passed explicitly so a relative backbone path works from any working directory. llm-blender
    # print()s "Successfully loaded ranker from ..." to stdout; the log line below says it instead, so a quiet
    # console (`prefloop assets build`, the demo) stays quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        blender.loadranker(str(Path(ranker_dir).resolve()), device=device, model_name=str(backbone.resolve()))
    log.info("PairRM loaded from %s on %s", ranker_dir, device)
    return blender
