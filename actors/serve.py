"""The policy behind an OpenAI-compatible HTTP API: the Ray Serve deployment class (a thin shell).

One ``PolicyServer`` replica holds one ``vllm.LLM`` engine (CPU settings as in ``VLLMGenerator``) and, loaded on
first use, a PairRM ranker for best-of-N. Request parsing lives in ``core/openai_api.py``, response shapes and model ids in ``core/openai_responses.py``.

Routes: ``POST /v1/chat/completions`` (``"stream": true`` gets server-sent events as the engine makes the
tokens: ``actors/serve_stream.py``), ``GET /v1/models``,
``GET /health``. Each request is checked alone first (API key, body size, parsing, chat template, tokens,
sampling values: its own 4xx), outside the engine lock; the accepted ones are batched (``serve.batch``) into
one ``LLM.generate`` call, and a batch that still fails is retried request by request, so one request's
failure is never its batch-mates'. A 500 says only an error id, which the log has with the traceback.

Switching rounds: Serve calls ``reconfigure(user_config)`` with ``{"model_dir", "round", "step"}`` on every
replica in place (``step``: a ReMax step checkpoint of a round not yet committed, served as
``prefloop-round-R-step-K``). The new weights replace the old inside the running engine
(``reload_in_place``) while holding the engine lock, so a request runs wholly on the old or wholly on the new
weights and none fails: those arriving meanwhile wait for the lock. Tied input/output embeddings reload in
place too (the head is re-tied and repacked, ``actors/vllm_reload.py``). A model whose config differs (say cSFT
grew the vocabulary) is not reloaded in place: a new engine is built first, outside the lock, then switched to
(no pause; the load takes an engine's start-up). Each response says which weights produced it (round and step), read under the same lock as
the generation; a request that names a model id is checked against them there too, and refused (404) if they
differ.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

from prefloop.actors.model_cache import fetch_model
from prefloop.actors.serve_stream import streamed_response
from prefloop.actors.vllm_engine import build_llm, reload_in_place, reloadable_in_place, shutdown_llm
from prefloop.core import openai_api as api
from prefloop.core import openai_responses as resp
from prefloop.core import serve_guard as guard
from prefloop.core.model_dirs import check_model_dir
from prefloop.core.model_info import control_token_of
from prefloop.core.round_settings import EngineSettings
from prefloop.core.templates import generation_text, last_user_text

log = logging.getLogger(__name__)

@dataclass
class Prepared:
    """A validated request rendered and tokenised (with the tokenizer it was tokenised by) and its sampling."""

    req: api.ChatRequest
    ids: list[int]
    params: Any
    tokenizer: Any


@dataclass
class Engine:
    """One vLLM engine and the tokenizer that renders prompts for it."""

    llm: Any
    tokenizer: Any
    model_dir: str  # the model's name (its folder on the driver that published it)
    local: str  # where this replica read it (a copy on this node: actors/model_cache.py)
    control: str | None = None  # a cSFT model's control token, read once at load (not from disk per request)


def load_tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def build_engine(model_dir: str, local: str, spec: dict[str, Any]) -> Engine:
    # any request may carry a seed, so the engine is built for seeded requests (chunked prefill off on CPU)
    llm = build_llm(local, EngineSettings.from_dict(spec["engine"]), seed=0, seeded_requests=True,
                    what="served policy")
    return Engine(llm, load_tokenizer(local), model_dir, local, control_token_of(local))


def close_engine(engine: Engine) -> None:
    """Stop a replaced engine's core process now rather than whenever it is garbage-collected."""
    shutdown_llm(engine.llm, f"the replaced engine for {engine.model_dir}")


class PolicyServer:
    """A Serve replica: ``spec`` is the whole serving setup (see ``app/serving/serve.py``); ``user_config`` the round."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.name = spec["name"]
        self.limits = api.Limits(max_samples=spec["max_samples"], default_max_tokens=spec["default_max_tokens"],
                                 max_tokens=spec["engine"]["max_model_len"],
                                 max_messages=spec.get("max_messages", 256),
                                 max_body_bytes=spec.get("max_body_bytes", 1_000_000))
        self.replica_id = uuid.uuid4().hex[:8]
        self._lock = threading.Lock()  # held by every generate and by the weight switch
        self._ranker_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()  # not the engine lock: a long prompt never stalls generation
        self._ranker: Any = None
        local = fetch_model(spec["model_dir"], spec.get("model_store"), "serve")
        self.engine = build_engine(spec["model_dir"], local, spec)
        self.round: int | None = spec["round"]
        self.step: int | None = spec.get("step")
        self.created = int(time.time())
        self.swaps: list[dict[str, Any]] = []

    # ---- switching rounds -------------------------------------------------------------------------------
    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        model_dir, round_idx, step = user_config.get("model_dir"), user_config.get("round"), user_config.get("step")
        if not model_dir or (model_dir == self.engine.model_dir and (round_idx, step) == (self.round, self.step)):
            return
        await asyncio.to_thread(self._switch, model_dir, user_config.get("model_store"), round_idx, step)

    def _switch(self, model_dir: str, store: str | None, round_idx: int | None, step: int | None = None) -> None:
        started = time.perf_counter()
        local = fetch_model(model_dir, store, "serve")  # copied to this node first (outside the lock)
        check_model_dir(local, f"round {round_idx} model")
        in_place = reloadable_in_place(self.engine.local, local)
        tokenizer = load_tokenizer(local)
        new = None if in_place else build_engine(model_dir, local, self.spec)  # load first, then switch
        if not self._lock.acquire(timeout=self.spec["request_timeout_s"]):
            raise TimeoutError(f"replica {self.replica_id}: engine busy for {self.spec['request_timeout_s']} s; "
                               f"round {round_idx} not switched in")
        try:
            locked = time.perf_counter()
            if in_place:
                reload_in_place(self.engine.llm, local)
                self.engine = Engine(self.engine.llm, tokenizer, model_dir, local, control_token_of(local))
            else:
                old, self.engine = self.engine, new
            self.round, self.step = round_idx, step
            paused = time.perf_counter() - locked
        finally:
            self._lock.release()
        if not in_place:
            close_engine(old)
        record = {"round": round_idx, "step": step, "model_dir": model_dir, "in_place": in_place, "swap_s": paused,
                  "total_s": time.perf_counter() - started, "at": time.time()}
        self.swaps.append(record)
        log.info("replica %s now serves round %s (%s, requests paused %.3f s)", self.replica_id, round_idx,
                 "weights reloaded in place" if in_place else "new engine", paused)

    def state(self) -> dict[str, Any]:
        """What this replica serves, and its swaps so far (``publish`` reads the last one's timing)."""
        return {"replica": self.replica_id, "round": self.round, "step": self.step,
                "model_id": resp.served_model_id(self.name, self.round, self.step), "model_dir": self.engine.model_dir,
                "loaded_from": self.engine.local, "node": ray.get_runtime_context().get_node_id(),
                "swaps": list(self.swaps)}

    def serving_spec(self) -> dict[str, Any]:
        return dict(self.spec)

    def inject_batch_faults(self, count: int) -> None:
        """Fault injection for tests (a handle call, no HTTP route): the engine's next ``count`` calls with more
        than one request raise, as an engine error would, so the one-by-one fallback runs on the real engine."""
        llm = self.engine.llm
        real = type(llm).generate
        self._faults = {"left": count, "fired": 0}

        def flaky(prompts: Any, *args: Any, **kwargs: Any) -> Any:
            if len(prompts) > 1 and self._faults["left"] > 0:
                self._faults["left"] -= 1
                self._faults["fired"] += 1
                raise RuntimeError("injected engine failure (test)")
            return real(llm, prompts, *args, **kwargs)

        llm.generate = flaky

    def injected_faults(self) -> dict[str, int]:
        return dict(getattr(self, "_faults", {"left": 0, "fired": 0}))

    # ---- generation ---------------------------------------------------------------------------------------
    def _prepare(self, req: api.ChatRequest) -> Prepared:
        """Render, tokenise and check one request outside the engine lock and the batch: its errors are its own
        (a chat template that refuses the roles, an over-long prompt, bad sampling values: a 400)."""
        from vllm import SamplingParams

        engine = self.engine
        try:
            with self._tokenizer_lock:  # a fast tokenizer is not safe to call from several threads at once
                text = generation_text(req.messages, self.spec["chat_template"], engine.tokenizer,
                                       engine.control)  # a cSFT model's control token
                ids = engine.tokenizer(text, add_special_tokens=True)["input_ids"]
        except api.RequestError:
            raise
        except Exception as err:  # jinja's TemplateError (HF templates' raise_exception) is not a ValueError
            raise api.RequestError("messages", f"the chat template refused these messages: {err}") from None
        api.check_length(len(ids), req.max_tokens, self.spec["engine"]["max_model_len"])
        try:
            params = SamplingParams(**req.sampling_kwargs())
        except (ValueError, TypeError) as err:
            raise api.RequestError(None, f"sampling parameters: {err}") from None
        return Prepared(req, ids, params, engine.tokenizer)

    def _generate_locked(self, batch: list[Prepared]) -> list[Any]:
        """Generate a batch of prepared requests under the engine lock; per request a result dict or an error.

        If the batched call fails, each request is retried alone, so only the one that fails gets the error."""
        if not self._lock.acquire(timeout=self.spec["request_timeout_s"]):
            err = TimeoutError(f"engine busy for {self.spec['request_timeout_s']} s")
            return [err] * len(batch)
        try:
            engine, round_idx, step = self.engine, self.round, self.step
            current = resp.served_model_id(self.name, round_idx, step)
            ready: list[Any] = []
            for p in batch:  # a swap to an engine with another tokenizer since these were prepared: again
                try:
                    resp.check_served(resp.requested_model(p.req.model, self.name), current)  # pinned: 404
                    ready.append(p if p.tokenizer is engine.tokenizer else self._prepare(p.req))
                except Exception as err:
                    ready.append(err)
            live = [p for p in ready if not isinstance(p, Exception)]
            done = iter(self._run_each_if_needed(engine, live))
            outputs = [p if isinstance(p, Exception) else next(done) for p in ready]
        finally:
            self._lock.release()
        results: list[Any] = []
        for p, out in zip(batch, outputs):
            if isinstance(out, Exception):
                results.append(out)
                continue
            top = p.req.top_logprobs if p.req.logprobs else None
            cands = [resp.Candidate(c.text, c.finish_reason or "stop", len(c.token_ids),
                                   None if top is None else resp.logprob_content(c.token_ids, c.logprobs, top))
                     for c in out.outputs]
            results.append({"candidates": cands, "prompt_tokens": len(out.prompt_token_ids), "round": round_idx,
                            "step": step})
        return results

    def _run_each_if_needed(self, engine: Engine, batch: list[Prepared]) -> list[Any]:
        """One ``generate`` for the batch; if it fails, one per request (each its own output or error)."""
        if not batch:
            return []
        try:
            return self._run(engine, batch)
        except Exception:
            log.warning("a batch of %d failed; generating its requests one by one", len(batch), exc_info=True)
        outputs: list[Any] = []
        for p in batch:
            try:
                outputs.append(self._run(engine, [p])[0])
            except Exception as err:
                log.exception("generation failed for one request")
                outputs.append(err)
        return outputs

    @staticmethod
    def _run(engine: Engine, batch: list[Prepared]) -> list[Any]:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=p.ids) for p in batch]
        return engine.llm.generate(prompts, [p.params for p in batch], use_tqdm=False)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _generate(self, batch: list[Prepared]) -> list[Any]:
        return await asyncio.to_thread(self._generate_locked, batch)

    def _rank(self, req: api.ChatRequest, cands: list[resp.Candidate]) -> list[float]:
        with self._ranker_lock:  # llm-blender is not thread-safe; it is loaded on first use
            if self._ranker is None:
                from prefloop.actors.scorers import PairRMScorer

                self._ranker = PairRMScorer(self.spec["pairrm_dir"], batch_size=16)
            return self._ranker.score([last_user_text(req.messages)], [[c.text for c in cands]])[0]

    async def complete(self, body: Any) -> dict[str, Any]:
        """One chat completion from a parsed JSON body (also callable through a Serve handle)."""
        req = api.parse_chat_request(body, self.limits)
        resp.requested_model(req.model, self.name)  # another server's model: 400 (a pinned id: checked later)
        if req.rerank and not self.spec.get("pairrm_dir"):
            raise api.RequestError("rerank", "this server has no PairRM ranker (start it with a pairrm_dir)")
        result = await self._generate(await asyncio.to_thread(self._prepare, req))
        if isinstance(result, Exception):
            raise result
        cands, chosen, scores = result["candidates"], None, None
        if req.rerank:
            scores = await asyncio.to_thread(self._rank, req, cands)
            chosen = resp.best_indices(scores, req.num_return)
        return resp.chat_completion(req, model_id=resp.served_model_id(self.name, result["round"], result["step"]),
                                    round_idx=result["round"], step=result["step"], candidates=cands,
                                    prompt_tokens=result["prompt_tokens"], chosen=chosen, scores=scores)

    # ---- HTTP ---------------------------------------------------------------------------------------------
    async def _read_body(self, request: Any) -> bytes:
        """The body, refused (413) past the limit: by Content-Length first, else while it streams in."""
        limit = self.limits.max_body_bytes
        guard.check_body_size(request.headers.get("content-length"), limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise guard.TooLarge(None, f"request body over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        path, method = request.url.path.rstrip("/"), request.method
        routes = {"/v1/chat/completions": "POST", "/v1/models": "GET", "/health": "GET"}
        if path not in routes:
            return JSONResponse(resp.error_body(f"no route {path}", kind="not_found_error"), status_code=404)
        if method != routes[path]:
            return JSONResponse(resp.error_body(f"{path} takes {routes[path]}"), status_code=405)
        if path == "/health":  # no key needed (a load balancer's probe), and nothing secret in it
            return JSONResponse(guard.public_health(self.name, self.state()))
        try:
            guard.check_api_key(request.headers.get("authorization"), self.spec.get("api_key_sha256"))
            if path == "/v1/models":
                return JSONResponse(resp.models_list(self.name, self.round, self.created, self.step))
            body = api.parse_json_body(await self._read_body(request))
            if isinstance(body, dict) and body.get("stream") is True:  # events as the engine makes tokens
                return await streamed_response(self, body)
            completion = await self.complete(body)
        except api.RequestError as err:
            return JSONResponse(resp.error_body(err), status_code=err.status)
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("chat completion failed [error id %s]", error_id)
            return JSONResponse(guard.server_error(error_id), status_code=500)
        return JSONResponse(completion)
