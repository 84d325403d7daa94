"""AlpacaEval 2.0's annotator against a real OpenAI-compatible endpoint: prefloop's own Serve app (Ray Serve +
vLLM) serving a tiny judge, asked through the ``openai`` client with AlpacaEval's prompt and completion settings,
the verdict read by AlpacaEval's log-prob parser.

The tiny judge is the tiny policy (its position limit raised: AlpacaEval's prompt is ~760 of its tokens)
fine-tuned to answer ``M`` to AlpacaEval's prompt whatever it is shown. What is tested is the protocol end to end:
the served reply carries the first token's top log-probs with ``M`` among them, in both orders the judge prefers
``output_2``, so ``orders: both`` maps the second order back and cancels that bias to 0.5, and ``orders:
alpaca_eval`` gives the round's answer the win exactly where AlpacaEval's seeded switch left it as ``output_2``.
"""

import json
import shutil

import pytest

from prefloop.core.config import parse_recipe
from prefloop.core.judge_config import JudgeConfig
from tests.app.judging.test_llm_judge_serve import (
    BASE,
    PROMPTS,
    ROUND,
    always_m_judge,
    served_endpoint,
)
from tests.builders import served_run

pytestmark = pytest.mark.ray
pytest.importorskip("alpaca_eval")


@pytest.fixture(scope="module")
def alpaca_judge_url(ray_cluster, tiny_assets, tmp_path_factory):
    from prefloop.app.judging.alpaca_eval_judge import alpaca_messages, annotator_config

    tmp = tmp_path_factory.mktemp("alpaca_judge")
    policy = tmp / "policy"
    shutil.copytree(tiny_assets.policy, policy)
    config = json.loads((policy / "config.json").read_text())
    config["max_position_embeddings"] = 1024  # rotary positions: the weights take any length
    (policy / "config.json").write_text(json.dumps(config))
    _, template = annotator_config("weighted_alpaca_eval_gpt4_turbo")
    always_m_judge(policy, tmp / "judge", make_messages=lambda i, a, b: alpaca_messages(template, i, a, b))
    raw = {"name": "judge", "run_dir": str(tmp / "run"), "policy": {"model": str(policy)},
           "data": {"train": "unused.jsonl", "max_prompt_tokens": 1000},
           "rollout": {"max_tokens": 8, "max_model_len": 1024}, "scorer": {"kind": "function", "function": "a:b"}}
    run = served_run(tmp / "run", raw, {0: tmp / "judge"})
    yield from served_endpoint(run.root)


def judge_cfg(url, **kw):
    return JudgeConfig(kind="llm_judge", protocol="alpaca_eval", base_url=url, model_name="prefloop",
                       timeout_s=120, **kw)


def test_alpaca_evals_protocol_on_a_served_judge(alpaca_judge_url):
    from prefloop.app.judging.alpaca_eval_judge import AlpacaEvalJudge, switched

    both = AlpacaEvalJudge(judge_cfg(alpaca_judge_url)).judge(PROMPTS, ROUND, BASE)
    for r in both:
        assert r["alpaca_eval_pref_baseline_first"] > 1.9, r  # "M" (output_2, the round's answer) wins
        assert r["alpaca_eval_pref_answer_first"] < 1.1, r    # "M" is now the baseline: mapped back, a loss
        assert abs(r["preference"] - 0.5) < 0.05, r
    one = AlpacaEvalJudge(judge_cfg(alpaca_judge_url, orders="alpaca_eval")).judge(PROMPTS, ROUND, BASE)
    for r, switch in zip(one, switched(PROMPTS)):
        assert r["alpaca_eval_switched"] is switch
        assert (r["preference"] < 0.1) if switch else (r["preference"] > 0.9), r


def test_the_eval_stage_reports_alpaca_evals_figures(alpaca_judge_url):
    from prefloop.app.judging.eval_judges import eval_verdicts
    from prefloop.app.rounds.evaluate import judged_summary

    recipe = parse_recipe({"name": "t", "run_dir": "x", "policy": {"model": "/p"}, "data": {"train": "/d"},
                           "scorer": {"kind": "pairrm", "model": "/r"},
                           "eval": {"baseline": "reference", "judge": {
                               "kind": "llm_judge", "protocol": "alpaca_eval", "base_url": alpaca_judge_url,
                               "model_name": "prefloop", "timeout_s": 120}}}, "test")
    answers = [{"prompt_id": f"p{i}", "prompt": p, "messages": "[]", "answer": a, "num_tokens": 5,
                "finish_reason": "stop"} for i, (p, a) in enumerate(zip(PROMPTS, ROUND))]
    base = [{**a, "answer": b, "finish_reason": "reference"} for a, b in zip(answers, BASE)]
    verdicts = eval_verdicts(recipe, answers, base)
    m = judged_summary(recipe, answers, base, [{"score": 0.0, "base_score": 0.0, "preference": 0.5}] * 3, verdicts)
    assert m["judge"] == "llm_judge" and m["baseline"] == "reference"
    assert abs(m["alpaca_eval"]["win_rate"] - 50) < 5 and m["alpaca_eval"]["n_total"] == 3
    assert m["alpaca_eval"]["length_controlled_winrate"] is None  # 3 prompts: too few for its 5-fold CV
