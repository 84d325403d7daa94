"""An OpenAI-compatible client for the LLM judge (``eval.judge.kind: llm_judge``).

For every held-out prompt it asks the endpoint twice, the round's answer first and then second
(``core/llm_judge.py`` builds the prompts and reads the verdicts), and combines the two verdicts into one
preference in [0, 1]. Standard library only (``urllib``); every request has a timeout, and a connection error or
an HTTP 429 / 5xx is retried ``retries`` times with exponential backoff. An endpoint that refuses ``logprobs``
(HTTP 400 naming it) is asked again without them, and from then on the verdict is read from the text.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefloop.core.judge_config import JudgeConfig
from prefloop.core.judges import JudgeRequestError, endpoint_key
from prefloop.core.llm_judge import Verdict, build_messages, combine, read_verdict, request_body
from prefloop.core.retry import backoff_s, retry

log = logging.getLogger(__name__)
RETRY_STATUS = (408, 429, 500, 502, 503, 504)


class TransientFailure(Exception):
    """A request that may succeed if sent again (connection error, HTTP 429 / 5xx)."""



class LLMJudge:
    """Pairwise LLM judge over an OpenAI-compatible ``/v1/chat/completions`` endpoint."""

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        key = endpoint_key(cfg)
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.top_logprobs = cfg.top_logprobs

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()

        def post_once() -> dict[str, Any]:
            req = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as err:
                detail = err.read().decode(errors="replace")[:500]
                if err.code not in RETRY_STATUS:
                    raise JudgeRequestError(f"{self.url}: HTTP {err.code}: {detail}") from None
                raise TransientFailure(f"HTTP {err.code}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, OSError) as err:
                raise TransientFailure(f"{type(err).__name__}: {err}") from None

        def before_retry(attempt: int, err: BaseException) -> None:
            log.warning("judge request to %s failed (attempt %d of %d): %s", self.url, attempt,
                        self.cfg.retries + 1, err)
            time.sleep(backoff_s(attempt + 1, 1.0, 30.0))

        return retry(post_once, attempts=self.cfg.retries + 1, transient=(TransientFailure,),
                     before_retry=before_retry,
                     give_up=lambda n, err: JudgeRequestError(f"{self.url}: no answer after {n} attempts: {err}"))

    def ask(self, instruction: str, first: str, second: str) -> Verdict:
        """One verdict: P(``second`` is better than ``first``)."""
        messages = build_messages(instruction, first, second)
        body = request_body(self.cfg.model_name, messages, self.cfg.max_tokens, self.top_logprobs)
        try:
            return read_verdict(self._post(body))
        except JudgeRequestError as err:
            if self.top_logprobs and "HTTP 400" in str(err) and "logprobs" in str(err):
                log.warning("the judge endpoint refuses logprobs: reading verdicts from the text from now on")
                self.top_logprobs = 0
                return self.ask(instruction, first, second)
            raise

    def judge_one(self, instruction: str, answer: str, base: str) -> dict[str, Any]:
        """Both orders for one prompt: the preference for ``answer`` over ``base`` and the two raw verdicts."""
        round_first = self.ask(instruction, answer, base)
        round_second = self.ask(instruction, base, answer)
        return {"preference": combine(round_first, round_second),
                "p_second_round_first": round_first.p_second, "p_second_round_second": round_second.p_second,
                "verdict_source": round_first.source if round_first.source == round_second.source else "mixed"}

    def judge(self, prompts: list[str], answers: list[str], bases: list[str]) -> list[dict[str, Any]]:
        """One result per prompt, in order (``concurrency`` prompts at a time)."""
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            return list(pool.map(self.judge_one, prompts, answers, bases))
