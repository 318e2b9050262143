"""Schema adaptation: make a response that drifted from its pydantic model fit it again.

Pure domain. Paths are dotted wire keys (aliases, not Python names), e.g. ``properties.email``;
keys containing dots and paths through lists are not addressed.

1. :func:`diff_payload` walks the model (nested models included) against the payload and
   lists required fields that are absent, keys the model does not know, and proposed renames.
2. Renames are inferred per nesting level from name evidence (case style, shared tokens,
   difflib ratio) *and* value evidence (the value must validate as the expected field; an
   ``email*`` field needs an email-looking value). Ties are left unmapped and reported.
3. :func:`validate_response` applies a mapping, coerces numbers <-> strings, drops keys an
   ``extra="forbid"`` model would refuse (new fields are reported, not errors) and validates.
   Failures raise :class:`~healing.errors.SchemaMismatch` naming fields, never their values.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from difflib import SequenceMatcher
from types import NoneType, UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from healing.errors import SchemaMismatch

M = TypeVar("M", bound=BaseModel)

MIN_NAME_SCORE = 0.7
"""Name similarity (0..1) a candidate needs before its value is even considered."""
TIE_EPSILON = 0.02
"""Candidates scoring this close are a tie: the field is left unmapped, not guessed."""
_VALUE_WEIGHT = 0.25
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_URL = re.compile(r"^https?://\S+$", re.IGNORECASE)
_KINDS = (
    (_EMAIL, frozenset({"email", "mail"})),
    (_URL, frozenset({"url", "uri", "link", "href", "website"})),
)
_NUMERIC = (int, float, Decimal)


@dataclass(frozen=True)
class SchemaDiff:
    """How a payload differs from a model (field names only, never values).

    Attributes:
        missing: Required fields absent from the payload.
        unexpected: Keys the model does not know (new fields or renamed ones).
        mapping: Proposed renames, observed path -> expected path.
        ambiguous: Expected path -> tied candidates, left unmapped on purpose.
        absent_optional: Optional fields absent (a silent rename would leave them None).
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    absent_optional: list[str] = field(default_factory=list)

    @property
    def added(self) -> list[str]:
        """Unexpected keys not explained by a rename: fields the vendor added."""
        return [path for path in self.unexpected if path not in self.mapping]

    @property
    def unresolved(self) -> list[str]:
        """Missing fields no rename accounts for."""
        targets = set(self.mapping.values())
        return [path for path in self.missing if path not in targets]


@dataclass
class _Level:
    prefix: str
    absent: list[tuple[str, str, FieldInfo, bool]]  # (wire key, name, field, required)
    extra: dict[str, Any]


def diff_payload(model: type[BaseModel], payload: Any) -> SchemaDiff:
    """Compare ``payload`` with ``model`` and propose renames.

    Args:
        model: The expected pydantic model.
        payload: Decoded JSON (usually a dict).

    Returns:
        The differences, with :func:`infer_mapping`'s proposal in ``mapping``.
    """
    levels: list[_Level] = []
    _walk(model, payload, "", levels)
    diff = SchemaDiff()
    for level in levels:
        for key, _, _, required in level.absent:
            (diff.missing if required else diff.absent_optional).append(level.prefix + key)
        diff.unexpected.extend(level.prefix + key for key in level.extra)
        _infer_level(level, diff.mapping, diff.ambiguous)
    return diff


def infer_mapping(model: type[BaseModel], payload: Any) -> dict[str, str]:
    """Proposed renames (observed path -> expected path) that would make ``payload`` fit."""
    return diff_payload(model, payload).mapping


def added_fields(model: type[BaseModel], payload: Any) -> list[str]:
    """Keys the vendor added that no rename explains (to log, not to fail on)."""
    return diff_payload(model, payload).added


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


def validate_response(model: type[M], payload: Any, mapping: Mapping[str, str] | None = None) -> M:
    """Validate a response leniently after applying ``mapping``.

    Strings become numbers and numbers become strings where the model wants them; keys an
    ``extra="forbid"`` model would refuse are dropped (see :func:`added_fields`).

    Raises:
        SchemaMismatch: The payload still does not fit. ``mapping`` on the error combines the
            given mapping with renames inferred from what is still missing.
    """
    mapped = apply_mapping(payload, mapping) if mapping else payload
    try:
        return model.model_validate(_prepare(model, mapped), strict=False)
    except ValidationError as exc:
        diff = diff_payload(model, mapped)
        known = set(diff.missing)
        found = {(_loc(err["loc"]), err["type"]) for err in exc.errors()}
        invalid = sorted(f"{loc} ({kind})" for loc, kind in found if loc not in known)
        proposed = {**(mapping or {}), **diff.mapping}
        message = _describe(model, diff, invalid)
        # `from None`: pydantic's error text quotes input values, which may be personal data.
        raise SchemaMismatch(
            message, missing=diff.missing, unexpected=diff.unexpected, mapping=proposed
        ) from None


def _describe(model: type[BaseModel], diff: SchemaDiff, invalid: list[str]) -> str:
    sections = {
        "missing": diff.missing,
        "invalid": invalid,
        "unexpected": diff.unexpected,
        "proposed renames": [f"{a} -> {b}" for a, b in diff.mapping.items()],
        "ambiguous, left unmapped": [f"{k} ({' | '.join(v)})" for k, v in diff.ambiguous.items()],
    }
    parts = [f"response does not fit {model.__name__}"]
    for title, items in sections.items():
        if items:
            more = f", +{len(items) - 10} more" if len(items) > 10 else ""
            parts.append(f"{title} {', '.join(items[:10])}{more}")
    return "; ".join(parts)


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


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


def _walk(model: type[BaseModel], payload: Any, prefix: str, levels: list[_Level]) -> None:
    data: Mapping[str, Any] = payload if isinstance(payload, Mapping) else {}
    level = _Level(prefix, [], {})
    known: set[str] = set()
    for name, info in model.model_fields.items():
        keys = _keys(name, info, model)
        known.update(keys)
        present = next((key for key in keys if key in data), None)
        if present is None:
            level.absent.append((keys[0], name, info, info.is_required()))
            continue
        sub = _model_of(info.annotation)
        if sub is not None and isinstance(data[present], Mapping):
            _walk(sub, data[present], f"{prefix}{present}.", levels)
    level.extra = {key: value for key, value in data.items() if key not in known}
    levels.append(level)


def _members(annotation: Any) -> list[Any]:
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return [m for arg in get_args(annotation) for m in _members(arg) if m is not NoneType]
    return [annotation]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    models = [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
    return models[0] if len(models) == 1 else None


def _prepare(model: type[BaseModel], data: Any) -> Any:
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
    members = _members(annotation)
    if isinstance(value, _NUMERIC) and not isinstance(value, bool):
        if str in members and not any(m in (*_NUMERIC, bool) for m in members):
            return str(value)
        return value
    sub = _model_of(annotation)
    if sub is not None and isinstance(value, Mapping):
        return _prepare(sub, value)
    if len(members) == 1:
        origin, args = get_origin(members[0]), get_args(members[0])
        if origin in (list, set, frozenset, tuple) and isinstance(value, list) and args:
            return [_prepare_value(args[0], item) for item in value]
        if origin is dict and isinstance(value, Mapping) and len(args) == 2:
            return {k: _prepare_value(args[1], v) for k, v in value.items()}
    return value


def _tokens(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", spaced)
    return [t for t in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if t]


def _name_score(expected: str, observed: str) -> float:
    te, to = _tokens(expected), _tokens(observed)
    if not te or not to:
        return 0.0
    if te == to:
        return 1.0  # same words, another case style: firstName vs first_name
    ratio = SequenceMatcher(None, "".join(te), "".join(to)).ratio()
    small, large = sorted((set(te), set(to)), key=len)
    subset = 0.6 + 0.4 * len(small) / len(large) if small <= large else 0.0
    return max(ratio, subset)


def _value_score(name: str, info: FieldInfo, value: Any) -> float | None:
    """How well ``value`` fits the field: None rejects, higher is better."""
    annotation = info.annotation
    if _model_of(annotation) is not None:
        return 0.5 if isinstance(value, Mapping) else None
    typed: Any = Annotated[(annotation, *info.metadata)] if info.metadata else annotation
    adapter: TypeAdapter[Any] = TypeAdapter(typed)
    try:
        adapter.validate_python(_prepare_value(annotation, value), strict=False)
    except ValidationError:
        return None
    # What the field holds, from its type (EmailStr, HttpUrl) or a str field's last word.
    words = _tokens(name) if str in _members(annotation) else []
    kind = {*_tokens(getattr(annotation, "__name__", "")), *words[-1:]}
    if words[-2:] in (["email", "address"], ["mail", "address"]):
        kind.add("email")
    for pattern, names in _KINDS:
        if kind & names:
            return 1.0 if isinstance(value, str) and pattern.match(value) else None
    try:
        adapter.validate_python(value, strict=True)
    except ValidationError:
        return 0.4  # fits only after coercion: weaker evidence
    return 0.75


def _infer_level(level: _Level, mapping: dict[str, str], ambiguous: dict[str, list[str]]) -> None:
    pairs: list[tuple[float, str, str]] = []  # (score, expected key, observed key)
    for key, field_name, info, _ in level.absent:
        for observed, value in level.extra.items():
            name = max(_name_score(key, observed), _name_score(field_name, observed))
            if name < MIN_NAME_SCORE:
                continue
            fit = _value_score(field_name, info, value)
            if fit is not None:
                pairs.append((name + _VALUE_WEIGHT * fit, key, observed))
    pairs.sort(key=lambda pair: (-pair[0], pair[1], pair[2]))
    ties: dict[str, list[str]] = {}
    while pairs:
        score, expected, observed = pairs[0]
        near = [p for p in pairs if score - p[0] <= TIE_EPSILON]
        rival_obs = [o for _, e, o in near if e == expected and o != observed]
        rival_exp = [e for _, e, o in near if o == observed and e != expected]
        if not rival_obs and not rival_exp:
            mapping[level.prefix + observed] = level.prefix + expected
            pairs = [p for p in pairs if p[1] != expected and p[2] != observed]
            continue
        if rival_obs:  # several observed keys fit this field equally: do not guess
            ties.setdefault(expected, []).extend([observed, *rival_obs])
            pairs = [p for p in pairs if p[1] != expected]
        if rival_exp:  # this observed key fits several fields equally: give it to none
            for exp in [expected, *rival_exp]:
                ties.setdefault(exp, []).append(observed)
            pairs = [p for p in pairs if p[2] != observed]
    mapped = set(mapping.values())
    for expected, candidates in ties.items():
        if level.prefix + expected not in mapped:
            paths = sorted({level.prefix + c for c in candidates})
            ambiguous[level.prefix + expected] = paths
