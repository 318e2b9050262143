"""The chaos API's schema drift kinds: how a vendor's answer changes under ``SchemaDriftFault``.

Each kind rewrites a 2xx JSON body the way a real API drifted (VENDOR-FAULTS #10 and the
cases of the "schema drift done right" issue). They apply to any JSON object, so the same kind
drifts a GET's record, a POST's echo and a HubSpot ``properties`` object alike:

=====================  =========================================================================
``hubspot``            VENDOR-FAULTS #10: ``email`` -> ``email_address``, ``amount`` "1000.50" ->
                       1000.5, ``hs_new_prop`` added (inside ``properties`` when there is one)
``rename``             ``name`` -> ``full_name`` (value evidence only when the request sent it)
``merge_name``         ``last_name`` removed, ``name`` = "first last" added (a wrong candidate)
``home_currency``      ``amount`` removed, ``amount_in_home_currency`` (converted) added
``ambiguous``          ``email`` removed, ``email_address`` and ``work_email`` added (a pair)
``remove``             ``email`` removed, nothing in its place
``data``               the object wrapped as ``{"data": {...}}``
``results``            ``{"results": [{...}]}``
``items``              ``{"items": [{...}], "next": null}``
``list``               a one-element list ``[{...}]``
=====================  =========================================================================
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal, get_args

DriftKind = Literal[
    "hubspot",
    "rename",
    "merge_name",
    "home_currency",
    "ambiguous",
    "remove",
    "data",
    "results",
    "items",
    "list",
]
DRIFT_KINDS: tuple[DriftKind, ...] = get_args(DriftKind)
HOME_RATE = 1.1
"""``home_currency``: the made-up exchange rate the vendor converted with."""


def drift_body(kind: DriftKind, payload: Any) -> Any:
    """``payload`` as the drifted API answers it (the input is not changed)."""
    if kind == "data":
        return {"data": payload}
    if kind == "results":
        return {"results": [payload]}
    if kind == "items":
        return {"items": [payload], "next": None}
    if kind == "list":
        return [payload]
    if not isinstance(payload, dict):
        return payload
    if kind == "hubspot":
        return _hubspot(payload)
    out = dict(payload)
    if kind == "rename" and "name" in out:
        out = _rekey(out, "name", "full_name")
    elif kind == "merge_name" and "last_name" in out:
        out = _rekey(out, "last_name", "name")
        out["name"] = f"{payload.get('first_name', '')} {payload['last_name']}".strip()
    elif kind == "home_currency" and "amount" in out:
        out = _rekey(out, "amount", "amount_in_home_currency")
        with contextlib.suppress(TypeError, ValueError):
            out["amount_in_home_currency"] = round(float(payload["amount"]) * HOME_RATE, 2)
    elif kind == "ambiguous" and "email" in out:
        out = _rekey(out, "email", "email_address")
        out["work_email"] = f"work.{payload['email']}"
    elif kind == "remove":
        out.pop("email", None)
    return out


def hubspot_renamed(payload: dict[str, Any]) -> dict[str, Any]:
    """The schema drift of VENDOR-FAULTS #10: ``email`` -> ``email_address``, ``amount`` as a
    number, and an added ``hs_new_prop`` in ``properties`` (recursively)."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if key == "email":
            out["email_address"] = value
        elif key == "amount" and isinstance(value, str):
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
        elif key == "properties" and isinstance(value, dict):
            out[key] = {**hubspot_renamed(value), "hs_new_prop": "x"}
        else:
            out[key] = value
    return out


def _hubspot(payload: dict[str, Any]) -> dict[str, Any]:
    out = hubspot_renamed(payload)
    if "properties" not in payload:
        out["hs_new_prop"] = "x"
    return out


def _rekey(payload: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """``payload`` with ``old`` renamed ``new`` in place (key order kept)."""
    return {(new if k == old else k): v for k, v in payload.items()}
