"""``prefloop plan RECIPE [--cluster FILE]``: every actor's GPU memory against the cluster's GPU node types, and
the GPUs each phase of a round holds at once against the GPUs the cluster scales to (``core/gpu_count.py``).

The figures come from ``core/plan.py`` (config.json alone: no weights, no GPU); the node types from
``core/cluster_gpus.py``. A model's ``config.json`` is read from its directory when that exists (on the cluster)
and otherwise from ``recipes/model_configs/<last path component>/`` (the real models' published configs shipped
with prefloop), so the plan runs on a laptop. ``prefloop run --cluster FILE`` calls ``check_plan`` first and
refuses a recipe with an actor that fits none of the node types that could host it, or with a phase that
needs more GPUs at once than the cluster has; an actor that fits only
some of them is a warning (Ray may place it on any of them unless the cluster keeps it off the small one). A
recipe that asks for no GPU (the ``--tiny`` and demo recipes) has nothing to check.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from prefloop.core import plan as P
from prefloop.core.cluster_gpus import GpuNode, gpu_node_cap, gpu_nodes
from prefloop.core.gpu_count import PHASES, Holder, PhaseNeed, count_shortfalls, phase_needs, scalable_gpus
from prefloop.core.config import Recipe, RecipeError, response_tokens
from prefloop.core.judges import judge_kind
from prefloop.core.methods import method

log = logging.getLogger(__name__)

MODEL_CONFIGS = Path(str(files("prefloop") / "recipes" / "model_configs"))


def _config_dir(model_dir: str, key: str, configs: Path) -> Path:
    own = Path(model_dir)
    if (own / "config.json").is_file():
        return own
    shipped = configs / own.name
    if (shipped / "config.json").is_file():
        return shipped
    raise RecipeError(f"{key}: no config.json in {own} nor in {shipped} (the plan needs the model's config.json)")


def load_shape(model_dir: str, key: str, configs: Path = MODEL_CONFIGS) -> P.ModelShape:
    d = _config_dir(model_dir, key, configs)
    config = P.read_config(d / "config.json")
    if config.get("ranker_type") == "pairranker":  # llm-blender ranker: its backbone is named by model_name
        name = str(config.get("model_name", ""))
        candidates = [Path(name), d / Path(name).name, configs / Path(name).name]
        backbone = next((c for c in candidates if (c / "config.json").is_file()), None)
        if backbone is None:
            raise RecipeError(f"{key}: PairRM backbone {name!r}: no config.json in {[str(c) for c in candidates]}")
        body = P.model_shape(P.read_config(backbone / "config.json"), Path(name).name, backbone, str(backbone))
        return P.pairrm_shape(config, body, Path(model_dir).name)
    return P.model_shape(config, Path(model_dir).name, d, str(d))


def _dtype_bytes(recipe: Recipe, config_dtype: str | None = None) -> int:
    dtype = recipe.policy.dtype
    if dtype == "auto":
        dtype = config_dtype if config_dtype in P.DTYPE_BYTES else "bfloat16"
    return P.DTYPE_BYTES[dtype]


def default_cluster() -> str:
    """``ray-cluster.yaml`` of the checkout prefloop runs from (not of the current directory)."""
    path = Path(__file__).resolve().parents[2] / "ray-cluster.yaml"
    if not path.is_file():
        raise RecipeError("no cluster file: pass --cluster FILE (a cluster launcher or KubeRay file) or set "
                          "$PREFLOOP_CLUSTER")
    return str(path)


def read_cluster(path: str, what: str = "--cluster") -> list[GpuNode]:
    """The cluster file's GPU node types; a RecipeError naming ``what`` (the flag or variable) when it is
    missing, unreadable or holds no GPU node type."""
    if not Path(path).is_file():
        raise RecipeError(f"{what} {path}: no such file (a cluster launcher or KubeRay file, e.g. ray-cluster.yaml)")
    try:
        return gpu_nodes(path)
    except ValueError as err:
        raise RecipeError(f"{what} {err}".replace("\n", " ")) from None


def uses_gpu(recipe: Recipe) -> bool:
    res = recipe.resources
    return res.generator_gpus > 0 or res.scorer_gpus > 0 or bool(recipe.train and recipe.train.use_gpu)


def _train_shape(recipe: Recipe) -> P.TrainShape:
    t = recipe.train
    methods = [method(m) for m in recipe.loop.methods or [t.method]]
    if method(t.method).on_policy:
        rows = math.ceil(t.remax.prompts_per_step / t.num_workers)
    else:  # DPO: chosen + rejected; KTO: + its KL completion
        rows = t.micro_batch_size * max(m.pairs_per_example for m in methods)
    lora = t.lora
    return P.TrainShape(t.strategy, t.num_workers, rows, t.max_prompt_len + t.max_response_len,
                        lora.r if lora else None, tuple(lora.target_modules) if lora else (),
                        t.gradient_checkpointing)


def plan_needs(recipe: Recipe, configs: Path = MODEL_CONFIGS) -> list[tuple[P.Need, int]]:
    """(need per GPU, how many such actors) for every actor kind that holds a GPU."""
    res, ro, out = recipe.resources, recipe.rollout, []
    policy = load_shape(recipe.policy.model, "policy.model", configs)
    dbytes = _dtype_bytes(recipe)
    if res.generator_gpus > 0:
        gen = P.generator_need(policy, dbytes, ro.max_model_len, ro.kv_cache_gb, ro.tensor_parallel_size)
        gen.gpus = res.generator_gpus
        out.append((gen, ro.num_generators))
    sc = recipe.scorer
    scorer = None
    if judge_kind(sc.kind).gpu:
        scorer = load_shape(sc.model, "scorer.model", configs)
    if scorer is not None and res.scorer_gpus > 0:
        if scorer.kind == "pairrm":
            ranker = P.read_config(_config_dir(sc.model, "scorer.model", configs) / "config.json")
            seq = int(ranker.get("source_maxlength", 128)) + 2 * int(ranker.get("candidate_maxlength", 128))
        else:
            seq = recipe.data.max_prompt_tokens + response_tokens(recipe)
        need = P.scorer_need(scorer, 2, sc.batch_size, seq)  # fp16/bf16 on a GPU (actors/devices.py)
        need.gpus = res.scorer_gpus
        out.append((need, sc.num_scorers))
    t = recipe.train
    if t is not None and t.use_gpu:
        shape = _train_shape(recipe)
        worker = P.train_need(policy, dbytes, shape)
        m = method(t.method)
        live = m.on_policy or (t.reference_mode == "live" and m.needs_reference)
        if live:  # the reference lives in every worker, sharded like the trainer under fsdp
            ref = P.reference_need(policy, dbytes, shape)
            worker.parts["reference"] = ref.total
        out.append((worker, t.num_workers))
        if not live and any(method(name).needs_reference for name in recipe.loop.methods or [t.method]):
            one = P.TrainShape("ddp", 1, shape.micro_batch, shape.seq_len)
            out.append((P.reference_need(policy, dbytes, one, actor="reference pass"), 1))
    if recipe.loop.serve and res.generator_gpus > 0:
        replica = P.generator_need(policy, dbytes, ro.max_model_len, ro.kv_cache_gb, ro.tensor_parallel_size,
                                   actor="serve replica")
        replica.gpus = res.generator_gpus
        out.append((replica, 1))
        if scorer is not None and scorer.kind == "pairrm":  # the re-ranker beside vLLM, one prompt per forward
            ranker = P.read_config(_config_dir(sc.model, "scorer.model", configs) / "config.json")
            seq = int(ranker.get("source_maxlength", 128)) + 2 * int(ranker.get("candidate_maxlength", 128))
            rr = P.scorer_need(scorer, 2, 1, seq, actor="serve re-ranker")
            rr.parts.pop("runtime")  # same process as the replica's vLLM
            rr.gpu_share = 1.0 - P.VLLM_GPU_SHARE if not ro.kv_cache_gb else 1.0
            rr.note = "in the 10 % vLLM leaves" if not ro.kv_cache_gb else ""
            out.append((rr, 1))
    return out


def gpu_holders(recipe: Recipe) -> list[Holder]:
    """Every kind of actor that holds GPUs in the round loop, with the phases it is alive in
    (``core/gpu_count.py``): the generators and the Serve replica for the whole run; a scorer configuration
    from its first use on (the rollout; ReMax's training; else the eval, so the training of later rounds);
    the reference pass's actors and the training workers in their own phase."""
    from prefloop.app.judging.eval_judges import judge_independent

    res, t, later = recipe.resources, recipe.train, recipe.loop.rounds > 1
    on_policy = t is not None and method(t.method).on_policy
    scored_from = ("rollout" if (t is None or t.data is None) and not on_policy
                   else "training" if on_policy else "eval")
    out = []
    if res.generator_gpus > 0:
        out.append(Holder("generators", recipe.rollout.num_generators, res.generator_gpus, PHASES,
                          ("rollout.num_generators", "resources.generator_gpus")))
        if recipe.loop.serve:  # one replica, on the generators' GPU setting (its re-ranker in the same process)
            out.append(Holder("serve replica", 1, res.generator_gpus, PHASES,
                              ("loop.serve", "resources.generator_gpus")))
    if res.scorer_gpus > 0 and judge_kind(recipe.scorer.kind).gpu:
        out.append(Holder("scorers", recipe.scorer.num_scorers, res.scorer_gpus, _alive_from(scored_from, later),
                          ("scorer.num_scorers", "resources.scorer_gpus")))
    judge = recipe.eval.judge
    if res.scorer_gpus > 0 and judge is not None and judge_kind(judge.kind).gpu and judge_independent(recipe):
        out.append(Holder("eval judge", 1, res.scorer_gpus, _alive_from("eval", later),
                          ("eval.judge", "resources.scorer_gpus")))
    if t is not None and t.use_gpu:
        keys = ("train.num_workers", "train.use_gpu")
        out.append(Holder("training workers", t.num_workers, 1, ("training",), keys))
        m = method(t.method)
        live = on_policy or (t.reference_mode == "live" and m.needs_reference)
        if not live and any(method(name).needs_reference for name in recipe.loop.methods or [t.method]):
            out.append(Holder("reference pass", t.num_workers, 1, ("reference pass",), keys))
    return out


def _alive_from(first: str, later_rounds: bool) -> tuple[str, ...]:
    """The phases an actor kept from ``first`` on is alive in: from there to the round's end, and in every
    phase when later rounds follow."""
    return PHASES if later_rounds else PHASES[PHASES.index(first):]


# What a one-round command starts (no Serve; the rollout's own pools; ReMax's training samples and scores)
ONE_ROUND = {"rollout": (("rollout",), {"generators", "scorers"}),
             "train": (("reference pass", "training"), {"training workers", "reference pass"})}


def command_holders(recipe: Recipe, command: str = "run") -> list[Holder]:
    """``gpu_holders`` of the round loop (``run``), or of a one-round command: its actors in its phases."""
    holders = gpu_holders(recipe)
    if command not in ONE_ROUND:
        return holders
    phases, actors = ONE_ROUND[command]
    if command == "train" and recipe.train is not None and method(recipe.train.method).on_policy:
        actors = actors | {"generators", "scorers"}
    return [dataclasses.replace(h, phases=phases if h.actor in {"generators", "scorers"} else h.phases)
            for h in holders if h.actor in actors]


def count_check(recipe: Recipe, cluster: str, command: str = "run") -> tuple[list[PhaseNeed], int, list[str]]:
    """(GPUs per phase, GPUs the cluster scales to, one error per phase that does not fit), for ``command``."""
    nodes = gpu_nodes(cluster)
    capacity = scalable_gpus([(n.gpus, n.max_nodes) for n in nodes], gpu_node_cap(cluster))
    needs = phase_needs(command_holders(recipe, command))
    return needs, capacity, count_shortfalls(needs, capacity, cluster)


def format_counts(needs: list[PhaseNeed], capacity: int, nodes: list[GpuNode]) -> str:
    scale = ", ".join(f"{n.name} up to {n.max_nodes} x {n.gpus}" for n in nodes)
    lines = [f"GPUs at once per phase of a round (the cluster scales to {capacity}: {scale})"]
    for need in needs:
        mark = "ok" if need.gpus <= capacity else "DOES NOT FIT"
        lines.append(f"  {need.phase:<15} {need.gpus:>5g}  {mark:<12} "
                     + ", ".join(f"{h.actor} {h.count} x {h.gpus:g}" for h in need.holders))
    return "\n".join(lines)


@dataclass
class Verdict:
    actor: str
    node: GpuNode
    need: float
    budget: float

    @property
    def fits(self) -> bool:
        return self.need <= self.budget


def verdicts(needs: list[tuple[P.Need, int]], nodes: list[GpuNode]) -> list[Verdict]:
    """Each actor against every node type that can host it (enough GPUs per node)."""
    out = []
    for need, _ in needs:
        for node in nodes:
            if node.gpus >= math.ceil(need.gpus):
                out.append(Verdict(need.actor, node, need.total, node.gpu_bytes * need.gpu_share))
    return out


def format_plan(recipe: Recipe, needs: list[tuple[P.Need, int]], nodes: list[GpuNode], cluster: str) -> str:
    lines = [f"plan for {recipe.name} on {cluster} (GB = 1e9 bytes; GPU memory per node type: "
             + ", ".join(f"{n.name} {n.instance} {n.gpus}x {n.gpu_model} {P.fmt_gb(n.gpu_bytes)}" for n in nodes)
             + ")", ""]
    head = f"{'actor':<16} {'n':>3} {'model':<26} {'need GB':>8}  " + "  ".join(f"{n.name:>16}" for n in nodes)
    lines += [head, "-" * len(head)]
    vs = verdicts(needs, nodes)
    for need, count in needs:
        cells = []
        for node in nodes:
            v = next((v for v in vs if v.actor == need.actor and v.node is node), None)
            if v is None:
                cells.append(f"{'-':>16}")
            else:
                gap = (v.budget - v.need) / P.GB
                cells.append(f"{('ok +' if v.fits else 'SHORT ') + f'{abs(gap):.1f}':>16}")
        lines.append(f"{need.actor:<16} {count:>3} {need.model[:26]:<26} {P.fmt_gb(need.total):>8}  "
                     + "  ".join(cells))
        parts = ", ".join(f"{k} {P.fmt_gb(v)}" for k, v in need.parts.items())
        share = f"; within {need.gpu_share:.0%} of the GPU" if need.gpu_share < 1 else ""
        lines.append(f"{'':<16}     {parts}{share}" + (f"  [{need.note}]" if need.note else ""))
    return "\n".join(lines)


def _sentence(v: Verdict) -> str:
    return (f"{v.actor} ({v.node.name}, {v.node.instance}, {v.node.gpu_model}): needs {P.fmt_gb(v.need)} GB, "
            f"has {P.fmt_gb(v.budget)} GB: short by {P.fmt_gb(v.need - v.budget)} GB")


def shortfalls(recipe: Recipe, cluster: str, configs: Path = MODEL_CONFIGS,
               command: str = "run") -> tuple[list[str], list[str]]:
    """(errors, risks): an actor that fits no node type able to host it is an error; one that fits some but not
    all is a risk (Ray may place it on the small one unless the cluster keeps it off), both naming the actor,
    the node type and the shortfall. A phase of the round that holds more GPUs at once than the cluster scales
    to is an error too, naming the phase, its actors and the recipe keys that set their counts."""
    vs = verdicts(plan_needs(recipe, configs), gpu_nodes(cluster))
    errors, risks = [], []
    for actor in dict.fromkeys(v.actor for v in vs):
        mine = [v for v in vs if v.actor == actor]
        short = [_sentence(v) for v in mine if not v.fits]
        (errors if len(short) == len(mine) else risks).extend(short)
    return errors + count_check(recipe, cluster, command)[2], risks


def check_plan(recipe: Recipe, cluster: str | None, command: str = "run") -> None:
    """``prefloop run``'s guard (and ``rollout`` / ``train``'s, counting what that command starts): a RecipeError
    naming each actor that fits no node type, its node types and the shortfall, and each phase with more GPUs
    at once than the cluster has; risks (fits only some node types) are logged as warnings."""
    if cluster is None or not uses_gpu(recipe):
        log.info("plan check skipped: %s", "no --cluster file" if cluster is None else "the recipe asks for no GPU")
        return
    errors, risks = shortfalls(recipe, cluster, command=command)
    for risk in risks:
        log.warning("plan: %s (fits another node type: keep it there)", risk)
    if errors:
        raise RecipeError(f"{recipe.name}: the plan does not fit {cluster} (see `prefloop plan`):\n  "
                          + "\n  ".join(errors))
