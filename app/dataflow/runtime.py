"""Starting or joining Ray, and the one place where actor resources are decided.

On a laptop (no address), prefloop starts an embedded local cluster. Ray's CPU counts are logical: on a
2-core machine a generator, a scorer, training workers and a Serve replica cannot each hold a whole core at
once, so the local cluster advertises more logical CPUs than cores (at least ``MIN_LOCAL_CPUS``) and every
actor asks for what the recipe's ``resources`` section says. Nothing then waits forever for a CPU. Under
``ray job submit`` (``RAY_ADDRESS`` set) or with ``resources.address``, prefloop joins that cluster instead.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from prefloop.core.config import ResourcesConfig

log = logging.getLogger(__name__)

MIN_LOCAL_CPUS = 8
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job manager for a job's entrypoint
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_DATA_DISABLE_PROGRESS_BARS": "0"}
# A local cluster (one machine, no spot nodes) only: Ray Train's controller polls its workers every 2 s by default,
# so a short round would wait seconds for the controller to notice its finished workers; and the preemption
# watcher, an extra actor per round, watches for cloud nodes being reclaimed, which a laptop has none of.
# A value already in the environment wins.
LOCAL_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


class StageTimeout(TimeoutError):
    """A stage produced nothing for longer than its timeout."""


def init_ray(resources: ResourcesConfig) -> None:
    """Join the given or ambient cluster, or start a local one sized for this machine."""
    import ray

    from prefloop.app.watch import console

    if ray.is_initialized():
        return
    con = console.get()
    con.before_ray()
    runtime_env = {"env_vars": WORKER_ENV}
    address = resources.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining Ray cluster at %s", address)
        # Under `ray job submit`, Ray refuses an env var that the job's runtime env sets too: the job's wins.
        job_env = (json.loads(os.environ.get(JOB_CONFIG_ENV, "{}")).get("runtime_env") or {}).get("env_vars") or {}
        runtime_env = {"env_vars": {k: v for k, v in WORKER_ENV.items() if k not in job_env}}
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=con.log_to_driver)
        con.ray_started()
        return
    num_cpus = resources.local_num_cpus or max(MIN_LOCAL_CPUS, os.cpu_count() or 1)
    log.info("starting a local Ray cluster with %d logical CPUs", num_cpus)
    runtime_env["env_vars"] = {**WORKER_ENV, **{k: os.environ.get(k, v) for k, v in LOCAL_TRAIN_ENV.items()}}
    # With the dashboard (port 8265, or the next free one), whose URL the console's header prints.
    ray.init(num_cpus=num_cpus, runtime_env=runtime_env, log_to_driver=con.log_to_driver)
    con.ray_started()


def iterate_with_timeout(rows: Iterable[Any], timeout_s: float, stage: str) -> Iterator[Any]:
    """Yield from ``rows`` (consumed in a thread); raise StageTimeout if none arrives for ``timeout_s``.

    Ray Data's iterators block without a deadline; a stuck actor would hang the driver forever.
    """
    done = object()
    q: queue.Queue = queue.Queue(maxsize=256)

    def pump() -> None:
        try:
            for row in rows:
                q.put(row)
            q.put(done)
        except BaseException as err:  # handed to the consumer, which raises it
            q.put(err)

    threading.Thread(target=pump, daemon=True, name=f"{stage}-reader").start()
    last = time.monotonic()
    while True:
        try:
            item = q.get(timeout=timeout_s)
        except queue.Empty:
            raise StageTimeout(f"stage '{stage}': no result for {timeout_s:.0f} s since the last one "
                               f"({time.monotonic() - last:.0f} s); a generator or scorer is stuck") from None
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        last = time.monotonic()
        yield item


def wait_for(call: Callable[[], Any], timeout_s: float, what: str, hint: str = "") -> Any:
    """``call()`` in a daemon thread, waited for at most ``timeout_s``: its result, or its exception re-raised,
    or TimeoutError naming ``what`` (plus ``hint``, where to look) (the thread is left behind: the driver is
    about to fail the stage)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # handed to the waiting thread
            box["error"] = exc

    thread = threading.Thread(target=run, name=what, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"{what}: not finished after {timeout_s:.0f} s{hint}")
    if "error" in box:
        raise box["error"]
    return box["result"]
