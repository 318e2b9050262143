"""Credentials on every store backend (SQLite, PostgreSQL, Supabase REST): sealed rows keyed
by (connector, connection), and a stampede of two workers' refreshers, each with its own store
connection, costs one token call with no refresh token sent twice."""

from __future__ import annotations

import asyncio
import json
import time

from healing.credentials import (
    CREDENTIALS_SPACE,
    Credential,
    FleetCredentialStore,
    OAuthClient,
    generate_secret_key,
)
from healing.oauth import TokenRefresher
from healing.testing import ChaosAPI
from tests.store.conftest import StoreFactory

KEY = generate_secret_key()


async def test_two_refreshers_on_one_store_make_one_token_call(make_store: StoreFactory) -> None:
    stores = [make_store(), make_store()]
    await stores[0].migrate()
    async with ChaosAPI(require_token=True) as chaos:
        chaos.set_refresh_policy(reuse_detection=True)
        client = OAuthClient(token_url=f"{chaos.url}/oauth/token", client_id="app")
        workers = [TokenRefresher(FleetCredentialStore(s, KEY), {"crm": client}) for s in stores]
        creds = FleetCredentialStore(stores[0], KEY)
        for connection in ("acme", "globex"):
            tokens = chaos.issue_tokens(connection)
            cred = Credential(
                connector="crm",
                connection=connection,
                access_token=tokens.access_token,
                refresh_token=tokens.refresh_token,
                expires_at=time.time() - 1,
            )
            assert await creds.put(cred, expected_version=None)
        got = await asyncio.gather(
            *(w.credential("crm", c) for w in workers * 10 for c in ("acme", "globex"))
        )
        assert {c.version for c in got} == {2}
        stats = chaos.stats()
        assert stats.token_calls == 2 and stats.refresh_token_reuses == 0
        acme, globex = await creds.get("crm", "acme"), await creds.get("crm", "globex")
        assert acme is not None and globex is not None
        assert acme.access_token.get_secret_value() == chaos.tokens_of("acme")[0]
        assert globex.access_token.get_secret_value() == chaos.tokens_of("globex")[0]
        rows = json.dumps([e.value for e in await stores[1].state_list(CREDENTIALS_SPACE)])
        assert all(t not in rows for t in chaos.minted_tokens())
        for w in workers:
            await w.aclose()
