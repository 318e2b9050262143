"""Secrets never survive redact(); ordinary error text does."""

from __future__ import annotations

import httpx
import pytest

from healing.redact import REDACTED, redact, redact_headers

JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
OPAQUE = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"

SECRET_CASES = [
    # (text, the secret that must disappear, text that must stay)
    ("Authorization: Bearer sk-abc.def-123", "sk-abc.def-123", "Authorization: "),
    ("authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA==", "authorization"),
    ("GET /x\nProxy-Authorization: Basic Zm9vOmJhcg==\nAccept: */*", "Zm9vOmJhcg==", "Accept: */*"),
    ("headers={'Authorization': 'Bearer tok_live_123456'}", "tok_live_123456", "Authorization"),
    ('{"authorization": "Token 9f8e7d6c"}', "9f8e7d6c", '"authorization"'),
    ("request failed: Bearer abcdef123456 rejected", "abcdef123456", "rejected"),
    ("bearer mF_9.B5f-4.1JqM", "mF_9.B5f-4.1JqM", "bearer"),
    ("GET /cb?code=1&access_token=s3cr3t&state=ok", "s3cr3t", "state=ok"),
    (
        "POST body: grant_type=refresh_token&refresh_token=1//0gAbc&client_id=x",
        "1//0gAbc",
        "client_id=x",
    ),
    ("client_secret=shhh-123&client_id=abc", "shhh-123", "client_id=abc"),
    ("https://api.example.com/v1?api_key=AKx9&limit=10", "AKx9", "limit=10"),
    ("https://api.example.com/v1?apikey=AKx9", "AKx9", "https://api.example.com/v1?apikey="),
    ("password=hunter2 user=bob", "hunter2", "user=bob"),
    (
        '{"access_token": "ya-not-google-123", "token_type": "Bearer", "expires_in": 3599}',
        "ya-not-google-123",
        '"expires_in": 3599',
    ),
    ('{"refresh_token":"rt\\"quoted\\"x","scope":"read"}', "quoted", '"scope":"read"'),
    ("{'client_secret': 'abc', 'client_id': 'id-1'}", "'abc'", "'id-1'"),
    (f"token is {JWT} ok", JWT, "token is"),
    (f"id_token={JWT}", "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", "id_token="),
    ("slack says xoxb-1234567890-0987654321-AbCdEfGhIjKl", "xoxb-1234567890", "slack says"),
    ("xoxp-11-22-33-abcdef and xapp-1-A0-123-abc", "xoxp-11-22", " and "),
    ("gh token ghp_16C7e42F292c6912E7710c838347Ae178B4a", "ghp_16C7e42F", "gh token"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "github_pat_11ABC", ""),
    ("stripe sk_live_51HxYzAbCdEfGhIjKl", "sk_live_51", "stripe"),
    ("google ya29.a0AfH6SMBxYzAbCdEfGh-1234", "ya29.a0AfH6", "google"),
    ("key AIzaSyA1234567890abcdefghijklmnopqrstuv", "AIzaSyA123", "key"),
    ("aws AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "aws"),
    ("hubspot pat-na1-12345678-abcd-ef01-2345-6789abcdef01", "pat-na1-1234", "hubspot"),
    (f"opaque {OPAQUE} end", OPAQUE, "opaque"),
    (f"token {OPAQUE}.", OPAQUE, "token"),
    ("Cookie: session=abc123; theme=dark", "abc123", "Cookie"),
    # Passwords in URLs, and key names percent-encoded (a URL nested in a query string).
    ("cannot reach postgresql://healing:pw-9x@db:5432/h", "pw-9x", "postgresql://healing:"),
    ("proxy https://bob:hunter22@proxy.local:3128 refused", "hunter22", "@proxy.local:3128"),
    # An unencoded "@" in the password: everything up to the host's "@" is the password.
    ("cannot reach postgresql://bob:pa@ss9x@db/x", "ss9x", "@db/x"),
    ("next=https%3A%2F%2Fapp%2Fcb%3Faccess%5Ftoken%3Dtok77%26s%3D1", "tok77", "%26s%3D1"),
    ("body refresh%5Ftoken=rt-55&grant_type=x", "rt-55", "grant_type=x"),
    ("client%5Fsecret%3Dcs-1%26client%5Fid%3Dapp", "cs-1", "client%5Fid%3Dapp"),
    ("x%2Dapi%2Dkey=k-123 sent", "k-123", "sent"),
]


@pytest.mark.parametrize(("text", "secret", "kept"), SECRET_CASES)
def test_secret_is_redacted(text: str, secret: str, kept: str) -> None:
    result = redact(text)
    assert secret not in result
    assert REDACTED in result
    assert kept in result


ORDINARY = [
    "contact 42 not found",
    "HTTP 404 Not Found: No contact with id 0035g00000ABCdeFAAQ",
    "Session expired or invalid",
    "You have reached your ten_secondly_rolling limit.",
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
    "Resource not accessible by integration",
    "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
    "correlationId 5f8b8c3e-1a2b-4c3d-9e8f-0a1b2c3d4e5f failed",
    "requestId 7C2B1A7E-9F3D-4A6B-8C1D-2E3F4A5B6C7D",
    "token_expired",
    "invalid_grant: Token has been expired or revoked.",
    "Bearer token is missing",
    "Basic authentication failed",
    'Bearer realm="https://accounts.google.com/", error="invalid_token"',
    "Request had invalid authentication credentials. Expected OAuth 2 access token",
    "a@b.com has 3 deals worth 1000.50 EUR",
    "GET https://api.example.com/contacts/42?limit=10&offset=20 returned 500",
    "httpx.ReadTimeout: timed out after 10.0 s",
    "The request has been throttled",
    "TotalRequests Limit exceeded.",
    "mailto:support@example.com or https://example.com/a:b/c@d",
    "postgresql://healing@db:5432/h has no password",
    "",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_untouched(text: str) -> None:
    assert redact(text) == text


def test_redact_is_idempotent() -> None:
    text = f"Authorization: Bearer {OPAQUE}\naccess_token={JWT}"
    once = redact(text)
    assert redact(once) == once
    assert OPAQUE not in once and JWT not in once


def test_redact_never_raises_on_non_strings() -> None:
    assert redact(12345) == "12345"  # type: ignore[arg-type]
    assert redact(None) == "None"  # type: ignore[arg-type]

    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("boom")

    assert redact(Hostile()) == REDACTED  # type: ignore[arg-type]


def test_pathological_input_is_fast() -> None:
    # Unclosed quoted values full of backslashes used to be a classic regex blow-up.
    text = '"access_token": "' + "\\" * 5000 + "\n" * 5000 + " " * 5000
    assert REDACTED not in redact(text)
    assert len(redact("a" * 200_000 + "1")) > 0


def test_redact_headers() -> None:
    headers = {
        "Authorization": "Bearer abc",
        "Proxy-Authorization": "Basic Zm9v",
        "X-Api-Key": "k",
        "Cookie": "sid=1",
        "X-CSRF-Token": "t",
        "X-Client-Secret": "s",
        "Content-Type": "application/json",
        "Retry-After": "30",
        "Location": "https://example.com/cb?access_token=leak",
    }
    safe = redact_headers(headers)
    assert safe == {
        "authorization": REDACTED,
        "proxy-authorization": REDACTED,
        "x-api-key": REDACTED,
        "cookie": REDACTED,
        "x-csrf-token": REDACTED,
        "x-client-secret": REDACTED,
        "content-type": "application/json",
        "retry-after": "30",
        "location": f"https://example.com/cb?access_token={REDACTED}",
    }


def test_redact_headers_accepts_httpx_headers_and_pairs() -> None:
    assert redact_headers(httpx.Headers({"Authorization": "Bearer x", "Accept": "*/*"})) == {
        "authorization": REDACTED,
        "accept": "*/*",
    }
    assert redact_headers([("X-Auth-Token", "t"), ("Accept", "a")]) == {
        "x-auth-token": REDACTED,
        "accept": "a",
    }
    assert redact_headers(None) == {}
    assert redact_headers(42) == {}  # type: ignore[arg-type]


# --- one secret-header list, one scrubber ------------------------------------------------------

from healing.catalog import ConnectorCatalog  # noqa: E402
from healing.errors import ConfigError  # noqa: E402
from healing.redact import SENSITIVE_HEADERS, is_secret_header, scrub  # noqa: E402

SECRET_HEADER_NAMES = [
    *sorted(SENSITIVE_HEADERS),
    "X-Session-Id",
    "X-Client-Secret",
    "X-Password",
    "X-Vendor-Token",
    "Set-Cookie",
]


@pytest.mark.parametrize("name", SECRET_HEADER_NAMES)
def test_every_module_uses_the_one_secret_header_list(name: str) -> None:
    from activities import CallRequest

    assert is_secret_header(name) and is_secret_header(name.upper())
    assert redact_headers({name: "v"}) == {name.lower(): REDACTED}
    with pytest.raises(ValueError, match="secret"):
        CallRequest(connector="crm", operation="x", headers={name: "v"})
    with pytest.raises(ConfigError, match="secret"):
        ConnectorCatalog.from_dict(
            {"connectors": {"crm": {"base_url": "https://x.example", "headers": {name: "v"}}}}
        )


@pytest.mark.parametrize("name", ["Accept", "Content-Type", "X-Request-Id", "User-Agent"])
def test_ordinary_headers_are_not_secret(name: str) -> None:
    assert not is_secret_header(name)


@pytest.mark.parametrize("name", sorted(SENSITIVE_HEADERS))
def test_a_raw_header_line_of_any_listed_header_is_redacted(name: str) -> None:
    assert "hunter2-value" not in redact(f"GET /x\n{name}: hunter2-value\nAccept: */*")


def test_scrub_removes_exact_values_everywhere() -> None:
    value = {
        "message": "key k-123 rejected",
        "k-123": ["Token k-123", ("k-123",)],
        "n": 5,
        "none": None,
    }
    cleaned = scrub(value, ["k-123", "Token k-123", "ab"])  # "ab": too short to scrub
    assert "k-123" not in repr(cleaned)
    assert cleaned["message"] == "key [REDACTED] rejected"
    assert cleaned["[REDACTED]"] == ["[REDACTED]", ("[REDACTED]",)]
    assert (cleaned["n"], cleaned["none"]) == (5, None)
    assert scrub("plain ab text", ["ab"]) == "plain ab text"
    assert scrub(value, []) is value


def test_scrub_never_recurses_without_bound() -> None:
    root: list[object] = []
    node = root
    for _ in range(10_000):
        child: list[object] = ["k-123"]
        node.append(child)
        node = child
    cleaned = scrub(root, ["k-123"])
    assert isinstance(cleaned, list)  # cut at the depth bound, not dropped whole on overflow
    assert "k-123" not in repr(cleaned[:1])
