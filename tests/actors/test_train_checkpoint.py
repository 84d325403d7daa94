"""A training checkpoint's identity (which examples, which order-deciding settings) and its strict restore."""

import pytest
import torch

from prefloop.actors.train_checkpoint import checkpoint_identity, identity_difference, load_trainable
from prefloop.core.train_config import TrainConfig
from prefloop.core.worker_config import TrainWorkerConfig

ROWS = {i: {"example_id": i, "prompt_text": f"p{i}", "completion": f"c{i}", "label": bool(i % 2)} for i in range(8)}


def ident(rows=ROWS, world=2, seed=0, **train):
    config = TrainWorkerConfig(train=TrainConfig(method="sft", **train), model_dir="/m", seed=seed, total_steps=8)
    return checkpoint_identity(rows, config, world)


def test_the_same_training_resumes_and_any_change_of_examples_or_settings_is_named():
    assert identity_difference(ident(), ident()) is None
    changed = {**ROWS, 3: {**ROWS[3], "completion": "another answer"}}  # same count, same ids, other content
    assert "other examples" in identity_difference(ident(), ident(changed))
    assert identity_difference(ident(), ident(micro_batch_size=ident()["settings"]["micro_batch_size"] + 1))
    why = identity_difference(ident(), ident(world=4, seed=3))
    assert "world: 2 -> 4" in why and "seed: 0 -> 3" in why
    assert "no identity" in identity_difference(None, ident())  # a checkpoint from before identities: not resumed


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.base = torch.nn.Linear(3, 3)
        self.adapter = torch.nn.Linear(3, 3)
        self.base.requires_grad_(False)


def test_a_checkpoint_missing_a_trainable_weight_is_refused():
    model = Tiny()
    full = {k: v.clone() + 1 for k, v in model.state_dict().items() if k.startswith("adapter.")}
    load_trainable(model, full)  # trainable weights only, as checkpoints hold: fine
    assert torch.equal(model.adapter.weight, full["adapter.weight"])
    with pytest.raises(RuntimeError, match=r"missing \['adapter.bias'\]"):
        load_trainable(Tiny(), {"adapter.weight": full["adapter.weight"]})
    with pytest.raises(RuntimeError, match="unexpected"):
        load_trainable(Tiny(), {**full, "lm_head.weight": torch.zeros(2)})
