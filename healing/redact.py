"""Scrub secrets from text and headers before they become error messages, logs or history.

Temporal keeps failure messages in history, unencrypted, for the whole retention period, so
everything the healing layer puts into an ``ApplicationError`` goes through :func:`redact`.
The patterns aim at what credentials look like (header values, ``key=value`` pairs, JWTs, vendor
token prefixes, long opaque strings mixing letters and digits) and leave ordinary words,
numbers, UUIDs, emails and secret-free URLs alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "REDACTED",
    "SENSITIVE_HEADERS",
    "SENSITIVE_HEADER_WORDS",
    "is_secret_header",
    "redact",
    "redact_headers",
    "scrub",
]

REDACTED = "[REDACTED]"

SENSITIVE_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "apikey",
        "x-auth-token",
        "x-access-token",
        "x-refresh-token",
        "x-amz-security-token",
        "x-goog-api-key",
        "x-csrf-token",
        "x-xsrf-token",
        "private-token",
    }
)
SENSITIVE_HEADER_WORDS = (
    "authorization",
    "cookie",
    "token",
    "secret",
    "password",
    "api-key",
    "apikey",
    "session",
)
"""A header whose name contains one of these is treated as carrying a credential."""

_KEYS = (
    r"access_token|refresh_token|id_token|auth_token|session_token|client_secret|"
    r"client_assertion|api[_-]?key|apikey|x-api-key|password|passwd|secret|token|"
    r"private_key|code_verifier|sig|signature|(?:proxy-)?authorization|cookie"
)
_HEADER_NAMES = "|".join(re.escape(name) for name in sorted(SENSITIVE_HEADERS))
# The same key names percent-encoded (``access%5Ftoken``), as in a URL nested in a query string.
_ENCODED_KEYS = (
    _KEYS.replace("api[_-]?key", "api~key")
    .replace("_", "(?:_|%5[Ff])")
    .replace("-", "(?:-|%2[Dd])")
    .replace("~", "(?:_|-|%5[Ff]|%2[Dd])?")
)
# A quoted value: no alternative can match the same character two ways (no backtracking blow-up).
_QUOTED = r"""(["'])(?:\\.|(?!\2)[^\\\r\n])*\2"""

# Each entry: (pattern, replacement); replacements keep the key so messages stay readable.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "Authorization: Bearer abc" on a line of its own (raw headers, curl -v output).
    (re.compile(rf"(?im)^([ \t]*(?:{_HEADER_NAMES})[ \t]*:[ \t]*)[^\r\n]+"), rf"\1{REDACTED}"),
    # "access_token": "...", 'authorization': '...' (JSON, Python reprs).
    (re.compile(rf"""(?i)(["'](?:{_KEYS})["']\s*:\s*){_QUOTED}"""), rf"\1\2{REDACTED}\2"),
    # Bearer tokens anywhere, but not "Bearer realm=..." (WWW-Authenticate) or plain words.
    (
        re.compile(
            r"(?i)\b(bearer\s+)(?![A-Za-z_]+=\")"
            r"(?=[A-Za-z]*[0-9._~+/-]|[A-Za-z]{20})[A-Za-z0-9._~+/-]+=*"
        ),
        rf"\1{REDACTED}",
    ),
    # Basic credentials: base64-looking, so "Basic authentication failed" survives.
    (
        re.compile(r"\b(Basic\s+)(?=[A-Za-z0-9+/]*(?:[0-9+/=]|[a-z][A-Z]))[A-Za-z0-9+/]{8,}=*"),
        rf"\1{REDACTED}",
    ),
    # access_token=... in query strings and form bodies.
    (
        re.compile(rf"""(?i)(?<![A-Za-z0-9_-])((?:{_KEYS})=)(?!\[REDACTED\])[^&\s"'#,;)\]}}]+"""),
        rf"\1{REDACTED}",
    ),
    # ...and with the key or the "=" percent-encoded (access%5Ftoken=, token%3D...).
    (
        re.compile(
            rf"""(?i)(?:(?<![A-Za-z0-9_-])|(?<=%3F)|(?<=%26))((?:{_ENCODED_KEYS})(?:=|%3D))"""
            r"""(?!\[REDACTED\])"""
            r"""(?:(?!%26)[^&\s"'#,;)\]}])+"""
        ),
        rf"\1{REDACTED}",
    ),
    # Passwords in URLs: scheme://user:password@host; up to the last "@" of the authority, as
    # URL parsers read it (an unencoded "@" in the password must not leak its end).
    (
        re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@\[\]]*:)(?!\[REDACTED\]@)[^\s/]+(@)"),
        rf"\1{REDACTED}\2",
    ),
    # JWTs: base64url '{"' header, then payload and signature.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), REDACTED),
    # Vendor token formats: Slack, GitHub, Stripe, Google, AWS, HubSpot private apps.
    (re.compile(r"\bxox[abposer]-[A-Za-z0-9-]{6,}|\bxapp-[A-Za-z0-9-]{6,}"), REDACTED),
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"), REDACTED),
    (re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}"), REDACTED),
    (re.compile(r"\bya29\.[A-Za-z0-9_-]{10,}|\bAIza[0-9A-Za-z_-]{30,}"), REDACTED),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), REDACTED),
    (re.compile(r"\bpat-[a-z]{2,4}\d?-[0-9a-f-]{20,}"), REDACTED),
)

_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_OPAQUE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{32,}(?![A-Za-z0-9_-])")


def _opaque(match: re.Match[str]) -> str:
    token = match.group(0)
    has_letter = any(c.isalpha() for c in token)
    has_digit = any(c.isdigit() for c in token)
    # UUIDs are ids (request ids, record ids) that a human needs to see.
    if not (has_letter and has_digit) or _UUID.fullmatch(token):
        return token
    return REDACTED


def is_secret_header(name: str) -> bool:
    """Whether a header named ``name`` carries a credential (the one list every module uses:
    catalog and request headers are refused by it, logged headers are masked by it)."""
    key = str(name).strip().lower()
    return key in SENSITIVE_HEADERS or any(word in key for word in SENSITIVE_HEADER_WORDS)


def redact(text: str) -> str:
    """Replace credentials in ``text`` with ``[REDACTED]``.

    Covers ``Authorization``/``Proxy-Authorization`` (and cookie, API-key) header values,
    ``Bearer``/``Basic`` credentials, ``access_token=``/``refresh_token=``/``client_secret=``/
    ``api_key=``... in query strings, form bodies and JSON, JWTs, Slack/GitHub/Stripe/Google/
    AWS tokens, and opaque strings of 32 or more letters-and-digits (UUIDs excepted).

    Args:
        text: Any text; non-strings are converted with ``str``.

    Returns:
        The text with secrets replaced. Never raises: if scrubbing itself fails, the whole
        text is replaced.
    """
    try:
        result = text if isinstance(text, str) else str(text)
        for pattern, replacement in _PATTERNS:
            result = pattern.sub(replacement, result)
        return _OPAQUE.sub(_opaque, result)
    except Exception:  # never let an odd object leak through an error path
        return REDACTED


def redact_headers(headers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """Headers safe to log: keys lower-cased, credential headers replaced.

    A header is sensitive when :func:`is_secret_header` says so; other values still go through
    :func:`redact` (a ``Location`` may carry a token in its query string).

    Args:
        headers: A mapping (``httpx.Headers`` too) or an iterable of ``(name, value)`` pairs.

    Returns:
        A new dict. Never raises; unreadable input gives an empty dict.
    """
    try:
        items = headers.items() if isinstance(headers, Mapping) else (headers or ())
        safe: dict[str, str] = {}
        for name, value in items:
            key = str(name).strip().lower()
            if is_secret_header(key):
                safe[key] = REDACTED
            else:
                safe[key] = redact(str(value))
        return safe
    except Exception:  # a malformed header list must not break an error path
        return {}


def scrub(value: Any, secrets: Iterable[str], *, min_length: int = 4) -> Any:
    """``value`` with every exact occurrence of ``secrets`` replaced by ``[REDACTED]``.

    Pattern-based :func:`redact` misses short or plain-looking credentials (an API key an
    upstream echoes back), so the values actually sent are removed too. Walks strings, dict
    keys and values, lists and tuples; other values are returned unchanged. Values shorter
    than ``min_length`` are skipped (they would garble text without hiding anything).
    Never raises.
    """
    known = sorted({s for s in secrets if isinstance(s, str) and len(s) >= min_length}, key=len)
    known.reverse()  # longest first: a secret containing another is removed whole
    if not known:
        return value

    def clean(item: Any, depth: int) -> Any:
        if isinstance(item, str):
            for secret in known:
                item = item.replace(secret, REDACTED)
            return item
        if depth > 200:  # deeper than any real body: drop it rather than recurse on
            return REDACTED
        if isinstance(item, dict):
            return {clean(k, depth + 1): clean(v, depth + 1) for k, v in item.items()}
        if isinstance(item, list):
            return [clean(v, depth + 1) for v in item]
        if isinstance(item, tuple):
            return tuple(clean(v, depth + 1) for v in item)
        return item

    try:
        return clean(value, 0)
    except Exception:  # an odd object must not carry a secret through an error path
        return REDACTED
