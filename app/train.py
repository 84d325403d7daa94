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

import argparse
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

from prefloop.actors.common import check_model_dir
from prefloop.app.rundir import RunDir, write_manifest
from prefloop.app.runtime import init_ray, iterate_with_timeout, wait_for
from prefloop.app.tables import write_jsonl
from prefloop.core.config import Recipe
from prefloop.core.templates import render_prompt
from prefloop.core.train_config import TrainConfig
from prefloop.core.train_data import (CONTROL_TOKENS, TrainDataError, TrainRows, add_kl_completions,
                                      add_prompt_text, read_train_rows, shuffled, to_examples)

log = logging.getLogger(__name__)
STAGE = "model"
NEEDS_REFERENCE = ("dpo", "kto")


def start_model(run: RunDir, recipe: Recipe, round_idx: int) -> str:
    """The model round ``round_idx`` starts from: the previous round's committed model, or ``policy.model``."""
    if round_idx == 0:
        return recipe.policy.model
    if not run.is_committed(round_idx - 1, STAGE):
        raise FileNotFoundError(f"round {round_idx} starts from round {round_idx - 1}'s model, which is not "
                                f"committed ({run.stage_dir(round_idx - 1, STAGE)}): train that round first")
    return str(run.stage_dir(round_idx - 1, STAGE))


def load_rows(run: RunDir, cfg: TrainConfig, round_idx: int) -> tuple[TrainRows, str]:
    """This round's training rows (validated) and where they came from."""
    if cfg.data:
        source = cfg.data.replace("{round}", str(round_idx))  # per-iteration partitions, e.g. Snorkel's
        return read_train_rows(source), source
    if not run.is_committed(round_idx, "rollout"):
        raise TrainDataError(f"round {round_idx} has no committed rollout ({run.stage_dir(round_idx, 'rollout')}): "
                             "run `prefloop rollout` first, or set train.data")
    name = "pairs.parquet" if cfg.method in ("dpo", "sft") else "kto.parquet"
    source = str(run.stage_dir(round_idx, "rollout") / name)
    return read_train_rows(source), source


def prepare_examples(rows: TrainRows, cfg: TrainConfig, tokenizer: Any, style: str, seed: int) -> list[dict]:
    """Method examples with rendered ``prompt_text``; flat string/bool columns only (what Ray Data carries)."""
    examples = to_examples(rows.accepted, rows.kind, cfg.method)
    add_prompt_text(examples, cfg.method, lambda messages: render_prompt(messages, style, tokenizer))
    if cfg.method == "kto":
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


def reference_pass(examples: list[dict], ref_dir: str, tokenizer_dir: str, cfg: TrainConfig,
                   timeout_s: float) -> list[dict]:
    """Reference log-probs of every example, computed once, by a Ray Data actor pool (no grad)."""
    import ray
    from prefloop.actors.train_model import ReferenceLogps

    ds = ray.data.from_items(examples)
    ds = ds.map_batches(ReferenceLogps, fn_constructor_args=(ref_dir, tokenizer_dir, cfg.model_dump()),
                        batch_size=cfg.micro_batch_size * 4, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=cfg.num_workers),
                        num_cpus=cfg.cpus_per_worker, num_gpus=1 if cfg.use_gpu else 0)
    rows = list(iterate_with_timeout(ds.iter_rows(), timeout_s, "train: reference pass"))
    if len(rows) != len(examples):
        raise RuntimeError(f"reference pass returned {len(rows)} rows for {len(examples)} examples")
    return rows


def plan_steps(n_examples: int, cfg: TrainConfig) -> int:
    """Optimizer steps of the round: Ray Data gives each worker an equal share of whole rows."""
    per_worker = n_examples // cfg.num_workers
    if per_worker == 0:
        raise TrainDataError(f"{n_examples} training examples cannot feed {cfg.num_workers} workers")
    micro = math.ceil(per_worker / cfg.micro_batch_size)
    return cfg.epochs * math.ceil(micro / cfg.grad_accum)


def fit(rows: list[dict] | None, loop_config: dict[str, Any], cfg: TrainConfig, storage: str,
        loop: Any = None) -> Any:
    """Run TorchTrainer (``loop``: the per-worker function, default ``train_loop`` on ``rows``' shards; ReMax
    passes its own and no rows) with checkpoints under ``storage`` (a local path or a pyarrow URI; a rerun
    with the same storage resumes from its latest checkpoint); return its Result (raises the training error,
    after retries)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from prefloop.actors.trainer import train_loop

    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    datasets = {"train": ray.data.from_items(rows)} if rows is not None else None
    trainer = TorchTrainer(
        loop or train_loop, train_loop_config=loop_config, datasets=datasets,
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


def run_train(recipe: Recipe, round_idx: int = 0, *, kill_at_step: int | None = None) -> Path:
    """Run (or skip, if committed) the training stage of one round; return the model folder.

    ``kill_at_step`` is for tests only: one worker exits at that step, once, to exercise the retries.
    """
    run = RunDir(recipe.run_dir)
    if run.is_committed(round_idx, STAGE):
        log.info("round %d %s already committed: skipping", round_idx, STAGE)
        return run.stage_dir(round_idx, STAGE)
    cfg = getattr(recipe, "train", None) or TrainConfig()
    seed = recipe.seed if cfg.seed is None else cfg.seed
    started = time.perf_counter()
    model_dir = start_model(run, recipe, round_idx)
    check_model_dir(model_dir, "training start model")
    ref_dir = model_dir if cfg.reference == "previous" else recipe.policy.model
    if cfg.method in NEEDS_REFERENCE:
        check_model_dir(ref_dir, "reference model")
    rows, source = load_rows(run, cfg, round_idx)
    log.info("train data %s: %d rows accepted, %d rejected", source, len(rows.accepted), len(rows.rejected))
    if not rows.accepted:
        first = rows.rejected[0] if rows.rejected else None
        raise TrainDataError(f"{source}: no usable training rows ({len(rows.rejected)} rejected; first: "
                             f"{first.location} {first.field}: {first.reason})" if first else f"{source}: no rows")

    work = run.round_dir(round_idx) / "train"
    work.mkdir(parents=True, exist_ok=True)
    if cfg.method == "csft":
        model_dir = add_control_tokens(model_dir, work / "start_model")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = prepare_examples(rows, cfg, tokenizer, recipe.policy.chat_template, seed)
    total_steps = plan_steps(len(examples), cfg)
    init_ray(recipe.resources)
    t_prepare = time.perf_counter() - started
    precompute = cfg.method in NEEDS_REFERENCE and cfg.reference_mode == "precomputed"
    if precompute:
        examples = reference_pass(examples, ref_dir, model_dir, cfg, recipe.resources.stage_timeout_s)
    t_reference = time.perf_counter() - started - t_prepare
    loop_config = {"train": cfg.model_dump(), "model_dir": model_dir, "seed": seed, "total_steps": total_steps,
                   "ref_dir": ref_dir if cfg.method in NEEDS_REFERENCE else None,
                   "kill_at_step": kill_at_step, "fault_marker": str(work / "fault-injected")}
    storage = run.train_storage(round_idx, "train")
    result = fit(examples, loop_config, cfg, storage)
    t_fit = time.perf_counter() - started - t_prepare - t_reference

    with result.checkpoint.as_directory() as ckpt:
        ckpt = Path(ckpt)
        state = json.loads((ckpt / "state.json").read_text())
        history = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]
        with run.stage(round_idx, STAGE) as out:
            shutil.copytree(ckpt / "model", out, dirs_exist_ok=True)
            write_jsonl(out / "rejected_inputs.jsonl", [r.to_dict() for r in rows.rejected])
            write_jsonl(out / "train_metrics.jsonl", history)
            if (ckpt / "trained_examples.jsonl").is_file():  # example ids of each step, all workers
                shutil.copy(ckpt / "trained_examples.jsonl", out / "trained_examples.jsonl")
            write_manifest(out, {
                "stage": STAGE, "round": round_idx, "method": cfg.method, "start_model": model_dir,
                "reference": ref_dir if cfg.method in NEEDS_REFERENCE else None, "source": source,
                "counts": {"read": len(rows.accepted) + len(rows.rejected), "accepted": len(rows.accepted),
                           "rejected": len(rows.rejected), "examples": len(examples)},
                "steps": {"planned": total_steps, "done": state["step"], "restored_from": state["restored_from"]},
                "final_metrics": history[-1] if history else {},
                "timings_s": {"prepare": t_prepare, "reference_pass": t_reference, "fit": t_fit,
                              "total": time.perf_counter() - started},
                "train": cfg.model_dump(mode="json"), "checkpoint_storage": storage,
            })
    append_metrics(run, round_idx, history)
    run.drop_train_storage(round_idx, "train")  # checkpoints of a committed round are not needed any more
    log.info("round %d model committed after %d steps (restored from %s)", round_idx, state["step"],
             state["restored_from"] or "none")
    return run.stage_dir(round_idx, STAGE)


def append_metrics(run: RunDir, round_idx: int | None = None, history: list[dict[str, Any]] | None = None) -> None:
    """``RUN_DIR/metrics.jsonl``: every committed round's per-step metrics, one JSON object a line.

    Derived from the model stages (``train_metrics.jsonl`` / ``remax_metrics.jsonl``, written inside the stage
    before its commit) and rewritten whole, so it is idempotent: a kill between a commit and this call loses
    nothing, the next call (at the latest the loop's next start) writes the rows. The arguments are unused
    and kept for the callers' sake."""
    lines = []
    for rnd in sorted(run.root.glob("round_*"), key=lambda p: int(p.name[6:]) if p.name[6:].isdigit() else -1):
        model = rnd / STAGE
        if not (model / "manifest.json").is_file() or not rnd.name[6:].isdigit():
            continue
        for name, extra in (("train_metrics.jsonl", {}), ("remax_metrics.jsonl", {"method": "remax"})):
            if (model / name).is_file():
                for line in (model / name).read_text(encoding="utf-8").splitlines():
                    lines.append(json.dumps({"stage": "train", "round": int(rnd.name[6:]), **extra,
                                             **json.loads(line)}) + "\n")
    if lines or (run.root / "metrics.jsonl").is_file():
        run.save_text("metrics.jsonl", "".join(lines))


def cmd_train(args: argparse.Namespace) -> int:
    """``prefloop train RECIPE --round R [--set key=value ...]`` (registered by app/cli.py)."""
    from prefloop.app.cli import resolve_recipe, save_resolved

    recipe = resolve_recipe(args.recipe, args.set, args.tiny)
    with save_resolved(recipe, args.allow_recipe_change):
        folder = run_train(recipe, round_idx=args.round)
    print(f"model committed: {folder}")
    return 0
