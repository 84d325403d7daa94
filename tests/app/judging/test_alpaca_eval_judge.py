"""AlpacaEval 2.0's annotator as the eval judge (``protocol: alpaca_eval``), through the real ``openai`` client,
against a scripted local endpoint (a test double isolating the client): the prompt is AlpacaEval's own
formatting of its template, both answer orders are asked and mapped back, AlpacaEval's one switched order is
seeded as AlpacaEval seeds it, and the log-prob verdict gives the hand-computed preference."""

import math
import random

import pandas as pd
import pytest
import yaml

from prefloop.app.judging.alpaca_eval_judge import AlpacaEvalJudge, VerdictError, annotator_config
from prefloop.core.judge_config import JudgeConfig
from tests.app.judging.test_llm_judge_client import endpoint  # noqa: F401  (the scripted endpoint fixture)

alpaca_eval = pytest.importorskip("alpaca_eval")
from alpaca_eval import utils as ae_utils  # noqa: E402

BASELINE, ANSWER = "REFERENCE says: the sky is blue.", "ROUND says: Rayleigh scattering makes the sky blue."
# P(m), P(M) the scripted judge gives: when the baseline is output_1 (m), and when the round's answer is.
P_BASELINE_FIRST = (0.3, 0.6)
P_ANSWER_FIRST = (0.45, 0.05)


def scripted(body):
    """Top log-probs by which text is output_1 (the `m` output), with decoys AlpacaEval's parser must ignore."""
    user = body["messages"][-1]["content"]
    p_m, p_big = P_BASELINE_FIRST if user.index(BASELINE) < user.index(ANSWER) else P_ANSWER_FIRST
    top = [{"token": "M", "logprob": math.log(p_big)}, {"token": "m", "logprob": math.log(p_m)},
           {"token": " M", "logprob": math.log(0.04)}, {"token": "Model", "logprob": math.log(0.01)}]
    first = max(top[:2], key=lambda t: t["logprob"])
    choice = {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": first["token"]},
              "logprobs": {"content": [{**first, "bytes": None, "top_logprobs": top}]}}
    return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}




def cfg(url, **kw):
    return JudgeConfig(kind="llm_judge", protocol="alpaca_eval", base_url=url, model_name="judge", retries=0,
                       timeout_s=5, concurrency=1, **kw)


def alpaca_prompt(instruction, output_1, output_2):
    """AlpacaEval's own formatting of its annotator template, built here straight from the package."""
    root = f"{alpaca_eval.__path__[0]}/evaluators_configs"
    conf = yaml.safe_load(open(f"{root}/weighted_alpaca_eval_gpt4_turbo/configs.yaml"))
    template = open(f"{root}/{conf['weighted_alpaca_eval_gpt4_turbo']['prompt_template']}").read()
    df = pd.DataFrame([{"instruction": instruction, "output_1": output_1, "output_2": output_2}])
    return ae_utils.prompt_to_chatml(ae_utils.make_prompts(df, template)[0][0])


def test_both_orders_send_alpaca_evals_prompt_and_average_the_mapped_back_verdicts(endpoint):
    ep = endpoint(scripted)
    [verdict] = AlpacaEvalJudge(cfg(ep.url)).judge(["Why is the sky blue?"], [ANSWER], [BASELINE])
    first, second = ep.requests
    assert first["messages"] == alpaca_prompt("Why is the sky blue?", BASELINE, ANSWER)  # baseline is output_1
    assert second["messages"] == alpaca_prompt("Why is the sky blue?", ANSWER, BASELINE)
    assert first["messages"][0]["role"] == "system" and first["messages"][1]["role"] == "user"
    # the annotator's completion settings, not prefloop's: one token, its 5 top log-probs
    assert (first["max_tokens"], first["logprobs"], first["top_logprobs"], first["model"]) == (1, True, 5, "judge")
    # by hand: baseline first, P(m) = 0.3 / 0.9 -> preference 2 - 1/3 (output_2, the round's answer, better);
    # answer first, P(m) = 0.45 / 0.5 = 0.9 -> 2 - 0.9 = 1.1, mapped back 3 - 1.1 = 1.9. Mean 1.78333.
    assert verdict["alpaca_eval_pref_baseline_first"] == pytest.approx(2 - 1 / 3)
    assert verdict["alpaca_eval_pref_answer_first"] == pytest.approx(1.9)
    assert verdict["alpaca_eval_preference"] == pytest.approx((2 - 1 / 3 + 1.9) / 2)
    assert verdict["preference"] == pytest.approx((2 - 1 / 3 + 1.9) / 2 - 1)


def test_alpaca_eval_order_switches_as_alpaca_eval_seeds_it(endpoint):
    ep = endpoint(scripted)
    prompts = [f"Question number {i}?" for i in range(12)]
    verdicts = AlpacaEvalJudge(cfg(ep.url, orders="alpaca_eval")).judge(prompts, [ANSWER] * 12, [BASELINE] * 12)
    assert len(ep.requests) == 12  # one order per prompt
    # AlpacaEval's annotator: seed "is_switched_outputs" + instruction + "123", choices [False, True]
    expected = [random.Random("is_switched_outputs" + p + "123").choices([False, True], k=1)[0] for p in prompts]
    assert 0 < sum(expected) < 12  # both orders occur
    by_prompt = {r["messages"][-1]["content"]: r for r in ep.requests}
    for prompt, switch, verdict in zip(prompts, expected, verdicts):
        order = (ANSWER, BASELINE) if switch else (BASELINE, ANSWER)
        assert alpaca_prompt(prompt, *order)[-1]["content"] in by_prompt
        assert verdict["alpaca_eval_switched"] is switch
        assert verdict["alpaca_eval_preference"] == pytest.approx(1.9 if switch else 2 - 1 / 3)


@pytest.mark.parametrize("top, error", [
    ([{"token": "A", "logprob": -0.1}, {"token": " M", "logprob": -1.0}], "neither identifier"),
    (None, "no log-probs"),
])
def test_a_reply_without_a_verdict_stops_with_the_reply_quoted(endpoint, top, error):
    def script(body):
        choice = {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "A"},
                  "logprobs": None if top is None else {"content": [{"token": "A", "logprob": -0.1,
                                                                     "top_logprobs": top}]}}
        return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": "judge", "choices": [choice]}

    ep = endpoint(script)
    with pytest.raises(VerdictError, match=error):
        AlpacaEvalJudge(cfg(ep.url)).judge(["q?"], [ANSWER], [BASELINE])


def test_the_annotator_is_read_from_the_installed_package():
    config, template = annotator_config("weighted_alpaca_eval_gpt4_turbo")
    assert config["fn_completion_parser"] == "logprob_parser"
    assert "{instruction}" in template and "{output_1}" in template and "{output_2}" in template


def test_protocol_settings_are_strict():
    with pytest.raises(ValueError, match="AlpacaEval annotator"):
        JudgeConfig(kind="llm_judge", protocol="alpaca_eval", base_url="http://x/v1", model_name="j", max_tokens=8)
    with pytest.raises(ValueError, match="only used by kind 'llm_judge'"):
        JudgeConfig(kind="function", function="m:f", protocol="alpaca_eval")
    with pytest.raises(ValueError, match="only used with protocol 'alpaca_eval'"):
        JudgeConfig(kind="llm_judge", base_url="http://x/v1", model_name="j", orders="alpaca_eval")


def test_the_key_named_by_the_recipe_is_sent_and_a_failing_endpoint_is_an_error(endpoint, monkeypatch):
    from prefloop.core.judges import JudgeRequestError

    monkeypatch.setenv("JUDGE_KEY", "sekret")
    ep = endpoint(scripted)
    AlpacaEvalJudge(cfg(ep.url, api_key_env="JUDGE_KEY")).judge(["q?"], [ANSWER], [BASELINE])
    assert {next(v for k, v in h.items() if k.lower() == "authorization") for h in ep.headers} == {"Bearer sekret"}
    down = endpoint(lambda body: (500, {"error": {"message": "overloaded"}}))
    with pytest.raises(JudgeRequestError, match="500"):
        AlpacaEvalJudge(cfg(down.url)).judge(["q?"], [ANSWER], [BASELINE])
    assert len(down.requests) == 1  # retries: 0 in this config
