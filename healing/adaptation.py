"""Adapting a drifted response to its model, with evidence, never by a silent guess. Pure.

:func:`adapt` takes the body already received (it never asks for it again) and returns an
:class:`Adaptation`: either the validated data with a confidence, or "cannot adapt" with
reasons. It never raises, whatever the JSON.

The order: a known mapping first (the fleet's active one), then the body as it is, then a fresh
look: envelopes (``{"data": {...}}``, ``{"results": [...]}``, ``{"items": [...]}``, a
one-element list) are unwrapped when the inner object fits, and each required field that is
missing gets its candidates among the keys the model does not know. A rename is *automatic*
only with value evidence:

- ``request value``: the request sent this value under the expected name (a POST echo);
- ``unique format``: the value has the field's format (an email for ``email``, a URL for
  ``website``) and no other unknown key of the response shares it;
- ``same name``: the same words in another case style (``firstName`` / ``first_name``) and
  a value of the field's own type with no coercion. The one name-based evidence: a vendor
  switching case style is common and the words leave nothing to guess.

A name-only or partial-name match, two candidates, or a name that suggests a converted value
(``amount_in_home_currency``: unit conversions are never assumed) is a *proposal* for a human,
with every candidate and why it was or was not chosen. A required field no key carries is
"cannot adapt". Drift is described by :class:`Change` (paths and JSON types, never values).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from healing.evidence import (
    annotation_type,
    format_counts,
    json_type,
    node_count,
    path_type,
    sent_under,
    sent_values,
    suggests_conversion,
)
from healing.schema import (
    FORMAT_BY_NAME,
    MIN_NAME_SCORE,
    apply_mapping,
    field_format,
    format_of,
    model_of,
    name_score,
    prepare,
    tokens,
    value_score,
    walk,
)

ChangeKind = Literal["added", "removed", "renamed", "retyped", "envelope"]
Envelope = Literal["data", "results", "items", "list"]
ENVELOPE_KEYS: tuple[Envelope, ...] = ("data", "results", "items")
AUTOMATIC_EVIDENCE = frozenset({"request value", "unique format", "same name"})
"""Evidence strong enough to apply a rename with no human."""
_STRICT_FIT = 0.75
"""``value_score`` of a value that fits the field's type without coercion."""
MAX_NODES = 20_000
"""Larger bodies are not searched for renames (bounded work per call)."""


@dataclass(frozen=True)
class Change:
    """One difference between a response and its model: paths and JSON types, never values."""

    kind: ChangeKind
    path: str
    """Expected path (removed, renamed, retyped), new key (added), or the envelope's key."""
    to_path: str | None = None
    """For renamed: the key the value now arrives under."""
    from_type: str | None = None
    to_type: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.path}"

    def describe(self) -> str:
        types = " -> ".join(t for t in (self.from_type, self.to_type) if t)
        types = f" ({types})" if types else ""
        target = f" -> {self.to_path}" if self.to_path else ""
        return f"{self.kind} {self.path}{target}{types}"


@dataclass(frozen=True)
class Candidate:
    """A key considered for a missing field, and why it was or was not chosen."""

    expected: str
    observed: str
    evidence: str
    """``request value``, ``unique format``, ``same name``, ``name only``, ``no evidence``."""
    chosen: bool
    why: str


@dataclass(frozen=True)
class KnownMapping:
    """A mapping to try first (the fleet's active one)."""

    renames: Mapping[str, str] = field(default_factory=dict)
    """Observed path -> expected path."""
    envelope: Envelope | None = None


@dataclass(frozen=True)
class Adaptation:
    """What :func:`adapt` made of a body.

    ``ok`` with ``data``: the body fits (after ``renames`` and ``envelope``); ``automatic``
    says whether the evidence allows applying that with no human. Not ``ok``: ``reasons`` say
    why; ``renames`` may still hold a proposal that did not validate.
    """

    ok: bool
    data: dict[str, Any] | None = None
    confidence: float = 0.0
    automatic: bool = False
    known: bool = False
    """The body fit as it was, or after the known mapping: nothing new was learned."""
    renames: dict[str, str] = field(default_factory=dict)
    envelope: Envelope | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Values of the keys the model does not know, by path: returned beside the model."""
    changes: list[Change] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Required fields nothing accounts for."""
    reasons: list[str] = field(default_factory=list)

    @property
    def needs_mapping(self) -> bool:
        return bool(self.renames or self.envelope)

    def explain(self) -> str:
        """Field-level account for a human: what is missing, who was considered and why."""
        parts = list(self.reasons)
        for c in self.candidates:
            mark = "chosen" if c.chosen else "not chosen"
            parts.append(f"candidate {c.observed} for {c.expected}: {c.evidence}, {mark} ({c.why})")
        return "; ".join(parts) or "the response fits"


def adapt(
    model: type[BaseModel],
    payload: Any,
    *,
    known: KnownMapping | None = None,
    request: Any = None,
) -> Adaptation:
    """Fit ``payload`` to ``model``; never raises (see the module docstring).

    Args:
        model: The operation's response model.
        payload: The decoded body as received.
        known: The active mapping to try first.
        request: The request's body or params: a value sent under the expected name is
            evidence for a rename.
    """
    try:
        return _adapt(model, payload, known, request)
    except Exception as exc:  # a model or payload past what the analysis handles
        return Adaptation(
            ok=False, reasons=[f"the adapter could not analyse it ({type(exc).__name__})"]
        )


def _adapt(
    model: type[BaseModel], payload: Any, known: KnownMapping | None, request: Any
) -> Adaptation:
    found = _adapt_body(model, payload, known, request)
    return _with_siblings(found, payload) if found.ok and found.envelope else found


def _with_siblings(found: Adaptation, payload: Any) -> Adaptation:
    """Keys beside the envelope (``meta``, ``paging``, ``next``) are drift too: recorded as
    added and returned in ``extra`` (an inner key of the same name wins)."""
    if not isinstance(payload, Mapping):
        return found
    siblings = {k: v for k, v in payload.items() if k != found.envelope and k not in found.extra}
    if not siblings:
        return found
    changes = [Change("added", k, to_type=json_type(v)) for k, v in siblings.items()]
    return replace(found, extra={**found.extra, **siblings}, changes=[*found.changes, *changes])


def _adapt_body(
    model: type[BaseModel], payload: Any, known: KnownMapping | None, request: Any
) -> Adaptation:
    if known is not None and (known.renames or known.envelope):
        inner = _unwrap(payload, known.envelope) if known.envelope else payload
        if inner is not None:
            mapped = apply_mapping(inner, known.renames)
            data = _validate(model, mapped)
            if data is not None:
                fit = _fitted(model, mapped, data, known.renames, known.envelope, 1.0, True, [])
                return replace(fit, known=True)
    data = _validate(model, payload)
    if data is not None:
        return replace(_fitted(model, payload, data, {}, None, 1.0, True, []), known=True)
    if node_count(payload, MAX_NODES + 1) > MAX_NODES:
        return Adaptation(
            ok=False, reasons=[f"the body is too large to search (> {MAX_NODES} values)"]
        )
    options: list[tuple[Envelope | None, Any]] = [(None, payload)]
    options += [(env, inner) for env, inner in _envelopes(payload)]
    first: Adaptation | None = None
    for env, inner in options:
        found = _search(model, inner, env, request)
        if found.ok:
            return found
        first = first or found
    assert first is not None
    return first


def _search(model: type[BaseModel], body: Any, env: Envelope | None, request: Any) -> Adaptation:
    if not isinstance(body, Mapping):
        kind = json_type(body)
        return Adaptation(
            ok=False, envelope=env, reasons=[f"the response is {kind}, not an object"]
        )
    levels: list[Any] = []
    walk(model, body, "", levels)
    sent = sent_values(request)
    renames: dict[str, str] = {}
    candidates: list[Candidate] = []
    unresolved: list[str] = []
    automatic = True
    for level in levels:
        for key, name, info, required in level.absent:
            found = _candidates(level, key, name, info, sent)
            expected = level.prefix + key
            if not found:
                if required:
                    unresolved.append(expected)
                continue
            best, strong = _choose(found)
            if best is not None and not required and not strong:
                best = None  # an optional field stays absent rather than take a guess
            if best is not None and level.prefix + best[0] in renames:
                best = None  # one key cannot become two fields
            for cand in found:
                candidates.append(_as_candidate(expected, level.prefix, cand, best, strong, found))
            if best is not None:
                renames[level.prefix + best[0]] = expected
                automatic = automatic and strong
            elif required:
                unresolved.append(expected)
    if unresolved:
        reasons = [_missing_reason(model, path, candidates) for path in unresolved]
        # Drift all the same: what is gone (and what arrived instead) is recorded.
        changes = [Change("removed", p, from_type=path_type(model, p)) for p in unresolved]
        changes += [
            Change("added", level.prefix + key, to_type=json_type(value))
            for level in levels
            for key, value in level.extra.items()
        ]
        return Adaptation(
            ok=False, envelope=env, renames=renames, candidates=candidates,
            missing=unresolved, reasons=reasons, changes=changes,
        )  # fmt: skip
    mapped = apply_mapping(body, renames)
    data = _validate(model, mapped)
    if data is None:
        return Adaptation(
            ok=False, envelope=env, renames=renames, candidates=candidates,
            reasons=[_invalid_reason(model, mapped)],
        )  # fmt: skip
    confidence = 0.9 if automatic else 0.5
    if env is not None and not renames:
        confidence = 0.95
    adapted = _fitted(model, mapped, data, renames, env, confidence, automatic, candidates)
    if not automatic:
        return replace(adapted, reasons=[_review_reason(candidates)])
    return adapted


def _review_reason(candidates: list[Candidate]) -> str:
    by_field: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_field.setdefault(c.expected, []).append(c)
    parts = []
    for expected, found in by_field.items():
        chosen = [c for c in found if c.chosen]
        if len(found) > 1:
            parts.append(f"{len(found)} keys could be {expected}")
        elif chosen and chosen[0].evidence not in AUTOMATIC_EVIDENCE:
            parts.append(f"{chosen[0].observed} for {expected} has no value evidence")
    return "; ".join(parts or ["the evidence is not enough"]) + ", so a human decides"


def _candidates(
    level: Any, key: str, name: str, info: Any, sent: dict[str, list[Any]]
) -> list[tuple[str, str, float]]:
    """(observed key, evidence, score) for one missing field, best first."""
    out: list[tuple[str, str, float]] = []
    fmt_field = field_format(name, info)
    shared = format_counts(level.extra)
    for observed, value in level.extra.items():
        fit = value_score(name, info, value)
        if fit is None:
            continue  # the value cannot be this field's
        score = max(name_score(key, observed), name_score(name, observed))
        fmt = format_of(value)
        # Dates and ids are everywhere: their format is evidence only beside a similar name.
        named = fmt is not None and (not FORMAT_BY_NAME[fmt].common or score >= MIN_NAME_SCORE)
        if sent_under(sent, (key, name), value):
            evidence = "request value"
        elif named and fmt == fmt_field and shared.get(fmt or "", 0) == 1:
            evidence = "unique format"
        elif named and fmt == fmt_field:
            evidence = "shared format"  # another new key has the same format: no evidence
        elif fit >= _STRICT_FIT and tokens(observed) in (tokens(key), tokens(name)):
            evidence = "same name"  # the same words and a value of the field's own type
        elif score >= MIN_NAME_SCORE:
            evidence = "name only"
        else:
            continue
        if suggests_conversion(key, name, observed):
            evidence = "name suggests a conversion"
        out.append((observed, evidence, score + (1.0 if evidence in AUTOMATIC_EVIDENCE else 0.0)))
    out.sort(key=lambda c: (-c[2], c[0]))
    return out


def _choose(found: list[tuple[str, str, float]]) -> tuple[tuple[str, str, float] | None, bool]:
    """The candidate to map (None: none can be), and whether the choice is automatic."""
    strong = [c for c in found if c[1] in AUTOMATIC_EVIDENCE]
    if len(strong) == 1 and len(found) == 1:
        return strong[0], True
    if len(strong) == 1:
        return strong[0], False  # a rival without evidence still deserves a look
    return found[0], False  # proposed for a human, who sees every candidate


def _as_candidate(
    expected: str,
    prefix: str,
    cand: tuple[str, str, float],
    best: tuple[str, str, float] | None,
    strong: bool,
    found: list[tuple[str, str, float]],
) -> Candidate:
    observed, evidence, _ = cand
    chosen = best is not None and best[0] == observed
    others = [prefix + c[0] for c in found if c[0] != observed]
    if evidence == "name suggests a conversion":
        why = "its name suggests a converted value; unit conversions are never assumed"
    elif len(found) > 1:
        rivals = ", ".join(others)
        why = f"{'proposed' if chosen else 'also fits'}; {len(found)} candidates ({rivals} too)"
    elif evidence in AUTOMATIC_EVIDENCE:
        why = "applied automatically" if strong else "proposed"
    else:
        why = "only the name matches; a human confirms"
    return Candidate(expected, prefix + observed, evidence, chosen, why)


def _fitted(
    model: type[BaseModel],
    body: Any,
    data: dict[str, Any],
    renames: Mapping[str, str],
    env: Envelope | None,
    confidence: float,
    automatic: bool,
    candidates: list[Candidate],
) -> Adaptation:
    levels: list[Any] = []
    walk(model, body, "", levels)
    extra: dict[str, Any] = {}
    changes: list[Change] = []
    if env is not None:
        changes.append(Change("envelope", env, to_type="array" if env != "data" else "object"))
    for observed, expected in renames.items():
        changes.append(Change("renamed", expected, to_path=observed))
    for level in levels:
        for key, value in level.extra.items():
            extra[level.prefix + key] = value
            changes.append(Change("added", level.prefix + key, to_type=json_type(value)))
        for key, _, info, required in level.absent:
            if not required and level.prefix + key not in renames.values():
                continue  # an optional field absent is not drift: absent is allowed
            changes.append(Change("removed", level.prefix + key, from_type=annotation_type(info)))
    changes += _retyped(model, body, "")
    return Adaptation(
        ok=True, data=data, confidence=confidence, automatic=automatic,
        renames=dict(renames), envelope=env,
        extra=extra, changes=changes, candidates=candidates,
    )  # fmt: skip


def _retyped(model: type[BaseModel], body: Any, prefix: str) -> list[Change]:
    """Fields present whose JSON type is not the model's (coerced, so recorded as drift)."""
    if not isinstance(body, Mapping):
        return []
    out: list[Change] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in body:
            continue
        value = body[key]
        sub = model_of(info.annotation)
        if sub is not None and isinstance(value, Mapping):
            out += _retyped(sub, value, f"{prefix}{key}.")
            continue
        wanted = annotation_type(info)
        got = json_type(value)
        if wanted and value is not None and got not in wanted.split("|"):
            out.append(Change("retyped", prefix + key, from_type=wanted, to_type=got))
    return out


def _validate(model: type[BaseModel], body: Any) -> dict[str, Any] | None:
    if not isinstance(body, Mapping):
        return None
    try:
        return model.model_validate(prepare(model, body), strict=False).model_dump(mode="json")
    except (ValidationError, ValueError, TypeError, RecursionError):
        return None


def _envelopes(payload: Any) -> list[tuple[Envelope, Any]]:
    out: list[tuple[Envelope, Any]] = []
    if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], Mapping):
        out.append(("list", payload[0]))
    if isinstance(payload, Mapping):
        for key in ENVELOPE_KEYS:
            inner = _unwrap(payload, key)
            if inner is not None:
                out.append((key, inner))
    return out


def _unwrap(payload: Any, env: Envelope | None) -> Any:
    if env == "list":
        ok = isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], Mapping)
        return payload[0] if ok else None
    if not isinstance(payload, Mapping) or env not in payload:
        return None
    inner = payload[env]
    if isinstance(inner, list):
        inner = inner[0] if len(inner) == 1 else None
    return inner if isinstance(inner, Mapping) else None


def _missing_reason(model: type[BaseModel], path: str, candidates: list[Candidate]) -> str:
    considered = [c.observed for c in candidates if c.expected == path]
    kind = path_type(model, path)
    what = f"required field {path}{f' ({kind})' if kind else ''} is missing"
    if considered:
        return f"{what}; considered {', '.join(considered)}, none with evidence enough"
    return f"{what} and no other key of the response can hold it"


def _invalid_reason(model: type[BaseModel], body: Any) -> str:
    try:
        model.model_validate(prepare(model, body), strict=False)
    except ValidationError as exc:
        fields = sorted(
            {".".join(str(p) for p in e["loc"]) + f" ({e['type']})" for e in exc.errors()}
        )
        return f"after the renames, these fields still do not fit: {', '.join(fields[:10])}"
    except Exception as exc:
        return f"the model refused it ({type(exc).__name__})"
    return "the model refused it"
