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
understood here too. :func:`reset_delay` (what classification waits after a 429) reads the IETF
fields with the same :func:`_ietf` as pacing, so the two never disagree on which item binds.

:class:`FleetPacer` shares what the headers taught through the store's fleet state (DESIGN s5b):
one window per connector for every worker, and distinct start slots (``slot_take``) so callers
told to wait never come back together.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from healing.backoff import MAX_WAIT_S, parse_retry_after
from healing.config import RateLimitPolicy
from healing.store.base import FleetState

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
        rolling: A rolling window (HubSpot): ``reset_after_s`` is the longest wait, not when
            the next slot frees up.
    """

    limit: int | None
    remaining: int | None
    reset_after_s: float | None
    window_s: float | None
    source: str = ""
    rolling: bool = False

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
        number = float(_first(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None  # "inf", "nan", "1e400"


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
    return RateLimitInfo(limit, remaining, window, window, "hubspot", rolling=True)


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
            # The binding item: the fewest requests left; of several spent, the longest reset.
            name, params = min(current, key=lambda item: _binding_key(item[1], now_epoch))
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


def _binding_key(params: dict[str, str], now_epoch: float) -> tuple[float, float]:
    remaining = max(_float(params.get("r")) or 0.0, 0.0)
    reset = _reset_after(params.get("t"), now_epoch) or 0.0
    return (remaining, -reset if remaining <= 0 else reset)


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


_RESET_PREFIXES = ("x-ratelimit-", "ratelimit-", "x-rate-limit-")


def reset_delay(
    headers: Mapping[str, str], *, now: datetime, cap_s: float | None = None
) -> float | None:
    """The wait implied by rate-limit headers, for responses that carry no Retry-After.

    Understands, in this order:

    * HubSpot: ``x-hubspot-ratelimit-remaining: 0`` waits one
      ``x-hubspot-ratelimit-interval-milliseconds``; ``x-hubspot-ratelimit-secondly-remaining:
      0`` waits one second.
    * ``x-ratelimit-reset`` (GitHub, many others), ``ratelimit-reset`` (IETF draft) and
      ``x-rate-limit-reset``, used when the matching ``...-remaining`` header is absent or 0,
      read by :func:`parse_retry_after` (delta seconds, HTTP-date, Unix seconds or ms).
    * The IETF ``RateLimit`` field (draft -07 dictionary, -08..-10 named items), read by the
      same parser as pacing: of several items the binding one (fewest left) decides.

    Args:
        headers: Response headers; keys are matched case-insensitively.
        now: The current time (timezone-aware; a naive value is taken as UTC).
        cap_s: Longest wait to return.

    Returns:
        The wait in seconds, or None when the headers imply none. Never raises.
    """
    try:
        lower = {str(k).lower(): str(v).strip() for k, v in headers.items()}
        if _number(lower.get("x-hubspot-ratelimit-remaining")) == 0:
            interval_ms = _number(lower.get("x-hubspot-ratelimit-interval-milliseconds"))
            if interval_ms is not None and interval_ms >= 0:
                return _capped(interval_ms / 1000.0, cap_s)
        if _number(lower.get("x-hubspot-ratelimit-secondly-remaining")) == 0:
            return _capped(1.0, cap_s)
        for prefix in _RESET_PREFIXES:
            reset = parse_retry_after(lower.get(prefix + "reset"), now=now, cap_s=cap_s)
            remaining = _number(lower.get(prefix + "remaining"))
            if reset is not None and remaining in (None, 0):
                return reset
        if "ratelimit" not in lower:
            return None
        moment = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        info = _ietf({"ratelimit": lower["ratelimit"]}, moment.timestamp())
        if info is None or info.reset_after_s is None:
            return None
        if info.remaining is not None and info.remaining > 0:
            return None
        return _capped(info.reset_after_s, cap_s)
    except Exception:  # headers of any shape must not break classification
        return None


def _number(value: str | None) -> float | None:
    if value is None or not re.fullmatch(r"[+-]?\d+(?:\.\d+)?", value.strip()):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _capped(seconds: float, cap_s: float | None) -> float | None:
    if math.isnan(seconds):
        return None
    ceiling = MAX_WAIT_S if cap_s is None or math.isnan(cap_s) else max(0.0, cap_s)
    return min(max(0.0, seconds), ceiling)


# -- the fleet's windows ----------------------------------------------------------------------

RATE_SPACE = "ratelimit"
"""Fleet-state space of the learned windows, one document per connector."""
UNPACED = "unpaced"
"""Source of a window whose slow start ended with no limit seen: calls are no longer paced."""
_RAMP_HALVINGS = 12  # slow start ends after this many halvings of its spacing
_PROBE_LEVELS = 32  # doublings of a Retry-After-learned pace kept apart in slot queues
_CAS_TRIES = 4  # a window update lost to another worker is learned again over its write
_OK_BUCKET_S = 0.1  # resolution of the success counter that slow start and Retry-After learn by


@dataclass(frozen=True)
class Window:
    """What the fleet knows of one connector's quota (its ``ratelimit`` document).

    Attributes:
        limit: Requests per window (None: not known yet).
        window_s: The window's length (None: not known yet).
        blocked_until: Epoch seconds before which nothing is sent (a spent window or quota).
        quota: The block is a daily or org quota (calls park), not a short window.
        source: The header family, ``catalog`` or ``retry-after`` that taught it.
        run_start: Epoch seconds since which successes are counted (the current run between
            two blocks): slow start and Retry-After-only learning read that count.
        gen: Bumped whenever the pace or a block changes: slots taken under an older
            generation are taken again (their spacing or start no longer holds).
        reset_at: When the current window ends (epoch), for headers that name no window:
            the jump of this time from one window to the next is the window's length.
    """

    limit: int | None = None
    window_s: float | None = None
    blocked_until: float = 0.0
    quota: bool = False
    source: str = ""
    run_start: float = 0.0
    gen: int = 0
    reset_at: float = 0.0
    last_jump: float = 0.0

    @property
    def known(self) -> bool:
        return bool(self.limit) and bool(self.window_s)

    @property
    def learning(self) -> bool:
        """Successes still teach something: no limit known (and slow start not over), or a
        limit learned from Retry-After alone."""
        return (not self.known and self.source != UNPACED) or self.source == "retry-after"

    def to_doc(self) -> dict[str, object]:
        return {
            "limit": self.limit,
            "window_s": self.window_s,
            "blocked_until": self.blocked_until,
            "quota": self.quota,
            "source": self.source,
            "run_start": self.run_start,
            "gen": self.gen,
            "reset_at": self.reset_at,
            "last_jump": self.last_jump,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, object]) -> Window:
        def num(key: str) -> float | None:
            value = doc.get(key)
            return float(value) if isinstance(value, int | float) else None

        limit = num("limit")
        return cls(
            limit=int(limit) if limit else None,
            window_s=num("window_s"),
            blocked_until=num("blocked_until") or 0.0,
            quota=bool(doc.get("quota")),
            source=str(doc.get("source") or ""),
            run_start=num("run_start") or 0.0,
            gen=int(num("gen") or 0),
            reset_at=num("reset_at") or 0.0,
            last_jump=num("last_jump") or 0.0,
        )


def retry_after_window(cur: Window, end: float) -> float | None:
    """The window a Retry-After-only 429 measures (its end at ``end``), or None when nothing
    is measured yet (the first such 429: the caller guesses from its Retry-After).

    Every such 429's ``now + Retry-After`` is a window boundary, so the distance between two
    is a whole number of windows: the shortest distance measured is the window (a multiple
    still gives the right rate, since the quota is then counted over as many windows). Only
    measured distances count: a first guess never caps them."""
    own = cur.source == "retry-after"
    measured = cur.last_jump if own else 0.0
    gap = end - cur.reset_at if own and cur.reset_at else 0.0
    # Retry-After has whole seconds: two 429s of one window may end a second apart.
    if gap > max(1.5, 0.6 * measured):
        measured = min(gap, measured) if measured else gap
    return measured or None


def probing(window: Window, now: float, accepted_last_window: int) -> int:
    """How many doublings above a Retry-After-learned limit the pace probes (0: none).

    Learned from refusals alone, a limit may be measured low (while the pace itself bounded
    what a window could show). A window that the upstream let fill at the current level earns
    the next doubling, at most one per quiet window since the last 429; an idle window earns
    none, so a lull never leaves the connector unpaced. The next 429 blocks until its window's
    end, as any would."""
    if window.source != "retry-after" or not window.reset_at or not window.window_s:
        return 0
    if not window.limit or accepted_last_window < 0.9 * window.limit:
        return 0
    quiet = math.floor((now - window.reset_at) / window.window_s)
    filled = math.floor(math.log2(accepted_last_window / (0.9 * window.limit))) + 1
    return max(min(quiet, filled, _PROBE_LEVELS - 1), 0)


def spacing_s(
    window: Window | None,
    configured: tuple[int, float] | None,
    policy: RateLimitPolicy,
    *,
    run_ok: int = 0,
    probe: int = 0,
) -> float:
    """Seconds between two starts of a connector's calls, fleet-wide (0: unpaced).

    The stricter of the catalog's limit and the learned one, slowed by ``policy.headroom`` so
    network jitter never lands a window's last call in the next one. A learned window longer
    than ``policy.max_paced_window_s`` (an hourly or daily quota) is not paced: it blocks the
    connector when spent. With neither known, a slow
    start: ``policy.start_spacing_s``, halved per ``policy.start_step`` successes (``run_ok``)
    without a 429, until it is too short to matter.
    """
    gaps: list[float] = []
    if configured is not None:
        gaps.append(configured[1] / configured[0])
    if window is not None and window.known:
        assert window.limit is not None and window.window_s is not None
        if window.window_s <= policy.max_paced_window_s:
            gap = window.window_s / window.limit
            if probe:
                gap = gap / 2**probe
            if gap >= 0.001:
                gaps.append(gap)
    if gaps:
        return max(gaps) / policy.headroom
    if window is None or window.known or not policy.slow_start or window.source == UNPACED:
        return 0.0
    halvings = run_ok // max(policy.start_step, 1)
    gap = policy.start_spacing_s / (2**halvings) if halvings < 60 else 0.0
    return gap if gap >= 0.001 else 0.0


def learn(
    cur: Window,
    info: RateLimitInfo | None,
    *,
    now: float,
    throttled: bool,
    retry_after_s: float | None,
    quota: bool,
    run_ok: int,
    fallback_wait_s: float,
    ramp_end: int = 1_000_000,
    learned: tuple[int | None, float | None, float] | None = None,
) -> Window:
    """The window after one answer (pure): what its headers and status teach.

    Args:
        cur: The window before.
        info: The answer's parsed rate-limit headers (None: it carried none).
        throttled: The answer was a 429 or a vendor's throttling answer.
        retry_after_s: Its Retry-After, if any (the better reset of a spent window).
        quota: Classification says the block is a daily or org quota.
        run_ok: Successes counted since ``cur.run_start``.
        fallback_wait_s: How long a spent window blocks when nothing says until when.
        ramp_end: Successes after which a slow start with no limit seen ends (``UNPACED``).
        learned: For a 429 that says nothing but Retry-After: the (limit, window, measured
            window) :meth:`FleetPacer.observe` found (None, None: nothing measured yet).
    """
    limit, window_s, source = cur.limit, cur.window_s, cur.source
    reset_at, last_jump = cur.reset_at, cur.last_jump
    if info is not None:
        if info.limit and info.window_s:
            limit, window_s, source = info.limit, info.window_s, info.source
        elif info.limit:
            # x-ratelimit-* name no window. First guess: a reset seen with the quota all but
            # whole; then the jump of the window's end from one window to the next (the
            # smallest jump: skipped windows only add multiples), exact even for epoch resets.
            if cur.source != info.source:
                window_s = None
            limit, source = info.limit, info.source
            if info.reset_after_s:
                end = now + info.reset_after_s
                if not window_s and info.remaining is not None and info.remaining >= limit - 1:
                    window_s = max(info.reset_after_s, 1.0)
                # A new window: its end moved by most of a window (rounding moves it less).
                if reset_at and window_s and end > reset_at + 0.6 * window_s:
                    jump = end - reset_at
                    if abs(jump - last_jump) < 0.05 and jump > 0.6 * window_s:
                        window_s = jump  # two equal jumps: epoch resets, exact to the second
                    last_jump = jump
                    reset_at = end
                elif not reset_at:
                    reset_at = end
    paced = (limit, window_s) != (cur.limit, cur.window_s)
    spent = throttled or (info is not None and info.exhausted)
    if not spent:
        run_start = cur.run_start or now
        if not (limit and window_s) and source != UNPACED and run_ok >= ramp_end:
            source = UNPACED
            paced = True
        gen = cur.gen + 1 if paced else cur.gen
        return Window(limit, window_s, cur.blocked_until, cur.quota and cur.blocked_until > now,
                      source, run_start, gen, reset_at, last_jump)  # fmt: skip
    if source == UNPACED and not (limit and window_s):
        source = ""  # throttled after all: learn again, from a slow start
    reset = retry_after_s
    if reset is None and info is not None and info.rolling and not throttled and limit and window_s:
        # remaining=0 in a rolling window (HubSpot): at the known pace that is every window's
        # last call, and the next slot frees up one gap later, not a window later.
        reset = window_s / limit
    if reset is None and info is not None:
        reset = info.reset_after_s if info.reset_after_s is not None else info.window_s
    if reset is None:
        reset = window_s or fallback_wait_s
    if throttled and learned is not None:
        # Retry-After alone: what FleetPacer.observe measured (see retry_after_window).
        limit, window_s, last_jump = learned
        if limit is None:
            limit, window_s = (
                (cur.limit, cur.window_s) if cur.source == "retry-after" else (None, None)
            )
        source = "retry-after"
        reset_at = now + reset
    blocked = max(cur.blocked_until, now + reset)
    moved = paced or blocked > cur.blocked_until + 0.05
    gen = cur.gen + 1 if moved else cur.gen
    return Window(limit, window_s, blocked, quota, source, blocked, gen, reset_at, last_jump)


@dataclass(frozen=True)
class Reservation:
    """A caller's place: send at ``start`` (epoch), or ask again in ``retry_in_s``."""

    start: float | None
    retry_in_s: float = 0.0
    quota: bool = False
    """The wait is a spent daily or org quota (the call parks), not a short window."""
    gen: int = 0
    """The window's generation the slot belongs to (see :meth:`FleetPacer.still_valid`)."""


class FleetPacer:
    """Rate-limit windows shared by a fleet: learned from headers, paced by distinct slots.

    Args:
        state: The store's fleet state (``MemoryFleetState`` without a store).
        policy: Headroom, slow start, cache.
    """

    def __init__(self, state: FleetState, policy: RateLimitPolicy | None = None) -> None:
        self.state = state
        self.policy = policy or RateLimitPolicy()
        self._cache: dict[str, tuple[float, Window | None, int | None]] = {}

    async def window(self, connector: str, *, now: float, fresh: bool = False) -> Window | None:
        """The connector's window (cached for ``policy.cache_s``)."""
        return (await self._read(connector, now=now, fresh=fresh))[0]

    async def _read(
        self, connector: str, *, now: float, fresh: bool = False
    ) -> tuple[Window | None, int | None]:
        """The window and the store version it was read at (what a write must replace)."""
        cached = self._cache.get(connector)
        if cached is not None and not fresh and 0 <= now - cached[0] < self.policy.cache_s:
            return cached[1], cached[2]
        entry = await self.state.state_get(RATE_SPACE, connector)
        window = Window.from_doc(entry.value) if entry is not None else None
        version = entry.version if entry is not None else None
        self._cache[connector] = (now, window, version)
        return window, version

    async def _probe(self, connector: str, window: Window | None, now: float) -> int:
        """The probing level of a Retry-After-learned pace (see :func:`probing`)."""
        if window is None or window.source != "retry-after" or not window.window_s:
            return 0
        if not window.reset_at or now - window.reset_at < window.window_s:
            return 0  # no quiet window yet: nothing to read
        key = f"rate:{connector}:ok"
        since = int((now - window.window_s) / _OK_BUCKET_S)
        accepted = (await self.state.counter_sums([key], since_bucket=since))[key]
        return probing(window, now, accepted)

    async def _run_ok(self, connector: str, window: Window) -> int:
        since = int(window.run_start / _OK_BUCKET_S)
        sums = await self.state.counter_sums([f"rate:{connector}:ok"], since_bucket=since)
        return sums.get(f"rate:{connector}:ok", 0)

    async def reserve(
        self,
        connector: str,
        *,
        now: float,
        holder: str,
        configured: tuple[int, float] | None = None,
    ) -> Reservation:
        """Take the next start slot of ``connector`` for one call.

        A connector never answered before (no window and no catalog limit) sends one call
        alone (a lease) and the rest ask again shortly: its answer tells how to pace them.
        """
        window = await self.window(connector, now=now)
        if window is None and configured is None and self.policy.slow_start:
            if await self.state.lease_take(
                f"rate:{connector}:discover", holder, ttl_s=self.policy.discover_ttl_s, now=now
            ):
                return Reservation(start=now)
            window = await self.window(connector, now=now, fresh=True)
            if window is None:
                return Reservation(start=None, retry_in_s=0.1)
        run_ok = 0
        if window is not None and window.learning and not window.known and configured is None:
            run_ok = await self._run_ok(connector, window)
        probe = await self._probe(connector, window, now)
        gap = spacing_s(window, configured, self.policy, run_ok=run_ok, probe=probe)
        blocked = window.blocked_until if window is not None else 0.0
        gen = _generation(window, probe)
        if gap <= 0 and blocked <= now:
            return Reservation(start=now, gen=gen)
        # A spent window with no known pace still hands out distinct starts: no herd at reset.
        gap = gap if gap > 0 else self.policy.start_spacing_s
        # One slot queue per generation: a new pace or block starts a fresh queue.
        start = await self.state.slot_take(
            f"rate:{connector}:g{gen}",
            spacing_s=gap,
            now=now,
            not_before=blocked if blocked > now else None,
        )
        quota = bool(window and window.quota and blocked > now)
        return Reservation(start=start, quota=quota, gen=gen)

    async def still_valid(self, connector: str, reservation_gen: int, *, now: float) -> bool:
        """Read the window afresh before sending: a slot of an older generation (the pace
        changed, or a 429 blocked the connector since) must be taken again."""
        window = await self.window(connector, now=now, fresh=True)
        probe = await self._probe(connector, window, now)
        return window is None or _generation(window, probe) == reservation_gen

    async def observe(
        self,
        connector: str,
        info: RateLimitInfo | None,
        *,
        now: float,
        throttled: bool = False,
        retry_after_s: float | None = None,
        quota: bool = False,
        configured: bool = False,
    ) -> Window:
        """Learn from one answer (every answer, not only 429s); see :func:`learn`.

        ``configured``: the catalog names the connector's limit, which then paces it; a 429
        that says nothing but Retry-After only blocks it until the reset."""
        spent = throttled or (info is not None and info.exhausted)
        # A refusal is rare and teaches the most: learn it from the fleet's latest window.
        old, version = await self._read(connector, now=now, fresh=spent)
        run_ok = 0
        if (old or Window()).learning and not spent:
            bucket = int(now / _OK_BUCKET_S)
            keep = int((now - self.policy.max_paced_window_s * 2) / _OK_BUCKET_S)
            await self.state.counter_add(f"rate:{connector}:ok", bucket, 1, keep_from=keep)
            if old is not None and not old.known:
                run_ok = await self._run_ok(connector, old)
        for _ in range(_CAS_TRIES):
            cur = old or Window()
            learned = None
            bare = throttled and (info is None or not info.limit) and not configured
            if cur.learning and bare and retry_after_s is not None:
                learned = await self._retry_after_only(connector, cur, now, retry_after_s)
            new = learn(
                cur,
                info,
                now=now,
                throttled=throttled,
                retry_after_s=retry_after_s,
                quota=quota,
                run_ok=run_ok,
                fallback_wait_s=self.policy.start_spacing_s * 10,
                ramp_end=self.policy.start_step * _RAMP_HALVINGS,
                learned=learned,
            )
            if old is not None and not _matters(old, new, now):
                return new
            if await self._put(connector, new, now, version):
                return new
            # Another writer (a worker, or a call of this one) was first: learn this answer
            # again over its window.
            old, version = await self._read(connector, now=now, fresh=True)
        return new

    async def _retry_after_only(
        self, connector: str, cur: Window, now: float, retry_after_s: float
    ) -> tuple[int | None, float | None, float]:
        """What a 429 that says nothing but Retry-After teaches: the successes of the window
        that just filled are its quota, once two 429s have measured the window (the first
        only marks a boundary). Returns (limit, window, measured window) for :func:`learn`."""
        end = now + retry_after_s
        measured = retry_after_window(cur, end)
        if measured is None:
            return None, None, 0.0
        key = f"rate:{connector}:ok"
        start = end - measured  # this window's start, to Retry-After's whole second
        # The last block ended at this window's start (a real window's boundary): everything
        # accepted since is this window's quota, exactly.
        whole = abs(start - cur.blocked_until) <= 1.0
        since = cur.blocked_until if whole else start
        accepted = (await self.state.counter_sums([key], since_bucket=int(since / _OK_BUCKET_S)))[
            key
        ]
        if cur.limit and cur.window_s:
            # The upstream once took that many in a window, so a smaller count is a window cut
            # short by a block, or a 429 that is no window at all (load shedding): it never
            # ratchets the pace down.
            accepted = max(accepted, round(cur.limit * measured / cur.window_s))
        return (accepted or None, measured if accepted else None, measured)

    async def _put(self, connector: str, window: Window, now: float, version: int | None) -> bool:
        """Write the window over ``version``, the one this answer was learned from
        (compare-and-swap: a write made meanwhile, by any worker or call, is never lost)."""
        written = await self.state.state_put(
            RATE_SPACE, connector, window.to_doc(), expected_version=version, now=now
        )
        if written is None:
            return False
        self._cache[connector] = (now, window, written)
        return True


def _generation(window: Window | None, probe: int) -> int:
    """The slot queue a call joins: the window's generation and, while a pace learned from
    Retry-After probes upwards, its level (a faster pace starts a fresh queue; the calls
    queued behind the slower one take a slot again)."""
    if window is None:
        return 0
    return window.gen * _PROBE_LEVELS + probe


def _matters(old: Window, new: Window, now: float) -> bool:
    """Whether a change is worth a store write (not every answer rewrites the document)."""
    if (old.limit, old.window_s, old.quota, old.source, old.gen) != (
        new.limit,
        new.window_s,
        new.quota,
        new.source,
        new.gen,
    ):
        return True
    if new.blocked_until > max(old.blocked_until, now) + 0.05:
        return True
    if new.reset_at > old.reset_at + 0.5:
        return True  # once per window: the next jump is measured from it
    return old.run_start == 0.0 and new.run_start > 0.0
