-- Healing store, version 1: event log and learned error patterns (PostgreSQL; the source).
-- SQLite runs 0001_init.sqlite.sql, the same logical schema in its dialect. Every statement is
-- idempotent, so a database set up from supabase/migrations/ can still be migrated by the runner.
-- Later features (credentials, schema mappings, breaker state) arrive as 0002_*.sql, ...

create table if not exists healing_schema_version (
    version integer primary key,
    applied_at timestamptz not null default now()
);

create table if not exists healing_events (
    id bigint generated always as identity primary key,
    at timestamptz not null,
    kind text not null,
    workflow_id text not null,
    connector text,
    operation text,
    error_type text,
    fingerprint text,
    strategy text,
    outcome text,
    duration_s double precision
);

create index if not exists healing_events_at_idx on healing_events (at);

create index if not exists healing_events_fingerprint_idx on healing_events (fingerprint, at);

create index if not exists healing_events_workflow_id_idx on healing_events (workflow_id, at);

create table if not exists healing_patterns (
    fingerprint text primary key,
    connector text not null,
    operation text not null,
    error_type text not null,
    status_code integer,
    vendor_code text,
    template text not null default '',
    seen bigint not null default 0,
    first_seen timestamptz not null,
    last_seen timestamptz not null
);

create index if not exists healing_patterns_seen_idx on healing_patterns (seen desc, last_seen desc);

create table if not exists healing_pattern_outcomes (
    fingerprint text not null references healing_patterns (fingerprint) on delete cascade,
    strategy text not null,
    tries bigint not null default 0,
    successes bigint not null default 0,
    total_heal_s double precision not null default 0,
    primary key (fingerprint, strategy)
);

-- One try of p_strategy on a pattern: both upserts in one statement's transaction; counters are
-- incremented by the database, so concurrent workers lose no update.
create or replace function healing_record_outcome(
    p_fingerprint text,
    p_connector text,
    p_operation text,
    p_error_type text,
    p_status_code integer,
    p_vendor_code text,
    p_template text,
    p_strategy text,
    p_healed boolean,
    p_heal_s double precision
) returns void
language sql
as $$
    insert into healing_patterns as p (
        fingerprint, connector, operation, error_type, status_code, vendor_code, template,
        seen, first_seen, last_seen
    )
    values (
        p_fingerprint, p_connector, p_operation, p_error_type, p_status_code, p_vendor_code,
        coalesce(p_template, ''), 1, now(), now()
    )
    on conflict (fingerprint) do update
        set seen = p.seen + 1, last_seen = greatest(p.last_seen, excluded.last_seen);
    insert into healing_pattern_outcomes as o (fingerprint, strategy, tries, successes, total_heal_s)
    values (
        p_fingerprint, p_strategy, 1,
        case when p_healed then 1 else 0 end,
        case when p_healed then coalesce(p_heal_s, 0) else 0 end
    )
    on conflict (fingerprint, strategy) do update
        set tries = o.tries + 1,
            successes = o.successes + excluded.successes,
            total_heal_s = o.total_heal_s + excluded.total_heal_s;
$$;

-- A batch of events (a JSON array of objects with the healing_events columns), in order.
create or replace function healing_record_events(p_events jsonb) returns void
language sql
as $$
    insert into healing_events (
        at, kind, workflow_id, connector, operation, error_type, fingerprint, strategy, outcome,
        duration_s
    )
    select (e ->> 'at')::timestamptz, e ->> 'kind', e ->> 'workflow_id', e ->> 'connector',
           e ->> 'operation', e ->> 'error_type', e ->> 'fingerprint', e ->> 'strategy',
           e ->> 'outcome', (e ->> 'duration_s')::double precision
    from jsonb_array_elements(p_events) with ordinality as t(e, n)
    order by n;
$$;

-- On Supabase (its API roles exist) the tables must not be reachable with the public anon key:
-- row-level security on with no policies, and only the service role may call the functions.
-- Plain PostgreSQL has no such roles and is left as it is.
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon')
       and exists (select 1 from pg_roles where rolname = 'authenticated') then
        alter table healing_schema_version enable row level security;
        alter table healing_events enable row level security;
        alter table healing_patterns enable row level security;
        alter table healing_pattern_outcomes enable row level security;
        revoke all on table healing_schema_version, healing_events, healing_patterns,
            healing_pattern_outcomes from anon, authenticated;
        revoke all on function healing_record_outcome(
            text, text, text, text, integer, text, text, text, boolean, double precision
        ) from public, anon, authenticated;
        revoke all on function healing_record_events(jsonb) from public, anon, authenticated;
    end if;
end
$$;
