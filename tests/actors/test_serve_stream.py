"""Serve's streaming parts alone (actors/serve_stream.py): the step loop's deltas and aborts, and the events sent.

The engine here is a stand-in that replays scripted steps, to isolate the loop's bookkeeping (what is yielded,
when a request is aborted); the real engine streams in tests/app/serving (test_serve, test_openai_client).
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from prefloop.actors.serve_stream import Delta, EventPipe, _events, engine_deltas


class ScriptedEngine:
    """``llm.llm_engine`` replaying ``steps``: each a list of (choice index, new text, finish reason)."""

    def __init__(self, steps):
        self.steps, self.added, self.aborted = list(steps), [], []

    def add_request(self, rid, prompt, params):
        self.added.append((rid, prompt, params))

    def has_unfinished_requests(self):
        return bool(self.steps) and not self.aborted

    def step(self):
        rid = self.added[-1][0]
        other = SimpleNamespace(request_id="someone-else", outputs=[SimpleNamespace(index=0, text="x", finish_reason=None)])
        mine = SimpleNamespace(request_id=rid, outputs=[SimpleNamespace(index=i, text=t, finish_reason=f)
                                                       for i, t, f in self.steps.pop(0)])
        return [other, mine]

    def abort_request(self, ids):
        self.aborted += ids


@pytest.mark.models  # imports vLLM (its SamplingParams)
def test_deltas_follow_the_steps_in_delta_mode():
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    engine, params = ScriptedEngine([[(0, "He", None)], [(0, "llo", None), (1, "Hi", "stop")], [(0, "", "length")]]), \
        SamplingParams(max_tokens=4, n=2)
    got = list(engine_deltas(SimpleNamespace(llm_engine=engine), [1, 2, 3], params, lambda: False))
    assert got == [[Delta(0, "He", None)], [Delta(0, "llo", None), Delta(1, "Hi", "stop")], [Delta(0, "", "length")]]
    (_, prompt, sent), = engine.added
    assert prompt["prompt_token_ids"] == [1, 2, 3] and sent.output_kind == RequestOutputKind.DELTA
    assert params.output_kind != RequestOutputKind.DELTA and engine.aborted == []  # the caller's params untouched


@pytest.mark.models
def test_a_cancelled_or_abandoned_request_is_aborted_in_the_engine():
    from vllm import SamplingParams

    engine = ScriptedEngine([[(0, "a", None)]] * 5)
    cancel = iter([False, True])
    got = list(engine_deltas(SimpleNamespace(llm_engine=engine), [1], SamplingParams(), lambda: next(cancel)))
    assert len(got) == 1 and engine.aborted == [engine.added[0][0]]
    engine = ScriptedEngine([[(0, "a", None)]] * 5)
    stream = engine_deltas(SimpleNamespace(llm_engine=engine), [1], SamplingParams(), lambda: False)
    next(stream)
    stream.close()  # the reader stopped
    assert engine.aborted == [engine.added[0][0]]


def run_events(items, choices=1):
    async def go():
        pipe = EventPipe(asyncio.get_running_loop())
        for item in items:
            pipe.put(item)
        out = [e async for e in _events({"id": "c", "object": "chat.completion.chunk"}, choices, pipe, 5.0)]
        return out, pipe.closed.is_set()

    return asyncio.run(go())


def test_events_are_role_content_finish_done():
    events, closed = run_events([("deltas", [Delta(0, "He", None)]), ("deltas", [Delta(0, "llo", "stop")]), ("done",)])
    assert events[-1] == "data: [DONE]\n\n" and closed
    chunks = [json.loads(e[6:])["choices"][0] for e in events[:-1]]
    assert [c["delta"] for c in chunks] == [{"role": "assistant"}, {"content": "He"}, {"content": "llo"}, {}]
    assert [c["finish_reason"] for c in chunks] == [None, None, None, "stop"]


def test_an_engine_error_mid_stream_is_an_error_event_without_the_details():
    events, closed = run_events([("deltas", [Delta(0, "He", None)]), RuntimeError("secret engine path /x")])
    error = json.loads(events[-1][6:])["error"]
    assert error["type"] == "server_error" and "error id" in error["message"] and "/x" not in error["message"]
    assert closed and "[DONE]" not in events[-1]
