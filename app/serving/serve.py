"""Serving the policy on Ray Serve with an OpenAI-compatible API, and switching it to each new round in place.

    served = start_serving(policy_dir, round_idx=None, pairrm_dir=..., port=8000, replicas=1)
    publish(round_model_dir, round_idx=r)         # after round r commits: replicas reload weights in place
    serve_run_dir(run_dir, round_idx=None)        # `prefloop serve RUN_DIR [--round R]`
    ask("a question"); stop_serving()             # one answer through a handle; delete the app

How the in-place switch works: the app is deployed with a fixed code version (a hash of its serving spec),
so a later deploy that changes only ``user_config`` ({"model_dir", "round"}) is a light update: Serve calls
``reconfigure`` on the running replicas instead of replacing them (a plain ``serve.run`` picks a random
version and would restart every replica, each paying vLLM's start-up). ``publish`` reads the spec back from a
replica, so it works from any driver, and then waits until every replica reports the new round.

Resources: each replica asks for ``SERVE_REPLICA_CPUS`` logical CPUs (a fraction: on a 2-core laptop the local
cluster has 8 logical CPUs, shared with generators, scorers and trainers; Serve's controller and proxy ask for
none). The base model has no round: its responses say ``prefloop_round: null`` and ``model: prefloop-base``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prefloop.actors.model_cache import shipping_store
from prefloop.app.dataflow.runtime import wait_for
from prefloop.core.judges import judge_kind
from prefloop.core.model_dirs import check_model_dir
from prefloop.core.round_settings import EngineSettings
from prefloop.core.serve_guard import api_key_digest, check_exposure

log = logging.getLogger(__name__)

SERVE_REPLICA_CPUS = 0.5
MAX_BODY_BYTES = 1_000_000  # a request body over this is refused (413)
MAX_MESSAGES = 256
START_TIMEOUT_S = 600.0   # a replica's vLLM start-up: seconds for a tiny model, minutes for a 7B model on a GPU
CALL_TIMEOUT_S = 60.0


@dataclass
class Served:
    """A running app: its name, base URL (``{url}/v1/chat/completions``) and a Serve handle."""

    name: str
    url: str
    handle: Any


# where to look when a Serve call does not return
SERVE_HINT = " (see `serve status`; replicas may be waiting for CPUs or failing to start)"


def _application(spec: dict[str, Any], model_dir: str, round_idx: int | None, step: int | None = None) -> Any:
    from ray import serve

    from prefloop.actors.serve import PolicyServer

    # Same settings -> same version -> a user_config change reconfigures the replicas in place. The model the
    # replicas were first built on is left out, so a config naming another round is a light update too.
    fixed = {k: v for k, v in spec.items() if k not in ("model_dir", "round", "step", "model_store")}
    version = hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]
    deployment = serve.deployment(PolicyServer, name="PolicyServer")
    options: dict[str, Any] = {"num_cpus": spec["replica_cpus"], "num_gpus": spec.get("replica_gpus", 0.0),
                               "resources": dict(spec.get("replica_resources") or {})}
    if spec.get("runtime_env") is not None:
        # Pinned at the first deploy: otherwise Serve gives the replicas the runtime env of whichever driver
        # deploys, and a publish from another driver (another job, another env) restarts every replica.
        options["runtime_env"] = spec["runtime_env"]
    # Replicas on other nodes copy the model from this node through Ray (actors/model_cache.py): the store's
    # name travels with the model, as user_config carries only JSON.
    store = shipping_store(model_dir)
    return deployment.options(
        num_replicas=spec["replicas"], ray_actor_options=options, max_ongoing_requests=32,
        user_config={"model_dir": model_dir, "round": round_idx, "step": step,
                     **({"model_store": store} if store else {})},
        version=version, _internal=True,
    ).bind({**spec, "model_store": shipping_store(spec["model_dir"])})


def start_serving(policy_dir: str, round_idx: int | None = None, *, pairrm_dir: str | None = None,
                  chat_template: str = "tokenizer", port: int = 8000, replicas: int = 1, name: str = "prefloop",
                  host: str = "127.0.0.1", engine: EngineSettings = EngineSettings(), max_samples: int = 16,
                  default_max_tokens: int = 64, replica_cpus: float = SERVE_REPLICA_CPUS,
                  replica_gpus: float = 0.0, replica_resources: dict[str, float] | None = None,
                  request_timeout_s: float = 300.0, api_key: str | None = None,
                  max_body_bytes: int = MAX_BODY_BYTES, max_messages: int = MAX_MESSAGES,
                  timeout_s: float = START_TIMEOUT_S, insecure: bool = False) -> Served:
    """Deploy (or redeploy) the app ``name`` serving ``policy_dir``; returns once every replica is up.

    ``api_key`` (default ``$PREFLOOP_API_KEY``): when set, ``/v1/*`` requires ``Authorization: Bearer <key>``
    (401 otherwise); replicas keep only its SHA-256. An empty key is an error, and so is a ``host`` other than
    loopback without a key, unless ``insecure``. ``max_body_bytes`` (413 beyond) and ``max_messages`` bound
    a request."""
    import ray
    from ray import serve

    from prefloop.app.dataflow.runtime import init_ray
    from prefloop.core.config import ResourcesConfig

    digest = api_key_digest(api_key)
    check_exposure(host, digest, insecure)
    init_ray(ResourcesConfig())  # a no-op when Ray is already up
    spec = serving_spec(policy_dir, round_idx, pairrm_dir=pairrm_dir, name=name, chat_template=chat_template,
                        engine=engine.as_dict(), max_samples=max_samples, default_max_tokens=default_max_tokens,
                        replicas=replicas, replica_cpus=replica_cpus, replica_gpus=replica_gpus,
                        replica_resources=replica_resources or {},
                        request_timeout_s=request_timeout_s, max_body_bytes=max_body_bytes,
                        max_messages=max_messages, api_key_sha256=digest,
                        runtime_env=json.loads(json.dumps(dict(ray.get_runtime_context().runtime_env or {}))))
    policy_dir = spec["model_dir"]
    # One HTTP proxy, on the head: the printed URL is the one to use, and nodes that share a host (tests) do not
    # fight over the port. Ignored when Serve already runs (it keeps its port).
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
    started = time.perf_counter()
    handle = wait_for(lambda: serve.run(_application(spec, policy_dir, round_idx), name=name, route_prefix="/"),
                      timeout_s, f"starting Serve app {name!r}", SERVE_HINT)
    url = _http_url(host, port)
    log.info("serving %s (round %s) as %r at %s in %.1f s", policy_dir, round_idx, name, url,
             time.perf_counter() - started)
    return Served(name=name, url=url, handle=handle)


def serving_spec(policy_dir: str, round_idx: int | None, pairrm_dir: str | None, **settings: Any) -> dict[str, Any]:
    """The replicas' settings (checked paths made absolute); its hash is the deployment's code version."""
    check_model_dir(policy_dir, "policy to serve")
    if pairrm_dir:
        from prefloop.core.model_dirs import check_ranker_dir

        check_ranker_dir(pairrm_dir)
        pairrm_dir = str(Path(pairrm_dir).resolve())
    model_dir = str(Path(policy_dir).resolve())
    return dict(model_dir=model_dir, round=round_idx, pairrm_dir=pairrm_dir, **settings)


def build_app(args: dict[str, Any]) -> Any:
    """Serve config builder (``import_path: prefloop.app.serving.serve:build_app``, e.g. KubeRay's RayService).

    ``args``: ``run_dir`` (required), ``round`` (default: the latest committed), ``replicas``, ``replica_cpus``,
    ``replica_gpus`` (default: the recipe's generator GPUs), ``max_body_bytes``, ``max_messages``, ``insecure``.
    The API key comes from ``$PREFLOOP_API_KEY`` where the app is built (a Secret in
    ``cluster/kuberay/rayservice.yaml``); a RayService binds all interfaces, so without a key the build refuses
    unless ``insecure: true``.
    The deployment's version does not depend on the
    model, so a config that changes only the deployment's ``user_config`` (``model_dir``, ``round``) swaps
    weights in place, as ``publish`` does.
    """
    from prefloop.app.storage.rundir import RECIPE_FILE, RunDir
    from prefloop.core.config import load_recipe

    known = {"run_dir", "round", "replicas", "replica_cpus", "replica_gpus", "max_body_bytes", "max_messages",
             "insecure"}
    unknown = set(args) - known
    if "run_dir" not in args or unknown:
        raise ValueError(f"build_app args need run_dir and take {sorted(known - {'run_dir'})}; got {sorted(args)}")
    digest = api_key_digest(None)
    check_exposure("0.0.0.0", digest, bool(args.get("insecure", False)))
    model_dir, round_idx = resolve_served_model(args["run_dir"], args.get("round"))
    recipe = load_recipe(RunDir(args["run_dir"]).root / RECIPE_FILE)
    defaults = recipe_defaults(recipe)
    settings = {**defaults, "engine": defaults["engine"].as_dict(), "name": "prefloop", "replicas": int(args.get("replicas", 1)),
                "replica_cpus": float(args.get("replica_cpus", SERVE_REPLICA_CPUS)),
                "max_samples": 16, "default_max_tokens": 64, "request_timeout_s": 300.0,
                "max_body_bytes": int(args.get("max_body_bytes", MAX_BODY_BYTES)),
                "max_messages": int(args.get("max_messages", MAX_MESSAGES)), "api_key_sha256": digest}
    settings["replica_gpus"] = float(args.get("replica_gpus", settings["replica_gpus"]))
    pairrm = settings.pop("pairrm_dir")
    return _application(serving_spec(model_dir, round_idx, pairrm, **settings), model_dir, round_idx)


def recipe_defaults(recipe: Any) -> dict[str, Any]:
    """Serving settings a run's recipe implies: its chat template, engine settings, ranker and GPUs."""
    return dict(chat_template=recipe.policy.chat_template, engine=EngineSettings.of(recipe),
                pairrm_dir=recipe.scorer.model if judge_kind(recipe.scorer.kind).pairwise else None,
                replica_gpus=recipe.resources.generator_gpus, replica_resources=recipe.resources.custom("serve"))


def _http_url(host: str, port: int) -> str:
    """The proxies' real address: Serve keeps the HTTP options it was first started with."""
    try:
        from ray.serve.context import _get_global_client  # private, so only trusted when it answers

        config = _get_global_client().http_config
        host, port = config.host, config.port
    except Exception:
        log.debug("could not read Serve's HTTP options; assuming %s:%d", host, port, exc_info=True)
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def replica_states(name: str = "prefloop", want: int | None = None, timeout_s: float = CALL_TIMEOUT_S,
                   until: Callable[[dict], bool] = lambda s: True) -> dict[str, dict]:
    """Ask the app's replicas for their state until ``want`` distinct replicas satisfy ``until``.

    A handle call reaches one replica (chosen by Serve), so this polls until it has heard from enough of them.
    """
    from ray import serve

    handle = serve.get_app_handle(name)
    want = want or handle.serving_spec.remote().result(timeout_s=timeout_s)["replicas"]
    deadline, seen = time.monotonic() + timeout_s, {}
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"Serve app {name!r}: {len(seen)}/{want} replicas reached the wanted state within "
                               f"{timeout_s:.0f} s; seen: {seen}")
        state = handle.state.remote().result(timeout_s=left)
        if until(state):
            seen[state["replica"]] = state
            if len(seen) >= want:
                return seen
        else:
            seen.pop(state["replica"], None)
            time.sleep(0.05)


def publish(model_dir: str, round_idx: int | None, name: str = "prefloop",
            timeout_s: float = START_TIMEOUT_S, step: int | None = None) -> dict[str, Any]:
    """Switch the running app ``name`` to ``model_dir`` (round ``round_idx``) in place, on every replica.

    ``step``: the model is a ReMax step checkpoint of a round not yet committed; it is served as
    ``prefloop-round-R-step-K``, never as the round itself (``checkpoint_step`` reads it from the folder).

    Returns ``{"round", "model_dir", "publish_s" (deploy to all replicas switched), "swap_s" (the longest time
    a replica held requests back while its weights changed), "replicas"}``.
    """
    from ray import serve

    check_model_dir(model_dir, f"round {round_idx} model")
    model_dir = str(Path(model_dir).resolve())
    started = time.perf_counter()
    spec = serve.get_app_handle(name).serving_spec.remote().result(timeout_s=CALL_TIMEOUT_S)
    wait_for(lambda: serve.run(_application(spec, model_dir, round_idx, step), name=name, route_prefix="/"),
             timeout_s, f"publishing round {round_idx} to Serve app {name!r}", SERVE_HINT)
    states = replica_states(name, spec["replicas"], timeout_s,
                            until=lambda s: (s["round"], s.get("step"), s["model_dir"]) == (round_idx, step, model_dir))
    swaps = [s["swaps"][-1] for s in states.values() if s["swaps"]]
    result = {"round": round_idx, "step": step, "model_dir": model_dir, "publish_s": time.perf_counter() - started,
              "swap_s": max((s["swap_s"] for s in swaps), default=0.0),
              "in_place": all(s["in_place"] for s in swaps), "replicas": len(states)}
    log.info("published round %s to %r: %s", round_idx, name, result)
    return result


def checkpoint_step(model_dir: str) -> int | None:
    """The step of a ReMax step checkpoint folder (``.../step_K``, ``actors/remax_worker.py``'s published
    folders), None for any other model folder (a committed round's ``model``)."""
    name = Path(model_dir).name
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else None


def ask(prompt: str, name: str = "prefloop", max_tokens: int = 64, temperature: float = 0.0,
        timeout_s: float = CALL_TIMEOUT_S) -> str:
    """One user question to the running app through a Serve handle (no HTTP); returns the answer text."""
    from ray import serve

    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": temperature}
    out = serve.get_app_handle(name).complete.remote(body).result(timeout_s=timeout_s)
    return out["choices"][0]["message"]["content"]


def is_serving(name: str = "prefloop") -> bool:
    """Whether the app ``name`` runs on the Ray cluster this driver is connected to (False when Ray or Serve is
    not up)."""
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    if not ray.is_initialized():
        return False
    try:
        return name in serve.status().applications
    except RayServeException:  # no Serve controller on this cluster
        return False


def stop_serving(name: str = "prefloop", timeout_s: float = CALL_TIMEOUT_S) -> None:
    """Delete the app ``name`` (Serve itself keeps running for any other app)."""
    from ray import serve

    wait_for(lambda: serve.delete(name), timeout_s, f"deleting Serve app {name!r}", SERVE_HINT)


def resolve_served_model(run_dir: str | Path, round_idx: int | None = None) -> tuple[str, int | None]:
    """(model dir, round) to serve from a run: round ``round_idx``'s committed model, else the latest
    committed round's, else the base model of the run's recipe (round None)."""
    from prefloop.app.storage.rundir import MODEL, RECIPE_FILE, RunDir
    from prefloop.core.config import load_recipe

    run = RunDir(run_dir)
    run.pull()  # a reader: downloads, never uploads (the driver, under the run's lock, does that)
    committed = sorted(int(p.name.split("_", 1)[1]) for p in run.root.glob("round_*")
                       if p.name.split("_", 1)[1].isdigit() and run.is_committed(int(p.name.split("_", 1)[1]),
                                                                                 MODEL))
    if round_idx is not None:
        if round_idx not in committed:
            raise FileNotFoundError(f"{run.stage_dir(round_idx, MODEL)}: round {round_idx} has no committed "
                                    f"model (committed rounds: {committed or 'none'})")
        return str(run.stage_dir(round_idx, MODEL)), round_idx
    if committed:
        return str(run.stage_dir(committed[-1], MODEL)), committed[-1]
    recipe_path = run.root / RECIPE_FILE
    if not recipe_path.is_file():
        raise FileNotFoundError(f"{run.root}: no committed round and no recipe.yaml: not a prefloop run directory")
    return load_recipe(recipe_path).policy.model, None


def serve_run_dir(run_dir: str | Path, round_idx: int | None = None, **kwargs: Any) -> Served:
    """Serve one round of a run (see ``resolve_served_model``) with the run's chat template, ranker and sizes."""
    from prefloop.app.dataflow.runtime import init_ray
    from prefloop.app.storage.rundir import RECIPE_FILE, RunDir
    from prefloop.core.config import load_recipe

    model_dir, round_idx = resolve_served_model(run_dir, round_idx)
    recipe_path = RunDir(run_dir).root / RECIPE_FILE  # the local copy when run_dir is a URI
    if recipe_path.is_file():
        recipe = load_recipe(recipe_path)
        init_ray(recipe.resources)
        kwargs = {**recipe_defaults(recipe), **kwargs}
    return start_serving(model_dir, round_idx, **kwargs)


def cmd_serve(args: argparse.Namespace) -> int:
    """``prefloop serve RUN_DIR [--round R] [--port P] [--host H] [--replicas K] [--duration S]``."""
    from ray import serve

    served = serve_run_dir(args.run_dir, args.round, port=args.port, host=args.host, replicas=args.replicas,
                           api_key=args.api_key, max_body_bytes=args.max_body_bytes, max_messages=args.max_messages,
                           insecure=args.insecure)
    state = next(iter(replica_states(served.name, want=1).values()))
    print(f"serving {state['model_id']} ({state['model_dir']}) at {served.url}/v1/chat/completions"
          f"{' (API key required)' if api_key_digest(args.api_key) else ''}", flush=True)
    try:
        if args.duration is not None:
            time.sleep(args.duration)
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0
