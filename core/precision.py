"""The precision of training, from the recipe's ``policy.dtype`` and ``train.bf16``: a pure rule, no torch.

Choices (documented in the README's "Running the real recipes"):

- trainable weights and AdamW states stay fp32 ("master weights") in every strategy: bf16 AdamW updates of
  lr 5e-7 on weights of magnitude ~1e-2 round to nothing (bf16 keeps 8 bits of mantissa);
- DDP, full fine-tuning: fp32 master weights, forward/backward under autocast in the compute dtype; DDP reduces
  the fp32 gradients;
- FSDP2: fp32 master shards, ``MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=float32)``: the gathered
  parameters and the compute are bf16, gradients are reduce-scattered in fp32;
- LoRA: the frozen base in the compute dtype (half the memory), the adapters fp32 (peft's default), autocast;
- reference models (DPO/KTO live, ReMax, the precomputed reference pass): the compute dtype, no grad; under
  FSDP the ReMax / live reference is sharded like the policy.

``policy.dtype: float32`` keeps every weight fp32 (and what is saved); ``train.bf16`` then adds bf16
autocast. float16 is honoured for
frozen weights (references, LoRA base) on a GPU; its *training* compute is bf16 where the hardware has it
(fp16 training needs loss scaling, which prefloop does not do), else fp32, with a warning. On a CPU (the tests)
bf16 works as on a GPU, only slower; fp16 falls back to fp32.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Precision:
    compute: str        # autocast / FSDP param dtype: float32 | bfloat16 | float16
    frozen: str         # dtype of frozen weights: references, the LoRA base
    master: str = "float32"
    note: str = ""      # why the request was changed, for a warning; empty when honoured as asked


def resolve_precision(policy_dtype: str, bf16: bool, device_type: str, bf16_supported: bool,
                      config_dtype: str | None = None) -> Precision:
    """The training precision for ``policy.dtype`` (``auto``: the checkpoint's ``torch_dtype``)."""
    asked = policy_dtype
    if asked == "auto":
        asked = config_dtype if config_dtype in ("float32", "bfloat16", "float16") else "float32"
    if asked == "float32":  # fp32 weights everywhere; train.bf16 adds bf16 autocast
        bf16 = bf16 and (device_type != "cuda" or bf16_supported)
        return Precision("bfloat16" if bf16 else "float32", "float32")
    if asked == "bfloat16":
        if device_type == "cuda" and not bf16_supported:
            return Precision("float32", "float32", note="bf16 asked for but this GPU has no bfloat16: float32")
        return Precision("bfloat16", "bfloat16")
    # float16
    if device_type != "cuda":
        return Precision("float32", "float32", note="float16 on a CPU: float32")
    if bf16_supported:
        return Precision("bfloat16", "float16", note="float16 training compute needs loss scaling: bf16 compute, "
                         "fp16 frozen weights")
    return Precision("float32", "float16", note="float16 training compute needs loss scaling and this GPU has "
                     "no bf16: fp32 compute, fp16 frozen weights")
