"""HEALING_STORE: what each URL opens, and the messages for the ones that cannot work."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from healing.errors import ConfigError, StoreUnavailable
from healing.store import (
    DEFAULT_STORE_URL,
    PostgresStore,
    SQLiteStore,
    SupabaseStore,
    connect_store,
    mask_url,
    open_store,
    parse_store_url,
)
from tests.store.pgcluster import free_port

SECRET = "s3cret-Pw.9"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("sqlite:/x.db", "three slashes"),
        ("sqlite://x.db", "has no host"),
        ("sqlite:///", "names no file"),
        ("sqlite:///x.db?mode=ro", "no query string"),
        (f"mysql://user:{SECRET}@db.example.com/healing", "unsupported scheme 'mysql'"),
        (f"postgresql://user:{SECRET}@db.example.com:notaport/healing", "port 'notaport'"),
        ("postgresql://db.example.com:99999/healing", "port '99999'"),
        (f"postgres://user:{SECRET}@db.example.com/healing?bogus=1", 'query parameter: "bogus"'),
        ("postgresql:db.example.com", "starts with postgresql://"),
        ("supabase://my-project", "takes no host"),
        ("/var/lib/healing.db", "no scheme"),
    ],
)
def test_malformed_urls_name_the_variable(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    message = str(caught.value)
    assert message.startswith("HEALING_STORE")
    assert problem in message
    assert SECRET not in message
    with pytest.raises(ConfigError, match=r"^MY_STORE"):
        open_store(url, env_var="MY_STORE")


def test_well_formed_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(DEFAULT_STORE_URL)
    assert isinstance(store, SQLiteStore) and store.path == ".healing/healing.db"
    assert parse_store_url("sqlite:////var/lib/h.db").target == "/var/lib/h.db"
    assert parse_store_url("sqlite:///:memory:").target == ":memory:"
    for scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        url = f"{scheme}://user:{SECRET}@db.example.com:6543/postgres?sslmode=require"
        store = open_store(url)
        assert isinstance(store, PostgresStore)
        assert store.url_for_display == (
            "postgresql://user:***@db.example.com:6543/postgres?sslmode=require"
        )
    multi = parse_store_url("postgresql://a.example.com:5432,b.example.com:5433/db")
    assert multi.target == "postgresql://a.example.com:5432,b.example.com:5433/db"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://u:{SECRET}@h/db", "postgresql://u:***@h/db"),
        (f"postgresql://u@h/db?password={SECRET}&sslmode=require",
         "postgresql://u@h/db?password=***&sslmode=require"),
        (f"host=h user=u password={SECRET} dbname=db", "host=h user=u password=*** dbname=db"),
        ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),
    ],
)  # fmt: skip
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_supabase_needs_its_variables() -> None:
    with pytest.raises(ConfigError, match=r"^HEALING_STORE=supabase:// needs SUPABASE_URL"):
        open_store("supabase://", environ={"SUPABASE_KEY": "k"})
    with pytest.raises(ConfigError, match="needs SUPABASE_KEY"):
        open_store("supabase://", environ={"SUPABASE_URL": "https://x.supabase.co"})
    with pytest.raises(ConfigError, match=r"SUPABASE_URL='x\.supabase\.co' is not an http"):
        open_store("supabase://", environ={"SUPABASE_URL": "x.supabase.co", "SUPABASE_KEY": "k"})
    store = open_store(
        "supabase://", environ={"SUPABASE_URL": "https://x.supabase.co/", "SUPABASE_KEY": "k"}
    )
    assert isinstance(store, SupabaseStore)
    assert store.url_for_display == "supabase:// (https://x.supabase.co)"


async def test_unreachable_postgres_fails_at_start() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        await connect_store(f"postgresql://healing:{SECRET}@127.0.0.1:{port}/healing")
    message = str(caught.value)
    assert message.startswith(
        f"HEALING_STORE=postgresql://healing:***@127.0.0.1:{port}/healing: cannot connect ("
    )
    assert "refused" in message.lower()
    assert SECRET not in message
    assert time.monotonic() - started < 3  # refused at once: no waiting on the pool


async def test_wrong_password_is_named_but_not_shown(pg_url: str) -> None:
    bad = pg_url.replace(":s3cret-Pw.9@", ":wrong-Pw.77@")
    assert bad != pg_url
    with pytest.raises(StoreUnavailable, match="password authentication failed") as caught:
        await connect_store(bad, env_var="HEALING_STORE")
    assert "wrong-Pw.77" not in str(caught.value) and "***" in str(caught.value)


async def test_unusable_sqlite_path_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreUnavailable, match=r"^HEALING_STORE=sqlite:///.*/file/h\.db: cannot"):
        await connect_store(f"sqlite:///{tmp_path}/file/h.db")


async def test_connect_store_migrates(tmp_path: Path, pg_url: str) -> None:
    for url in (f"sqlite:///{tmp_path}/a/b/h.db", pg_url):
        store = await connect_store(url)
        assert await store.migrate() == []  # connect_store applied version 1 already
        await store.close()
    memory = await connect_store("sqlite:///:memory:")
    assert await memory.patterns() == []
    await memory.close()
