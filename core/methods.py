"""The training methods, each declared once: what it reads, whether it needs a reference, how it trains.

The round loop, the training stage, the round summary, the plan and the trainer ask ``method(name)`` instead of
branching on names, in the manner of verl's registered policy losses and HALOs' trainer classes. The losses
themselves are pure functions in ``core/losses.py``; a method's ``step`` names the per-micro-batch step function
of the Ray Train worker (``STEPS`` in ``actors/trainer.py``).

Adding a method: one entry here (and its step function and loss), nothing else branches on its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Driver = Literal["offline", "remax"]


@dataclass(frozen=True)
class Method:
    """One training method.

    ``reads``: the rollout output file an online round trains on (None: the method samples its own data);
    ``data_kinds``: the training-file kinds it accepts (``core/train_data.py``), in order of preference;
    ``needs_reference``: trained against a frozen reference model (DPO's and KTO's log-ratios, ReMax's KL);
    ``step``: the worker's per-micro-batch step (None for ReMax, whose worker runs whole RL steps);
    ``driver``: ``offline`` (rollout, then Ray Train on a fixed dataset) or ``remax`` (on-policy: the training
    workers drive the generators themselves, ``app/rounds/remax.py``);
    ``kl_completions``: each example also carries a mismatched completion (KTO's estimate of the KL term);
    ``control_tokens``: adds Archangel's ``<|good|>`` / ``<|bad|>`` tokens to the tokenizer and embeddings;
    ``pairs_per_example``: sequences per example in a micro-batch (the plan's activation estimate)."""

    name: str
    reads: str | None
    data_kinds: tuple[str, ...]
    needs_reference: bool
    step: str | None
    driver: Driver = "offline"
    kl_completions: bool = False
    control_tokens: bool = False
    pairs_per_example: int = 1

    @property
    def on_policy(self) -> bool:
        return self.driver == "remax"


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("dpo", reads="pairs.parquet", data_kinds=("prefs",), needs_reference=True, step="dpo",
           pairs_per_example=2),
    Method("kto", reads="kto.parquet", data_kinds=("kto", "prefs"), needs_reference=True, step="kto",
           kl_completions=True, pairs_per_example=2),
    Method("sft", reads="pairs.parquet", data_kinds=("sft", "prefs", "kto"), needs_reference=False, step="sft"),
    Method("csft", reads="kto.parquet", data_kinds=("kto", "prefs"), needs_reference=False, step="sft",
           control_tokens=True),
    Method("remax", reads=None, data_kinds=(), needs_reference=True, step=None, driver="remax"),
)}

OFFLINE_METHODS = tuple(name for name, m in METHODS.items() if not m.on_policy)


def method(name: str) -> Method:
    """The registered method ``name``; a clear error for any other."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown training method {name!r} (known: {', '.join(METHODS)})") from None
