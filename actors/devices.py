"""Which device and dtype an actor computes on: the GPU Ray assigned to it, else the CPU.

Ray sets ``CUDA_VISIBLE_DEVICES`` to an actor's assigned GPUs, so inside the actor the first assigned GPU is
``cuda:0``. An actor that was given no GPU stays on the CPU even on a GPU node (another actor owns that GPU).
On a GPU the scorers run in bf16 where the GPU has it, else fp16 (PairRM was trained in fp16); on the CPU in fp32.
``choose_device`` is the pure rule; ``actor_device`` reads the actor's assignment and the hardware.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

log = logging.getLogger(__name__)


def choose_device(assigned_gpus: Sequence[str | int], cuda_devices: int, bf16_supported: bool) -> tuple[str, str]:
    """(device, dtype name) for an actor given its assigned GPU ids and the CUDA devices it can see."""
    if not assigned_gpus:
        return "cpu", "float32"
    if cuda_devices < 1:
        raise RuntimeError(f"the actor was assigned GPU(s) {list(assigned_gpus)} but CUDA sees no device "
                           "(CUDA_VISIBLE_DEVICES / driver mismatch)")
    return "cuda:0", "bfloat16" if bf16_supported else "float16"


def assigned_gpus() -> list[str]:
    """This process's GPUs: Ray's assignment inside Ray, else CUDA_VISIBLE_DEVICES, else every CUDA device."""
    try:
        import ray

        if ray.is_initialized():
            return [str(g) for g in ray.get_gpu_ids()]
    except ImportError:
        pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def actor_device() -> tuple[str, str]:
    import torch

    gpus = assigned_gpus()
    count = torch.cuda.device_count() if gpus else 0
    bf16 = bool(count) and torch.cuda.is_bf16_supported()
    device, dtype = choose_device(gpus, count, bf16)
    log.info("assigned GPUs %s: computing on %s in %s", gpus or "none", device, dtype)
    return device, dtype
