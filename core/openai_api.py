"""OpenAI chat-completions shapes for the Serve deployment: parse and validate a request, build the responses.

Pure (no ray, no vllm): the deployment in ``actors/serve.py`` is a thin shell around these functions.

A request body is the OpenAI ``/v1/chat/completions`` body. Supported fields: ``messages`` (text content, or
a list of ``{"type": "text"}`` parts), ``model``, ``n``, ``max_tokens`` / ``max_completion_tokens``,
``temperature``, ``top_p``, ``seed``, ``stop``, ``presence_penalty``, ``frequency_penalty``, ``stream``,
``logprobs`` / ``top_logprobs`` (each answer token's log-probability and its ``top_logprobs`` most likely
alternatives, in OpenAI's ``choices[i].logprobs.content`` shape; not with ``stream``).
Fields that would change the meaning of the answer and are not implemented (``tools``, ``response_format``,
``logit_bias`` ...) are refused; other unknown fields (``user``, ``stream_options`` ...) are ignored, as
OpenAI-compatible servers commonly do.

Response shapes (completions, stream events, ``/v1/models``, errors) and the served model ids are in
``core/openai_responses.py``.

Best-of-N with PairRM, two spellings (extensions to the OpenAI body):

- ``"best_of": B`` draws B samples, PairRM ranks them, and the ``n`` best (default 1) are returned, best first.
- ``"n": N, "rerank": "pairrm"`` draws N samples and returns the single best one (the Snorkel card's
  "PairRM best-of-16" is ``{"n": 16, "rerank": "pairrm"}``).

A reranked response carries ``prefloop_rerank``: each sample's PairRM score and the chosen indices, plus the
sample texts when the request sets ``"return_candidates": true``. Every response carries ``prefloop_round``,
the round whose weights produced it, and ``model`` names them too (``prefloop-round-3``; ``prefloop-base`` for
the base model; ``prefloop-round-3-step-40`` for a ReMax step checkpoint of a round not yet committed, with
``prefloop_step``). A request's ``model`` may be ``prefloop`` (whatever the server holds now) or one of those
ids: it is then answered by exactly those weights or refused with a 404. Errors are ``RequestError`` naming the offending field (``param``), returned as HTTP 400
(413 for a body over the size limit, 401 for a missing or wrong API key). A field that is a near-miss of a
known one (``max_token``) is refused naming the right spelling rather than silently ignored. ``/v1/models``
and ``/health`` name models by id (``prefloop-round-3``), never by filesystem path; a server error (500)
carries an error id that the server log has next to the traceback.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from prefloop.core.templates import validate_messages

RERANKERS = ("pairrm",)
REFUSED = ("tools", "tool_choice", "functions", "function_call", "response_format", "logit_bias")
MAX_TOP_LOGPROBS = 20  # OpenAI's bound, and vLLM's default max_logprobs


KNOWN = ("messages", "model", "n", "best_of", "rerank", "max_tokens", "max_completion_tokens", "temperature",
         "top_p", "seed", "stop", "presence_penalty", "frequency_penalty", "stream", "return_candidates",
         "user", "stream_options", "metadata", "store", "service_tier", "parallel_tool_calls") + REFUSED


class RequestError(ValueError):
    """A request the server refuses (HTTP 400 unless ``status`` says otherwise); ``param`` names the field."""

    status = 400
    kind = "invalid_request_error"

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Limits:
    """Server-side bounds on a request."""

    max_samples: int = 16
    default_max_tokens: int = 64
    max_tokens: int = 4096
    max_messages: int = 256
    max_body_bytes: int = 1_000_000


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat request: what to render, how many samples to draw and how many to return."""

    messages: list[dict[str, str]]
    model: str | None = None
    num_samples: int = 1
    num_return: int = 1
    rerank: str | None = None
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stream: bool = False
    return_candidates: bool = False
    logprobs: bool = False
    top_logprobs: int = 0

    def sampling_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``vllm.SamplingParams``."""
        kwargs: dict[str, Any] = dict(n=self.num_samples, temperature=self.temperature, top_p=self.top_p,
                                      max_tokens=self.max_tokens, presence_penalty=self.presence_penalty,
                                      frequency_penalty=self.frequency_penalty)
        if self.stop:
            kwargs["stop"] = list(self.stop)
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if self.logprobs:
            kwargs["logprobs"] = self.top_logprobs  # vLLM: the sampled token's log-prob plus this many alternatives
        return kwargs


def parse_json_body(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(None, f"request body is not valid JSON: {err}") from None


def _int(body: dict, key: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(key, f"'{key}' must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise RequestError(key, f"'{key}' must be {bound}, got {value}")
    return value


def _number(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(key, f"'{key}' must be a number, got {value!r}")
    if value > hi or value < lo or (lo_open and value == lo):
        raise RequestError(key, f"'{key}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {value}")
    return float(value)


def _bool(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(key, f"'{key}' must be true or false, got {value!r}")
    return value


def _content_text(messages: Any) -> Any:
    """OpenAI lets ``content`` be a list of parts; only text parts can be served by a text model."""
    if not isinstance(messages, list):
        return messages
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, dict) and isinstance(m.get("content"), list):
            parts = m["content"]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in parts):
                raise RequestError("messages", f"messages[{i}].content: only text parts are supported")
            m = {**m, "content": "".join(p["text"] for p in parts)}
        out.append(m)
    return out


def _messages(body: dict, limits: Limits) -> list[dict[str, str]]:
    if "messages" not in body:
        raise RequestError("messages", "'messages' is required")
    if isinstance(body["messages"], list) and len(body["messages"]) > limits.max_messages:
        raise RequestError("messages", f"{len(body['messages'])} messages; this server takes at most "
                                       f"{limits.max_messages}")
    try:
        return validate_messages(_content_text(body["messages"]))
    except ValueError as err:
        raise RequestError("messages", str(err)) from None


def _stop(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 16:
        raise RequestError("stop", "'stop' must be a non-empty string or a list of up to 16 of them")
    return list(stops)


def _max_tokens(body: dict, limits: Limits) -> int:
    a = _int(body, "max_tokens", None, 1, limits.max_tokens)
    b = _int(body, "max_completion_tokens", None, 1, limits.max_tokens)
    if a is not None and b is not None and a != b:
        raise RequestError("max_tokens", "'max_tokens' and 'max_completion_tokens' disagree")
    return a or b or limits.default_max_tokens


def _sample_counts(body: dict, limits: Limits) -> tuple[int, int, str | None]:
    """(samples to draw, choices to return, reranker) from ``n``, ``best_of`` and ``rerank``."""
    n = _int(body, "n", 1, 1, limits.max_samples)
    best_of = _int(body, "best_of", None, 1, limits.max_samples)
    rerank = body.get("rerank")
    if rerank is not None and rerank not in RERANKERS:
        raise RequestError("rerank", f"'rerank' must be one of {list(RERANKERS)}, got {rerank!r}")
    if best_of is not None:
        if best_of < n:
            raise RequestError("best_of", f"'best_of' ({best_of}) must be >= 'n' ({n})")
        if rerank is not None:
            raise RequestError("rerank", "give either 'best_of' or 'n' with 'rerank', not both")
        return best_of, n, "pairrm"
    if rerank is not None:
        return n, 1, rerank
    return n, n, None


def parse_chat_request(body: Any, limits: Limits = Limits()) -> ChatRequest:
    """Validate an OpenAI chat-completions body; raise RequestError naming the field."""
    if not isinstance(body, dict):
        raise RequestError(None, "request body must be a JSON object")
    for key in REFUSED:
        if body.get(key) not in (None, False, [], {}):
            raise RequestError(key, f"'{key}' is not supported by this server")
    check_near_misses(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("model", "'model' must be a string")
    num_samples, num_return, rerank = _sample_counts(body, limits)
    seed = _int(body, "seed", None, 0, 2**63 - 1)
    logprobs, top_logprobs = _bool(body, "logprobs"), _int(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    if top_logprobs and not logprobs:
        raise RequestError("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    if logprobs and _bool(body, "stream"):
        raise RequestError("logprobs", "'logprobs' is not supported with 'stream'")
    return ChatRequest(
        messages=_messages(body, limits), model=model, num_samples=num_samples, num_return=num_return, rerank=rerank,
        max_tokens=_max_tokens(body, limits), temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True), seed=seed, stop=_stop(body),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        stream=_bool(body, "stream"), return_candidates=_bool(body, "return_candidates"), logprobs=logprobs,
        top_logprobs=top_logprobs)


def check_near_misses(body: dict) -> None:
    """An unknown field close to a known one is a typo whose value would otherwise be silently ignored."""
    for key in body:
        if key not in KNOWN and isinstance(key, str):
            close = difflib.get_close_matches(key, KNOWN, n=1, cutoff=0.8)
            if close:
                raise RequestError(key, f"unknown field '{key}'; did you mean '{close[0]}'?")


def check_length(prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
    """Refuse a request the engine cannot fit (vLLM would otherwise fail the whole batch it lands in)."""
    if prompt_tokens >= max_model_len:
        raise RequestError("messages", f"the prompt is {prompt_tokens} tokens; this model takes at most "
                                       f"{max_model_len} tokens in all")
    if prompt_tokens + max_tokens > max_model_len:
        raise RequestError("max_tokens", f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds "
                                         f"the model's {max_model_len} tokens; ask for at most "
                                         f"{max_model_len - prompt_tokens}")
