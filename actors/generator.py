"""The vLLM generator: a class that Ray Data turns into an actor pool (``map_batches`` + ``ActorPoolStrategy``).

Each call takes a batch of prompts as token ids and returns N samples per prompt, with token counts,
finish reasons and the sampled tokens' log-probabilities. It is our own class around ``vllm.LLM`` rather
than ``ray.data.llm.build_processor``, because the latter keeps only ``outputs[0]`` and drops n > 1 samples.

The engine is built once per actor; ``reload_weights`` swaps a new model directory in place (no restart).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from prefloop.actors.common import object_column, timed
from prefloop.actors.model_cache import ModelRef, local_model, model_name
from prefloop.actors.vllm_engine import build_llm, reload_in_place, reloadable_in_place, shutdown_llm
from prefloop.core.model_dirs import check_model_dir
from prefloop.core.round_settings import EngineSettings
from prefloop.core.sampling import Sample, SampleSpec, flatten_samples

log = logging.getLogger(__name__)


class VLLMGenerator:
    """Samples N candidates per prompt with one ``vllm.LLM`` engine."""

    def __init__(self, model: str | ModelRef, spec: SampleSpec, engine: dict[str, Any]):
        self.engine = EngineSettings.from_dict(engine)
        self.local = local_model(model, "generator")  # this node's copy (actors/model_cache.py)
        self.llm = self._build(self.local, spec)
        self.spec = spec
        self.model = model_name(model)  # the model's name (its folder on the driver): what rows record

    def _build(self, local: str, spec: SampleSpec) -> Any:
        # one engine at a time in this actor (a rebuild shuts the old one down first): the engine core runs here
        return build_llm(local, self.engine, seed=spec.seed or 0, seeded_requests=spec.seed is not None,
                         in_process=True)

    def generate(self, prompt_ids: list[str], token_ids: list[list[int]]) -> list[list[Sample]]:
        """Sample ``spec.n`` candidates for each tokenised prompt."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in ids]) for ids in token_ids]
        params = [SamplingParams(**self.spec.kwargs_for(pid)) for pid in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for out in outputs:
            samples = []
            for c in out.outputs:
                logps = [entry[tok].logprob for tok, entry in zip(c.token_ids, c.logprobs or [])]
                samples.append(Sample(c.text, list(c.token_ids), c.finish_reason or "unknown", logps))
            result.append(samples)
        return result

    @timed("generate_s")
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        samples = self.generate(list(batch["prompt_id"]), list(batch["prompt_token_ids"]))
        columns: dict[str, list] = {}
        for per_prompt in samples:
            for key, value in flatten_samples(per_prompt).items():
                columns.setdefault(key, []).append(value)
        out = dict(batch)
        for key, values in columns.items():
            out[key] = object_column(values)
        out["sampled_from"] = np.full(len(samples), self.model, dtype=object)  # checked by the rollout
        return out

    def reload_weights(self, model: str | ModelRef) -> float:
        """Load new weights into the running engine; returns the seconds it took (the node-cache copy included).

        In place (no restart, a tied LM head re-tied: ``actors/vllm_reload.py``) when the configs match;
        otherwise (say cSFT grew the vocabulary) a new engine is built instead (slower, right).
        """
        started = time.perf_counter()
        local = local_model(model, "generator")
        check_model_dir(local, "new policy weights")
        if reloadable_in_place(self.local, local):
            reload_in_place(self.llm, local)
        else:
            log.warning("%s cannot take new weights in place (another shape or config): rebuilding the engine",
                        model_name(model))
            self.shutdown()
            self.llm = self._build(local, self.spec)
        self.model, self.local = model_name(model), local
        return time.perf_counter() - started

    def loaded_from(self) -> str:
        """The folder on this actor's node the engine's weights were read from."""
        return self.local

    def shutdown(self) -> None:
        """Stop the engine's background process now (it otherwise keeps a core busy until garbage collection)."""
        shutdown_llm(self.llm, f"the engine for {self.model}")
