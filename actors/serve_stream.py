"""Serve's ``"stream": true``: a chat completion sent as server-sent events while the engine makes its tokens.

The replica (``actors/serve.py``) holds a synchronous ``vllm.LLM`` behind an engine lock that every generation
and every weight swap take. A streamed request runs vLLM's own step loop (``llm_engine.add_request`` and
``step``, with delta outputs) under that lock in a worker thread; each step's new text crosses to the event loop
through an ``EventPipe`` and leaves as a ``chat.completion.chunk`` event. So the whole answer runs on one
round's weights, as a batched request does, and a pinned model id is checked under the lock (404 before any
event). A streamed request runs alone in the engine (not batched with others). If the client goes away the
request is aborted in the engine and the lock is freed. Best-of-N (``rerank``) picks only after every sample is
drawn, so its answer is sent whole.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterator

from prefloop.core import openai_api as api
from prefloop.core import openai_responses as resp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delta:
    """What one engine step added to one choice: new text, and its finish reason once it is done."""

    index: int
    text: str
    finish_reason: str | None


def engine_deltas(llm: Any, prompt_ids: list[int], params: Any, cancelled: Callable[[], bool]) -> Iterator[list[Delta]]:
    """Run one request through ``llm``'s step loop (the caller holds the engine alone), yielding each step's new
    text per choice; abort it in the engine when ``cancelled()`` turns true."""
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    params = params.clone()
    params.output_kind = RequestOutputKind.DELTA  # each step's new tokens only, detokenised incrementally
    engine, rid = llm.llm_engine, f"stream-{uuid.uuid4().hex}"
    engine.add_request(rid, TokensPrompt(prompt_token_ids=list(prompt_ids)), params)
    done = False
    try:
        while engine.has_unfinished_requests():
            if cancelled():
                return
            deltas = [Delta(c.index, c.text, c.finish_reason) for out in engine.step() if out.request_id == rid
                      for c in out.outputs]
            if deltas:
                yield deltas
        done = True
    finally:
        if not done:  # cancelled, or the caller stopped reading: nothing of it may stay in the engine
            engine.abort_request([rid])


class EventPipe:
    """Items from the generating thread to the event loop that sends them (thread-safe ``put``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue, self.closed = loop, asyncio.Queue(), threading.Event()

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def get(self, timeout_s: float) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no token from the engine for {timeout_s:.0f} s") from None


def produce(server: Any, prepared: Any, pipe: EventPipe) -> None:
    """The generating thread: under the engine lock, check the pinned model, then put ``("start", round,
    step)``, each step's deltas and ``("done",)`` (or the error) into ``pipe``."""
    timeout_s = server.spec["request_timeout_s"]
    if not server._lock.acquire(timeout=timeout_s):
        pipe.put(TimeoutError(f"engine busy for {timeout_s} s"))
        return
    try:
        engine, round_idx, step = server.engine, server.round, server.step
        resp.check_served(resp.requested_model(prepared.req.model, server.name),
                          resp.served_model_id(server.name, round_idx, step))
        if prepared.tokenizer is not engine.tokenizer:  # a swap to another tokenizer since it was prepared
            prepared = server._prepare(prepared.req)
        pipe.put(("start", round_idx, step))
        for deltas in engine_deltas(engine.llm, prepared.ids, prepared.params, pipe.closed.is_set):
            pipe.put(("deltas", deltas))
        pipe.put(("done",))
    except Exception as err:
        pipe.put(err)
    finally:
        server._lock.release()


async def streamed_response(server: Any, body: Any) -> Any:
    """The HTTP response to a ``"stream": true`` request: a 4xx raised before any event (``RequestError``), else
    a ``StreamingResponse`` whose events follow the engine."""
    from starlette.responses import StreamingResponse

    req = api.parse_chat_request(body, server.limits)
    resp.requested_model(req.model, server.name)
    if req.rerank:
        completion = await server.complete(body)
        return StreamingResponse(iter(resp.stream_events(completion)), media_type="text/event-stream")
    prepared = await asyncio.to_thread(server._prepare, req)
    pipe = EventPipe(asyncio.get_running_loop())
    threading.Thread(target=produce, args=(server, prepared, pipe), daemon=True, name="prefloop-stream").start()
    timeout_s = server.spec["request_timeout_s"]
    try:
        first = await pipe.get(timeout_s + 5.0)  # the producer's own lock timeout answers first
    except BaseException:
        pipe.closed.set()  # nobody will read it: the producer stops at its first step
        raise
    if isinstance(first, Exception):
        raise first
    _, round_idx, step = first
    base = resp.stream_base(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()),
                            resp.served_model_id(server.name, round_idx, step), round_idx, step)
    return StreamingResponse(_events(base, req.num_samples, pipe, timeout_s), media_type="text/event-stream")


async def _events(base: dict[str, Any], choices: int, pipe: EventPipe, timeout_s: float) -> AsyncIterator[str]:
    try:
        for i in range(choices):
            yield resp.stream_chunk(base, i, {"role": "assistant"})
        while True:
            item = await pipe.get(timeout_s)
            if isinstance(item, Exception):
                raise item
            if item[0] == "done":
                break
            for d in item[1]:
                if d.text:
                    yield resp.stream_chunk(base, d.index, {"content": d.text})
                if d.finish_reason is not None:
                    yield resp.stream_chunk(base, d.index, {}, d.finish_reason)
        yield resp.STREAM_DONE
    except Exception as err:  # the status line is gone: the error travels as an event, its traceback to the log
        error_id = uuid.uuid4().hex[:12]
        log.exception("streamed completion failed [error id %s]", error_id)
        yield resp.stream_error(RuntimeError(f"generation failed (error id {error_id})"), kind="server_error")
    finally:
        pipe.closed.set()  # done, failed or the client left: the step loop stops and aborts the request
