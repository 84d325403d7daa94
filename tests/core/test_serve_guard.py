"""Hostile and malformed requests at the pure layer: near-miss fields, message count, body size, API key,
what /health and a 500 may show (core/serve_guard.py, core/openai_api.py)."""

import json

import pytest

from prefloop.core.openai_api import Limits, RequestError, parse_chat_request
from prefloop.core.openai_responses import error_body
from prefloop.core.serve_guard import (
    TooLarge,
    Unauthorized,
    check_api_key,
    check_body_size,
    key_digest,
    public_health,
    server_error,
)

USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("typo, right", [("max_token", "max_tokens"), ("temprature", "temperature"),
                                         ("top_pp", "top_p"), ("best_off", "best_of"), ("stremm", "stream")])
def test_a_near_miss_field_is_a_400_naming_the_right_one(typo, right):
    with pytest.raises(RequestError, match=f"did you mean '{right}'") as err:
        parse_chat_request({"messages": USER, typo: 5})
    assert err.value.param == typo and err.value.status == 400


def test_far_unknown_fields_are_still_ignored():
    assert parse_chat_request({"messages": USER, "user": "u", "x_trace": 1, "frequency": 2}).max_tokens == 64


def test_too_many_messages():
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 3 + USER
    assert len(parse_chat_request({"messages": msgs}, Limits(max_messages=7)).messages) == 7
    with pytest.raises(RequestError, match="8 messages; this server takes at most 7") as err:
        parse_chat_request({"messages": msgs + msgs[:1]}, Limits(max_messages=7))
    assert err.value.param == "messages"


def test_body_size_is_checked_from_content_length():
    check_body_size("1000", 1000)
    check_body_size(None, 10)  # chunked: the reader enforces the limit while reading
    with pytest.raises(TooLarge, match="2000001 bytes; this server takes at most 1000000") as err:
        check_body_size("2000001", 1_000_000)
    assert err.value.status == 413
    with pytest.raises(RequestError, match="Content-Length") as err:
        check_body_size("lots", 10)
    assert err.value.status == 400


def test_api_key():
    digest = key_digest("s3cret")
    assert digest != "s3cret" and len(digest) == 64
    check_api_key(None, None)  # no key configured: open
    check_api_key("Bearer s3cret", digest)
    check_api_key("bearer  s3cret ", digest)
    for header, why in ((None, "missing"), ("s3cret", "missing"), ("Basic s3cret", "missing"),
                        ("Bearer ", "missing"), ("Bearer s3cre", "invalid"), ("Bearer s3cret2", "invalid")):
        with pytest.raises(Unauthorized, match=why) as err:
            check_api_key(header, digest)
        assert err.value.status == 401 and error_body(err.value)["error"]["type"] == "authentication_error"


def test_health_and_errors_show_no_paths():
    state = {"replica": "ab12", "round": 3, "model_dir": "/home/me/runs/x/round_3/model",
             "swaps": [{"round": 3, "model_dir": "/home/me/runs/x/round_3/model", "in_place": True, "swap_s": 0.1}]}
    out = public_health("prefloop", state)
    assert out["model"] == "prefloop-round-3" and out["swaps"] == [{"round": 3, "in_place": True, "swap_s": 0.1}]
    assert "/home" not in json.dumps(out)
    body = server_error("e1f2")
    assert body["error"]["error_id"] == "e1f2" and body["error"]["type"] == "server_error"
    assert "e1f2" in body["error"]["message"]


def test_an_empty_api_key_is_an_error_not_an_open_api(monkeypatch):
    from prefloop.core.serve_guard import ServeConfigError, api_key_digest

    monkeypatch.setenv("PREFLOOP_API_KEY", "")
    with pytest.raises(ServeConfigError, match="PREFLOOP_API_KEY is set but empty"):
        api_key_digest(None)
    with pytest.raises(ServeConfigError, match="--api-key is set but empty"):
        api_key_digest("  ")
    monkeypatch.setenv("PREFLOOP_API_KEY", "k1")
    assert api_key_digest(None) == key_digest("k1")
    monkeypatch.delenv("PREFLOOP_API_KEY")
    assert api_key_digest(None) is None


def test_a_non_loopback_bind_without_a_key_refuses_unless_insecure(caplog):
    from prefloop.core.serve_guard import ServeConfigError, check_exposure

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_exposure(host, None, False)
    check_exposure("0.0.0.0", key_digest("k"), False)  # a key: fine anywhere
    with pytest.raises(ServeConfigError, match="refusing to serve on 0.0.0.0 without an API key.*--insecure"):
        check_exposure("0.0.0.0", None, False)
    with caplog.at_level("WARNING"):
        check_exposure("10.0.0.5", None, True)
    assert "WITHOUT an API key" in caplog.text
