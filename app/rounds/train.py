"""The training stage: one round's data -> Ray Train workers -> ``RUN_DIR/round_R/model/`` (a plain HF directory).

Reads top to bottom:
1. the model this round starts from (the previous round's model, else ``policy.model``) and the reference
   (``train.reference``: that same model, or always the base);
2. the data: this round's rollout output (``pairs.parquet`` for DPO/SFT, ``kto.parquet`` for KTO/cSFT) or
   ``train.data``; every row accepted or rejected with a reason (``core.train_data``), prompts rendered in
   the policy's chat template, KTO's mismatched pairs fixed, a seeded shuffle;
3. conditional SFT: ``<|good|>``/``<|bad|>`` added to the tokenizer and the embeddings (once, on the driver);
4. the reference pass (``precomputed``): a Ray Data actor pool writes reference log-probs into the rows, so no
   worker holds a reference model while training;
5. ``TorchTrainer`` on the Ray Data shards, with ``FailureConfig`` retries from the last checkpoint;
6. the final checkpoint's model (LoRA merged) is committed atomically as the ``model`` stage, with a manifest,
   the rejected rows and the per-step metrics, which also go to ``RUN_DIR/metrics.jsonl``.

Ray Train's checkpoints live in ``round_R/train/`` while the round runs and are removed once it is committed.
On a multi-node cluster ``run_dir`` must be on storage every node sees (NFS, a mounted bucket).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from prefloop.actors.model_cache import ship
from prefloop.app.dataflow.runtime import init_ray, iterate_with_timeout, wait_for
from prefloop.app.rounds.model_stage import commit_model
from prefloop.app.rounds.round import Round
from prefloop.app.storage.rundir import MODEL, ROLLOUT, TRAIN_WORK
from prefloop.core.methods import method
from prefloop.core.model_dirs import check_model_dir
from prefloop.core.partition import round_path
from prefloop.core.templates import render_prompt
from prefloop.core.train_config import TrainConfig
from prefloop.core.train_data import (
    CONTROL_TOKENS,
    TrainDataError,
    TrainRows,
    add_kl_completions,
    add_prompt_text,
    read_train_rows,
    shuffled,
    to_examples,
)
from prefloop.core.worker_config import TrainWorkerConfig

log = logging.getLogger(__name__)


def load_rows(rnd: Round) -> tuple[TrainRows, str]:
    """The round's training rows (validated) and where they came from: ``train.data`` (its partition for this
    round), else the file of this round's rollout that the method reads."""
    cfg = rnd.recipe.train
    if cfg.data:
        source = round_path(cfg.data, rnd.index, rnd.recipe.data.round_offset)  # per-iteration partitions, e.g. Snorkel's
        return read_train_rows(source), source
    if not rnd.is_committed(ROLLOUT):
        raise TrainDataError(f"round {rnd.index} has no committed rollout ({rnd.stage_dir(ROLLOUT)}): "
                             "run `prefloop rollout` first, or set train.data")
    source = str(rnd.stage_dir(ROLLOUT) / rnd.method.reads)
    return read_train_rows(source), source


def prepare_examples(rows: TrainRows, cfg: TrainConfig, tokenizer: Any, style: str, seed: int) -> list[dict]:
    """Method examples with rendered ``prompt_text``; flat string/bool columns only (what Ray Data carries)."""
    examples = to_examples(rows.accepted, rows.kind, cfg.method)
    add_prompt_text(examples, cfg.method, lambda messages: render_prompt(messages, style, tokenizer))
    if method(cfg.method).kl_completions:
        add_kl_completions(examples, seed)
    for ex in examples:
        del ex["messages"]
    examples = shuffled(examples, seed)
    for i, ex in enumerate(examples):  # the id the workers order by (actors/trainer.py) and record per step
        ex["example_id"] = i
    return examples


def add_control_tokens(model_dir: str, out: Path) -> str:
    """A copy of the model with <|good|>/<|bad|> in tokenizer and embeddings; the model itself if it has them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    missing = [t for t in CONTROL_TOKENS if t not in tokenizer.get_vocab()]
    if not missing:
        return model_dir
    tokenizer.add_tokens(missing, special_tokens=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    log.info("added control tokens %s to the model (vocabulary %d)", missing, len(tokenizer))
    return str(out)


def reference_pass(examples: list[dict], ref_dir: Any, tokenizer_dir: Any, cfg: TrainConfig, timeout_s: float,
                   dtype: str = "float32", placement: dict[str, float] | None = None) -> list[dict]:
    """Reference log-probs of every example, computed once, by a Ray Data actor pool (no grad)."""
    import ray

    from prefloop.actors.train_model import ReferenceLogps

    ds = ray.data.from_items(examples)
    ds = ds.map_batches(ReferenceLogps, fn_constructor_args=(ref_dir, tokenizer_dir, cfg.model_dump(), dtype),
                        batch_size=cfg.micro_batch_size * 4, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=cfg.num_workers),
                        num_cpus=cfg.cpus_per_worker, num_gpus=1 if cfg.use_gpu else 0,
                        **({"resources": placement} if placement else {}))
    rows = list(iterate_with_timeout(ds.iter_rows(), timeout_s, "train: reference pass"))
    if len(rows) != len(examples):
        raise RuntimeError(f"reference pass returned {len(rows)} rows for {len(examples)} examples")
    return rows


def train_total_steps(n_examples: int, cfg: TrainConfig) -> int:
    """Optimizer steps of the round: Ray Data gives each worker an equal share of whole rows."""
    per_worker = n_examples // cfg.num_workers
    if per_worker == 0:
        raise TrainDataError(f"{n_examples} training examples cannot feed {cfg.num_workers} workers")
    micro = math.ceil(per_worker / cfg.micro_batch_size)
    return cfg.epochs * math.ceil(micro / cfg.grad_accum)


def fit(rows: list[dict] | None, worker: TrainWorkerConfig, cfg: TrainConfig, storage: str,
        loop: Any = None, placement: dict[str, float] | None = None) -> Any:
    """Run TorchTrainer (``loop``: the per-worker function, default ``train_loop`` on ``rows``' shards; ReMax
    passes its own and no rows) with checkpoints under ``storage`` (a local path or a pyarrow URI; a rerun
    with the same storage resumes from its latest checkpoint); return its Result (raises the training error,
    after retries)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from prefloop.actors.trainer import train_loop

    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {}), **(placement or {})}
    datasets = {"train": ray.data.from_items(rows)} if rows is not None else None
    trainer = TorchTrainer(
        loop or train_loop, train_loop_config=worker.as_loop_config(), datasets=datasets,
        # not split by Ray Data: each worker takes its seeded share (actors/trainer.py), the same after a restart
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name="ray_train", storage_path=storage,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    # train.timeout_s bounds the whole run; its checkpoints stay under storage, so a rerun resumes from the last
    result = wait_for(trainer.fit, cfg.timeout_s, f"Ray Train run under {storage} (train.timeout_s)")
    if result.error is not None:
        raise RuntimeError(f"training failed after {cfg.max_failures} retries: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a final checkpoint")
    return result


def run_train(rnd: Round, *, kill_at_step: int | None = None) -> Path:
    """Run (or skip, if committed) the training stage of round ``rnd``; return the model folder.

    ``kill_at_step`` is for tests only: one worker exits at that step, once, to exercise the retries.
    """
    if rnd.is_committed(MODEL):
        log.info("round %d %s already committed: skipping", rnd.index, MODEL)
        return rnd.stage_dir(MODEL)
    recipe, cfg, meth = rnd.recipe, rnd.recipe.train, rnd.method
    started = time.perf_counter()
    model_dir, ref_dir = rnd.models.start, rnd.models.reference
    check_model_dir(model_dir, "training start model")
    if ref_dir is not None:
        check_model_dir(ref_dir, "reference model")
    rows, source = load_rows(rnd)
    log.info("train data %s: %d rows accepted, %d rejected", source, len(rows.accepted), len(rows.rejected))
    if not rows.accepted:
        first = rows.rejected[0] if rows.rejected else None
        raise TrainDataError(f"{source}: no usable training rows ({len(rows.rejected)} rejected; first: "
                             f"{first.location} {first.field}: {first.reason})" if first else f"{source}: no rows")

    work = rnd.run.round_dir(rnd.index) / TRAIN_WORK
    work.mkdir(parents=True, exist_ok=True)
    if meth.control_tokens:
        model_dir = add_control_tokens(model_dir, work / "start_model")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = prepare_examples(rows, cfg, tokenizer, recipe.policy.chat_template, rnd.seed)
    total_steps = train_total_steps(len(examples), cfg)
    init_ray(recipe.resources)
    t_prepare = time.perf_counter() - started
    if ref_dir is not None and cfg.reference_mode == "precomputed":
        examples = reference_pass(examples, ship(ref_dir), ship(model_dir), cfg, recipe.resources.wait_timeout_s,
                                  recipe.policy.dtype, recipe.resources.custom("train"))
    t_reference = time.perf_counter() - started - t_prepare
    worker = TrainWorkerConfig(train=cfg, model_dir=ship(model_dir), dtype=recipe.policy.dtype, seed=rnd.seed,
                               total_steps=total_steps, ref_dir=ship(ref_dir) if ref_dir is not None else None,
                               kill_at_step=kill_at_step, fault_marker=str(work / "fault-injected"))
    storage = rnd.run.train_storage(rnd.index, TRAIN_WORK)
    result = fit(examples, worker, cfg, storage, placement=recipe.resources.custom("train"))
    t_fit = time.perf_counter() - started - t_prepare - t_reference
    manifest = {
        "method": cfg.method, "start_model": model_dir, "reference": ref_dir, "source": source,
        "counts": {"read": len(rows.accepted) + len(rows.rejected), "accepted": len(rows.accepted),
                   "rejected": len(rows.rejected), "examples": len(examples)},
        "steps": {"planned": total_steps},
        "timings_s": {"prepare": t_prepare, "reference_pass": t_reference, "fit": t_fit,
                      "total": time.perf_counter() - started},
        "train": cfg.model_dump(mode="json"), "checkpoint_storage": storage}
    committed = commit_model(rnd.run, rnd.index, result.checkpoint, chat_template=recipe.policy.chat_template,
                             rejected=[r.to_dict() for r in rows.rejected],
                             metrics_file="train_metrics.jsonl", manifest=manifest)
    rnd.run.drop_train_storage(rnd.index, TRAIN_WORK)  # checkpoints of a committed round are not needed any more
    log.info("round %d model committed after %d steps (restored from %s)", rnd.index,
             committed["steps"]["done"], committed["steps"]["restored_from"] or "none")
    return rnd.stage_dir(MODEL)
