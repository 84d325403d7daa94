"""What runs inside Ray Train: the per-worker train loop (``train_loop`` for TorchTrainer), its steps and checkpoints.

Thin on purpose: the model side is ``actors.train_model``, losses ``core.losses``, the
schedule ``core.train_config``. This file wires them to a model, an optimizer, Ray Data shards, DDP/FSDP and
checkpoints. One small step function per method (``STEPS``) turns a micro-batch into a loss and metrics.

One loop for all methods:
- every worker reads the whole (small: tokenised text) dataset once and trains its share in an order fixed by
  the seed alone (``core.train_data.worker_order``), not by Ray Data's block order, so after a restart the
  skipped micro-batches are exactly the ones trained before; each step's example ids (all workers', which
  rank 0 can compute) go to ``trained_examples.jsonl`` in the checkpoint. Before each micro-batch the workers
  still agree (an all-reduce of a flag) that all of them have one, so DDP can never wait forever;
- gradient accumulation uses ``no_sync`` on all but the last micro-batch of a step (one all-reduce per step);
- rank 0 writes a checkpoint every ``checkpoint_every_steps`` (trainable weights, optimizer, scheduler, the
  step counter and the metrics so far); a restarted group restores it and skips the micro-batches of the
  current epoch that were already trained, so training resumes from that step, not from step 0;
- the last report carries the final model: LoRA merged, ``save_pretrained`` + tokenizer (with its chat
  template and any control tokens), a directory that transformers and vLLM load as it is. Under FSDP the
  gathered weights are loaded into a fresh model with every key checked (a mismatch fails the save rather
  than silently saving base weights).
"""

from __future__ import annotations

import dataclasses
import json
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
from prefloop.actors.train_model import (autocast, batch_tokens, encode, load_model, load_reference, seq_batch,
                                         seq_logps, shard_fsdp)
from prefloop.core.losses import dpo_loss, kto_loss, sft_loss
from prefloop.core.methods import method
from prefloop.core.train_config import lr_factor, warmup_steps
from prefloop.core.train_data import worker_order
from prefloop.core.worker_config import TrainWorkerConfig

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- one micro-batch per method

class Stats(dict):
    """name -> [sum, count] over micro-batches and workers; reduced to means for the metrics."""

    def add(self, name: str, total: torch.Tensor | float, count: torch.Tensor | float) -> None:
        entry = self.setdefault(name, [0.0, 0.0])
        entry[0] += float(total)
        entry[1] += float(count)


def _ref(batch: dict[str, np.ndarray], key: str, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(batch[key], dtype=np.float32), device=device)


def dpo_step(w: "Worker", batch: dict[str, np.ndarray], stats: Stats) -> tuple[torch.Tensor, int]:
    n, cfg = len(batch["prompt_text"]), w.cfg
    prompts = list(batch["prompt_text"]) * 2
    enc = seq_batch(w.tokenizer, prompts, list(batch["chosen"]) + list(batch["rejected"]), cfg, w.model)
    logps = seq_logps(w.model, enc, cfg, w.device)  # chosen and rejected in one forward pass
    if w.ref_model is not None:
        with torch.no_grad():
            ref = seq_logps(w.ref_model, enc, cfg, w.device)
        ref_c, ref_r = ref[:n], ref[n:]
    else:
        ref_c, ref_r = _ref(batch, "ref_chosen", w.device), _ref(batch, "ref_rejected", w.device)
    out = dpo_loss(logps[:n], logps[n:], ref_c, ref_r, cfg.beta, cfg.label_smoothing, cfg.ipo)
    stats.add("loss", out.losses.detach().sum(), n)
    stats.add("reward_chosen", out.chosen_rewards.sum(), n)
    stats.add("reward_rejected", out.rejected_rewards.sum(), n)
    stats.add("reward_accuracy", (out.chosen_rewards > out.rejected_rewards).float().sum(), n)
    stats.add("reward_margin", (out.chosen_rewards - out.rejected_rewards).sum(), n)
    return out.losses.mean(), batch_tokens(enc)


def kto_step(w: "Worker", batch: dict[str, np.ndarray], stats: Stats) -> tuple[torch.Tensor, int]:
    cfg, prompts = w.cfg, list(batch["prompt_text"])
    kl_enc = seq_batch(w.tokenizer, prompts, batch["kl_completion"], cfg, w.model)
    with torch.no_grad():  # z is detached: the mismatched pairs need no graph
        kl_logps = seq_logps(w.model, kl_enc, cfg, w.device)
    enc = seq_batch(w.tokenizer, prompts, batch["completion"], cfg, w.model)
    logps = seq_logps(w.model, enc, cfg, w.device)
    if w.ref_model is not None:
        with torch.no_grad():
            ref, ref_kl = (seq_logps(w.ref_model, e, cfg, w.device) for e in (enc, kl_enc))
    else:
        ref, ref_kl = _ref(batch, "ref_logps", w.device), _ref(batch, "ref_kl_logps", w.device)
    desirable = torch.as_tensor(np.asarray(batch["label"], dtype=bool), device=w.device)
    out = kto_loss(logps, ref, desirable, kl_logps, ref_kl, cfg.beta, cfg.desirable_weight,
                   cfg.undesirable_weight, reduce_fn=w.all_mean)
    n, good = len(prompts), desirable.float()
    stats.add("loss", out.losses.detach().sum(), n)
    stats.add("kto_z", out.z, 1)
    stats.add("reward_chosen", (out.rewards * good).sum(), good.sum())
    stats.add("reward_rejected", (out.rewards * (1 - good)).sum(), (1 - good).sum())
    # KTO "accuracy": the implicit reward sits on the label's side of the reference point beta * z
    right = torch.where(desirable, out.rewards > cfg.beta * out.z, out.rewards < cfg.beta * out.z)
    stats.add("reward_accuracy", right.float().sum(), n)
    return out.losses.mean(), batch_tokens(enc)


def sft_step(w: "Worker", batch: dict[str, np.ndarray], stats: Stats) -> tuple[torch.Tensor, int]:
    enc = encode(w.tokenizer, batch["prompt_text"], batch["completion"], w.cfg)
    ids, attn, mask = (enc[k].to(w.device) for k in ("input_ids", "attention_mask", "loss_mask"))
    with autocast(w.cfg, w.device, w.model):
        logits = w.model(input_ids=ids, attention_mask=attn).logits
    out = sft_loss(logits, ids, mask)
    stats.add("loss", out.nll_sum.detach().sum(), out.n_tokens.sum())  # per-token NLL
    return out.token_mean(), int(attn.sum())


STEPS = {"dpo": dpo_step, "kto": kto_step, "sft": sft_step}  # by a method's step name (core/methods.py)


# ---------------------------------------------------------------- the worker: state, steps, checkpoints

def unwrap(model: Any) -> Any:
    return model.module if hasattr(model, "module") else model


class Worker:
    """One Ray Train worker: model, optimizer, schedule, and the step counter that checkpoints carry."""

    def __init__(self, config: TrainWorkerConfig):
        import ray.train
        import ray.train.torch
        from transformers import AutoTokenizer

        # the start model as a folder on this node (shipped through Ray: actors/model_cache.py)
        config = dataclasses.replace(config, model_dir=local_model(config.model_dir, "trainer"))
        self.config, self.cfg = config, config.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.total_steps = config.total_steps
        torch.manual_seed(config.seed)  # the same LoRA init on every rank
        self.tokenizer = AutoTokenizer.from_pretrained(config.model_dir)
        model = load_model(config.model_dir, self.device, True, self.cfg, config.dtype)
        self.state: dict[str, Any] = {"step": 0, "epoch": 0, "micro_in_epoch": 0, "restored_from": []}
        self.history: list[dict[str, Any]] = []
        self.trained: list[dict[str, Any]] = []  # rank 0: example ids per step
        checkpoint = ray.train.get_checkpoint()
        optim_state = self._restore(model, checkpoint) if checkpoint else None
        # FSDP shards only across several workers; one worker keeps a whole (DDP-prepared) model
        self.sharded = self.cfg.strategy == "fsdp" and self.world > 1
        if self.sharded:
            self.model = shard_fsdp(model, self.device, self.world)
        else:
            self.model = ray.train.torch.prepare_model(model, parallel_strategy="ddp")
        live = self.cfg.reference_mode == "live" and config.ref_dir
        self.ref_model = load_reference(local_model(config.ref_dir, "reference"), self.device, self.cfg,
                                        config.dtype, self.world, self.sharded) if live else None
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

    def _examples(self, shard: Any) -> dict[int, dict[str, Any]]:
        """Every example of the (unsplit) dataset by ``example_id``, read once per worker."""
        if getattr(self, "_by_id", None) is None:
            self._by_id = {int(r["example_id"]): r for r in shard.iter_rows()}
        return self._by_id

    def epoch_order(self, shard: Any, rank: int | None = None) -> list[int]:
        ids = list(self._examples(shard))
        return worker_order(ids, self.config.seed, self.state["epoch"],
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

    def _write_state(self, folder: Path, weights: dict[str, torch.Tensor]) -> None:
        torch.save(weights, folder / "trainable.pt")
        if self.cfg.strategy != "fsdp":  # FSDP optimizer state is sharded: an FSDP resume restarts the moments
            torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}, folder / "optim.pt")
        (folder / "state.json").write_text(json.dumps(self.state))
        with open(folder / "metrics.jsonl", "w") as fh:
            fh.writelines(json.dumps(m) + "\n" for m in self.history)
        with open(folder / "trained_examples.jsonl", "w") as fh:
            fh.writelines(json.dumps(m) + "\n" for m in self.trained)

    def _restore(self, model: Any, checkpoint: Any) -> dict[str, Any] | None:
        with checkpoint.as_directory() as d:
            folder = Path(d)
            weights = torch.load(folder / "trainable.pt", map_location="cpu")
            result = model.load_state_dict(weights, strict=False)
            if result.unexpected_keys:
                raise RuntimeError(f"checkpoint does not fit the model: {result.unexpected_keys[:5]}")
            self.state = json.loads((folder / "state.json").read_text())
            self.history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
            trained = folder / "trained_examples.jsonl"
            if trained.is_file():
                self.trained = [json.loads(line) for line in trained.read_text().splitlines()]
            optim = folder / "optim.pt"
            optim_state = torch.load(optim, map_location="cpu") if optim.exists() else None
        self.state["restored_from"].append(self.state["step"])
        log.warning("worker %d: resumed from the checkpoint of step %d", self.rank, self.state["step"])
        return optim_state

    def report(self, metrics: dict[str, Any], checkpoint: bool = False, final: bool = False) -> None:
        """``ray.train.report`` on every worker (a barrier); rank 0 attaches the checkpoint."""
        import ray.train

        weights = self._trainable_state() if checkpoint or final else None
        if self.rank != 0 or not (checkpoint or final):
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="prefloop-ckpt-") as tmp:
            folder = Path(tmp)
            self._write_state(folder, weights)
            if final:
                self._save_model(folder / "model", weights)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def _save_model(self, out: Path, weights: dict[str, torch.Tensor]) -> None:
        """The round's model as a plain HF directory: LoRA merged, tokenizer and chat template alongside."""
        if self.sharded:
            # the same structure as the trained model (LoRA included), every key checked: a mismatch must not
            # leave base weights in place and save them as the round's model
            model = load_model(self.config.model_dir, torch.device("cpu"), True, self.cfg,
                               self.config.dtype)  # saved in the policy's dtype
            result = model.load_state_dict(weights, strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise RuntimeError(f"FSDP final save: gathered weights do not fit the model (missing "
                                   f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")
            if self.cfg.lora is not None:
                model = model.merge_and_unload()
            if self.config.dtype in ("bfloat16", "float16"):  # fp32 master weights trained; saved in policy.dtype
                model = model.to(getattr(torch, self.config.dtype))
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
        kill_at, marker = self.config.kill_at_step, self.config.fault_marker
        if kill_at and self.state["step"] == kill_at and self.rank == self.world - 1 and not os.path.exists(marker):
            Path(marker).touch()
            # The controller polls reports every ~2 s: wait, so the step's checkpoint is registered before the
            # death (a real crash within that window resumes from the checkpoint before).
            time.sleep(5)
            log.warning("worker %d: fault injection, exiting at step %d", self.rank, kill_at)
            os._exit(1)


def train_loop(config: dict[str, Any]) -> None:
    """TorchTrainer's ``train_loop_per_worker``; ``config`` is built by ``app.train``."""
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
