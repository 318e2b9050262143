"""The Supabase backend's HTTP requests, checked against PostgREST's documented shapes.

https://docs.postgrest.org/en/v12/references/api/functions.html (POST /rpc/<fn>, a JSON object
of named arguments) and .../api/tables_views.html (select=, <column>=<op>.<value>, in.(...),
order=<column>.<desc|asc>, limit=). Supabase serves them under /rest/v1 with the project key
in ``apikey`` and ``Authorization: Bearer``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import pytest

from healing.errors import ConfigError, StoreError, StoreUnavailable
from healing.store import EventFilter, SupabaseStore, connect_store
from healing.types import ErrorPattern, ErrorType, HealingEvent, HealingStrategy
from tests.store.pgcluster import free_port
from tests.store.postgrest_fake import ANON_KEY, SERVICE_KEY, FakePostgREST

PATTERN = ErrorPattern(
    fingerprint="fp-1",
    connector="crm",
    operation="get_contact",
    error_type=ErrorType.RATE_LIMITED,
    status_code=429,
    vendor_code="TEN_SECONDLY_ROLLING",
    template="rate limited: <n> per <n> s",
)
AT = datetime(2026, 11, 28, 12, 0, 0, 500000, tzinfo=UTC)


def _headers_ok(headers: dict[str, str], key: str = SERVICE_KEY) -> None:
    assert headers["apikey"] == key
    assert headers["authorization"] == f"Bearer {key}"


async def test_rpc_request_shapes(supabase_api: FakePostgREST) -> None:
    store = SupabaseStore(supabase_api.url, SERVICE_KEY)
    await store.record_outcome(PATTERN, "wait_retry_after", healed=True, heal_s=2.5)
    ev = HealingEvent(
        at=AT, kind="healed", workflow_id="wf-1", connector="crm", operation="get_contact",
        error_type=ErrorType.RATE_LIMITED, fingerprint="fp-1",
        strategy=HealingStrategy.WAIT_RETRY_AFTER, outcome="healed", duration_s=2.5,
    )  # fmt: skip
    await store.record_events([ev])
    await store.close()

    outcome, events = supabase_api.requests
    assert (outcome.method, outcome.path) == ("POST", "/rest/v1/rpc/healing_record_outcome")
    assert outcome.headers["content-type"] == "application/json"
    _headers_ok(outcome.headers)
    assert outcome.query == []
    assert outcome.body == {
        "p_fingerprint": "fp-1",
        "p_connector": "crm",
        "p_operation": "get_contact",
        "p_error_type": "RATE_LIMITED",
        "p_status_code": 429,
        "p_vendor_code": "TEN_SECONDLY_ROLLING",
        "p_template": "rate limited: <n> per <n> s",
        "p_strategy": "wait_retry_after",
        "p_healed": True,
        "p_heal_s": 2.5,
    }
    assert (events.method, events.path) == ("POST", "/rest/v1/rpc/healing_record_events")
    _headers_ok(events.headers)
    assert events.body == {
        "p_events": [
            {
                "at": "2026-11-28T12:00:00.500000+00:00",
                "kind": "healed",
                "workflow_id": "wf-1",
                "connector": "crm",
                "operation": "get_contact",
                "error_type": "RATE_LIMITED",
                "fingerprint": "fp-1",
                "strategy": "wait_retry_after",
                "outcome": "healed",
                "duration_s": 2.5,
            }
        ]
    }


async def test_read_request_shapes(supabase_api: FakePostgREST) -> None:
    store = SupabaseStore(supabase_api.url, SERVICE_KEY)
    await store.record_outcome(PATTERN, "retry", healed=False)
    supabase_api.requests.clear()
    stats = await store.pattern_stats("fp-1")
    assert stats is not None and stats.seen == 1
    pattern, outcomes, healed = supabase_api.requests
    for request in (pattern, outcomes, healed):
        assert request.method == "GET" and request.body is None
        _headers_ok(request.headers)
    columns = "fingerprint,connector,operation,error_type,status_code,vendor_code,template,seen,first_seen,last_seen"  # noqa: E501
    assert pattern.path == "/rest/v1/healing_patterns"
    assert pattern.query == [("select", columns), ("fingerprint", "eq.fp-1"), ("limit", "1")]
    assert outcomes.path == "/rest/v1/healing_pattern_outcomes"
    assert outcomes.query == [
        ("select", "fingerprint,strategy,tries,successes,total_heal_s"),
        ("fingerprint", "in.(fp-1)"),
    ]
    assert healed.path == "/rest/v1/healing_events"
    assert healed.query == [
        ("select", "fingerprint,strategy,duration_s"),
        ("kind", "eq.healed"),
        ("fingerprint", "in.(fp-1)"),
        ("order", "at.desc,id.desc"),
        ("limit", "100"),
    ]

    supabase_api.requests.clear()
    await store.recent_events(
        EventFilter(limit=5, workflow_id="wf-1", connector="crm", error_type="TIMEOUT",
                    kind="attempt", fingerprint="fp-1", since=AT)
    )  # fmt: skip
    (recent,) = supabase_api.requests
    assert recent.path == "/rest/v1/healing_events"
    assert recent.query == [
        ("select", "at,kind,workflow_id,connector,operation,error_type,fingerprint,strategy,"
                   "outcome,duration_s"),
        ("workflow_id", "eq.wf-1"),
        ("connector", "eq.crm"),
        ("error_type", "eq.TIMEOUT"),
        ("kind", "eq.attempt"),
        ("fingerprint", "eq.fp-1"),
        ("at", "gte.2026-11-28T12:00:00.500000+00:00"),
        ("order", "at.desc,id.desc"),
        ("limit", "5"),
    ]  # fmt: skip

    supabase_api.requests.clear()
    await store.patterns(limit=7)
    assert supabase_api.requests[0].query == [
        ("select", columns),
        ("order", "seen.desc,last_seen.desc,fingerprint.asc"),
        ("limit", "7"),
    ]
    await store.close()


async def test_the_anon_key_is_refused_by_row_level_security(supabase_api: FakePostgREST) -> None:
    store = SupabaseStore(supabase_api.url, ANON_KEY)
    with pytest.raises(StoreError, match="service_role key") as caught:
        await store.record_outcome(PATTERN, "retry", healed=True)
    with pytest.raises(StoreError, match="service_role key"):
        await store.recent_events()
    assert ANON_KEY not in str(caught.value)
    await store.close()


async def test_missing_schema_says_how_to_install_it(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakePostgREST(pg_url) as bare:  # a project where the migration was never pushed
        monkeypatch.setenv("SUPABASE_URL", bare.url)
        monkeypatch.setenv("SUPABASE_KEY", SERVICE_KEY)
        with pytest.raises(StoreError, match="supabase db push") as caught:
            await connect_store("supabase://")
    assert str(caught.value).startswith(f"HEALING_STORE=supabase:// ({bare.url})")
    assert not isinstance(caught.value, StoreUnavailable)


async def test_connect_store_checks_the_schema_version(
    supabase_api: FakePostgREST, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPABASE_URL", supabase_api.url)
    monkeypatch.setenv("SUPABASE_KEY", SERVICE_KEY)
    store = await connect_store("supabase://")
    assert isinstance(store, SupabaseStore)
    assert await store.migrate() == []
    await store.close()
    assert [r.path for r in supabase_api.requests] == ["/rest/v1/healing_schema_version"] * 3


async def test_unreachable_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("SUPABASE_KEY", SERVICE_KEY)
    with pytest.raises(StoreUnavailable, match=r"^HEALING_STORE=supabase:// .*cannot reach") as e:
        await connect_store("supabase://")
    assert SERVICE_KEY not in str(e.value)


def test_missing_package_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "supabase", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'temporal-healing\[supabase\]'"):
        SupabaseStore("https://example.supabase.co", SERVICE_KEY)
