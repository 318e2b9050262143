"""The healing store: event log and learned error patterns, on SQLite, PostgreSQL or Supabase.

    store = await connect_store(os.environ.get("HEALING_STORE", DEFAULT_STORE_URL))

``connect_store`` opens the backend the URL names, checks it answers and applies pending
migrations; ``open_store`` only builds it (no I/O). URL forms are listed in
:mod:`healing.store.url`. Backends: :class:`SQLiteStore`, :class:`PostgresStore`,
:class:`SupabaseStore` (the last two are imported on first use).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from healing.errors import ConfigError, StoreError
from healing.store.base import (
    ANY_VERSION,
    EventFilter,
    FleetState,
    PatternStats,
    StateEntry,
    Store,
    StrategyStats,
)
from healing.store.sqlite import SQLiteStore
from healing.store.url import DEFAULT_STORE_URL, STORE_ENV, StoreURL, mask_url, parse_store_url

if TYPE_CHECKING:
    from healing.store.postgres import PostgresStore
    from healing.store.supabase import SupabaseStore

__all__ = [
    "ANY_VERSION",
    "DEFAULT_STORE_URL",
    "STORE_ENV",
    "EventFilter",
    "FleetState",
    "PatternStats",
    "PostgresStore",
    "SQLiteStore",
    "StateEntry",
    "Store",
    "StoreURL",
    "StrategyStats",
    "SupabaseStore",
    "connect_store",
    "mask_url",
    "open_store",
    "parse_store_url",
]


def open_store(
    url: str, *, env_var: str = STORE_ENV, environ: Mapping[str, str] | None = None
) -> Store:
    """Build the store ``url`` names, without connecting.

    Args:
        url: a ``HEALING_STORE`` URL.
        env_var: the setting ``url`` came from, named in error messages.
        environ: where ``supabase://`` reads SUPABASE_URL and SUPABASE_KEY (``os.environ``).

    Raises:
        ConfigError: the URL is malformed, or a variable ``supabase://`` needs is missing.
    """
    target = parse_store_url(url, env_var=env_var)
    if target.kind == "sqlite":
        return SQLiteStore(target.target)
    if target.kind == "postgres":
        from healing.store.postgres import PostgresStore

        return PostgresStore(target.target)
    env = os.environ if environ is None else environ
    values = {}
    for name, what in (
        ("SUPABASE_URL", "the project URL, https://<ref>.supabase.co"),
        ("SUPABASE_KEY", "the project's service_role key"),
    ):
        values[name] = env.get(name, "").strip()
        if not values[name]:
            raise ConfigError(f"{env_var}=supabase:// needs {name} ({what}); it is not set")
    from healing.store.supabase import SupabaseStore

    return SupabaseStore(values["SUPABASE_URL"], values["SUPABASE_KEY"])


async def connect_store(
    url: str,
    *,
    env_var: str = STORE_ENV,
    environ: Mapping[str, str] | None = None,
    migrate: bool = True,
) -> Store:
    """Open the store ``url`` names, check that it answers, and migrate it.

    Raises:
        ConfigError: as :func:`open_store`.
        StoreUnavailable: the database cannot be reached; the message starts with
            ``HEALING_STORE=<url without password>``.
        StoreError: the database answered but cannot be used (schema, permissions).
    """
    store = open_store(url, env_var=env_var, environ=environ)
    try:
        await store.ping()
        if migrate:
            await store.migrate()
    except StoreError as exc:
        with contextlib.suppress(Exception):
            await store.close()
        message = str(exc)
        if not message.startswith(store.url_for_display):
            message = f"{store.url_for_display}: {message}"
        raise type(exc)(f"{env_var}={message}") from exc
    return store


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        from healing.store.postgres import PostgresStore

        return PostgresStore
    if name == "SupabaseStore":
        from healing.store.supabase import SupabaseStore

        return SupabaseStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
