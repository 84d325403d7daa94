"""A trainer's resume from its own checkpoint (``actors/trainer.py`` ``Worker``), on a real torch model and a real
``ray.train.Checkpoint`` folder, without a Ray cluster: a DDP/single-worker resume gets AdamW's moments and the
schedule back exactly; an FSDP checkpoint holds no optimizer state, and its resume says so in the log and in
the state the round's manifest carries (``steps.optimizer_reset_at``)."""

import logging

import pytest
import torch

from prefloop.actors.train_checkpoint import Saved, checkpoint_identity, write_state
from prefloop.actors.trainer import Worker
from prefloop.core.train_config import TrainConfig
from prefloop.core.worker_config import TrainWorkerConfig

ROWS = {i: {"example_id": i, "prompt_text": f"p{i}", "completion": f"c{i}"} for i in range(4)}
RESET = "RESUMED WITHOUT OPTIMIZER STATE"


def worker(sharded: bool) -> Worker:
    """A Worker's state as ``__init__`` leaves it (no Ray Train context): a small model, fresh step counter."""
    config = TrainWorkerConfig(train=TrainConfig(method="sft", lr=0.05), model_dir="/m", seed=0, total_steps=8)
    w = Worker.__new__(Worker)
    w.job, w.cfg, w.total_steps = config, config.train, config.total_steps
    w.rank, w.world, w.sharded = 0, 2, sharded
    w.identity = checkpoint_identity(ROWS, config, w.world)
    w.state = {"step": 0, "epoch": 0, "micro_in_epoch": 0, "restored_from": [], "optimizer_reset_at": [],
               "started_over": None, "identity": w.identity}
    w.history, w.trained = [], []
    torch.manual_seed(0)
    w.model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    return w


def step(w: Worker, seed: int) -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(seed))
    w.model(x).pow(2).mean().backward()
    w.opt.step()
    w.sched.step()
    w.opt.zero_grad(set_to_none=True)
    w.state["step"] += 1


def trained_then_checkpointed(tmp_path, sharded: bool) -> tuple[Worker, object]:
    """Three optimizer steps, then the checkpoint rank 0 writes (``Worker.report``'s contents)."""
    from ray.train import Checkpoint

    w = worker(sharded)
    w.make_optimizer(None)
    for s in range(3):
        step(w, s)
    weights = {k: v.detach().clone() for k, v in w.model.state_dict().items()}
    write_state(tmp_path, Saved(weights, dict(w.state), w.history, w.trained, w.optim_to_save()))
    return w, Checkpoint.from_directory(str(tmp_path))


def test_a_ddp_resume_restores_adams_moments_and_the_schedule_exactly(tmp_path, caplog):
    before, checkpoint = trained_then_checkpointed(tmp_path, sharded=False)
    after = worker(sharded=False)
    with caplog.at_level(logging.WARNING):
        after.make_optimizer(after._restore(after.model, checkpoint))
    assert after.state["restored_from"] == [3] and after.state["optimizer_reset_at"] == []
    assert RESET not in caplog.text
    want, got = before.opt.state_dict()["state"], after.opt.state_dict()["state"]
    assert want.keys() == got.keys() and len(got) == 4
    for i in want:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(want[i][key], got[i][key]), (i, key)
    assert after.sched.last_epoch == before.sched.last_epoch == 3
    step(before, 3)
    step(after, 3)  # the same next step from the same weights and moments: the same weights, bit for bit
    for a, b in zip(before.model.parameters(), after.model.parameters()):
        assert torch.equal(a, b)


def test_an_fsdp_resume_says_loudly_that_the_moments_restart(tmp_path, caplog):
    before, checkpoint = trained_then_checkpointed(tmp_path, sharded=True)
    assert not (tmp_path / "optim.pt").exists()  # sharded optimizer state is not written
    after = worker(sharded=True)
    with caplog.at_level(logging.WARNING):
        after.make_optimizer(after._restore(after.model, checkpoint))
    assert after.state["restored_from"] == [3] and after.state["optimizer_reset_at"] == [3]
    warned = [r.getMessage() for r in caplog.records if RESET in r.getMessage()]
    assert len(warned) == 1 and "at step 3" in warned[0] and "FSDP" in warned[0], caplog.text
    assert after.opt.state_dict()["state"] == {} and after.sched.last_epoch == 0  # moments really restart
    for a, b in zip(before.model.parameters(), after.model.parameters()):
        assert torch.equal(a, b)  # the weights themselves were restored


@pytest.mark.parametrize("sharded", [False, True])
def test_the_checkpoint_holds_optimizer_state_unless_sharded(sharded):
    w = worker(sharded)
    w.make_optimizer(None)
    assert (w.optim_to_save() is None) == sharded


def test_the_driver_says_so_when_a_round_resumed_without_optimizer_state():
    from prefloop.app.rounds.model_stage import optimizer_reset_warning

    said = optimizer_reset_warning(2, {"done": 8, "restored_from": [3], "optimizer_reset_at": [3]})
    assert said.startswith("round 2: training resumed WITHOUT optimizer state at step(s) [3]")
    assert optimizer_reset_warning(2, {"done": 8, "restored_from": [3], "optimizer_reset_at": []}) is None
