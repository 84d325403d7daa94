"""recipes/smollm2-ifeval.yaml at reduced size: the real SmolLM2-135M-Instruct learns to follow instructions by
online DPO, graded on held-out topics by IFEval's own checkers (if-verifiable).

Same model, judge, method and prompt files as the recipe; 32 prompts (data.limit caps the held-out set too),
96-token answers, one round.
The learning bar: the round's held-out instruction-level strict accuracy (IFEval's checkers, greedy answers)
beats the base model's by ``MARGIN``. The real model's own behaviour is checked on the same run: vLLM's answers
end at ``<|im_end|>`` (finish reason ``stop``, no ChatML token left in the text).
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from prefloop.app.front.recipes import resolve_recipe
from prefloop.app.rounds.loop import run_loop
from tests.paths import RECIPES

pytestmark = [pytest.mark.ray, pytest.mark.slow]
RECIPE = RECIPES / "smollm2-ifeval.yaml"
# Measured (2026-12-07, 32 held-out prompts, 57 instructions): base 0.228; after the round 0.333 (+0.105); with the
# DPO loss's sign flipped 0.263 (+0.035: a changed model answers differently, so one instruction is 0.018 of noise)
MARGIN = 0.06
REDUCED = ["loop.rounds=1", "data.limit=32", "loop.eval_limit=32", "rollout.max_tokens=96",
           "train.max_response_len=96", "rollout.max_model_len=320"]


def test_smollm2_learns_ifeval_instructions(tmp_path, ray_cluster):
    recipe = resolve_recipe(str(RECIPE), [f"run_dir={tmp_path / 'run'}", *REDUCED])
    rows = run_loop(recipe)
    m = rows[-1]
    assert m["judge"] == "ifeval" and len(m["ifeval_per_id"]) >= 10
    gain = m["ifeval_instruction_strict"] - m["base_ifeval_instruction_strict"]
    assert gain >= MARGIN, (f"IFEval instruction-level strict {m['base_ifeval_instruction_strict']:.3f} (base) -> "
                            f"{m['ifeval_instruction_strict']:.3f}: gained {gain:+.3f} < {MARGIN}")
    answers = pq.read_table(tmp_path / "run" / "round_0" / "eval" / "answers.parquet").to_pylist()
    for a in answers:
        for text in (a["answer"], a["base_answer"]):
            assert "<|im_end|>" not in text and "<|im_start|>" not in text
    # an answer that stopped before the 96-token cap stopped at <|im_end|> (the base's answers run ~130 tokens,
    # so many are cut at 96; some of both sides end on their own)
    stopped = [a for a in answers if a["finish_reason"] == "stop"]
    assert stopped and all(a["num_tokens"] < 96 for a in stopped)
    assert any(a["base_finish_reason"] == "stop" for a in answers)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## IFEval" in report and "| `punctuation:no_comma` |" in report
