"""The LLM judge against a real OpenAI-compatible endpoint: prefloop's own Serve app (Ray Serve + vLLM) serving a
tiny model, asked with AlpacaEval 2.0's pairwise protocol in both orders, verdicts read from the served log-probs
and from the text.

The tiny judge is the tiny policy fine-tuned for a few steps to answer ``M`` whatever it is shown: the most
position-biased judge there is. What is tested is the protocol, not the judge's quality: the requests (with
``logprobs``/``top_logprobs``) are accepted, the served log-probs put nearly all of the identifiers' mass on
``M`` in BOTH orders, and combining the two orders cancels that bias to a preference of 0.5.
"""

import random
import socket

import pytest

from prefloop.core.config import parse_recipe
from prefloop.core.judge_config import JudgeConfig
from prefloop.core.llm_judge import build_messages
from tests.builders import served_run

pytestmark = pytest.mark.ray
WORDS = "honey hive queen lava ash crater tea kettle cup rails station melody".split()


def always_m_judge(policy_dir, out, steps=12, make_messages=build_messages):
    """The tiny policy, trained to answer ``M`` + EOS to the judge prompt that ``make_messages(instruction,
    first, second)`` builds (loss on the answer tokens only)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefloop.core.templates import render_prompt

    torch.manual_seed(0)
    rng = random.Random(0)
    tok, model = AutoTokenizer.from_pretrained(policy_dir), AutoModelForCausalLM.from_pretrained(policy_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    target = tok("M" + tok.eos_token, add_special_tokens=False)["input_ids"]
    for _ in range(steps):
        for _ in range(2):
            answers = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))) + "." for _ in range(2)]
            prompt = tok(render_prompt(make_messages("Explain bees.", *answers), "tokenizer", tok),
                         add_special_tokens=True)["input_ids"]
            ids = torch.tensor([prompt + target])
            labels = ids.clone()
            labels[0, :len(prompt)] = -100
            model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def judge_url(ray_cluster, tiny_assets, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("judge")
    raw = {"name": "judge", "run_dir": str(tmp / "run"), "policy": {"model": str(tiny_assets.policy)},
           "data": {"train": "unused.jsonl", "max_prompt_tokens": 480},
           "rollout": {"max_tokens": 8, "max_model_len": 512}, "scorer": {"kind": "function", "function": "a:b"}}
    run = served_run(tmp / "run", raw, {0: always_m_judge(tiny_assets.policy, tmp / "judge")})
    yield from served_endpoint(run.root)


def served_endpoint(run_root):
    """Serve the run directory's round on a free port; yield its OpenAI-compatible base URL, then shut down."""
    from ray import serve

    from prefloop.app.serving.serve import serve_run_dir, stop_serving

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    served = serve_run_dir(run_root, port=port, timeout_s=300)
    yield served.url + "/v1"
    stop_serving(served.name)
    serve.shutdown()


PROMPTS = ["Explain bees.", "Tell me about tea.", "Describe trains in simple words."]
ROUND = ["The honey can change the hive.", "Think of kettle and cup together.", "Watch the rails closely."]
BASE = ["By the way, the lava matters more than the ash.", "There is a lot of melody in it.",
        "Most people think of station and rails."]


def test_both_orders_cancel_the_served_judges_position_bias(judge_url):
    from prefloop.app.judging.llm_judge import LLMJudge

    cfg = JudgeConfig(kind="llm_judge", base_url=judge_url, model_name="prefloop", max_tokens=1, timeout_s=120)
    out = LLMJudge(cfg).judge(PROMPTS, ROUND, BASE)
    for r in out:
        assert r["verdict_source"] == "logprobs", r
        assert r["p_second_round_first"] > 0.9 and r["p_second_round_second"] > 0.9, r  # "M" in both orders
        assert r["preference"] == pytest.approx(0.5 * (1 - r["p_second_round_first"] + r["p_second_round_second"]))
        assert abs(r["preference"] - 0.5) < 0.1, r
    text_only = LLMJudge(cfg.model_copy(update={"top_logprobs": 0})).judge(PROMPTS, ROUND, BASE)
    assert [(r["preference"], r["verdict_source"]) for r in text_only] == [(0.5, "text")] * 3


def test_the_eval_stage_takes_an_llm_judge(judge_url):
    """``eval.judge.kind: llm_judge`` through the evaluation's judge dispatch and summary (no Ray Data needed)."""
    from prefloop.app.judging.eval_judges import eval_verdicts, judge_independent
    from prefloop.app.rounds.evaluate import judged_summary

    recipe = parse_recipe({"name": "t", "run_dir": "x", "policy": {"model": "/p"}, "data": {"train": "/d"},
                           "scorer": {"kind": "pairrm", "model": "/r"},
                           "eval": {"judge": {"kind": "llm_judge", "base_url": judge_url, "model_name": "prefloop",
                                              "max_tokens": 1}}}, "test")
    answers = [{"prompt_id": f"p{i}", "prompt": p, "messages": "[]", "answer": a, "num_tokens": 5 + i,
                "finish_reason": "stop"} for i, (p, a) in enumerate(zip(PROMPTS, ROUND))]
    base = [{**a, "answer": b, "num_tokens": 7, "finish_reason": "length"} for a, b in zip(answers, BASE)]
    verdicts = eval_verdicts(recipe, answers, base)
    training = [{"score": 1.0, "base_score": 0.0, "preference": 1.0}] * 3  # as if the training scorer loved them
    m = judged_summary(recipe, answers, base, training, verdicts)
    assert judge_independent(recipe) and m["judge"] == "llm_judge" and m["judge_independent"] is True
    assert m["scorer_win_rate"] == 1.0 and abs(m["win_rate"] - 0.5) < 0.1
    assert m["base_truncation_rate"] == 1.0 and m["truncation_rate"] == 0.0 and "warning" not in m
