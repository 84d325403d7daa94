"""What runs inside Ray Train: the per-worker train loop (``train_loop`` for TorchTrainer), its steps and checkpoints.

Thin on purpose: the model side is ``actors.train_model``, losses ``core.losses``, the
schedule ``core.train_config``, one step function per method ``actors.train_steps`` (``STEPS``), the checkpoint
files and their identity ``actors.train_checkpoint``. This file wires them to a model, an optimizer, Ray Data
shards, DDP/FSDP and checkpoints.

One loop for all methods:
- every worker reads the whole (small: tokenised text) dataset once and trains its share in an order fixed by
  the seed alone (``core.train_data.worker_order``), not by Ray Data's block order, so after a restart the
  skipped micro-batches are exactly the ones trained before; each step's example ids (all workers', which
  rank 0 can compute) go to ``trained_examples.jsonl`` in the checkpoint. Before each micro-batch the workers
  still agree (an all-reduce of a flag) that all of them have one, so DDP can never wait forever;
- gradient accumulation uses ``no_sync`` on all but the last micro-batch of a step (one all-reduce per step);
- rank 0 writes a checkpoint every ``checkpoint_every_steps`` (trainable weights, optimizer, scheduler, the
  step counter, the metrics so far and the identity of its examples and settings); a restarted group restores
  it (every trainable key checked) and skips the micro-batches of the current epoch that were already trained,
  so training resumes from that step, not from step 0. A checkpoint of other examples or settings is not
  resumed: the round's training starts over and the manifest says why (``steps.started_over``). An FSDP
  checkpoint has no optimizer state: its resume logs loudly that the moments restart (``optimizer_reset_at``);
- the last report carries the final model: LoRA merged, ``save_pretrained`` + tokenizer (with its chat
  template and any control tokens), a directory that transformers and vLLM load as it is. Under FSDP the
  gathered weights are loaded into a fresh model with every key checked (a mismatch fails the save rather
  than silently saving base weights).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from prefloop.actors.model_cache import local_model
from prefloop.actors.train_checkpoint import (
    Saved,
    checkpoint_identity,
    identity_difference,
    load_trainable,
    read_state,
    write_state,
)
from prefloop.actors.train_model import load_model, load_reference, shard_fsdp
from prefloop.actors.train_steps import STEPS, Stats
from prefloop.core.methods import method
from prefloop.core.train_config import lr_factor, warmup_steps
from prefloop.core.train_data import worker_order
from prefloop.core.worker_config import TrainWorkerConfig

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the worker: state, steps, checkpoints

def unwrap(model: Any) -> Any:
    return model.module if hasattr(model, "module") else model


class Worker:
    """One Ray Train worker: model, optimizer, schedule, and the step counter that checkpoints carry."""

    def __init__(self, job: TrainWorkerConfig):
        import ray.train
        import ray.train.torch
        from transformers import AutoTokenizer

        # the start model as a folder on this node (shipped through Ray: actors/model_cache.py)
        job = dataclasses.replace(job, model_dir=local_model(job.model_dir, "trainer"))
        # job: what the driver handed this worker (paths, seed, steps); cfg: the recipe's train section
        self.job, self.cfg = job, job.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.total_steps = job.total_steps
        torch.manual_seed(job.seed)  # the same LoRA init on every rank
        self.tokenizer = AutoTokenizer.from_pretrained(job.model_dir)
        model = load_model(job.model_dir, self.device, True, self.cfg, job.dtype)
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "micro_in_epoch": 0, "restored_from": [],
                                      "optimizer_reset_at": [], "started_over": None}
        self.history: list[dict[str, Any]] = []
        self.trained: list[dict[str, Any]] = []  # rank 0: example ids per step
        # what a checkpoint's position counts: these examples, in the order these settings give
        self.identity = checkpoint_identity(self.identity_rows(), job, self.world)
        # FSDP shards only across several workers; one worker keeps a whole (DDP-prepared) model
        self.sharded = self.cfg.strategy == "fsdp" and self.world > 1
        checkpoint = ray.train.get_checkpoint()
        optim_state = self._restore(model, checkpoint) if checkpoint else None
        self.state["identity"] = self.identity
        if self.sharded:
            self.model = shard_fsdp(model, self.device, self.world)
        else:
            self.model = ray.train.torch.prepare_model(model, parallel_strategy="ddp")
        live = self.cfg.reference_mode == "live" and job.ref_dir
        self.ref_model = load_reference(local_model(job.ref_dir, "reference"), self.device, self.cfg,
                                        job.dtype, self.world, self.sharded) if live else None
        self.make_optimizer(optim_state)

    def make_optimizer(self, optim_state: dict[str, Any] | None) -> None:
        """AdamW and its schedule over the trainable parameters, from a checkpoint's state when there is one."""
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        warm, total, schedule = warmup_steps(self.cfg, self.total_steps), self.total_steps, self.cfg.schedule
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, total, warm, schedule))
        if optim_state is not None:
            self.opt.load_state_dict(optim_state["optimizer"])
            self.sched.load_state_dict(optim_state["scheduler"])

    # -- collectives (identity on one worker)
    def _all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.world == 1:
            return t
        import torch.distributed as dist

        t = t.detach().clone().to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
        return t

    def all_mean(self, t: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(t.float()) / self.world

    def _agree(self, have: bool) -> bool:
        return bool(self._all_reduce(torch.tensor([float(have)]), "min").item())

    def identity_rows(self) -> dict[int, dict[str, Any]]:
        """The examples a checkpoint's position refers to, by id (here: the whole training dataset)."""
        import ray.train

        return self._examples(ray.train.get_dataset_shard("train"))

    def _examples(self, shard: Any) -> dict[int, dict[str, Any]]:
        """Every example of the (unsplit) dataset by ``example_id``, read once per worker."""
        if getattr(self, "_by_id", None) is None:
            self._by_id = {int(r["example_id"]): r for r in shard.iter_rows()}
        return self._by_id

    def epoch_order(self, shard: Any, rank: int | None = None) -> list[int]:
        ids = list(self._examples(shard))
        return worker_order(ids, self.job.seed, self.state["epoch"],
                            self.rank if rank is None else rank, self.world)

    def micro_batches(self, shard: Any) -> Iterator[tuple[dict[str, np.ndarray], bool]]:
        """(batch, is_last) over this worker's seeded share of the epoch, while every worker still has one."""
        rows, order, size = self._examples(shard), self.epoch_order(shard), self.cfg.micro_batch_size
        chunks = [order[i:i + size] for i in range(0, len(order), size)]
        it = iter(chunks)

        def pull() -> Any:
            ids = next(it, None)
            if not self._agree(ids is not None):
                return None
            return {k: np.array([rows[i][k] for i in ids], dtype=object if isinstance(rows[ids[0]][k], str)
                                else None) for k in rows[ids[0]]}

        current = pull()
        while current is not None:
            upcoming = pull()
            yield current, upcoming is None
            current = upcoming

    def record_step_examples(self, shard: Any, first_micro: int, last_micro: int) -> None:
        """Rank 0 notes the example ids every worker trained in this step (the orders are deterministic)."""
        if self.rank != 0:
            return
        size, ids = self.cfg.micro_batch_size, []
        for r in range(self.world):
            ids += self.epoch_order(shard, r)[first_micro * size:last_micro * size]
        # called just before the optimizer step (whose checkpoint must include it): that step's number is next
        self.trained.append({"step": self.state["step"] + 1, "epoch": self.state["epoch"],
                             "example_ids": sorted(ids)})

    # -- training
    def run(self, shard: Any) -> None:
        cfg, step_fn = self.cfg, STEPS[method(self.cfg.method).step]
        while self.state["epoch"] < cfg.epochs:
            skip, micro, pending = self.state["micro_in_epoch"], 0, 0
            stats, tokens, started = Stats(), 0, time.perf_counter()
            for batch, last in self.micro_batches(shard):
                micro += 1
                if micro <= skip:  # trained before the restart this resumes from (the same examples: seeded)
                    continue
                pending += 1
                sync = last or pending == cfg.grad_accum
                no_sync = getattr(self.model, "no_sync", None)
                with nullcontext() if sync or no_sync is None else no_sync():
                    loss, n_tokens = step_fn(self, batch, stats)
                    (loss / cfg.grad_accum).backward()
                tokens += n_tokens
                if sync:
                    first, self.state["micro_in_epoch"] = self.state["micro_in_epoch"], micro
                    self.record_step_examples(shard, first, micro)
                    self.optimizer_step(stats, tokens, time.perf_counter() - started, last)
                    pending, stats, tokens, started = 0, Stats(), 0, time.perf_counter()
            if self.state["micro_in_epoch"]:  # an epoch that had no step at all still ends
                self.state["epoch"], self.state["micro_in_epoch"] = self.state["epoch"] + 1, 0
            elif micro == 0:
                raise RuntimeError(f"worker {self.rank}: its data shard is empty")

    def clip_gradients(self) -> float:
        """Clip the gradients to ``max_grad_norm``; return their norm before clipping."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm or float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor, the norm over every shard
            grad_norm = grad_norm.full_tensor()
        return float(grad_norm)

    def optimizer_step(self, stats: Stats, tokens: int, elapsed: float, last: bool) -> None:
        grad_norm = self.clip_gradients()
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.state["step"] += 1
        if last:
            self.state["epoch"], self.state["micro_in_epoch"] = self.state["epoch"] + 1, 0
        metrics = self._reduce(stats, tokens, elapsed)
        metrics.update(step=self.state["step"], epoch=self.state["epoch"], lr=lr, grad_norm=grad_norm)
        self.history.append(metrics)
        step = self.state["step"]
        checkpoint_due = step % self.cfg.checkpoint_every_steps == 0 and step < self.total_steps
        if checkpoint_due or step % self.cfg.log_every_steps == 0:
            self.report(metrics, checkpoint=checkpoint_due)
        self._maybe_die()

    def _reduce(self, stats: Stats, tokens: int, elapsed: float) -> dict[str, Any]:
        names = sorted(stats)
        flat = [v for name in names for v in stats[name]] + [float(tokens), elapsed]
        total = self._all_reduce(torch.tensor(flat, dtype=torch.float64)).tolist()
        out = {name: total[2 * i] / total[2 * i + 1] if total[2 * i + 1] else None for i, name in enumerate(names)}
        out["tokens_per_s"] = total[-2] / max(total[-1] / self.world, 1e-9)
        out["step_time_s"] = total[-1] / self.world
        return out

    # -- checkpoints and the final model
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        """Weights to checkpoint: LoRA adapters (+ csft embedding rows) or the whole model. FSDP gathers
        the full state on rank 0, in CPU memory (a collective: every rank calls this)."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        inner = unwrap(self.model)
        names = {n for n, p in inner.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu() for k, v in inner.state_dict().items() if k in names}

    def _restore(self, model: Any, checkpoint: Any) -> dict[str, Any] | None:
        """Resume from ``checkpoint`` when it is this training's (same identity); else start over, saying why.
        Returns the optimizer state to load (None: fresh moments, said loudly when resuming)."""
        with checkpoint.as_directory() as d:
            saved = read_state(Path(d))
        why = identity_difference(saved.state.get("identity"), self.identity)
        if why is not None:
            log.warning("worker %d: the checkpoint of step %d is not this training's (%s); starting the round's "
                        "training over from step 0", self.rank, saved.state["step"], why)
            self.state["started_over"] = {"checkpoint_step": saved.state["step"], "why": why}
            return None
        load_trainable(model, saved.weights)
        self.state = {"optimizer_reset_at": [], "started_over": None, **saved.state}
        self.history, self.trained = saved.history, saved.trained
        self.state["restored_from"].append(self.state["step"])
        log.warning("worker %d: resumed from the checkpoint of step %d", self.rank, self.state["step"])
        if saved.optim is None:
            self.state["optimizer_reset_at"].append(self.state["step"])
            log.warning("worker %d: RESUMED WITHOUT OPTIMIZER STATE at step %d: %s; AdamW's moments and the "
                        "scheduler restart from zero", self.rank, self.state["step"],
                        "FSDP checkpoints do not hold the sharded optimizer state" if self.sharded
                        else "the checkpoint has no optim.pt")
        return saved.optim

    def optim_to_save(self) -> dict[str, Any] | None:
        """The optimizer and scheduler state a checkpoint holds; None under FSDP, whose optimizer state is sharded
        (its resume says so and restarts the moments)."""
        if self.sharded:
            return None
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}

    def report(self, metrics: dict[str, Any], checkpoint: bool = False, final: bool = False) -> None:
        """``ray.train.report`` on every worker (a barrier); rank 0 attaches the checkpoint."""
        import ray.train

        weights = self._trainable_state() if checkpoint or final else None
        if self.rank != 0 or not (checkpoint or final):
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="prefloop-ckpt-") as tmp:
            folder = Path(tmp)
            write_state(folder, Saved(weights, self.state, self.history, self.trained, self.optim_to_save()))
            if final:
                self._save_model(folder / "model", weights)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def _save_model(self, out: Path, weights: dict[str, torch.Tensor]) -> None:
        """The round's model as a plain HF directory: LoRA merged, tokenizer and chat template alongside."""
        if self.sharded:
            # the same structure as the trained model (LoRA included), every key checked: a mismatch must not
            # leave base weights in place and save them as the round's model
            model = load_model(self.job.model_dir, torch.device("cpu"), True, self.cfg,
                               self.job.dtype)  # saved in the policy's dtype
            result = model.load_state_dict(weights, strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise RuntimeError(f"FSDP final save: gathered weights do not fit the model (missing "
                                   f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")
            if self.cfg.lora is not None:
                model = model.merge_and_unload()
            if self.job.dtype in ("bfloat16", "float16"):  # fp32 master weights trained; saved in policy.dtype
                model = model.to(getattr(torch, self.job.dtype))
        else:
            model = unwrap(self.model)
            if self.cfg.lora is not None:
                model = model.merge_and_unload()
        model.config.use_cache = True  # gradient checkpointing turned it off for training only
        model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)

    def finish(self) -> None:
        metrics = dict(self.history[-1]) if self.history else {"step": self.state["step"]}
        metrics["done"] = True
        self.report(metrics, final=True)

    def _maybe_die(self) -> None:
        """Test-only fault injection: the last rank exits once at ``kill_at_step`` (a marker file says once)."""
        kill_at, marker = self.job.kill_at_step, self.job.fault_marker
        if kill_at and self.state["step"] == kill_at and self.rank == self.world - 1 and not os.path.exists(marker):
            Path(marker).touch()
            # The controller polls reports every ~2 s: wait, so the step's checkpoint is registered before the
            # death (a real crash within that window resumes from the checkpoint before).
            time.sleep(5)
            log.warning("worker %d: fault injection, exiting at step %d", self.rank, kill_at)
            os._exit(1)


def train_loop(config: dict[str, Any]) -> None:
    """TorchTrainer's ``train_loop_per_worker``; ``config`` is built by ``app/rounds/train.py``."""
    import ray.train

    logging.basicConfig(level=logging.INFO)
    started = time.perf_counter()
    worker = Worker(TrainWorkerConfig.from_loop_config(config))
    ready = time.perf_counter()
    worker.run(ray.train.get_dataset_shard("train"))
    trained = time.perf_counter()
    worker.finish()
    log.info("worker %d: set-up %.1f s, %d steps in %.1f s, final save %.1f s", worker.rank, ready - started,
             worker.state["step"], trained - ready, time.perf_counter() - trained)
