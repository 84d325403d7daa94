"""``--set key=value`` as users write it: parsed, checked against the recipe schema, and applied.

A value stays the string it was typed as unless it clearly means something else: a number, a bool, ``null``,
a list (``[a, b]``) or a mapping (``{a: 1}``); quotes keep a value text (``'8'`` is the string 8). A path with a placeholder (``{data}/heldout.jsonl``) is a
string, not a broken YAML mapping. The key is checked against the schema before anything is applied, so an
unknown key is reported as ``--set``'s (not the recipe file's), with the nearest known key. ``tiny.KEY=VALUE``
edits the recipe's ``tiny:`` section (dotted keys as written there), which ``--tiny`` applies.

Pure: no file I/O; the schema is any pydantic model class (the Recipe).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

PLACEHOLDER = re.compile(r"\{[A-Za-z_]\w*\}")
TINY = "tiny"


class OverrideError(ValueError):
    """A ``--set`` that cannot be applied; the message is one line naming the assignment and the fix."""


@dataclass(frozen=True)
class Override:
    key: str  # dotted, relative to the recipe (for a tiny override: relative to the recipe too)
    value: Any
    tiny: bool = False  # goes into the recipe's tiny: section instead of the recipe


def parse_value(text: str) -> Any:
    """The value of ``key=text``: a number / bool / null / list / mapping when it is clearly one, else ``text``."""
    stripped = text.strip()
    if not stripped:
        return text
    try:
        value = yaml.safe_load(stripped)
    except yaml.YAMLError as err:
        if stripped[0] in "[{" and not PLACEHOLDER.search(stripped):
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise OverrideError(f"{text!r} looks like a YAML list or mapping but does not parse ({first}); "
                                "quote it as a string or fix the brackets") from None
        return text  # e.g. a path with a placeholder: {data}/heldout.jsonl
    if isinstance(value, (list, dict)):
        clearly = stripped[0] in "[{" and not PLACEHOLDER.fullmatch(stripped)  # "{data}" is a path, not {data: null}
        return value if clearly else text
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str) and stripped[0] in "'\"":
        return value  # quoted to keep it text: '8' -> "8"
    return text  # strings, and what YAML would turn into dates or timestamps


def _section_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the pydantic model a field holds, whether it holds a free mapping) after unwrapping Optional/Union."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        found = [_section_model(a) for a in typing.get_args(annotation) if a is not type(None)]
        model = next((m for m, _ in found if m is not None), None)
        return model, any(free for _, free in found)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, origin is dict or annotation is dict or annotation is Any


def _all_keys(schema: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in schema.model_fields.items():
        keys.append(prefix + name)
        model, _ = _section_model(field.annotation)
        if model is not None:
            keys += _all_keys(model, f"{prefix}{name}.")
    return keys


def check_key(schema: type[BaseModel], key: str) -> None:
    """Raise OverrideError unless ``key`` (dotted) names a setting of ``schema``; suggest the nearest key."""
    parts = key.split(".")
    if not all(parts):
        raise OverrideError(f"{key!r}: empty part in the dotted key")
    model: type[BaseModel] | None = schema
    for i, part in enumerate(parts):
        if model is None:
            raise OverrideError(f"{key!r}: {'.'.join(parts[:i])} is a value, not a section")
        field = model.model_fields.get(part)
        if field is None:
            near = difflib.get_close_matches(key, _all_keys(schema), n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else ""
            raise OverrideError(f"unknown key {key!r}{hint}")
        model, free = _section_model(field.annotation)
        if free and model is None:
            return  # a free mapping (resources.placement): its keys are checked on validation


def parse_override(assignment: str, schema: type[BaseModel]) -> Override:
    """One ``--set`` argument as written on the command line."""
    key, eq, text = assignment.partition("=")
    key = key.strip()
    if not eq or not key:
        raise OverrideError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set rollout.num_samples=8")
    tiny = key.startswith(TINY + ".")
    inner = key[len(TINY) + 1:] if tiny else key
    try:
        check_key(schema, inner)
        value = parse_value(text)
    except OverrideError as err:
        raise OverrideError(f"in --set {assignment!r}: {err}") from None
    return Override(inner, value, tiny)


def parse_overrides(assignments: list[str] | tuple[str, ...], schema: type[BaseModel]) -> list[Override]:
    return [parse_override(a, schema) for a in assignments]


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """``raw["a"]["b"] = value`` for ``key`` ``"a.b"``, creating sections as needed."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or null in the recipe (eval.judge: null)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise OverrideError(f"{key}: '{part}' is not a section")
    node[parts[-1]] = value


def apply_tiny_overrides(raw: dict[str, Any], overrides: list[Override]) -> None:
    """``tiny.KEY=VALUE`` into the recipe's ``tiny:`` section (created when absent)."""
    for o in overrides:
        if o.tiny:
            section = raw.setdefault(TINY, {})
            if not isinstance(section, dict):
                raise OverrideError(f"--set tiny.{o.key}: the recipe's tiny: is not a mapping")
            section[o.key] = o.value


def apply_overrides(raw: dict[str, Any], overrides: list[Override]) -> None:
    """The plain (not tiny) overrides, in order, into the raw recipe mapping."""
    for o in overrides:
        if not o.tiny:
            set_dotted(raw, o.key, o.value)
