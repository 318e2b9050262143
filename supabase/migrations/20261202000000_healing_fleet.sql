-- temporal-healing store schema version 2 (fleet state) for Supabase CLI users
-- (`supabase db push`). The same SQL as healing/store/migrations/0002_fleet.sql (kept identical
-- by a test), then the Supabase lock-down as in 20261128000000_healing_init.sql.

-- Healing store, version 2: fleet state (PostgreSQL; the source). DESIGN s5b: everything that
-- changes a healing decision and is shared between workers lives here, in four generic shapes:
--   healing_state     versioned JSON documents, written by compare-and-swap (credentials,
--                     breaker state, schema mappings, drift records, quotas)
--   healing_leases    named leases that expire by themselves (refresh lease, probe lease)
--   healing_counters  time-bucketed counters (breaker windows, retry budgets)
--   healing_slots     next free start time per key (rate-limit slots, no herd)
-- Times are epoch seconds chosen by the caller, so tests can drive them with a clock.

create table if not exists healing_state (
    space text not null,
    key text not null,
    version bigint not null,
    value jsonb not null,
    updated_at double precision not null,
    primary key (space, key)
);

create table if not exists healing_leases (
    name text primary key,
    holder text not null,
    expires_at double precision not null
);

create table if not exists healing_counters (
    key text not null,
    bucket bigint not null,
    n bigint not null default 0,
    primary key (key, bucket)
);

create table if not exists healing_slots (
    key text primary key,
    tat double precision not null
);

-- Write p_value if the stored version is p_expected (null: only if absent; -1: whatever is
-- stored). Returns the new version, or null when another writer got there first.
create or replace function healing_state_put(
    p_space text, p_key text, p_value jsonb, p_expected bigint, p_now double precision
) returns bigint
language plpgsql
as $$
declare
    v bigint;
begin
    if p_expected is null then
        insert into healing_state (space, key, version, value, updated_at)
        values (p_space, p_key, 1, p_value, p_now)
        on conflict (space, key) do nothing
        returning version into v;
    elsif p_expected = -1 then
        insert into healing_state as s (space, key, version, value, updated_at)
        values (p_space, p_key, 1, p_value, p_now)
        on conflict (space, key) do update
            set version = s.version + 1, value = excluded.value, updated_at = excluded.updated_at
        returning version into v;
    else
        update healing_state set version = version + 1, value = p_value, updated_at = p_now
        where space = p_space and key = p_key and version = p_expected
        returning version into v;
    end if;
    return v;
end
$$;

-- Delete a document (at version p_expected unless it is null); true if a row went.
create or replace function healing_state_delete(p_space text, p_key text, p_expected bigint)
returns boolean
language sql
as $$
    with gone as (
        delete from healing_state
        where space = p_space and key = p_key and (p_expected is null or version = p_expected)
        returning 1
    )
    select count(*) > 0 from gone;
$$;

-- Hold lease p_name until p_now + p_ttl_s if it is free, expired, or already p_holder's.
create or replace function healing_lease_take(
    p_name text, p_holder text, p_ttl_s double precision, p_now double precision
) returns boolean
language sql
as $$
    with taken as (
        insert into healing_leases as l (name, holder, expires_at)
        values (p_name, p_holder, p_now + p_ttl_s)
        on conflict (name) do update
            set holder = excluded.holder, expires_at = excluded.expires_at
            where l.expires_at <= p_now or l.holder = excluded.holder
        returning 1
    )
    select count(*) > 0 from taken;
$$;

create or replace function healing_lease_drop(p_name text, p_holder text) returns boolean
language sql
as $$
    with gone as (
        delete from healing_leases where name = p_name and holder = p_holder returning 1
    )
    select count(*) > 0 from gone;
$$;

-- Add p_n to bucket p_bucket of p_key, forget that key's buckets before p_keep_from, and return
-- the key's total from p_keep_from on.
create or replace function healing_counter_add(
    p_key text, p_bucket bigint, p_n bigint, p_keep_from bigint
) returns bigint
language sql
as $$
    delete from healing_counters where key = p_key and bucket < p_keep_from;
    insert into healing_counters as c (key, bucket, n) values (p_key, p_bucket, p_n)
    on conflict (key, bucket) do update set n = c.n + excluded.n;
    select coalesce(sum(n), 0)::bigint from healing_counters
    where key = p_key and bucket >= p_keep_from;
$$;

-- Reserve the next start time for p_key: not before p_now nor p_not_before, and p_spacing_s
-- after the previous reservation. Returns the reserved start (epoch seconds).
create or replace function healing_slot_take(
    p_key text, p_spacing_s double precision, p_now double precision,
    p_not_before double precision
) returns double precision
language sql
as $$
    insert into healing_slots as s (key, tat)
    values (p_key, greatest(p_now, coalesce(p_not_before, p_now)) + p_spacing_s)
    on conflict (key) do update
        set tat = greatest(s.tat, p_now, coalesce(p_not_before, p_now)) + p_spacing_s
    returning tat - p_spacing_s;
$$;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon')
       and exists (select 1 from pg_roles where rolname = 'authenticated') then
        alter table healing_state enable row level security;
        alter table healing_leases enable row level security;
        alter table healing_counters enable row level security;
        alter table healing_slots enable row level security;
        revoke all on table healing_state, healing_leases, healing_counters, healing_slots
            from anon, authenticated;
        revoke all on function healing_state_put(text, text, jsonb, bigint, double precision)
            from public, anon, authenticated;
        revoke all on function healing_state_delete(text, text, bigint)
            from public, anon, authenticated;
        revoke all on function healing_lease_take(text, text, double precision, double precision)
            from public, anon, authenticated;
        revoke all on function healing_lease_drop(text, text) from public, anon, authenticated;
        revoke all on function healing_counter_add(text, bigint, bigint, bigint)
            from public, anon, authenticated;
        revoke all on function healing_slot_take(
            text, double precision, double precision, double precision
        ) from public, anon, authenticated;
    end if;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Supabase: record the version so the healing runner sees the schema as migrated.
insert into healing_schema_version (version) values (2) on conflict (version) do nothing;

alter table healing_state enable row level security;
alter table healing_leases enable row level security;
alter table healing_counters enable row level security;
alter table healing_slots enable row level security;

revoke all on table healing_state from anon, authenticated;
revoke all on table healing_leases from anon, authenticated;
revoke all on table healing_counters from anon, authenticated;
revoke all on table healing_slots from anon, authenticated;

revoke all on function healing_state_put(text, text, jsonb, bigint, double precision) from public, anon, authenticated;
revoke all on function healing_state_delete(text, text, bigint) from public, anon, authenticated;
revoke all on function healing_lease_take(text, text, double precision, double precision) from public, anon, authenticated;
revoke all on function healing_lease_drop(text, text) from public, anon, authenticated;
revoke all on function healing_counter_add(text, bigint, bigint, bigint) from public, anon, authenticated;
revoke all on function healing_slot_take(text, double precision, double precision, double precision) from public, anon, authenticated;

grant select, insert, update, delete on table healing_state to service_role;
grant select, insert, update, delete on table healing_leases to service_role;
grant select, insert, update, delete on table healing_counters to service_role;
grant select, insert, update, delete on table healing_slots to service_role;

grant execute on function healing_state_put(text, text, jsonb, bigint, double precision) to service_role;
grant execute on function healing_state_delete(text, text, bigint) to service_role;
grant execute on function healing_lease_take(text, text, double precision, double precision) to service_role;
grant execute on function healing_lease_drop(text, text) to service_role;
grant execute on function healing_counter_add(text, bigint, bigint, bigint) to service_role;
grant execute on function healing_slot_take(text, double precision, double precision, double precision) to service_role;
