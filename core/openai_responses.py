"""OpenAI response shapes for the Serve deployment, and the ids that say which weights answered.

Pure (no ray, no vllm). A served model's id names its weights: ``prefloop-base`` (the base model),
``prefloop-round-3`` (round 3's committed model), ``prefloop-round-3-step-40`` (a ReMax step checkpoint of
round 3, before the round commits). ``prefloop`` alone means whatever the server holds now. A request that
names an id is answered by exactly those weights, checked under the engine lock at generation time, or refused
with a 404 (``ModelNotServed``): during a swap over several replicas each replica switches on its own, so a
client that must not mix rounds names one. ``/v1/models`` lists the current id and the alias.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

from prefloop.core.openai_api import ChatRequest, RequestError


class ModelNotServed(RequestError):
    """A request for a model id (round, step) that this server does not hold now (HTTP 404)."""

    status = 404
    kind = "not_found_error"


@dataclass(frozen=True)
class Candidate:
    """One generated sample."""

    text: str
    finish_reason: str
    num_tokens: int
    logprobs: list[dict[str, Any]] | None = None  # OpenAI's logprobs.content, when the request asked for them


def served_model_id(name: str, round_idx: int | None, step: int | None = None) -> str:
    """``prefloop-round-3``, ``prefloop-round-3-step-40`` (an uncommitted ReMax step), or ``prefloop-base``."""
    if round_idx is None:
        return f"{name}-base"
    return f"{name}-round-{round_idx}" + (f"-step-{step}" if step is not None else "")


def requested_model(requested: str | None, name: str) -> str | None:
    """The id a request pins (None: ``name`` or no model, i.e. the current weights). A model of another name
    is another server's (400)."""
    if requested is None or requested == name:
        return None
    if requested.startswith(f"{name}-"):
        return requested
    raise RequestError("model", f"model {requested!r} is not served here; use {name!r} (see /v1/models)")


def check_served(requested: str | None, current: str) -> None:
    """Refuse (404) a request pinned to an id other than the weights about to answer it."""
    if requested is not None and requested != current:
        raise ModelNotServed("model", f"model {requested!r} is not served now: this server holds {current!r}. "
                                      f"Ask for {current.rsplit('-round-', 1)[0]!r} to get the current weights.")


def best_indices(scores: Sequence[float], k: int) -> list[int]:
    """The indices of the ``k`` highest scores, best first; ties go to the earlier sample."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def _token_entry(text: str | None, logprob: float) -> dict[str, Any]:
    text = text or ""
    return {"token": text, "logprob": float(logprob), "bytes": list(text.encode("utf-8"))}


def logprob_content(token_ids: Sequence[int], steps: Sequence[dict[int, Any]] | None, top: int) -> list[dict]:
    """OpenAI's ``logprobs.content`` from an engine's per-position log-probs.

    ``steps[i]`` maps token id -> an object with ``logprob``, ``rank`` (1 = most likely) and ``decoded_token``
    (vLLM's ``Logprob``); it holds the ``top`` most likely tokens and the sampled one ``token_ids[i]``."""
    content = []
    for tid, step in zip(token_ids, steps or []):
        chosen = step.get(tid)
        alternatives = sorted((lp for lp in step.values() if lp.rank is not None and lp.rank <= top),
                              key=lambda lp: lp.rank)
        entry = _token_entry(getattr(chosen, "decoded_token", None), chosen.logprob if chosen else float("nan"))
        entry["top_logprobs"] = [_token_entry(lp.decoded_token, lp.logprob) for lp in alternatives]
        content.append(entry)
    return content


def _finish_reason(reason: str) -> str:
    return reason if reason in ("stop", "length") else "stop"


def chat_completion(request: ChatRequest, *, model_id: str, round_idx: int | None, candidates: Sequence[Candidate],
                    prompt_tokens: int, chosen: Sequence[int] | None = None, scores: Sequence[float] | None = None,
                    created: int | None = None, step: int | None = None) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` object; ``chosen`` picks (and orders) the returned candidates."""
    chosen = list(range(len(candidates))) if chosen is None else list(chosen)
    choices = [{"index": i, "message": {"role": "assistant", "content": candidates[c].text},
                "finish_reason": _finish_reason(candidates[c].finish_reason)} for i, c in enumerate(chosen)]
    if request.logprobs:
        for choice, c in zip(choices, chosen):
            choice["logprobs"] = {"content": candidates[c].logprobs or []}
    completion_tokens = sum(c.num_tokens for c in candidates)  # every sample drawn was paid for
    out: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
        "created": int(time.time()) if created is None else created, "model": model_id, "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "prefloop_round": round_idx, "prefloop_step": step,
    }
    if scores is not None:
        rerank: dict[str, Any] = {"method": request.rerank, "scores": [float(s) for s in scores], "chosen": chosen}
        if request.return_candidates:
            rerank["candidates"] = [c.text for c in candidates]
        out["prefloop_rerank"] = rerank
    return out


def stream_base(completion_id: str, created: int, model_id: str, round_idx: int | None,
                step: int | None) -> dict[str, Any]:
    """The fields every ``chat.completion.chunk`` of one streamed completion shares."""
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
            "prefloop_round": round_idx, "prefloop_step": step}


def stream_chunk(base: dict[str, Any], index: int, delta: dict[str, Any], finish: str | None = None) -> str:
    """One server-sent event: choice ``index``'s ``delta`` (role, or a piece of content), or its finish."""
    choice = {"index": index, "delta": delta, "finish_reason": None if finish is None else _finish_reason(finish)}
    return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"


STREAM_DONE = "data: [DONE]\n\n"


def stream_error(err: Exception, param: str | None = None, kind: str | None = None) -> str:
    """An error after the stream began (the status line is sent): OpenAI's envelope as an event."""
    return f"data: {json.dumps(error_body(err, param, kind))}\n\n"


def stream_events(completion: dict[str, Any]) -> list[str]:
    """A finished completion as ``chat.completion.chunk`` events (role, content, finish, ``[DONE]``): for answers
    that exist only whole (best-of-N picks after every sample is drawn). Other streams are sent as the engine
    makes the tokens (``actors/serve_stream.py``)."""
    base = stream_base(completion["id"], completion["created"], completion["model"], completion["prefloop_round"],
                       completion["prefloop_step"])
    events = []
    for choice in completion["choices"]:
        i = choice["index"]
        events += [stream_chunk(base, i, {"role": "assistant"}),
                   stream_chunk(base, i, {"content": choice["message"]["content"]}),
                   stream_chunk(base, i, {}, choice["finish_reason"])]
    return events + [STREAM_DONE]


def models_list(name: str, round_idx: int | None, created: int, step: int | None = None) -> dict[str, Any]:
    """``/v1/models``: the current weights' id first, then the stable alias ``name`` (ids, no paths)."""
    current = served_model_id(name, round_idx, step)
    entry = {"object": "model", "created": created, "owned_by": "prefloop", "root": current,
             "prefloop_round": round_idx, "prefloop_step": step}
    return {"object": "list", "data": [{"id": current, **entry}, {"id": name, **entry}]}


def error_body(err: Exception, param: str | None = None, kind: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope."""
    kind = kind or getattr(err, "kind", "invalid_request_error")
    return {"error": {"message": str(err), "type": kind, "param": getattr(err, "param", param), "code": None}}

