"""Schema helpers of :mod:`healing.adaptation`: walking a model against a payload, names,
value formats, lenient validation. Pure domain.

Paths are dotted wire keys (aliases, not Python names), e.g. ``properties.email``; keys
containing dots and paths through lists are not addressed. :data:`FORMATS` is the one table of
value formats (email, url, uuid, date): :func:`field_format` says which a field holds (from its
annotation, or a ``str`` field's last name word), :func:`format_of` which a value has.
:func:`apply_mapping` moves keys; :func:`prepare` coerces numbers to ``str`` fields and drops
keys an ``extra="forbid"`` model would refuse (new fields are drift, not errors).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from difflib import SequenceMatcher
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

MIN_NAME_SCORE = 0.7
"""Name similarity (0..1) a candidate needs before its value is even considered."""


@dataclass(frozen=True)
class ValueFormat:
    """A distinctive value shape a field may hold, and how a field says it holds it."""

    name: str
    pattern: re.Pattern[str]
    words: frozenset[str]
    """A ``str`` field whose name's last word is one of these holds this format."""
    types: frozenset[str]
    """Annotations (by class name) that hold this format."""
    strict: bool
    """A field of this format refuses a value of another shape."""
    common: bool
    """Many fields share it (dates, ids): evidence only beside a similar name."""


FORMATS: tuple[ValueFormat, ...] = (
    ValueFormat(
        "email",
        re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
        frozenset({"email", "mail"}),
        frozenset({"EmailStr", "NameEmail"}),
        strict=True,
        common=False,
    ),
    ValueFormat(
        "url",
        re.compile(r"^https?://\S+$", re.IGNORECASE),
        frozenset({"url", "uri", "link", "href", "website"}),
        frozenset({"HttpUrl", "AnyUrl", "AnyHttpUrl", "Url"}),
        strict=True,
        common=False,
    ),
    ValueFormat(
        "uuid",
        re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I),
        frozenset({"uuid", "guid"}),
        frozenset({"UUID", "UUID1", "UUID3", "UUID4", "UUID5"}),
        strict=False,
        common=True,
    ),
    ValueFormat(
        "date",
        re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$"),
        frozenset({"date", "time", "at", "timestamp", "datetime"}),
        frozenset({"datetime", "date", "AwareDatetime", "NaiveDatetime", "PastDatetime"}),
        strict=False,
        common=True,
    ),
)
FORMAT_BY_NAME = {f.name: f for f in FORMATS}
_NUMERIC = (int, float, Decimal)


@dataclass
class Level:
    prefix: str
    absent: list[tuple[str, str, FieldInfo, bool]]  # (wire key, name, field, required)
    extra: dict[str, Any]


def apply_mapping(payload: Any, mapping: Mapping[str, str]) -> Any:
    """Return a copy of ``payload`` with keys moved as ``mapping`` says; the input is untouched.

    A rename whose source is absent, or whose target already holds a value, is skipped.
    """
    result = copy.deepcopy(payload)
    moves: list[tuple[list[str], Any]] = []
    # Take every value out first (deepest first), then place them, so renames do not collide.
    for source, target in sorted(mapping.items(), key=lambda item: -item[0].count(".")):
        parent, key = _parent(result, source.split("."))
        target_parent, target_key = _parent(result, target.split("."))
        if parent is None or key not in parent:
            continue
        if target_parent is not None and target_key in target_parent:
            continue
        moves.append((target.split("."), parent.pop(key)))
    for parts, value in sorted(moves, key=lambda move: len(move[0])):
        node: Any = result
        for part in parts[:-1]:
            if isinstance(node, dict):
                node = node.setdefault(part, {})
        if isinstance(node, dict):
            node[parts[-1]] = value
    return result


def _parent(root: Any, parts: list[str]) -> tuple[dict[str, Any] | None, str]:
    node = root
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), parts[-1]


def _keys(name: str, info: FieldInfo, model: type[BaseModel]) -> list[str]:
    """Wire keys accepted for a field, the canonical one first."""
    alias = info.validation_alias
    keys = [alias] if isinstance(alias, str) else []
    if alias is not None and not isinstance(alias, str):
        keys += [c for c in getattr(alias, "choices", []) if isinstance(c, str)]
    if not keys and info.alias:
        keys = [info.alias]
    config = model.model_config
    if not keys or config.get("populate_by_name") or config.get("validate_by_name"):
        keys.append(name)
    return keys


def walk(model: type[BaseModel], payload: Any, prefix: str, levels: list[Level]) -> None:
    data: Mapping[str, Any] = payload if isinstance(payload, Mapping) else {}
    level = Level(prefix, [], {})
    known: set[str] = set()
    for name, info in model.model_fields.items():
        keys = _keys(name, info, model)
        known.update(keys)
        present = next((key for key in keys if key in data), None)
        if present is None:
            level.absent.append((keys[0], name, info, info.is_required()))
            continue
        sub = model_of(info.annotation)
        if sub is not None and isinstance(data[present], Mapping):
            walk(sub, data[present], f"{prefix}{present}.", levels)
    level.extra = {key: value for key, value in data.items() if key not in known}
    levels.append(level)


def members(annotation: Any) -> list[Any]:
    if get_origin(annotation) is Annotated:
        return members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return [m for arg in get_args(annotation) for m in members(arg) if m is not NoneType]
    return [annotation]


def model_of(annotation: Any) -> type[BaseModel] | None:
    models = [m for m in members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
    return models[0] if len(models) == 1 else None


def prepare(model: type[BaseModel], data: Any) -> Any:
    """Coerce numbers to ``str`` fields and drop keys a forbidding model would refuse."""
    if not isinstance(data, Mapping):
        return data
    fields = {k: info for n, info in model.model_fields.items() for k in _keys(n, info, model)}
    forbid = model.model_config.get("extra") == "forbid"
    return {
        key: _prepare_value(fields[key].annotation, value) if key in fields else value
        for key, value in data.items()
        if key in fields or not forbid
    }


def _prepare_value(annotation: Any, value: Any) -> Any:
    kinds = members(annotation)
    if isinstance(value, _NUMERIC) and not isinstance(value, bool):
        if str in kinds and not any(m in (*_NUMERIC, bool) for m in kinds):
            return str(value)
        return value
    sub = model_of(annotation)
    if sub is not None and isinstance(value, Mapping):
        return prepare(sub, value)
    if len(kinds) == 1:
        origin, args = get_origin(kinds[0]), get_args(kinds[0])
        if origin in (list, set, frozenset, tuple) and isinstance(value, list) and args:
            return [_prepare_value(args[0], item) for item in value]
        if origin is dict and isinstance(value, Mapping) and len(args) == 2:
            return {k: _prepare_value(args[1], v) for k, v in value.items()}
    return value


def tokens(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", spaced)
    return [t for t in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if t]


def name_score(expected: str, observed: str) -> float:
    te, to = tokens(expected), tokens(observed)
    if not te or not to:
        return 0.0
    if te == to:
        return 1.0  # same words, another case style: firstName vs first_name
    ratio = SequenceMatcher(None, "".join(te), "".join(to)).ratio()
    small, large = sorted((set(te), set(to)), key=len)
    subset = 0.6 + 0.4 * len(small) / len(large) if small <= large else 0.0
    return max(ratio, subset)


def format_of(value: Any) -> str | None:
    """The distinctive format a value has (``email``, ``url``, ``uuid``, ``date``), if any."""
    if not isinstance(value, str):
        return None
    return next((f.name for f in FORMATS if f.pattern.match(value)), None)


def field_format(name: str, info: FieldInfo) -> str | None:
    """The format a field holds: from its annotation (``EmailStr``, ``HttpUrl``, ``UUID``,
    ``datetime``) or, for a ``str`` field, from its name's last word (``work_email``,
    ``created_at``, ``email_address``); never from any word (``mail_server`` holds no email).
    """
    types = {getattr(m, "__name__", "") for m in members(info.annotation)}
    for fmt in FORMATS:
        if types & fmt.types:
            return fmt.name
    if str not in members(info.annotation):
        return None
    words = tokens(name)
    if words[-2:] in (["email", "address"], ["mail", "address"]):
        return "email"
    last = words[-1:]
    return next((f.name for f in FORMATS if last and last[0] in f.words), None)


def value_score(name: str, info: FieldInfo, value: Any) -> float | None:
    """How well ``value`` fits the field: None rejects, higher is better."""
    annotation = info.annotation
    if model_of(annotation) is not None:
        return 0.5 if isinstance(value, Mapping) else None
    typed: Any = Annotated[(annotation, *info.metadata)] if info.metadata else annotation
    adapter: TypeAdapter[Any] = TypeAdapter(typed)
    try:
        adapter.validate_python(_prepare_value(annotation, value), strict=False)
    except ValidationError:
        return None
    fmt = FORMAT_BY_NAME.get(field_format(name, info) or "")
    if fmt is not None and fmt.strict:
        return 1.0 if isinstance(value, str) and fmt.pattern.match(value) else None
    try:
        adapter.validate_python(value, strict=True)
    except ValidationError:
        return 0.4  # fits only after coercion: weaker evidence
    return 0.75
