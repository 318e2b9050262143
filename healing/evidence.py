"""Evidence for schema adaptation: what a value looks like, what a name suggests, what the
request sent. Pure helpers of :mod:`healing.adaptation`; names and JSON types only, values are
compared, never kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from healing.schema import format_of, members, model_of, tokens

UNIT_WORDS = frozenset(
    {"currency", "home", "converted", "local", "usd", "eur", "gbp", "cents", "pence", "minor",
     "ms", "millis", "seconds", "secs", "minutes", "hours", "days", "kg", "lbs", "km", "miles",
     "percent", "pct", "ratio", "utc", "tz", "net", "gross", "tax"}
)  # fmt: skip


def path_type(model: type[BaseModel], path: str) -> str | None:
    """JSON type(s) the model expects at a dotted wire path (None: no such field)."""
    current: type[BaseModel] | None = model
    info = None
    for part in path.split("."):
        if current is None:
            return None
        info = next((i for n, i in current.model_fields.items() if (i.alias or n) == part), None)
        if info is None:
            return None
        current = model_of(info.annotation)
    return annotation_type(info) if info is not None else None


def annotation_type(info: Any) -> str | None:
    """JSON type(s) of a field's annotation, ``string|number`` for a union."""
    names = []
    for member in members(info.annotation):
        if member is bool:
            names.append("boolean")
        elif member in (int, float) or getattr(member, "__name__", "") == "Decimal":
            names.append("number")
        elif member is str:
            names.append("string")
        elif isinstance(member, type) and issubclass(member, BaseModel):
            names.append("object")
        elif getattr(member, "__origin__", None) in (list, tuple, set) or member in (list, tuple):
            names.append("array")
        elif getattr(member, "__origin__", None) is dict or member is dict:
            names.append("object")
    return "|".join(dict.fromkeys(names)) or None


def json_type(value: Any) -> str:
    """The JSON type of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def format_counts(extra: Mapping[str, Any]) -> dict[str, int]:
    """How many values of each format the keys hold: a format two keys share is no evidence."""
    counts: dict[str, int] = {}
    for value in extra.values():
        fmt = format_of(value)
        if fmt is not None:
            counts[fmt] = counts.get(fmt, 0) + 1
    return counts


def suggests_conversion(key: str, name: str, observed: str) -> bool:
    """The new name adds a unit or currency word: its value may be converted."""
    extra_words = set(tokens(observed)) - set(tokens(key)) - set(tokens(name))
    return bool(extra_words & UNIT_WORDS)


def sent_values(request: Any, depth: int = 0) -> dict[str, list[Any]]:
    """Every scalar the request sent, by its key's words (at any depth)."""
    out: dict[str, list[Any]] = {}
    if depth > 8 or not isinstance(request, Mapping):
        return out
    for key, value in request.items():
        if isinstance(value, Mapping):
            for k, v in sent_values(value, depth + 1).items():
                out.setdefault(k, []).extend(v)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            out.setdefault(" ".join(tokens(str(key))), []).append(value)
    return out


MIN_ECHO_CHARS = 4
"""A value shorter than this (``1``, ``"ok"``, ``true``) matches by chance: no evidence."""


def informative(value: Any) -> bool:
    """The value is specific enough that an equal one is unlikely to be a coincidence."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False
    return len(str(value).strip()) >= MIN_ECHO_CHARS


def sent_under(sent: dict[str, list[Any]], names: tuple[str, str], value: Any) -> bool:
    """The request sent ``value`` under one of ``names`` (a POST echo: value evidence).

    Only an informative value counts (see :func:`informative`): a small number or a short
    string sent as ``id`` says nothing about a ``page: 1`` in the response.
    """
    if not sent or not informative(value):
        return False
    for name in names:
        for was in sent.get(" ".join(tokens(name)), []):
            if was == value or (str(was) == str(value) and str(value).strip()):
                return True
    return False


def node_count(payload: Any, limit: int) -> int:
    """Values in ``payload``, counted up to ``limit``."""
    stack, seen = [payload], 0
    while stack and seen < limit:
        node = stack.pop()
        seen += 1
        if isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return seen
