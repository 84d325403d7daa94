"""The LLM judge's pairwise protocol, pure: prompt building, request bodies, and reading the verdict.

It follows AlpacaEval 2.0's pairwise comparison (the ``weighted_alpaca_eval_gpt4_turbo`` annotator): the judge
sees the instruction and two outputs labelled with the identifiers ``m`` and ``M``, and answers with one
identifier. The reply's text must open with the identifier (after quotes or asterisks at most), else there is no
verdict. The preference is read from that identifier token's top log-probabilities when the endpoint returns
them (``P(M) / (P(m) + P(M))``, summed over the tokens that spell each identifier), else from the text (0 or 1). The wording of the prompt below is prefloop's own.

Where it departs from AlpacaEval: AlpacaEval asks one randomly chosen order per example; here BOTH orders are
asked for every prompt (the round's answer as ``m``, then as ``M``) and the two verdicts are averaged, so the
judge's position bias cancels exactly rather than on average. The HTTP client is ``app/judging/llm_judge.py``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

FIRST, SECOND = "m", "M"  # case matters: the two identifiers differ only in case, as in AlpacaEval

SYSTEM_PROMPT = (
    "You compare the answers of two AI assistants to the same instruction and pick the better one. "
    "Judge helpfulness, correctness and relevance to the instruction; do not reward length for its own sake "
    "and do not let the order of the answers sway you.")

USER_TEMPLATE = """Here is an instruction and two answers to it, each marked with an identifier.

Instruction:
{instruction}

Answers (JSON):
{answers}

Which answer is better? Reply with its identifier only, exactly `{first}` or `{second}`, and nothing else."""

_TEXT_VERDICT = re.compile(r"^[\s`'\"*(\[]*(m|M)(?![A-Za-z0-9])")


class VerdictError(ValueError):
    """A judge response that names neither identifier."""


def build_messages(instruction: str, first: str, second: str) -> list[dict[str, str]]:
    """Chat messages asking which of ``first`` (identifier ``m``) and ``second`` (``M``) answers better."""
    answers = json.dumps([{"identifier": FIRST, "answer": first}, {"identifier": SECOND, "answer": second}],
                         indent=1, ensure_ascii=False)
    user = USER_TEMPLATE.format(instruction=instruction, answers=answers, first=FIRST, second=SECOND)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def request_body(model_name: str, messages: list[dict[str, str]], max_tokens: int, top_logprobs: int) -> dict:
    """A ``/v1/chat/completions`` body: greedy, short, with log-probs of the answer tokens when asked."""
    body: dict[str, Any] = {"model": model_name, "messages": messages, "max_tokens": max_tokens,
                            "temperature": 0.0}
    if top_logprobs > 0:
        body.update(logprobs=True, top_logprobs=top_logprobs)
    return body


DECORATION = " \t\n`'\"*(["  # what may precede the identifier in a reply (the text verdict allows the same)


def _identifier(token: str) -> str | None:
    t = token.strip(DECORATION).strip("`'\"*)]")
    return t if t in (FIRST, SECOND) else None


def verdict_position(choice: dict[str, Any]) -> dict[str, Any] | None:
    """The log-probs of the verdict token: the first generated token that is not decoration (spaces, quotes,
    backticks, asterisks, brackets), provided it IS an identifier; None otherwise (no log-probs, or the reply
    opens with other words: then no position holds the verdict)."""
    for position in ((choice.get("logprobs") or {}).get("content")) or []:
        token = str(position.get("token", ""))
        if not token.strip(DECORATION):
            continue
        return position if _identifier(token) is not None else None
    return None


def second_from_logprobs(choice: dict[str, Any]) -> float | None:
    """``P(M) / (P(m) + P(M))`` at the verdict token (``verdict_position``), summed over the spellings of each
    identifier among its top log-probs; None when there is no verdict token."""
    position = verdict_position(choice)
    if position is None:
        return None
    mass = {FIRST: 0.0, SECOND: 0.0}
    for alt in position.get("top_logprobs") or [position]:
        ident = _identifier(str(alt.get("token", "")))
        if ident is not None and alt.get("logprob") is not None:
            mass[ident] += math.exp(float(alt["logprob"]))
    total = mass[FIRST] + mass[SECOND]
    return mass[SECOND] / total if total > 0 else None


def second_from_text(text: str) -> float | None:
    """1.0 if the reply names ``M``, 0.0 if ``m``, None if it names neither (case-sensitive, leading quotes ok)."""
    found = _TEXT_VERDICT.match(text or "")
    if not found:
        return None
    return 1.0 if found.group(1) == SECOND else 0.0


@dataclass(frozen=True)
class Verdict:
    """P(the second answer is better) and where it was read from (``logprobs`` or ``text``)."""

    p_second: float
    source: str
    text: str


def read_verdict(response: dict[str, Any]) -> Verdict:
    """The verdict of one chat-completions response; ``VerdictError`` when it names no identifier."""
    choices = response.get("choices") or []
    if not choices:
        raise VerdictError(f"the judge's response has no choices: {json.dumps(response)[:300]}")
    choice = choices[0]
    text = str((choice.get("message") or {}).get("content") or "")
    said = second_from_text(text)
    if said is None:
        raise VerdictError(f"the judge answered {text[:200]!r}, naming neither {FIRST!r} nor {SECOND!r}")
    p = second_from_logprobs(choice)
    if p is None:
        return Verdict(said, "text", text)
    token = _identifier(str(verdict_position(choice).get("token", "")))  # type: ignore[union-attr]
    if (token == SECOND) != (said == 1.0):
        raise VerdictError(f"the judge's verdict token {token!r} disagrees with its text {text[:200]!r}")
    return Verdict(p, "logprobs", text)


def combine(round_first: Verdict, round_second: Verdict) -> float:
    """Preference for the round's answer over the base's, from both orders.

    ``round_first``: the round's answer was ``m`` (so it won with probability ``1 - p_second``);
    ``round_second``: it was ``M`` (won with ``p_second``). The mean cancels a constant position bias."""
    return 0.5 * ((1.0 - round_first.p_second) + round_second.p_second)
