"""Client-side pacing: a token bucket per connector, refined by the vendor's rate-limit headers.

Pure domain: the clock is passed in (``now`` in monotonic seconds, ``now_epoch`` in Unix seconds
for headers that carry an epoch), so pacing schedules are tested as plain lists of waits.

Header shapes understood by :func:`parse_rate_limit_headers` (names lower-cased):

- HubSpot: ``x-hubspot-ratelimit-max``, ``-remaining``, ``-interval-milliseconds`` (rolling
  window; the daily ``x-hubspot-ratelimit-daily``/``-daily-remaining`` when it is the binding one).
- GitHub and most others: ``x-ratelimit-limit``, ``-remaining``, ``-reset`` (epoch seconds;
  small values are read as delta seconds, as some vendors send).
- IETF drafts: ``ratelimit-limit``, ``-remaining``, ``-reset`` (delta seconds), ``ratelimit-policy``
  (``100;w=60``) and the structured ``ratelimit: "default";r=50;t=30``.
- Salesforce: ``sforce-limit-info: api-usage=14990/15000`` (rolling 24 hours).

Every reset value is read by :func:`healing.backoff.parse_retry_after`, the one parser of stated
reset times (delta seconds, HTTP-date, Unix seconds or milliseconds), so a shape it learns is
understood here too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from healing.backoff import parse_retry_after

_SALESFORCE_WINDOW_S = 24 * 3600.0
_HUBSPOT_DAILY_WINDOW_S = 24 * 3600.0
_SFORCE_USAGE = re.compile(r"api-usage\s*=\s*(\d+)\s*/\s*(\d+)")
_PARAM = re.compile(r"\b([a-z]+)\s*=\s*(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class RateLimitInfo:
    """What a response said about the caller's quota.

    Attributes:
        limit: Requests allowed per window, if known.
        remaining: Requests left in the current window, if known.
        reset_after_s: Seconds until the quota is restored, if known.
        window_s: Length of the quota window in seconds, if known.
        source: Which header family it came from (``hubspot``, ``x-ratelimit``, ``ietf``,
            ``salesforce``), for logs.
    """

    limit: int | None
    remaining: int | None
    reset_after_s: float | None
    window_s: float | None
    source: str = ""

    @property
    def exhausted(self) -> bool:
        """True when the response says no request is left in the window."""
        return self.remaining is not None and self.remaining <= 0


def parse_rate_limit_headers(
    headers: Mapping[str, str], *, now_epoch: float
) -> RateLimitInfo | None:
    """Read rate-limit headers of any known vendor shape.

    Args:
        headers: Response headers with lower-cased names.
        now_epoch: Current Unix time, to turn an epoch ``reset`` into seconds from now.

    Returns:
        The first shape found (HubSpot, x-ratelimit, IETF, Salesforce), or None when no
        rate-limit header is present or readable.
    """
    for parser in (_hubspot, _x_ratelimit, _ietf, _salesforce):
        info = parser(headers, now_epoch)
        if info is not None:
            return info
    return None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(_first(value).strip()))
    except (ValueError, OverflowError):  # "lots", "inf"
        return None


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(_first(value).strip())
    except ValueError:
        return None


def _reset_after(value: str | None, now_epoch: float) -> float | None:
    if value is None:
        return None
    now = datetime.fromtimestamp(now_epoch, UTC)
    # A whole HTTP-date holds a comma; otherwise the first list item is the one that applies.
    whole = parse_retry_after(value, now=now)
    return whole if whole is not None else parse_retry_after(_first(value), now=now)


def _first(value: str) -> str:
    return value.split(",")[0].split(";")[0]


def _hubspot(headers: Mapping[str, str], now_epoch: float) -> RateLimitInfo | None:
    daily_remaining = _int(headers.get("x-hubspot-ratelimit-daily-remaining"))
    if daily_remaining is not None and daily_remaining <= 0:
        # The daily quota resets at midnight in the account's time zone, which we do not know.
        limit = _int(headers.get("x-hubspot-ratelimit-daily"))
        return RateLimitInfo(limit, daily_remaining, None, _HUBSPOT_DAILY_WINDOW_S, "hubspot")
    limit = _int(headers.get("x-hubspot-ratelimit-max"))
    remaining = _int(headers.get("x-hubspot-ratelimit-remaining"))
    interval_ms = _float(headers.get("x-hubspot-ratelimit-interval-milliseconds"))
    if limit is None and remaining is None:
        return None
    window = interval_ms / 1000.0 if interval_ms is not None else None
    # Rolling window: a whole window is the longest wait before a slot frees up.
    return RateLimitInfo(limit, remaining, window, window, "hubspot")


def _x_ratelimit(headers: Mapping[str, str], now_epoch: float) -> RateLimitInfo | None:
    limit = _int(headers.get("x-ratelimit-limit"))
    remaining = _int(headers.get("x-ratelimit-remaining"))
    if limit is None and remaining is None:
        return None
    reset = _reset_after(headers.get("x-ratelimit-reset"), now_epoch)
    return RateLimitInfo(limit, remaining, reset, None, "x-ratelimit")


def _ietf(headers: Mapping[str, str], now_epoch: float) -> RateLimitInfo | None:
    """The IETF RateLimit header fields, in each draft's shape.

    - drafts -03 to -06: ``RateLimit-Limit: 10, 10;w=1`` (or ``RateLimit-Policy: 10;w=1``),
      ``RateLimit-Remaining``, ``RateLimit-Reset`` (delta seconds);
    - draft -07: one dictionary, ``RateLimit: limit=10, remaining=5, reset=30``;
    - drafts -08 to -10: named policies, ``RateLimit-Policy: "burst";q=100;w=60,
      "daily";q=1000;w=86400`` and ``RateLimit: "burst";r=50;t=30``. Of several RateLimit
      items, the one with the fewest requests left binds; its quota and window come from the
      policy of the same name, not from the first policy.

    A lone ``RateLimit-Policy`` still tells the quota and window (the most restrictive policy).
    """
    policies = _items(headers.get("ratelimit-policy", ""))
    if "ratelimit" in headers:
        items = _items(headers["ratelimit"])
        flat = {k: v for _, params in items for k, v in params.items()}
        if "remaining" in flat or "limit" in flat:  # draft -07 dictionary
            window = _window(policies)
            limit = _int(flat.get("limit"))
            return RateLimitInfo(
                limit, _int(flat.get("remaining")), _reset_after(flat.get("reset"), now_epoch),
                window, "ietf",
            )  # fmt: skip
        current = [(name, p) for name, p in items if "r" in p]
        if current:
            name, params = min(current, key=lambda item: float(item[1]["r"]))
            named = [p for n, p in policies if n == name] or [p for _, p in policies[:1]]
            policy = named[0] if named else {}
            return RateLimitInfo(
                _int(policy.get("q")), _int(params["r"]), _reset_after(params.get("t"), now_epoch),
                _float(policy.get("w")), "ietf",
            )  # fmt: skip
    limit = _int(headers.get("ratelimit-limit"))
    remaining = _int(headers.get("ratelimit-remaining"))
    reset = _reset_after(headers.get("ratelimit-reset"), now_epoch)
    if limit is not None or remaining is not None:
        window = _window(policies) or _window(_items(headers.get("ratelimit-limit", "")))
        return RateLimitInfo(limit, remaining, reset, window, "ietf")
    if policies:  # a lone RateLimit-Policy: the quota to pace by, nothing about now
        rated = [(_float(p.get("q")), _float(p.get("w"))) for _, p in policies]
        known = [(q, w) for q, w in rated if q is not None and w]
        if known:
            q, w = min(known, key=lambda qw: qw[0] / qw[1])
            return RateLimitInfo(int(q), None, None, w, "ietf")
    return None


def _items(value: str) -> list[tuple[str | None, dict[str, str]]]:
    """Structured-field list items: ``(name, params)``; a bare number's name is None with the
    number under ``q`` (the -03 ``10;w=1`` form), ``key=value`` members land in params."""
    items: list[tuple[str | None, dict[str, str]]] = []
    for raw in _split_outside_quotes(value):
        parts = [part.strip() for part in raw.split(";")]
        head, params = parts[0], dict(_PARAM.findall(";".join(parts[1:]).lower()))
        name: str | None = None
        if head.startswith('"') and head.endswith('"') and len(head) >= 2:
            name = head[1:-1]
        elif "=" in head:
            key, _, number = head.partition("=")
            params.setdefault(key.strip().lower(), number.strip())
        elif re.fullmatch(r"\d+(?:\.\d+)?", head):
            params.setdefault("q", head)
        elif head:
            name = head
        if name is not None or params:
            items.append((name, params))
    return items


def _split_outside_quotes(value: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in (part.strip() for part in parts) if p]


def _window(policies: list[tuple[str | None, dict[str, str]]]) -> float | None:
    """The window of the first policy that names one."""
    for _, params in policies:
        window = _float(params.get("w"))
        if window is not None:
            return window
    return None


def _salesforce(headers: Mapping[str, str], now_epoch: float) -> RateLimitInfo | None:
    match = _SFORCE_USAGE.search(headers.get("sforce-limit-info", ""))
    if match is None:
        return None
    used, limit = int(match.group(1)), int(match.group(2))
    # A rolling 24-hour quota: when spent, the earliest slot is at most a day away.
    return RateLimitInfo(limit, max(limit - used, 0), None, _SALESFORCE_WINDOW_S, "salesforce")


class RateLimiter:
    """A token bucket: ``requests`` per ``per_s`` seconds, with bursts up to ``requests``.

    Reservations queue: when the bucket is empty, each caller is told how long to wait for
    its own slot, so concurrent callers are spread out rather than all told the same wait.

    Args:
        requests: Bucket capacity and the number of tokens restored per ``per_s``.
        per_s: Seconds over which ``requests`` tokens are restored.
        now: Monotonic time at which the bucket starts full.
    """

    def __init__(self, requests: int, per_s: float, *, now: float = 0.0) -> None:
        if requests < 1 or per_s <= 0:
            raise ValueError("rate limit needs requests >= 1 and per_s > 0")
        self.capacity = float(requests)
        self.rate = requests / per_s  # tokens per second
        self._tokens = self.capacity  # may go negative: reserved by callers still waiting
        self._updated_at = now  # also "blocked until" after the vendor said the quota is spent

    @classmethod
    def from_info(cls, info: RateLimitInfo, *, now: float = 0.0) -> RateLimiter | None:
        """A bucket shaped like a vendor's quota, for connectors without a configured limit."""
        if not info.limit or not info.window_s:
            return None
        limiter = cls(info.limit, info.window_s, now=now)
        limiter.observe(info, now)
        return limiter

    def reserve(self, now: float, *, max_wait_s: float | None = None) -> float:
        """Take the next slot and say how long to wait before sending.

        Args:
            now: Monotonic seconds.
            max_wait_s: If the wait would exceed this, take nothing (the caller will not wait
                that long, e.g. it escalates instead) and still return the wait.

        Returns:
            Seconds to wait before sending; 0.0 when a token is free now.
        """
        self._refill(now)
        start = max(now, self._updated_at)
        tokens = self._tokens - 1.0
        wait = start - now + (-tokens / self.rate if tokens < 0 else 0.0)
        if max_wait_s is None or wait <= max_wait_s:
            self._tokens = tokens
        return wait

    def observe(self, info: RateLimitInfo, now: float) -> None:
        """Refine the bucket from what a response's headers said.

        Tokens are only ever lowered to what the vendor reports (other clients may share the
        quota); when nothing remains, no token is given out until the reported reset (or one
        window when the reset is unknown), then one at a time at the bucket's pace.
        """
        self._refill(now)
        if info.remaining is None:
            return
        if info.remaining <= 0:
            reset = info.reset_after_s
            if reset is None:
                reset = info.window_s if info.window_s is not None else self.capacity / self.rate
            self._updated_at = max(self._updated_at, now + reset)
            self._tokens = min(self._tokens, 1.0)
        else:
            self._tokens = min(self._tokens, float(info.remaining))

    def available(self, now: float) -> float:
        """Tokens free at ``now`` (negative when callers are queued), without taking any."""
        self._refill(now)
        return self._tokens if now >= self._updated_at else min(self._tokens, 0.0)

    def _refill(self, now: float) -> None:
        if now > self._updated_at:
            elapsed = now - self._updated_at
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
            self._updated_at = now
