"""The ReMax training worker: Ray Train workers that stay up for the whole run and drive generation themselves.

Not one Ray Train run per step: ``remax_loop`` is ``TorchTrainer``'s per-worker loop, and each step it
1. takes its share of the step's prompts (``core.remax``: a seeded order, so a restart takes the same ones);
2. asks its generator for one sampled (temperature/top_p from the recipe) and one greedy answer per prompt;
3. asks the scorer actor for both rewards; advantage = clip(r(sample) - r(greedy)) (``core.losses``);
4. computes the REINFORCE loss with the per-token KL to the frozen reference (``sampled`` or ``full_step``),
   averaged over response tokens; DDP averages the gradients over workers; one optimizer step;
5. pushes the new weights to the generators before the next step (rank 0 saves them on its own node, puts
   them into Ray's object store and has every engine reload them in place: actors/model_cache.py), so every
   sample comes from the current policy.
Per step it records rewards, advantage, KL, response length and the time of generate / score / train / sync.
Checkpoints (weights, optimizer, step, metrics) every ``checkpoint_every_steps`` go through ``Worker.report``;
a restarted worker group resumes from the last one and pushes the restored weights to the generators first.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from prefloop.actors.model_cache import local_model, put_folder
from prefloop.actors.remax_rollout import StepRollout
from prefloop.actors.train_model import autocast, load_reference
from prefloop.actors.trainer import Stats, Worker, unwrap
from prefloop.core.logprobs import full_kl, token_logps
from prefloop.core.losses import remax_advantage, remax_loss
from prefloop.core.remax import pack_sequences, step_prompts, step_summary, worker_share
from prefloop.core.sampling import SampleSpec
from prefloop.core.worker_config import RemaxWorkerConfig

log = logging.getLogger(__name__)


class RemaxWorker(Worker):
    """``Worker`` (model, optimizer, schedule, checkpoints) plus the reference model and the step loop."""

    def __init__(self, job: RemaxWorkerConfig):
        super().__init__(job)
        self.rx = self.cfg.remax
        # the frozen reference in the training dtype, sharded over the workers as the policy is (FSDP)
        self.ref_model = load_reference(local_model(job.ref_dir, "reference"), self.device, self.cfg,
                                        job.dtype, self.world, self.sharded)
        self.prompts: list[dict[str, Any]] = job.prompts
        names = job.generators
        self.own_generator = names[self.rank % len(names)]
        self.rollout = StepRollout(self.own_generator, job.scorer, job.timeout_s,
                                   board=job.weights_board or None)
        self.sync_root = Path(tempfile.mkdtemp(prefix="prefloop-remax-push-"))  # on this worker's node
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id

    def identity_rows(self) -> dict[int, dict[str, Any]]:
        """A ReMax checkpoint's position counts steps over these prompts (step s takes its slice of them)."""
        return dict(enumerate(self.job.prompts))

    # -- one step
    def specs(self, step: int) -> tuple[SampleSpec, SampleSpec]:
        """Step ``step``'s sampled and greedy requests: the sampled one's seed moves with the step."""
        sample = SampleSpec(**self.job.sample_spec)
        if sample.seed is not None:
            sample = replace(sample, seed=sample.seed + step)
        return sample, SampleSpec(**self.job.greedy_spec)

    def run(self, shard: Any = None) -> None:
        if self.state["restored_from"]:  # the generators may hold newer (lost) weights: give them the checkpoint's
            self.push_weights()
        while self.state["step"] < self.total_steps:
            self.train_step()

    def train_step(self) -> None:
        step, rx, times = self.state["step"], self.rx, {}
        started = time.perf_counter()
        idx = step_prompts(len(self.prompts), step, rx.prompts_per_step, self.job.seed)
        rows = [self.prompts[i] for i in worker_share(idx, self.rank, self.world)]
        self._maybe_kill_generator(step)
        samples, greedy = self.rollout.generate(rows, *self.specs(step))
        times["generate"] = time.perf_counter() - started
        rewards = self.rollout.score(rows, samples, greedy)
        times["score"] = time.perf_counter() - started - times["generate"]
        stats, grad_norm, lr = self.optimize(rows, samples, rewards)
        times["train"] = time.perf_counter() - started - times["generate"] - times["score"]
        self.state["step"] += 1
        times["sync"] = self.push_weights() if self.state["step"] % rx.sync_every_steps == 0 else 0.0
        self.record(stats, times, grad_norm, lr, time.perf_counter() - started)

    def optimize(self, rows: list[dict], samples: list[dict], rewards: list[list[float]]) -> tuple[Stats, float, float]:
        """The REINFORCE step on this worker's rows; returns the step's stats, grad norm and learning rate."""
        rx, device = self.rx, self.device
        enc = pack_sequences([r["prompt_token_ids"] for r in rows], [s["token_ids"] for s in samples],
                             self.cfg.max_prompt_len, self.cfg.max_response_len, self.pad_id)
        ids, attn, mask = (enc[k].to(device) for k in ("input_ids", "attention_mask", "loss_mask"))
        with autocast(self.cfg, device, self.model):
            logits = self.model(input_ids=ids, attention_mask=attn).logits
        with torch.no_grad(), autocast(self.cfg, device, self.ref_model):
            ref_logits = self.ref_model(input_ids=ids, attention_mask=attn).logits
        policy_logps = token_logps(logits, ids, mask)
        kl_args: dict[str, Any] = {}
        if rx.kl_penalty == "sampled":
            kl_args["ref_logps"] = token_logps(ref_logits, ids, mask)
        else:
            kl_args["full_kl"] = full_kl(logits.detach(), ref_logits, mask)
        r_sample = torch.tensor([r[0] for r in rewards], dtype=torch.float32, device=device)
        r_greedy = torch.tensor([r[1] for r in rewards], dtype=torch.float32, device=device)
        adv = remax_advantage(r_sample, r_greedy, rx.reward_clip)
        out = remax_loss(policy_logps, adv, mask[:, 1:], rx.kl_ctl, rx.kl_penalty, kl_to_go=rx.kl_to_go, **kl_args)
        out.token_mean().backward()  # REINFORCE loss averaged over response tokens
        tokens = out.n_tokens.sum()
        grad_norm = self.clip_gradients()
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        stats = Stats()
        for name, (total, count) in step_summary(r_sample.tolist(), r_greedy.tolist(), adv.tolist(),
                                                 out.kl.tolist(), [len(s["token_ids"]) for s in samples]).items():
            stats.add(name, total, count)
        stats.add("loss", float(out.loss_sum.sum()), float(tokens))
        return stats, grad_norm, lr

    # -- weights to the generators
    def push_weights(self) -> float:
        """Rank 0 saves the weights (in a folder of its own node, alternating) and puts them into Ray's object
        store, then reloads every engine from there (each engine's node copies them: actors/model_cache.py);
        no folder is shared between nodes."""
        started = time.perf_counter()
        folder = self.sync_root / f"v{self.state['step'] % 2}"
        weights = self.full_weights()
        if self.rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
            self.save_servable(folder, weights)
            self.rollout.push(put_folder(folder), self.job.generators)
        self._agree(True)  # every engine has the new weights before anyone samples again
        return time.perf_counter() - started

    # -- metrics and checkpoints
    def record(self, stats: Stats, times: dict[str, float], grad_norm: float, lr: float, elapsed: float) -> None:
        tokens = stats.get("response_len", [0.0, 0.0])[0]
        metrics = self._reduce(stats, int(tokens), elapsed)
        for part, seconds in times.items():
            metrics[f"{part}_s"] = float(self.all_mean(torch.tensor(seconds)))
        retries = self._all_reduce(torch.tensor([float(self.rollout.retried)]))
        metrics.update(step=self.state["step"], lr=lr, grad_norm=grad_norm, generator_retries=int(retries.item()))
        self.history.append(metrics)
        if self.rank == 0 and self.job.steps_file:  # the driver tails it into the dashboard gauges
            with open(self.job.steps_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics) + "\n")
        if self.rank == 0:
            log.info("remax step %d/%d: reward sample %.3f greedy %.3f, adv %.3f, kl %.4f, len %.1f, "
                     "generate %.2f s score %.2f s train %.2f s sync %.2f s", metrics["step"], self.total_steps,
                     metrics["reward_sample"], metrics["reward_greedy"], metrics["advantage"], metrics["kl"],
                     metrics["response_len"], *(metrics[f"{p}_s"] for p in ("generate", "score", "train", "sync")))
        step = self.state["step"]
        checkpoint_due = step % self.cfg.checkpoint_every_steps == 0 and step < self.total_steps
        if checkpoint_due or step % self.cfg.log_every_steps == 0:
            self.report(metrics, checkpoint=checkpoint_due)
        if checkpoint_due and self.job.publish_dir:  # every rank: FSDP gathers the weights
            self.publish(Path(self.job.publish_dir), step)
        self._maybe_die()

    def full_weights(self) -> dict[str, torch.Tensor] | None:
        """FSDP: the full weights gathered on rank 0 (a collective: every rank calls this); DDP: None (rank 0's
        replica is whole already)."""
        return self._trainable_state() if self.sharded else None

    def save_servable(self, folder: Path, weights: dict[str, torch.Tensor] | None) -> None:
        """Rank 0: an HF model folder vLLM loads (weights + config + tokenizer)."""
        unwrap(self.model).save_pretrained(folder, state_dict=weights, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)

    def publish(self, folder: Path, step: int) -> None:
        """A servable copy of this checkpoint's weights for the driver to hot-swap into Serve (``done`` last);
        copies older than the previous one are removed (Serve may still be loading the previous one)."""
        weights = self.full_weights()
        if self.rank != 0:
            return
        for old in sorted(folder.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[:-1]:
            shutil.rmtree(old, ignore_errors=True)
        out = folder / f"step_{step}"
        self.save_servable(out, weights)
        (out / "done").touch()

    def _maybe_kill_generator(self, step: int) -> None:
        """Test-only fault injection: rank 0 kills its generator actor (Ray restarts it) once, at a step."""
        at, marker = self.job.kill_generator_at_step, Path(f"{self.job.fault_marker}-generator")
        if at is not None and step == at and self.rank == 0 and not marker.exists():
            import ray

            marker.touch()
            log.warning("fault injection: killing generator %s at step %d", self.own_generator, step)
            ray.kill(ray.get_actor(self.own_generator), no_restart=False)


def remax_loop(config: dict[str, Any]) -> None:
    """``TorchTrainer``'s ``train_loop_per_worker`` for ReMax; ``config`` is built by ``app/rounds/remax.py``."""
    logging.basicConfig(level=logging.INFO)
    worker = RemaxWorker(RemaxWorkerConfig.from_loop_config(config))
    worker.run()
    worker.finish()
