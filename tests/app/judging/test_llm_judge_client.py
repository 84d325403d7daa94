"""The LLM judge's HTTP client against a scripted local endpoint (a test double isolating the client): both
answer orders per prompt, bounded retries, timeouts, the logprobs-refused fallback, the API key header."""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from prefloop.app.judging.llm_judge import JudgeRequestError, LLMJudge
from prefloop.core.judge_config import JudgeConfig


class Endpoint:
    """``/v1/chat/completions`` on 127.0.0.1; ``script(body) -> (status, payload)`` decides each answer."""

    def __init__(self, script):
        self.requests, self.headers, outer = [], [], self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                outer.headers.append(dict(self.headers))
                status, payload = script(body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def answers_of(body):
    user = body["messages"][1]["content"]
    start = user.index("[")
    return [a["answer"] for a in json.loads(user[start:user.index("]", start) + 1])]


def prefers_long(body):
    """A judge preferring the longer answer, 80/20 in log-probs, and biased towards `m` in its text."""
    first, second = answers_of(body)
    p_second = 0.8 if len(second) > len(first) else 0.2
    top = [{"token": "M", "logprob": math.log(p_second)}, {"token": "m", "logprob": math.log(1 - p_second)}]
    choice = {"index": 0, "message": {"role": "assistant", "content": "m"}, "finish_reason": "stop"}
    if body.get("logprobs"):
        choice["logprobs"] = {"content": [{"token": "m", "logprob": top[1]["logprob"], "top_logprobs": top}]}
    return 200, {"choices": [choice]}


def judge_cfg(url, **kw):
    return JudgeConfig(kind="llm_judge", base_url=url, model_name="judge", **{"retries": 0, "timeout_s": 5, **kw})


@pytest.fixture
def endpoint():
    made = []

    def make(script):
        made.append(Endpoint(script))
        return made[-1]

    yield make
    for e in made:
        e.close()


def test_both_orders_are_asked_and_combined(endpoint):
    ep = endpoint(prefers_long)
    out = LLMJudge(judge_cfg(ep.url)).judge(["Explain bees.", "Explain tea."], ["a long answer here", "x"],
                                            ["short", "a much longer base answer"])
    assert len(ep.requests) == 4
    orders = sorted(tuple(answers_of(b)) for b in ep.requests)
    assert orders == sorted([("a long answer here", "short"), ("short", "a long answer here"),
                             ("x", "a much longer base answer"), ("a much longer base answer", "x")])
    assert all(b["logprobs"] is True and b["top_logprobs"] == 5 and b["temperature"] == 0.0 for b in ep.requests)
    # prompt 1: the round's answer is longer: 0.8 as m (1 - 0.2) and 0.8 as M -> 0.8; prompt 2: 0.2
    assert out[0]["preference"] == pytest.approx(0.8) and out[1]["preference"] == pytest.approx(0.2)
    assert out[0]["p_second_round_first"] == pytest.approx(0.2) and out[0]["verdict_source"] == "logprobs"


def test_text_only_verdicts_cancel_a_position_bias(endpoint):
    ep = endpoint(prefers_long)  # its text always says "m": pure position bias
    out = LLMJudge(judge_cfg(ep.url, top_logprobs=0)).judge(["q"], ["a long answer"], ["b"])
    assert "logprobs" not in ep.requests[0]
    assert out[0]["preference"] == 0.5 and out[0]["verdict_source"] == "text"


def test_an_endpoint_refusing_logprobs_is_asked_again_without(endpoint):
    def refuses(body):
        if body.get("logprobs"):
            return 400, {"error": {"message": "'logprobs' is not supported by this server", "param": "logprobs"}}
        return prefers_long(body)

    ep = endpoint(refuses)
    judge = LLMJudge(judge_cfg(ep.url))
    out = judge.judge(["q"], ["a"], ["b"])
    assert out[0]["verdict_source"] == "text" and judge.top_logprobs == 0


def test_retries_then_fails_naming_the_url_and_the_status(endpoint):
    calls = []

    def flaky(body):
        calls.append(1)
        return (503, {"error": "busy"}) if len(calls) < 2 else prefers_long(body)

    ep = endpoint(flaky)
    assert LLMJudge(judge_cfg(ep.url, retries=1)).ask("q", "a", "bb").source == "logprobs"
    down = endpoint(lambda body: (503, {"error": "down"}))
    with pytest.raises(JudgeRequestError, match=r"/v1/chat/completions: no answer after 2 attempts: HTTP 503"):
        LLMJudge(judge_cfg(down.url, retries=1)).ask("q", "a", "b")
    bad = endpoint(lambda body: (400, {"error": "bad model"}))
    with pytest.raises(JudgeRequestError, match="HTTP 400"):
        LLMJudge(judge_cfg(bad.url, retries=3)).ask("q", "a", "b")
    assert len(bad.requests) == 1  # a 400 is not retried


def test_every_request_has_a_timeout(endpoint):
    import time

    ep = endpoint(lambda body: (time.sleep(20), prefers_long(body))[1])
    started = time.monotonic()
    with pytest.raises(JudgeRequestError, match="no answer after 1 attempts"):
        LLMJudge(judge_cfg(ep.url, timeout_s=0.3)).ask("q", "a", "b")
    assert time.monotonic() - started < 10  # not the 20 s the endpoint would take


def test_api_key_from_the_named_variable(endpoint, monkeypatch):
    ep = endpoint(prefers_long)
    with pytest.raises(JudgeRequestError, match="JUDGE_KEY is not set"):
        LLMJudge(judge_cfg(ep.url, api_key_env="JUDGE_KEY"))
    monkeypatch.setenv("JUDGE_KEY", "s3cret")
    LLMJudge(judge_cfg(ep.url, api_key_env="JUDGE_KEY")).ask("q", "a", "b")
    assert ep.headers[0]["Authorization"] == "Bearer s3cret"


def test_a_reply_naming_no_identifier_is_an_error_quoting_it(endpoint):
    ep = endpoint(lambda body: (200, {"choices": [{"message": {"content": "Both are fine"}}]}))
    with pytest.raises(ValueError, match="'Both are fine'"):
        LLMJudge(judge_cfg(ep.url)).judge(["q"], ["a"], ["b"])
