"""UltraRM-layout reward models load without trust_remote_code, strictly, and score at the last real token.

The test builds a random-weight checkpoint of UltraRM-13b's exact layout (config ``architectures:
["LlamaRewardModel"]``, keys ``model.*`` + ``regression_head.weight``), shrunk in width and depth only, and checks
the scorer against a forward pass written here by hand (embeddings -> RMSNorm'd Llama blocks are trusted to
transformers' LlamaModel; the head and the last-token pick are recomputed independently).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from prefloop.actors.reward_model import (
    HeadSpec,
    ensure_pad_token,
    head_spec,
    last_token_index,
    load_reward_model,
)
from tests.builders import shrunk, ultrarm_backbone, ultrarm_state


def _tiny_ultrarm(tmp: Path, extra: dict[str, torch.Tensor] | None = None, drop_head: bool = False) -> Path:
    """UltraRM's layout (``tests/builders.py``) in one safetensors file without a tokenizer: what the loader reads."""
    small = shrunk("UltraRM-13b", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=2, vocab_size=300)
    state = {k: v.contiguous() for k, v in ultrarm_state(small, head_scale=1.0).items()}
    if drop_head:
        del state["regression_head.weight"]
    state.update(extra or {})
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(state, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(small))
    return tmp


def test_head_spec_rules():
    assert head_spec({"architectures": ["LlamaRewardModel"]}) == HeadSpec("regression_head", False)
    assert head_spec({"architectures": ["LlamaForSequenceClassification"]}) is None
    assert head_spec({"architectures": ["X"]}, {"name": "v_head", "bias": True}).keys == ["v_head.weight",
                                                                                             "v_head.bias"]


def test_last_token_index_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 4]
    assert last_token_index(left).tolist() == [4]


def test_ultrarm_layout_scores_match_hand_forward(tmp_path):
    d = _tiny_ultrarm(tmp_path / "rm")
    model = load_reward_model(str(d), "cpu", torch.float32)
    ids = torch.tensor([[5, 9, 17, 4, 0, 0], [7, 8, 9, 10, 11, 12]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    got = model(ids, mask)
    # by hand: the checkpoint's own tensors, a fresh LlamaModel, the head as a dot product at the last real token
    from safetensors.torch import load_file

    state = load_file(str(d / "model.safetensors"))
    cfg = json.loads((d / "config.json").read_text())
    base = ultrarm_backbone(cfg, state)
    w = state["regression_head.weight"][0]
    with torch.no_grad():
        hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
    want = torch.stack([hidden[0, 3] @ w, hidden[1, 5] @ w])
    assert torch.allclose(got, want, atol=1e-5), (got, want)
    # a pad value after the last real token must not change the reward
    ids2 = ids.clone()
    ids2[0, 4:] = 99
    assert torch.allclose(model(ids2, mask)[0], got[0], atol=1e-5)


def test_ultrarm_layout_bf16(tmp_path):
    d = _tiny_ultrarm(tmp_path / "rm")
    model = load_reward_model(str(d), "cpu", torch.bfloat16)
    out = model(torch.tensor([[5, 6, 7]]), torch.tensor([[1, 1, 1]]))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_missing_head_is_an_error_naming_it(tmp_path):
    d = _tiny_ultrarm(tmp_path / "rm", drop_head=True)
    with pytest.raises(ValueError, match=r"missing \['regression_head.weight'\]"):
        load_reward_model(str(d), "cpu", torch.float32)


def test_unexpected_key_is_an_error_naming_it(tmp_path):
    d = _tiny_ultrarm(tmp_path / "rm", extra={"value_head.weight": torch.zeros(1, 64)})
    with pytest.raises(ValueError, match=r"unexpected \['value_head.weight'\]"):
        load_reward_model(str(d), "cpu", torch.float32)


def test_recipe_named_head_with_bias(tmp_path):
    d = _tiny_ultrarm(tmp_path / "rm", drop_head=True,
                      extra={"v_head.weight": torch.randn(1, 64), "v_head.bias": torch.tensor([3.0])})
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, architectures=["MyCustomRM"])))
    with_bias = load_reward_model(str(d), "cpu", torch.float32, {"name": "v_head", "bias": True})
    assert with_bias.head.bias.item() == 3.0
    with pytest.raises(ValueError, match=r"unexpected \['v_head.bias'\]"):
        load_reward_model(str(d), "cpu", torch.float32, {"name": "v_head", "bias": False})


def test_llama_tokenizer_gets_a_pad_token():
    class Tok:
        pad_token_id = None
        pad_token = None
        unk_token = "<unk>"
        eos_token = "</s>"
        padding_side = "left"

    tok = Tok()
    ensure_pad_token(tok)
    assert tok.pad_token == "<unk>" and tok.padding_side == "right"
