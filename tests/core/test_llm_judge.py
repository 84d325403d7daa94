"""The LLM judge's protocol, pure: prompt, request body, verdict from log-probs or text, the two orders combined."""

import json
import math

import pytest

from prefloop.core.llm_judge import (
    FIRST,
    SECOND,
    Verdict,
    VerdictError,
    build_messages,
    combine,
    read_verdict,
    request_body,
    second_from_logprobs,
    second_from_text,
)


def test_messages_label_the_two_answers_m_and_M_in_order():
    msgs = build_messages("Explain bees.", "round answer", "base answer")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert "Explain bees." in user
    start = user.index("[")
    answers = json.loads(user[start:user.index("]", start) + 1])
    assert answers == [{"identifier": "m", "answer": "round answer"}, {"identifier": "M", "answer": "base answer"}]
    assert "exactly `m` or `M`" in user


def test_request_body_asks_log_probs_only_when_wanted():
    body = request_body("judge", [{"role": "user", "content": "x"}], 4, 5)
    assert body == {"model": "judge", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4,
                    "temperature": 0.0, "logprobs": True, "top_logprobs": 5}
    assert "logprobs" not in request_body("judge", [], 4, 0)


def choice(text, content=None):
    out = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    if content is not None:
        out["logprobs"] = {"content": content}
    return out


def test_logprob_verdict_sums_each_identifier_spelling():
    # P(m) = 0.5 (as "m") + 0.1 (as " m"); P(M) = 0.3; "x" is ignored: P(M) / (P(m) + P(M)) = 0.3 / 0.9
    top = [{"token": "m", "logprob": math.log(0.5)}, {"token": "M", "logprob": math.log(0.3)},
           {"token": " m", "logprob": math.log(0.1)}, {"token": "x", "logprob": math.log(0.1)}]
    c = choice("m", [{"token": "m", "logprob": math.log(0.5), "top_logprobs": top}])
    assert second_from_logprobs(c) == pytest.approx(0.3 / 0.9)
    v = read_verdict({"choices": [c]})
    assert v.source == "logprobs" and v.p_second == pytest.approx(1 / 3)


def test_logprob_verdict_skips_leading_tokens_without_an_identifier():
    c = choice("`M`", [{"token": "`", "logprob": -0.1, "top_logprobs": [{"token": "`", "logprob": -0.1}]},
                       {"token": "M", "logprob": -0.2, "top_logprobs": [{"token": "M", "logprob": math.log(0.8)},
                                                                         {"token": "m", "logprob": math.log(0.2)}]}])
    assert second_from_logprobs(c) == pytest.approx(0.8)


@pytest.mark.parametrize("text, p", [("M", 1.0), ("m", 0.0), (" `M`", 1.0), ("'m' is better", 0.0),
                                     ("**M**", 1.0), ("Model", None), ("maybe", None), ("", None), ("x m", None)])
def test_text_verdict_is_case_sensitive_and_strict(text, p):
    assert second_from_text(text) == p


def test_the_verdict_is_read_at_the_verdict_token_not_at_a_position_whose_top_k_holds_one():
    # the reply is `M`: the opening backtick's alternatives happen to hold "m", which is not the verdict
    c = choice("`M`", [{"token": "`", "logprob": -0.1, "top_logprobs": [{"token": "`", "logprob": -0.1},
                                                                        {"token": "m", "logprob": -3.0}]},
                       {"token": "M", "logprob": -0.2, "top_logprobs": [{"token": "M", "logprob": math.log(0.9)},
                                                                         {"token": "m", "logprob": math.log(0.1)}]}])
    v = read_verdict({"choices": [c]})
    assert v.source == "logprobs" and v.p_second == pytest.approx(0.9)
    # a reply that opens with other words has no verdict, whatever its first token's alternatives hold
    wordy = choice("I think M", [{"token": "I", "logprob": -0.1, "top_logprobs": [{"token": "I", "logprob": -0.1},
                                                                                 {"token": "m", "logprob": -2.5}]}])
    with pytest.raises(VerdictError, match="naming neither"):
        read_verdict({"choices": [wordy]})
    # a verdict token that contradicts the text
    odd = choice("M", [{"token": "m", "logprob": -0.1, "top_logprobs": [{"token": "m", "logprob": -0.1}]}])
    with pytest.raises(VerdictError, match="disagrees"):
        read_verdict({"choices": [odd]})


def test_text_verdict_when_no_logprobs_and_errors_name_the_reply():
    v = read_verdict({"choices": [choice("M")]})
    assert (v.p_second, v.source) == (1.0, "text")
    no_alt = choice("M", [{"token": "Hello", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -1}]}])
    assert read_verdict({"choices": [no_alt]}).source == "text"  # log-probs name no identifier: the text decides
    with pytest.raises(VerdictError, match="'I cannot decide'"):
        read_verdict({"choices": [choice("I cannot decide")]})
    with pytest.raises(VerdictError, match="no choices"):
        read_verdict({"choices": []})


def test_both_orders_cancel_a_position_bias():
    # a judge that always says "the first one": the round wins as m, loses as M -> 0.5
    assert combine(Verdict(0.0, "text", FIRST), Verdict(0.0, "text", FIRST)) == 0.5
    # a consistent judge preferring the round: m when first (p_second 0), M when second (p_second 1) -> 1
    assert combine(Verdict(0.0, "text", FIRST), Verdict(1.0, "text", SECOND)) == 1.0
    assert combine(Verdict(0.2, "logprobs", ""), Verdict(0.6, "logprobs", "")) == pytest.approx(0.5 * (0.8 + 0.6))
