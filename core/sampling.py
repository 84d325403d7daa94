"""Sampling settings as plain data, and how generator output is flattened into table columns.

Kept apart from the vLLM actor so the seeding rule and the output layout are unit-tested without vLLM.

Seeding: with a run seed, each request gets its own seed derived from (run seed, prompt_id), so a prompt's
samples do not depend on which batch or which actor it landed in, and a resumed or re-sharded run draws
the same samples.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Sequence


def request_seed(run_seed: int, prompt_id: str) -> int:
    """A 31-bit seed for one prompt's request, stable across batching and processes."""
    digest = hashlib.sha256(f"{run_seed}:{prompt_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class SampleSpec:
    """What the generator is asked for, independent of the engine."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None

    def kwargs_for(self, prompt_id: str) -> dict[str, Any]:
        """Keyword arguments for ``vllm.SamplingParams`` for one prompt."""
        kwargs = dict(n=self.n, temperature=self.temperature, top_p=self.top_p,
                      max_tokens=self.max_tokens, logprobs=0)
        if self.seed is not None:
            kwargs["seed"] = request_seed(self.seed, prompt_id)
        return kwargs


@dataclass
class Sample:
    """One generated candidate, engine-independent."""

    text: str
    token_ids: Sequence[int]
    finish_reason: str
    token_logprobs: list[float]


def flatten_samples(samples: Sequence[Sample]) -> dict[str, list]:
    """One prompt's samples as list-valued columns (one entry per candidate)."""
    return {
        "candidates": [s.text for s in samples],
        "token_ids": [[int(t) for t in s.token_ids] for s in samples],
        "num_tokens": [len(s.token_ids) for s in samples],
        "finish_reasons": [s.finish_reason for s in samples],
        "token_logprobs": [list(map(float, s.token_logprobs)) for s in samples],
        "sum_logprob": [float(math.fsum(s.token_logprobs)) for s in samples],
    }
