"""An in-place weight reload that is right for every architecture: a vLLM worker extension (``worker_extension_cls``).

``build_llm`` names ``PrefloopWorkerExtension`` when it builds an engine, so vLLM mixes it into its worker class
and ``llm.collective_rpc("prefloop_reload_weights", ...)`` runs it in each worker, wherever the worker lives
(this process, vLLM's engine-core process, a GPU worker). This module is imported inside those processes: it
imports only torch and vLLM, never Ray.

Why not vLLM's ``reload_weights`` alone: a model with tied embeddings (SmolLM2, Llama-3.2, Qwen2.5's small
sizes, Gemma) saves its output matrix once, as the input embeddings. The reload loads the embeddings, and the LM
head shares their storage, but the head itself receives no tensor, so vLLM skips its post-load processing
("ParallelLMHead: Failed to load weights"). On CPU that processing packs a private copy of the matrix for the
GEMM kernel (oneDNN / sgl ``dispatch_cpu_unquantized_gemm``), so the head keeps scoring tokens with the old
weights while everything below it runs on the new ones. After the reload this extension re-ties the head to the
embeddings (if the reload left them apart) and reruns the head's post-load processing, which packs the new
matrix; then it checks the head against the embeddings on a probe and fails closed if they disagree.
"""

from __future__ import annotations

from typing import Any

import torch

# |head(probe) - probe @ E^T| over max |probe @ E^T|: a packed copy of other weights is off by O(1); a fresh
# pack of the same matrix by rounding (bfloat16 accumulates in other orders: ~1e-2 at worst)
HEAD_CHECK_TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 3e-2}


def _embeddings(model: torch.nn.Module) -> torch.nn.Module | None:
    inner = getattr(model, "model", None)
    for owner in (inner, getattr(inner, "language_model", None), model):
        embed = getattr(owner, "embed_tokens", None)
        if embed is not None and getattr(embed, "weight", None) is not None:
            return embed
    return None


def tied_in_config(hf_config: Any) -> bool:
    """Whether the model's config ties the output embeddings to the input ones (top level, else its text part)."""
    value = getattr(hf_config, "tie_word_embeddings", None)
    if value is None and hasattr(hf_config, "get_text_config"):
        value = getattr(hf_config.get_text_config(), "tie_word_embeddings", None)
    return bool(value)


@torch.no_grad()
def retie_output_embeddings(model: torch.nn.Module, hf_config: Any) -> dict[str, Any]:
    """Make a reloaded model's LM head the input embeddings again, repacked; returns what was done and the check.

    Untied models and models without a separate head module (their logits come from the embedding layer,
    which the reload processes) need nothing."""
    head, embed = getattr(model, "lm_head", None), _embeddings(model)
    head_weight = getattr(head, "weight", None)
    shared = head_weight is not None and embed is not None and head_weight.data_ptr() == embed.weight.data_ptr()
    if head_weight is None or not (shared or tied_in_config(hf_config)):
        return {"tied": False}
    if embed is None:
        raise RuntimeError(f"{type(model).__name__} ties its LM head to input embeddings this reload cannot find")
    method = getattr(head, "quant_method", None)
    if type(method).__name__ != "UnquantizedEmbeddingMethod":
        raise RuntimeError(f"{type(model).__name__}: a tied LM head with {type(method).__name__} cannot be "
                           "repacked after an in-place reload; build a new engine")
    retied = not shared
    if retied:
        head.weight = embed.weight
    method.process_weights_after_loading(head)  # repacks the (new) shared matrix for this device's GEMM
    probe = torch.randn(2, embed.weight.shape[1], generator=torch.Generator().manual_seed(0))
    probe = probe.to(dtype=embed.weight.dtype, device=embed.weight.device)
    want = torch.nn.functional.linear(probe, embed.weight).float()
    got = method.apply(head, probe).float()[:, : want.shape[1]]
    error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
    if error > HEAD_CHECK_TOL.get(embed.weight.dtype, 3e-2):
        raise RuntimeError(f"after the in-place reload the tied LM head disagrees with the input embeddings "
                           f"(relative error {error:.3g}): the engine would answer with mixed weights")
    return {"tied": True, "retied": retied, "head_error": error}


class PrefloopWorkerExtension:
    """Mixed into vLLM's worker class; the method names start with ``prefloop_`` (vLLM refuses clashes)."""

    def prefloop_reload_weights(self, weights_path: str) -> dict[str, Any]:
        """vLLM's in-place reload of ``weights_path``, then the tied LM head made right (see the module doc)."""
        self.reload_weights(weights_path=weights_path)  # type: ignore[attr-defined]
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        return retie_output_embeddings(model, self.vllm_config.model_config.hf_config)  # type: ignore[attr-defined]
