"""An example of a user's own integration activity, healed like the generic one.

Mark it with ``@integration(connector=..., operation=...)`` under ``@activity.defn`` and let
failures escape: an ``httpx.HTTPStatusError`` carries the status, headers and body the healing
interceptor classifies. ``current_call()`` says where a reroute sends the call.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import httpx
from temporalio import activity

from healing.integration import current_call, integration

BASE_URLS = {"crm": "CRM_BASE_URL", "crm_eu": "CRM_EU_BASE_URL"}
"""Environment variable holding each connector's base URL."""
DEFAULT_BASE_URL = "http://127.0.0.1:8787"


@activity.defn
@integration(connector="crm", operation="get_contact")
async def get_contact(contact_id: str) -> dict[str, Any]:
    """Fetch one CRM contact."""
    ctx = current_call()
    connector = (ctx.connector if ctx else None) or "crm"
    base_url = os.environ.get(BASE_URLS.get(connector, ""), DEFAULT_BASE_URL)
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        response = await client.get(f"/contacts/{quote(contact_id, safe='')}")
        response.raise_for_status()
        contact: dict[str, Any] = response.json()
        return contact
