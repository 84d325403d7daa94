"""``--set`` values and keys as users write them (core/overrides.py)."""

import pytest

from prefloop.core.config import Recipe
from prefloop.core.overrides import OverrideError, parse_override, parse_value


@pytest.mark.parametrize("text,value", [
    ("8", 8), ("0.5", 0.5), ("true", True), ("null", None), ("[dpo, kto]", ["dpo", "kto"]),
    ("{kind: function, function: 'a:b'}", {"kind": "function", "function": "a:b"}),
    ("{data}/heldout.jsonl", "{data}/heldout.jsonl"), ("{assets}", "{assets}"),
    ("{model: '{assets}/policy'}", {"model": "{assets}/policy"}),
    ("2026-01-01", "2026-01-01"), ("runs/a b", "runs/a b"), ("a: b", "a: b"), ("", ""), ("'8'", "8"), ('"true"', "true"),
])
def test_values_stay_text_unless_clearly_something_else(text, value):
    assert parse_value(text) == value


def test_keys_are_checked_with_a_suggestion_and_tiny_goes_to_its_section():
    with pytest.raises(OverrideError, match=r"in --set 'rollout\.num_smples=8': unknown key 'rollout\.num_smples'; "
                                            r"did you mean rollout\.num_samples\?"):
        parse_override("rollout.num_smples=8", Recipe)
    with pytest.raises(OverrideError, match="did you mean train.beta"):
        parse_override("train.betta=0.1", Recipe)  # through the forward-declared train section
    with pytest.raises(OverrideError, match="rollout.seed is a value, not a section"):
        parse_override("rollout.seed.x=1", Recipe)
    with pytest.raises(OverrideError, match="does not parse"):
        parse_override("loop.methods=[dpo, kto", Recipe)
    o = parse_override("tiny.rollout.max_tokens=64", Recipe)
    assert (o.key, o.value, o.tiny) == ("rollout.max_tokens", 64, True)
    assert parse_override("resources.placement.generator={gen: 1}", Recipe).value == {"gen": 1}  # a free mapping
    assert parse_override("eval.judge.kind=function", Recipe).key == "eval.judge.kind"
