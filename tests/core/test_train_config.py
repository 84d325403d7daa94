"""TrainConfig: defaults, strictness, cross-field checks, and the learning-rate schedule."""

import pytest
from pydantic import ValidationError

from prefloop.core.config import RecipeError, parse_recipe
from prefloop.core.train_config import TrainConfig, lr_factor, warmup_steps


def recipe(train):
    return {"name": "t", "run_dir": "/tmp/r", "policy": {"model": "m"}, "data": {"train": "p.jsonl"},
            "scorer": {"kind": "function", "function": "a:b"}, "train": train}


def test_defaults():
    cfg = TrainConfig()
    assert (cfg.method, cfg.beta, cfg.max_prompt_len, cfg.max_response_len) == ("dpo", 0.1, 384, 384)
    assert cfg.lora is None and cfg.reference == "previous" and cfg.reference_mode == "precomputed"
    assert parse_recipe(recipe({}), "r.yaml").train == cfg
    assert parse_recipe({k: v for k, v in recipe({}).items() if k != "train"}, "r.yaml").train is None


def test_lora_section():
    cfg = parse_recipe(recipe({"method": "kto", "lora": {"r": 16, "alpha": 32, "target_modules": ["q_proj"]}}),
                       "r.yaml").train
    assert cfg.lora.r == 16 and cfg.lora.alpha == 32 and cfg.lora.target_modules == ["q_proj"]


@pytest.mark.parametrize("train, message", [
    ({"bogus": 1}, "train.bogus: unknown key"),
    ({"lora": {"rank": 4}}, "train.lora.rank: unknown key"),
    ({"method": "ppo"}, "train.method"),
    ({"beta": 0}, "train.beta"),
    ({"label_smoothing": 0.7}, "train.label_smoothing"),
    ({"micro_batch_size": 0}, "train.micro_batch_size"),
    ({"strategy": "zero3"}, "train.strategy"),
])
def test_bad_values_name_the_key(train, message):
    with pytest.raises(RecipeError, match=message.replace(".", r"\.")):
        parse_recipe(recipe(train), "r.yaml")


@pytest.mark.parametrize("kwargs, message", [
    ({"ipo": True, "label_smoothing": 0.1}, "different losses"),
    ({"method": "kto", "ipo": True}, "apply to method 'dpo'"),
    ({"method": "sft", "reference_mode": "live"}, "no reference model"),
    ({"strategy": "fsdp", "lora": {}}, "fsdp' with lora"),
])
def test_inconsistent_settings(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        TrainConfig(**kwargs)


def test_schedule_warmup_then_decay():
    total, warm = 10, 2
    linear = [lr_factor(s, total, warm, "linear") for s in range(total)]
    assert linear[0] < linear[1] < linear[2] == 1.0
    assert all(a >= b for a, b in zip(linear[2:], linear[3:])) and linear[-1] > 0
    cosine = [lr_factor(s, total, warm, "cosine") for s in range(total)]
    assert cosine[2] == 1.0 and cosine[-1] < 0.1
    assert lr_factor(9, total, warm, "constant") == 1.0
    assert warmup_steps(TrainConfig(warmup_ratio=0.1), 25) == 3
    assert warmup_steps(TrainConfig(warmup_ratio=0.0), 25) == 0
