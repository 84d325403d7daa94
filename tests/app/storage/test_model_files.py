"""Saved models carry their training chat template (apply_chat_template == render_prompt, for every style) and,
for conditional SFT, the control token that rollout, evaluation and Serve append to the prompt, once."""

import json
import shutil

import pytest
from transformers import AutoTokenizer

from prefloop.app.storage.model_files import rows_for_model, stamp_model
from prefloop.core.model_info import MODEL_INFO, control_token_of, read_model_info
from prefloop.core.templates import chat_template_for, generation_text, render_prompt
from prefloop.core.train_data import add_prompt_text

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Name a fruit."}]
ONE = [{"role": "user", "content": "Tell me about bees."}]


@pytest.fixture
def model_dir(tmp_path, tiny_assets):
    """A tokenizer-only copy of the tiny policy (stamp_model touches only the tokenizer files)."""
    out = tmp_path / "model"
    AutoTokenizer.from_pretrained(tiny_assets.policy).save_pretrained(out)
    return out


STYLES = ["tulu", "mistral", "ultrarm"]  # every style with its own Jinja form; "tokenizer" keeps the base's


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("method", ["dpo", "csft"])
def test_saved_template_reproduces_the_training_format(model_dir, style, method):
    """transformers' apply_chat_template on the saved template renders what core/templates.py renders, multi-turn
    included; other tools (which leave NO_CONTROL unset) also get the control token, after the prompt."""
    info = stamp_model(model_dir, style, method)
    tok = AutoTokenizer.from_pretrained(model_dir)
    control = "<|good|>" if method == "csft" else None
    assert info == {"chat_template": style, "method": method, "control_token": control}
    assert json.loads((model_dir / MODEL_INFO).read_text()) == info
    for messages in (CHAT, ONE):
        expected = render_prompt(messages, style, tok)
        applied = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert applied == tok.bos_token + expected + (control or "")
        assert render_prompt(messages, "tokenizer", tok) == expected  # the BOS rule strips BOS; no control token
        assert generation_text(messages, "tokenizer", tok, control) == generation_text(messages, style, tok, control)
    if style == "tulu":  # the exact text, by hand: no EOS after the earlier assistant turn (the cards' format)
        assert tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == (
            tok.bos_token + "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello\n"
            "<|user|>\nName a fruit.\n<|assistant|>\n" + (control or ""))


@pytest.mark.parametrize("style", STYLES + ["tokenizer"])
def test_control_token_appears_once_in_every_style(model_dir, style):
    """A conditional-SFT model is asked exactly what its round trained on (prompt + <|good|>, once), and so is the
    next round that trains on top of it; other tools see the token once too."""
    base = AutoTokenizer.from_pretrained(model_dir)
    trained = [{"messages": CHAT, "label": True}]
    add_prompt_text(trained, "csft", lambda m: render_prompt(m, style, base))  # what the cSFT round tokenised
    stamp_model(model_dir, style, "csft")
    tok = AutoTokenizer.from_pretrained(model_dir)
    asked = generation_text(CHAT, style, tok, control_token_of(model_dir))
    assert asked == trained[0]["prompt_text"] and asked.count("<|good|>") == 1
    applied = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert applied.count("<|good|>") == 1 and applied.endswith("<|good|>")
    again = [{"messages": CHAT, "label": False}]
    add_prompt_text(again, "csft", lambda m: render_prompt(m, style, tok))
    assert again[0]["prompt_text"] == asked.removesuffix("<|good|>") + "<|bad|>"


def test_a_round_without_control_token_drops_the_saved_one(model_dir, tiny_assets):
    """KTO on top of a conditional-SFT model (loop.methods [csft, kto]): its saved template asks for no token."""
    base = AutoTokenizer.from_pretrained(tiny_assets.policy)
    stamp_model(model_dir, "tokenizer", "csft")
    stamp_model(model_dir, "tokenizer", "kto")
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.chat_template == base.chat_template and control_token_of(model_dir) is None


def test_ultrarm_template_and_unknown_style():
    assert chat_template_for("tokenizer", None) is None
    with pytest.raises(ValueError, match="unknown chat template style"):
        chat_template_for("chatml")


def test_control_token_reaches_generation_rows(model_dir, tmp_path):
    assert control_token_of(model_dir) is None and read_model_info(tmp_path / "nowhere") == {}
    rows = [{"prompt_id": "a", "messages": json.dumps(ONE), "prompt_token_ids": [1, 2]}]
    assert rows_for_model(rows, str(model_dir), "tulu") is rows  # no control token: untouched
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.add_tokens(["<|good|>", "<|bad|>"], special_tokens=True)
    tok.save_pretrained(model_dir)
    stamp_model(model_dir, "tulu", "csft")
    assert control_token_of(model_dir) == "<|good|>"
    got = rows_for_model(rows, str(model_dir), "tulu")[0]["prompt_token_ids"]
    plain = tok(render_prompt(ONE, "tulu", tok), add_special_tokens=True)["input_ids"]
    assert got == plain + [tok.convert_tokens_to_ids("<|good|>")]
    assert generation_text(ONE, "tulu", tok, "<|good|>") == render_prompt(ONE, "tulu", tok) + "<|good|>"


def test_bad_model_info_is_a_clear_error(model_dir):
    (model_dir / MODEL_INFO).write_text('{"control_token": 3}')
    with pytest.raises(ValueError, match="control_token must be a non-empty string"):
        control_token_of(model_dir)
    shutil.rmtree(model_dir)
    assert control_token_of(model_dir) is None
