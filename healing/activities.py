"""The healing activities the workflow side runs: refresh credentials, adapt a schema.

Activities take plain dicts (not models) so they work under any data converter; their names
start with ``healing_`` so the interceptor never heals them recursively.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from healing.config import HealingConfig
from healing.errors import CredentialError, GrantRevoked

logger = logging.getLogger("healing")


class Refresher(Protocol):
    async def refresh(
        self, connector: str, *, seen_version: int | None = None, reason: str = ""
    ) -> Any: ...


class HealingActivities:
    """Holds what the healing activities need; one instance per worker."""

    def __init__(self, config: HealingConfig, *, tokens: Refresher | None = None) -> None:
        self.config = config
        self.tokens = tokens
        self.schema_mappings: dict[tuple[str, str], dict[str, str]] = {}

    @activity.defn(name="healing_refresh_credentials")
    async def refresh_credentials(self, request: dict[str, Any]) -> dict[str, Any]:
        connector = str(request.get("connector") or "")
        if self.tokens is None:
            raise ApplicationError(
                f"no credential refresher is configured for connector {connector!r}",
                type="GrantRevoked",
                non_retryable=True,
            )
        try:
            cred = await self.tokens.refresh(connector, reason=str(request.get("reason", "")))
        except GrantRevoked as exc:
            raise ApplicationError(str(exc), type="GrantRevoked", non_retryable=True) from None
        except CredentialError as exc:
            raise ApplicationError(str(exc), type="CredentialError") from None
        # Only the version leaves the activity: tokens never enter history.
        return {"connector": connector, "version": getattr(cred, "version", None)}

    @activity.defn(name="healing_adapt_schema")
    async def adapt_schema(self, request: dict[str, Any]) -> dict[str, Any]:
        mapping = request.get("mapping")
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise ApplicationError(
                "schema mapping must map field names to field names", non_retryable=True
            )
        key = (str(request.get("connector")), str(request.get("operation")))
        self.schema_mappings[key] = {**self.schema_mappings.get(key, {}), **mapping}
        logger.info("schema of %s.%s adapted: %s", key[0], key[1], mapping)
        return {"mapping": self.schema_mappings[key]}


def healing_activities(
    config: HealingConfig | None = None, *, tokens: Refresher | None = None
) -> Sequence[Callable[..., Any]]:
    """The healing activities to register beside the bare ``SelfHealingInterceptor``."""
    acts = HealingActivities(config or HealingConfig(), tokens=tokens)
    return [acts.refresh_credentials, acts.adapt_schema]
