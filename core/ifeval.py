"""IFEval's instruction checkers as a judge: grades, the four IFEval figures, the instruction table.

The checkers are Google's, as the ``if-verifiable`` package ships them (``INSTRUCTION_DICT``); an answer is graded
by that package's own ``evaluate_instructions`` (strict: the answer as given; loose: IFEval's variants without
the first / last line or markdown asterisks). Nothing here re-implements a check.

- ``probe_ids``: which instruction ids run on this machine, and why the others do not (two need nltk's punkt
  data, which is downloaded at run time and not installed here); ``check_ids`` refuses ids that cannot run.
- ``read_instructions``: a JSONL table ``{prompt_id, instruction_id_list, kwargs}`` (what
  ``prefloop data prepare ifeval-synth`` / ``ifeval`` write), every row checked.
- ``grade``: one answer against one prompt's instructions; ``figures``: IFEval's prompt-level and
  instruction-level accuracy, strict and loose; ``per_id``: strict accuracy per instruction id.

The reward of the ``ifeval`` scorer is the share of the prompt's instructions followed, strict.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROBE_TEXT = "Hello there. This is a short answer, with words.\n\nA SECOND paragraph follows here."


def registry() -> dict[str, Any]:
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    return dict(INSTRUCTION_DICT)


@functools.lru_cache(maxsize=1)
def probe_ids() -> dict[str, str | None]:
    """Every IFEval instruction id -> None when its checker runs here, else the reason it cannot."""
    out: dict[str, str | None] = {}
    state = random.getstate()
    try:
        for iid, cls in sorted(registry().items()):
            random.seed(0)
            try:
                checker = cls(iid)
                checker.build_description(**({"prompt_to_repeat": "Say hi."} if iid == "combination:repeat_prompt"
                                             else {}))
                checker.check_following(PROBE_TEXT)
                out[iid] = None
            except LookupError as err:  # nltk data that is fetched at run time
                missing = "punkt" if "punkt" in str(err) else str(err).strip().splitlines()[0][:120]
                out[iid] = f"its checker needs nltk data '{missing}', which is not installed on this machine"
            except Exception as err:  # noqa: BLE001 - any failure means the checker cannot grade here
                out[iid] = f"its checker fails here: {type(err).__name__}: {str(err)[:120]}"
    finally:
        random.setstate(state)
    return out


def runnable_ids() -> list[str]:
    return [iid for iid, reason in probe_ids().items() if reason is None]


def check_ids(ids: list[str] | None, where: str) -> list[str]:
    """The ids a judge grades (``None``: every id that runs here); an unknown or unrunnable id is an error."""
    probed = probe_ids()
    if ids is None:
        return runnable_ids()
    for iid in ids:
        if iid not in probed:
            raise ValueError(f"{where}: {iid!r} is not an IFEval instruction id (known: {', '.join(probed)})")
        if probed[iid] is not None:
            raise ValueError(f"{where}: instruction id {iid!r} cannot be graded here: {probed[iid]}")
    return list(ids)


@dataclass(frozen=True)
class Instructions:
    ids: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]


def parse_row(row: Any, where: str, allowed: set[str]) -> tuple[str, Instructions]:
    """One table row as (prompt_id, Instructions); a ValueError names ``where`` and the field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be a JSON object")
    pid, ids, kwargs = row.get("prompt_id"), row.get("instruction_id_list"), row.get("kwargs")
    if not isinstance(pid, str) or not pid:
        raise ValueError(f"{where}: field 'prompt_id' must be a non-empty string")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"{where}: field 'instruction_id_list' must be a non-empty list of strings")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise ValueError(f"{where}: field 'kwargs' must be a list of {len(ids)} objects (one per instruction)")
    for iid in ids:
        if iid not in allowed:
            reason = probe_ids().get(iid) or "not among the judge's instruction ids"
            raise ValueError(f"{where}: field 'instruction_id_list': {iid!r}: {reason}")
    return pid, Instructions(tuple(ids), tuple({k: v for k, v in kw.items() if v is not None} for kw in kwargs))


def read_instructions(path: str | Path, allowed: list[str]) -> dict[str, Instructions]:
    """The instruction table of a JSONL file; a bad row is an error naming the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: IFEval instruction table not found (prefloop data prepare ifeval-synth)")
    table: dict[str, Instructions] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {n}: not JSON: {err}") from None
            pid, inst = parse_row(row, f"{path}: line {n}", set(allowed))
            if pid in table:
                raise ValueError(f"{path}: line {n}: field 'prompt_id': {pid!r} appears twice")
            table[pid] = inst
    return table


@dataclass(frozen=True)
class Grade:
    ids: tuple[str, ...]
    strict: tuple[bool, ...]
    loose: tuple[bool, ...]

    @property
    def reward(self) -> float:
        """The share of the prompt's instructions followed, strict."""
        return sum(self.strict) / len(self.ids)


def grade(prompt: str, answer: str, inst: Instructions) -> Grade:
    """``answer`` against ``inst`` by if-verifiable's ``evaluate_instructions`` (an empty answer follows none)."""
    from if_verifiable.common import evaluate_instructions

    results, _ = evaluate_instructions(response=answer, instruction_id_list=list(inst.ids),
                                       kwargs_list=[dict(k) for k in inst.kwargs], prompt=prompt,
                                       instruction_registry=registry())
    if not results:  # if-verifiable grades an empty answer as following nothing, with no per-id rows
        return Grade(inst.ids, (False,) * len(inst.ids), (False,) * len(inst.ids))
    if tuple(r.instruction_id for r in results) != inst.ids:
        raise RuntimeError(f"if-verifiable graded {[r.instruction_id for r in results]}, asked {list(inst.ids)}")
    return Grade(inst.ids, tuple(r.strict_pass for r in results), tuple(r.loose_pass for r in results))


def figures(grades: list[Grade], prefix: str = "") -> dict[str, float]:
    """IFEval's four figures: prompt-level (all instructions followed) and instruction-level, strict and loose."""
    n_inst = sum(len(g.ids) for g in grades)
    if not grades:
        raise ValueError("IFEval figures of no answers")
    return {f"{prefix}ifeval_prompt_strict": sum(all(g.strict) for g in grades) / len(grades),
            f"{prefix}ifeval_prompt_loose": sum(all(g.loose) for g in grades) / len(grades),
            f"{prefix}ifeval_instruction_strict": sum(sum(g.strict) for g in grades) / n_inst,
            f"{prefix}ifeval_instruction_loose": sum(sum(g.loose) for g in grades) / n_inst}


def per_id(grades: list[Grade]) -> dict[str, dict[str, float]]:
    """Instruction id -> {n: times asked, strict: share followed (strict)}."""
    counts: dict[str, list[int]] = {}
    for g in grades:
        for iid, ok in zip(g.ids, g.strict):
            c = counts.setdefault(iid, [0, 0])
            c[0] += 1
            c[1] += int(ok)
    return {iid: {"n": n, "strict": ok / n} for iid, (n, ok) in sorted(counts.items())}
