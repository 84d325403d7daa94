"""Pure converters for Archangel's human-preference data: Anthropic HH, Stanford SHP and OpenAssistant (oasst1).

Each source's own schema becomes prefs rows (prompt_id, prompt, messages, chosen, rejected); ``unpaired`` then
makes KTO rows (prompt/completion/label) from them. We follow the conventions of the HALOs repository that
trained the Archangel models (read, not copied):
- HH (Anthropic/hh-rlhf; columns chosen, rejected: whole transcripts ``\\n\\nHuman: ...\\n\\nAssistant: ...``):
  the prompt is everything up to the last ``Assistant:`` turn of ``chosen``, which ``rejected`` must share;
  earlier turns become a multi-turn ``messages``; the responses are the final assistant turns.
- SHP (stanfordnlp/SHP; post_id, domain, history, human_ref_A, human_ref_B, labels (1: A preferred), score_A,
  score_B, ...): only pairs whose score ratio is at least 2, and at most 5 pairs per post (the SteamSHP card's
  recommendation, applied in HALOs to the train split); which 5 is a seeded hash, not the file order.
- OpenAssistant (OpenAssistant/oasst1; message_id, parent_id, text, role prompter/assistant, lang, rank,
  deleted, message_tree_id, ...): English messages only; each ranked assistant reply of rank k > 0 is the
  rejected answer against its sibling of rank k - 1; the prompt is the path from the root to their parent.
Unpaired (KTO): each pair gives its chosen answer as desirable and its rejected answer as undesirable; an
identical (prompt, completion, label) row is kept once. A completion can carry both labels (SHP: preferred in
one comparison, dispreferred in another); both are kept, as the comparisons state.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Iterable

from prefloop.core.data_sources import Converted, Row, SourceRow, _raw, prompt_row, text
from prefloop.core.partition import key_hash
from prefloop.core.prompts import Rejected, derive_prompt_id

_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
SHP_MIN_RATIO, SHP_MAX_PAIRS = 2.0, 5


def _conversation_row(messages: list[dict[str, str]], **extra: Any) -> Row:
    return {"prompt_id": derive_prompt_id(messages), "prompt": messages[-1]["content"], "messages": messages, **extra}


def hh_turns(transcript: str, name: str) -> list[dict[str, str]]:
    """``\\n\\nHuman: a\\n\\nAssistant: b`` -> [{user, a}, {assistant, b}]."""
    parts = _HH_TURN.split(transcript)
    if parts[0].strip():
        raise ValueError(f"{name}: text before the first 'Human:' turn")
    turns = [{"role": "user" if role == "Human" else "assistant", "content": content.strip()}
             for role, content in zip(parts[1::2], parts[2::2])]
    if len(turns) < 2 or turns[-1]["role"] != "assistant" or turns[-2]["role"] != "user":
        raise ValueError(f"{name}: not a transcript ending in a Human turn and an Assistant turn")
    return turns


def hh_pair_row(row: Any) -> list[Row]:
    chosen, rejected = hh_turns(text(row, "chosen"), "chosen"), hh_turns(text(row, "rejected"), "rejected")
    prompt = chosen[:-1]
    if rejected[:-1] != prompt:
        raise ValueError("rejected: its conversation before the last answer differs from chosen's")
    if not all(m["content"] for m in prompt if m["role"] == "user"):
        raise ValueError("chosen: an empty Human turn")
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if not turns[-1]["content"]:
            raise ValueError(f"{name}: empty final Assistant turn")
    if chosen[-1]["content"] == rejected[-1]["content"]:
        raise ValueError("rejected: identical to chosen (no preference to learn)")
    return [_conversation_row(prompt, chosen=chosen[-1]["content"], rejected=rejected[-1]["content"])]


def _score(row: dict, name: str) -> float:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: must be a number, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: must be positive to form a score ratio, got {value!r}")
    return float(value)


def shp_pair_row(row: Any, min_ratio: float = SHP_MIN_RATIO) -> list[Row]:
    history, ref_a, ref_b = text(row, "history"), text(row, "human_ref_A"), text(row, "human_ref_B")
    label = row.get("labels")
    if isinstance(label, bool) or label not in (0, 1):
        raise ValueError(f"labels: must be 0 or 1 (1: human_ref_A preferred), got {label!r}")
    a, b = _score(row, "score_A"), _score(row, "score_B")
    ratio = max(a, b) / min(a, b)
    if ratio < min_ratio:
        raise ValueError(f"score_A: score ratio {ratio:.2f} < {min_ratio:g} (SHP card: too weak a preference)")
    if ref_a.strip() == ref_b.strip():
        raise ValueError("human_ref_B: identical to human_ref_A")
    chosen, rejected = (ref_a, ref_b) if label == 1 else (ref_b, ref_a)
    return [prompt_row(history, chosen=chosen, rejected=rejected, post_id=row.get("post_id"))]


def cap_pairs(conv: Converted, max_per_prompt: int = SHP_MAX_PAIRS, seed: int = 0) -> Converted:
    """At most ``max_per_prompt`` pairs per prompt: those of lowest seeded hash (order-independent)."""
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in conv.rows:
        groups[r["prompt_id"]].append(r)
    keep = set()
    for rows in groups.values():
        ranked = sorted(rows, key=lambda r: key_hash(r["chosen"] + "\x00" + r["rejected"], seed))
        keep.update(id(r) for r in ranked[:max_per_prompt])
    out = Converted(kept_rows=conv.kept_rows, rejected=list(conv.rejected))
    for r in conv.rows:
        if id(r) in keep:
            out.rows.append(r)
            continue
        file, _, loc = r["source_row"].rpartition(":")
        out.rejected.append(Rejected(file, loc, "history", f"over {max_per_prompt} pairs for this post "
                                     "(SteamSHP card: cap per prompt against over-fitting)", _raw(r)))
        out.kept_rows -= 1
    return out


def _oasst_check(row: Any) -> dict[str, Any]:
    text(row, "message_id")
    body = text(row, "text")
    if row.get("role") not in ("prompter", "assistant"):
        raise ValueError(f"role: must be 'prompter' or 'assistant', got {row.get('role')!r}")
    if row.get("lang") != "en":
        raise ValueError(f"lang: {row.get('lang')!r}, not 'en'")
    if row.get("deleted") is True:
        raise ValueError("deleted: the message was deleted")
    rank = row.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank < 0):
        raise ValueError(f"rank: must be null or a non-negative number, got {rank!r}")
    return {"id": row["message_id"], "parent": row.get("parent_id"), "text": body.strip(),
            "role": "user" if row["role"] == "prompter" else "assistant", "rank": rank}


def _oasst_path(msg: dict, nodes: dict[str, dict]) -> list[dict]:
    """Root .. ``msg``; ValueError if a message on the way is missing (filtered, deleted, another split)."""
    path, node, seen = [], msg, set()
    while node is not None:
        if node["id"] in seen:
            raise ValueError("parent_id: the thread has a cycle")
        seen.add(node["id"])
        path.append(node)
        parent = node["parent"]
        if parent is None:
            break
        if parent not in nodes:
            raise ValueError(f"parent_id: message {parent!r} on the thread is not usable (missing, non-English "
                             "or deleted)")
        node = nodes[parent]
    return path[::-1]


def oasst_pairs(rows: Iterable[SourceRow]) -> Converted:
    """A whole oasst1 split (message trees) -> prefs rows; every message is used or rejected with a reason."""
    out, nodes, where = Converted(), {}, {}
    raw_rows: list[tuple[str, str, Any]] = list(rows)
    for file, loc, row in raw_rows:
        try:
            if isinstance(row, Exception):
                raise ValueError(f"(line): {row}")
            node = _oasst_check(row)
            if node["id"] in nodes:
                raise ValueError(f"message_id: duplicate of {where[node['id']][0]}:{where[node['id']][1]}")
        except ValueError as err:
            name, _, reason = str(err).partition(": ")
            out.rejected.append(Rejected(file, loc, name, reason, _raw(row)))
            continue
        nodes[node["id"]], where[node["id"]] = node, (file, loc, row)
    siblings: dict[Any, list[dict]] = defaultdict(list)
    for node in nodes.values():
        if node["role"] == "assistant" and node["rank"] is not None:
            siblings[node["parent"]].append(node)
    used, why_not = set(), {}
    for node in nodes.values():
        if node["role"] != "assistant" or not node["rank"]:
            continue  # prompter messages and the best reply are used through others, or reported below
        better = [s for s in siblings[node["parent"]] if s["rank"] == node["rank"] - 1]
        try:
            if not better:
                raise ValueError(f"rank: no sibling reply ranked {node['rank'] - 1:g} to prefer over it")
            path = _oasst_path(node, nodes)[:-1]  # root .. the message it answers
            if not path or path[-1]["role"] != "user":
                raise ValueError("parent_id: the reply does not answer a prompter message")
        except ValueError as err:
            why_not[node["id"]] = str(err)
            continue
        messages = [{"role": m["role"], "content": m["text"]} for m in path]
        file, loc, _ = where[node["id"]]
        out.rows.append(_conversation_row(messages, chosen=better[0]["text"], rejected=node["text"],
                                          source_row=f"{file}:{loc}"))
        used.update([node["id"], better[0]["id"], *(m["id"] for m in path)])
    for mid, node in nodes.items():
        file, loc, row = where[mid]
        if mid in used:
            out.kept_rows += 1
            continue
        reason = why_not.get(mid) or ("rank: not ranked against sibling replies" if node["role"] == "assistant"
                                      and node["rank"] is None else "(tree): not part of any ranked pair")
        name, _, reason = reason.partition(": ")
        out.rejected.append(Rejected(file, loc, name, reason, _raw(row)))
    return out


def unpaired(pairs: Iterable[Row]) -> list[Row]:
    """KTO rows from prefs rows: chosen -> label True, rejected -> label False; exact repeats kept once."""
    out, seen = [], set()
    for p in pairs:
        for completion, label in ((p["chosen"], True), (p["rejected"], False)):
            key = (p["prompt_id"], completion, label)
            if key in seen:
                continue
            seen.add(key)
            out.append({"prompt_id": p["prompt_id"], "prompt": p["prompt"], "messages": p["messages"],
                        "completion": completion, "label": label, "source_row": p["source_row"]})
    return out
