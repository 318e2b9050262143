"""Per-client rate windows and quotas for the chaos server, in each vendor's header form.

A `RateWindow` in `FaultPlan.rate_limits` allows `requests` calls per fixed window of `per_s`
seconds (windows count from when the plan was installed) to the paths it matches, per client
(the value of `client_header`; one client for all when it is None). Every answer on a limited
path carries the quota in the window's `form`; the call past the quota gets the vendor's
throttling answer instead, and is counted in `RateStats.throttled`.

Forms (header values as the vendors and the IETF drafts document them):

- `retry-after`: 429 with `Retry-After: <delta seconds>`, no quota headers (Slack, Graph).
- `retry-after-date`: the same with an HTTP-date (RFC 9110 s10.2.3).
- `x-ratelimit`: `X-RateLimit-Limit`, `-Remaining`, `-Reset` (delta seconds).
- `github`: `x-ratelimit-limit`, `-remaining`, `-used`, `-resource: core`, `-reset` (epoch).
- `hubspot`: `X-HubSpot-RateLimit-Max`, `-Remaining`, `-Interval-Milliseconds`; a 429 with
  `policyName: TEN_SECONDLY_ROLLING`.
- `ietf-03`: `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (draft -03).
- `ietf-07`: `RateLimit: limit=20, remaining=5, reset=3` with `RateLimit-Policy: 20;w=5`.
- `ietf-10`: `RateLimit-Policy: "daily";q=100000;w=86400, "burst";q=20;w=5` and
  `RateLimit: "daily";r=..;t=.., "burst";r=5;t=3` (several policies; the burst one binds).
- `ietf-policy`: a lone `RateLimit-Policy: 20;w=5` (and `Retry-After` on the 429).
- `google-quota`: a daily quota: 403 `dailyLimitExceeded` (Google's shape) with `Retry-After`
  until the window's end; successes carry no quota headers.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from healing.testing._http import Response

RateForm = Literal[
    "retry-after",
    "retry-after-date",
    "x-ratelimit",
    "github",
    "hubspot",
    "ietf-03",
    "ietf-07",
    "ietf-10",
    "ietf-policy",
    "google-quota",
]
RATE_FORMS: tuple[RateForm, ...] = tuple(f for f in get_args(RateForm) if f != "google-quota")
"""The short-window forms (``google-quota`` is a daily quota, not a window to pace by)."""


class RateWindow(BaseModel):
    """`requests` per fixed `per_s` window on the paths matching `path`, per client."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: int = Field(ge=1)
    per_s: float = Field(gt=0)
    form: RateForm = "x-ratelimit"
    path: str = "*"
    client_header: str | None = None

    def matches(self, path: str) -> bool:
        return fnmatch.fnmatchcase(path, self.path)


@dataclass
class RateStats:
    calls: int = 0
    throttled: int = 0
    by_form: dict[str, int] = field(default_factory=dict)
    """429s (or quota answers) by form."""
    first_at: float | None = None
    """Epoch seconds of the first call (the window's minimum time counts from it)."""
    last_ok_at: float | None = None
    """Epoch seconds of the latest answered (not throttled) call."""


class RateBook:
    """Counts calls per (window rule, client, window index); answers in each form."""

    def __init__(self) -> None:
        self.counts: dict[tuple[int, str, int], int] = {}
        self.stats = RateStats()

    def reset(self) -> None:
        self.counts.clear()
        self.stats = RateStats()

    def admit(
        self,
        windows: tuple[RateWindow, ...],
        path: str,
        header: Callable[[str], str | None],
        *,
        elapsed_s: float,
        now_epoch: float,
    ) -> tuple[tuple[tuple[str, str], ...], Response | None]:
        """Count one call; returns the quota headers for its answer, or the throttling answer."""
        headers: list[tuple[str, str]] = []
        for i, window in enumerate(windows):
            if not window.matches(path):
                continue
            client = (header(window.client_header) or "") if window.client_header else ""
            index = math.floor(elapsed_s / window.per_s)
            key = (i, client, index)
            used = self.counts.get(key, 0) + 1
            self.counts[key] = used
            self.stats.calls += 1
            if self.stats.first_at is None:
                self.stats.first_at = now_epoch
            reset = (index + 1) * window.per_s - elapsed_s
            remaining = max(window.requests - used, 0)
            if used > window.requests:
                self.stats.throttled += 1
                self.stats.by_form[window.form] = self.stats.by_form.get(window.form, 0) + 1
                return (), _throttled(window, reset, now_epoch)
            self.stats.last_ok_at = now_epoch
            headers.extend(_quota_headers(window, remaining, reset, now_epoch))
        return tuple(headers), None


def _quota_headers(
    w: RateWindow, remaining: int, reset: float, now_epoch: float
) -> list[tuple[str, str]]:
    secs = str(max(math.ceil(reset), 1))
    per = f"{w.per_s:g}"
    if w.form == "x-ratelimit":
        return [
            ("X-RateLimit-Limit", str(w.requests)),
            ("X-RateLimit-Remaining", str(remaining)),
            ("X-RateLimit-Reset", secs),
        ]
    if w.form == "github":
        return [
            ("x-ratelimit-limit", str(w.requests)),
            ("x-ratelimit-remaining", str(remaining)),
            ("x-ratelimit-used", str(w.requests - remaining)),
            ("x-ratelimit-resource", "core"),
            ("x-ratelimit-reset", str(math.ceil(now_epoch + reset))),
        ]
    if w.form == "hubspot":
        return [
            ("X-HubSpot-RateLimit-Max", str(w.requests)),
            ("X-HubSpot-RateLimit-Remaining", str(remaining)),
            ("X-HubSpot-RateLimit-Interval-Milliseconds", str(int(w.per_s * 1000))),
        ]
    if w.form == "ietf-03":
        return [
            ("RateLimit-Limit", str(w.requests)),
            ("RateLimit-Remaining", str(remaining)),
            ("RateLimit-Reset", secs),
        ]
    if w.form == "ietf-07":
        return [
            ("RateLimit", f"limit={w.requests}, remaining={remaining}, reset={secs}"),
            ("RateLimit-Policy", f"{w.requests};w={per}"),
        ]
    if w.form == "ietf-10":
        return [
            ("RateLimit-Policy", f'"daily";q=100000;w=86400, "burst";q={w.requests};w={per}'),
            ("RateLimit", f'"daily";r=99000;t=80000, "burst";r={remaining};t={secs}'),
        ]
    if w.form == "ietf-policy":
        return [("RateLimit-Policy", f"{w.requests};w={per}")]
    return []  # retry-after forms and quotas: nothing until the limit is hit


def _throttled(w: RateWindow, reset: float, now_epoch: float) -> Response:
    secs = max(math.ceil(reset), 1)
    retry_after = ("Retry-After", str(secs))
    if w.form == "retry-after-date":
        retry_after = ("Retry-After", formatdate(math.ceil(now_epoch + reset), usegmt=True))
    body: dict[str, object] = {"error": "rate_limited", "message": "Too many requests"}
    status = 429
    extra: list[tuple[str, str]] = []
    if w.form in ("retry-after", "retry-after-date", "ietf-policy"):
        extra = [retry_after, *_quota_headers(w, 0, reset, now_epoch)]
    elif w.form == "hubspot":
        body = {
            "status": "error",
            "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": "chaos",
            "policyName": "TEN_SECONDLY_ROLLING",
        }
        extra = _quota_headers(w, 0, reset, now_epoch)
    elif w.form == "google-quota":
        status = 403
        body = {
            "error": {
                "code": 403,
                "message": "Daily Limit Exceeded",
                "errors": [{"reason": "dailyLimitExceeded", "domain": "usageLimits"}],
            }
        }
        extra = [retry_after]
    else:
        extra = _quota_headers(w, 0, reset, now_epoch)
    payload = json.dumps(body, separators=(",", ":")).encode()
    return Response(status, payload, (("Content-Type", "application/json"), *extra))
