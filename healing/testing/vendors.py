"""Error responses in the exact shapes real vendors send them (see VENDOR-FAULTS.md).

`status_response(fault)` renders a `StatusFault` as status, headers and body. The token
endpoint's OAuth errors and Stripe's idempotency errors live here too.
"""

from __future__ import annotations

import time
import uuid
from http import HTTPStatus
from typing import Any

from healing.testing._http import Response, json_response
from healing.testing.plan import StatusFault

Headers = tuple[tuple[str, str], ...]

GITHUB_SECONDARY = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
)
GITHUB_DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
GOOGLE_401 = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_SALESFORCE = {
    400: ("Bad request", "INVALID_FIELD"),
    401: ("Session expired or invalid", "INVALID_SESSION_ID"),
    403: ("TotalRequests Limit exceeded.", "REQUEST_LIMIT_EXCEEDED"),
    404: ("The requested resource does not exist", "NOT_FOUND"),
    503: ("Server Unavailable", "SERVER_UNAVAILABLE"),
}
_HUBSPOT_CATEGORY = {
    400: "VALIDATION_ERROR",
    401: "INVALID_AUTHENTICATION",
    403: "MISSING_SCOPES",
    404: "OBJECT_NOT_FOUND",
}
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_GRAPH_CODE = {
    400: "BadRequest",
    401: "InvalidAuthenticationToken",
    403: "Authorization_RequestDenied",
    404: "ResourceNotFound",
    429: "activityLimitReached",
    500: "generalException",
    503: "serviceNotAvailable",
}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _retry_after(fault: StatusFault, default: int | None = None) -> Headers:
    seconds = fault.retry_after if fault.retry_after is not None else default
    return () if seconds is None else (("Retry-After", str(seconds)),)


def _salesforce(fault: StatusFault) -> Response:
    message, code = _SALESFORCE.get(fault.status, (_phrase(fault.status), "UNKNOWN_EXCEPTION"))
    # Plenty left unless the fault is the quota itself, so clients do not pace on it.
    usage = "15000/15000" if code == "REQUEST_LIMIT_EXCEEDED" else "1200/15000"
    headers = (("Sforce-Limit-Info", f"api-usage={usage}"), *_retry_after(fault))
    return json_response(fault.status, [{"message": message, "errorCode": code}], headers)


def _hubspot(fault: StatusFault) -> Response:
    ids = {"correlationId": str(uuid.uuid4())}
    if fault.status != 429:
        category = _HUBSPOT_CATEGORY.get(fault.status, "INTERNAL_ERROR")
        body = {"status": "error", "message": _phrase(fault.status), "category": category, **ids}
        return json_response(fault.status, body, _retry_after(fault))
    policy = fault.policy or "TEN_SECONDLY_ROLLING"
    headers: Headers = (
        ("X-HubSpot-RateLimit-Interval-Milliseconds", "10000"),
        ("X-HubSpot-RateLimit-Max", "100"),
        ("X-HubSpot-RateLimit-Remaining", "0"),
    )
    if policy == "DAILY":
        headers += (("X-HubSpot-RateLimit-Daily", "250000"),)
        headers += (("X-HubSpot-RateLimit-Daily-Remaining", "0"),)
    body = {
        "status": "error",
        "message": f"You have reached your {policy.lower()} limit.",
        "errorType": "RATE_LIMIT",
        **ids,
        "policyName": policy,
        "requestId": str(uuid.uuid4()),
    }
    return json_response(429, body, headers + _retry_after(fault))


def _slack(fault: StatusFault) -> Response:
    if fault.status == 429:
        body = {"ok": False, "error": fault.slack_error or "ratelimited"}
        return json_response(429, body, _retry_after(fault, 30))
    default = "token_expired" if fault.status == 200 else "fatal_error"
    body = {"ok": False, "error": fault.slack_error or default}
    return json_response(fault.status, body, _retry_after(fault))


def _github(fault: StatusFault, now_epoch: float) -> Response:
    policy = fault.policy
    if policy is None and fault.status in (403, 429):
        limited = fault.status == 429 or fault.retry_after is not None
        policy = "secondary" if limited else "permission"
    limits: Headers = (("x-ratelimit-limit", "5000"),)
    if policy == "primary":
        reset = int(now_epoch) + (fault.retry_after if fault.retry_after is not None else 60)
        headers = (*limits, ("x-ratelimit-remaining", "0"), ("x-ratelimit-used", "5000"))
        headers += (("x-ratelimit-reset", str(reset)),)
        primary = {
            "message": "API rate limit exceeded for installation ID 1.",
            "documentation_url": GITHUB_DOCS,
        }
        return json_response(fault.status, primary, headers)
    headers = (*limits, ("x-ratelimit-remaining", "4990"), ("x-ratelimit-used", "10"))
    if policy == "secondary":
        secondary = {
            "message": GITHUB_SECONDARY,
            "documentation_url": f"{GITHUB_DOCS}#about-secondary-rate-limits",
        }
        return json_response(fault.status, secondary, headers + _retry_after(fault, 60))
    if policy == "permission":
        message = "Resource not accessible by integration"
    else:
        message = "Bad credentials" if fault.status == 401 else _phrase(fault.status)
    body = {"message": message, "documentation_url": "https://docs.github.com/rest"}
    return json_response(fault.status, body, headers + _retry_after(fault))


def _google(fault: StatusFault) -> Response:
    if fault.status == 401:
        challenge = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
        body = {"error": {"code": 401, "message": GOOGLE_401, "status": "UNAUTHENTICATED"}}
        return json_response(401, body, (("WWW-Authenticate", challenge),))
    status_name = _GOOGLE_STATUS.get(fault.status, "UNKNOWN")
    body = {
        "error": {"code": fault.status, "message": _phrase(fault.status), "status": status_name}
    }
    return json_response(fault.status, body, _retry_after(fault))


def _graph(fault: StatusFault) -> Response:
    code = _GRAPH_CODE.get(fault.status, "generalException")
    if fault.status == 429:
        message = "The request has been throttled"
        error = {"code": code, "message": message, "innerError": {"code": "throttledRequest"}}
        return json_response(429, {"error": error}, _retry_after(fault, 41))
    body = {"error": {"code": code, "message": _phrase(fault.status)}}
    return json_response(fault.status, body, _retry_after(fault))


def _generic(fault: StatusFault) -> Response:
    phrase = _phrase(fault.status)
    error = phrase.lower().replace(" ", "_").replace("-", "_")
    body = {"error": error, "message": phrase, "status": fault.status}
    return json_response(fault.status, body, _retry_after(fault))


def status_response(fault: StatusFault, *, now_epoch: float | None = None) -> Response:
    """The response a vendor sends for `fault` (`now_epoch` dates GitHub's reset header)."""
    if fault.vendor == "salesforce":
        return _salesforce(fault)
    if fault.vendor == "hubspot":
        return _hubspot(fault)
    if fault.vendor == "slack":
        return _slack(fault)
    if fault.vendor == "github":
        return _github(fault, time.time() if now_epoch is None else now_epoch)
    if fault.vendor == "google":
        return _google(fault)
    if fault.vendor == "graph":
        return _graph(fault)
    return _generic(fault)


def oauth_error(error: str, description: str, status: int = 400) -> Response:
    """An RFC 6749 token endpoint error, e.g. `400 {"error": "invalid_grant", ...}`."""
    body: dict[str, Any] = {"error": error, "error_description": description}
    return json_response(status, body, (("Cache-Control", "no-store"),))


def idempotency_in_use() -> Response:
    """Stripe's 409 for a key whose first request is still running."""
    message = (
        "There is currently another in-progress request using this Idempotent Key (that "
        "probably means you submitted twice, and the other request is still going through). "
        "Please try again later."
    )
    error = {"type": "invalid_request_error", "code": "idempotency_key_in_use", "message": message}
    return json_response(409, {"error": error})


def idempotency_mismatch() -> Response:
    """Stripe's 400 for a key reused with other parameters."""
    message = (
        "Keys for idempotent requests can only be used with the same parameters they were "
        "first used with. Try using a key other than the one used for the original request."
    )
    return json_response(400, {"error": {"type": "idempotency_error", "message": message}})
