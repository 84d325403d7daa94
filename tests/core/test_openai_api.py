"""OpenAI request parsing and response shaping (core/openai_api.py, core/openai_responses.py): pure, no Ray,
no vLLM."""

import json

import pytest

from prefloop.core.openai_api import Limits, RequestError, check_length, parse_chat_request, parse_json_body
from prefloop.core.openai_responses import (
    Candidate,
    ModelNotServed,
    best_indices,
    chat_completion,
    check_served,
    error_body,
    models_list,
    requested_model,
    served_model_id,
    stream_events,
)

USER = [{"role": "user", "content": "Tell me about cats."}]


def parse(**body):
    return parse_chat_request({"messages": USER, **body})


def test_defaults_and_sampling_kwargs():
    req = parse(model="prefloop", max_tokens=12, temperature=0, seed=7, stop="\n")
    assert (req.num_samples, req.num_return, req.rerank, req.stream) == (1, 1, None, False)
    assert req.sampling_kwargs() == {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 12, "seed": 7,
                                     "stop": ["\n"], "presence_penalty": 0.0, "frequency_penalty": 0.0}
    assert parse().max_tokens == Limits().default_max_tokens


def test_text_parts_are_joined_and_extra_fields_ignored():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    req = parse_chat_request({"messages": msgs, "user": "x", "stream_options": {"include_usage": True}})
    assert req.messages == [{"role": "user", "content": "ab"}]


@pytest.mark.parametrize("body, n_samples, n_return, rerank", [
    ({"n": 3}, 3, 3, None),
    ({"n": 16, "rerank": "pairrm"}, 16, 1, "pairrm"),
    ({"best_of": 8}, 8, 1, "pairrm"),
    ({"best_of": 8, "n": 2}, 8, 2, "pairrm"),
])
def test_best_of_spellings(body, n_samples, n_return, rerank):
    req = parse(**body)
    assert (req.num_samples, req.num_return, req.rerank) == (n_samples, n_return, rerank)
    assert req.sampling_kwargs()["n"] == n_samples


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
    ({"temperature": 3}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": 17}, "n"),
    ({"n": True}, "n"),
    ({"n": 2.0}, "n"),
    ({"best_of": 2, "n": 3}, "best_of"),
    ({"best_of": 4, "rerank": "pairrm"}, "rerank"),
    ({"rerank": "bleu"}, "rerank"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, "max_tokens"),
    ({"max_completion_tokens": -1}, "max_completion_tokens"),
    ({"stop": [""]}, "stop"),
    ({"stop": 3}, "stop"),
    ({"seed": -1}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"model": 3}, "model"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"logit_bias": {"5": 1}}, "logit_bias"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": True, "stream": True}, "logprobs"),
    ({"presence_penalty": 5}, "presence_penalty"),
])
def test_bad_fields_are_named(body, param):
    with pytest.raises(RequestError) as err:
        parse_chat_request({"messages": USER, **body})
    assert err.value.param == param
    assert param in str(err.value) or param == "messages"
    assert error_body(err.value)["error"]["param"] == param


def test_missing_messages_and_bad_json():
    with pytest.raises(RequestError, match="'messages' is required"):
        parse_chat_request({"model": "prefloop"})
    with pytest.raises(RequestError, match="JSON object"):
        parse_chat_request([1, 2])
    with pytest.raises(RequestError, match="not valid JSON"):
        parse_json_body(b"{nope")
    with pytest.raises(RequestError, match="not valid JSON"):
        parse_json_body(b"\xff\xfe")


def test_length_checks_name_the_field():
    check_length(10, 20, 30)
    with pytest.raises(RequestError) as err:
        check_length(10, 25, 30)
    assert err.value.param == "max_tokens" and "at most 20" in str(err.value)
    with pytest.raises(RequestError) as err:
        check_length(30, 1, 30)
    assert err.value.param == "messages"


def test_model_names():
    assert served_model_id("prefloop", 3) == "prefloop-round-3"
    assert served_model_id("prefloop", 3, step=40) == "prefloop-round-3-step-40"  # a ReMax step, uncommitted
    assert served_model_id("prefloop", None) == "prefloop-base"
    assert requested_model(None, "prefloop") is None and requested_model("prefloop", "prefloop") is None
    for pinned in ("prefloop-round-0", "prefloop-round-7", "prefloop-base", "prefloop-round-1-step-2"):
        assert requested_model(pinned, "prefloop") == pinned
    with pytest.raises(RequestError) as err:
        requested_model("gpt-4o", "prefloop")
    assert err.value.param == "model" and err.value.status == 400


def test_a_request_pinned_to_other_weights_is_a_404_naming_what_is_served():
    check_served(None, "prefloop-round-2")  # no round named: whatever is current
    check_served("prefloop-round-2", "prefloop-round-2")
    with pytest.raises(ModelNotServed) as err:  # round 2 asked, a step checkpoint of round 3 holds the engine
        check_served("prefloop-round-3", "prefloop-round-3-step-4")
    assert err.value.status == 404 and "prefloop-round-3-step-4" in str(err.value)
    assert error_body(err.value)["error"]["type"] == "not_found_error"
    with pytest.raises(ModelNotServed):
        check_served("prefloop-round-1", "prefloop-round-2")


def test_best_indices_orders_and_breaks_ties_early():
    assert best_indices([0.1, 0.9, 0.5, 0.9], 1) == [1]
    assert best_indices([0.1, 0.9, 0.5, 0.9], 3) == [1, 3, 2]


def test_completion_shape_plain_and_reranked():
    cands = [Candidate("a", "stop", 2), Candidate("bb", "length", 4), Candidate("c", "abort", 1)]
    plain = chat_completion(parse(n=3), model_id="prefloop-round-1", round_idx=1, candidates=cands,
                            prompt_tokens=5, created=123)
    assert plain["object"] == "chat.completion" and plain["model"] == "prefloop-round-1"
    assert plain["prefloop_round"] == 1 and plain["created"] == 123 and plain["id"].startswith("chatcmpl-")
    assert [c["message"]["content"] for c in plain["choices"]] == ["a", "bb", "c"]
    assert [c["finish_reason"] for c in plain["choices"]] == ["stop", "length", "stop"]
    assert plain["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    assert "prefloop_rerank" not in plain
    json.dumps(plain)

    req = parse(best_of=3, n=2, return_candidates=True)
    ranked = chat_completion(req, model_id="m", round_idx=None, candidates=cands, prompt_tokens=5,
                             chosen=[1, 0], scores=[0.2, 0.7, -1.0])
    assert [c["index"] for c in ranked["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in ranked["choices"]] == ["bb", "a"]
    assert ranked["prefloop_rerank"] == {"method": "pairrm", "scores": [0.2, 0.7, -1.0], "chosen": [1, 0],
                                         "candidates": ["a", "bb", "c"]}
    assert ranked["usage"]["completion_tokens"] == 7  # all three samples were drawn
    assert "candidates" not in chat_completion(parse(best_of=3), model_id="m", round_idx=0, candidates=cands,
                                               prompt_tokens=5, chosen=[1], scores=[0, 1, 0])["prefloop_rerank"]


def test_stream_events_rebuild_the_text():
    cands = [Candidate("hello there", "stop", 3)]
    done = chat_completion(parse(stream=True), model_id="m-round-2", round_idx=2, candidates=cands, prompt_tokens=1)
    events = stream_events(done)
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["prefloop_round"] == 2 for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "hello there"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_models_list():
    out = models_list("prefloop", 2, 5)
    assert out["object"] == "list" and "/" not in json.dumps(out)  # ids, no filesystem paths
    assert out["data"][0]["root"] == "prefloop-round-2"
    assert [m["id"] for m in out["data"]] == ["prefloop-round-2", "prefloop"]
    assert all(m["prefloop_round"] == 2 and m["object"] == "model" for m in out["data"])
    step = models_list("prefloop", 2, 5, step=7)
    assert [m["id"] for m in step["data"]] == ["prefloop-round-2-step-7", "prefloop"]


def test_logprobs_reach_the_engine_and_come_back_in_openai_shape():
    from collections import namedtuple

    from prefloop.core.openai_responses import logprob_content

    req = parse_chat_request({"messages": USER, "logprobs": True, "top_logprobs": 2, "max_tokens": 2})
    assert (req.logprobs, req.top_logprobs, req.sampling_kwargs()["logprobs"]) == (True, 2, 2)
    assert "logprobs" not in parse_chat_request({"messages": USER}).sampling_kwargs()
    Lp = namedtuple("Lp", "logprob rank decoded_token")
    # position 0: the sampled token 7 is the 3rd most likely (outside the top 2, still reported as the token);
    # position 1: the sampled token 4 is the most likely
    steps = [{5: Lp(-0.5, 1, "M"), 6: Lp(-1.5, 2, "m"), 7: Lp(-2.0, 3, "x")}, {4: Lp(-0.1, 1, "é")}]
    content = logprob_content([7, 4], steps, 2)
    assert content[0]["token"] == "x" and content[0]["logprob"] == -2.0
    assert [(t["token"], t["logprob"]) for t in content[0]["top_logprobs"]] == [("M", -0.5), ("m", -1.5)]
    assert content[1]["bytes"] == [0xC3, 0xA9] and [t["token"] for t in content[1]["top_logprobs"]] == ["é"]
    cands = [Candidate("x", "length", 2, content)]
    done = chat_completion(req, model_id="m", round_idx=0, candidates=cands, prompt_tokens=1)
    assert done["choices"][0]["logprobs"] == {"content": content}
    plain = chat_completion(parse_chat_request({"messages": USER}), model_id="m", round_idx=0, candidates=cands,
                            prompt_tokens=1)
    assert "logprobs" not in plain["choices"][0]
