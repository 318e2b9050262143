-- Healing store, version 1, SQLite dialect of 0001_init.sql (same tables and columns).
-- Timestamps are ISO-8601 text in UTC with microseconds, so text order is time order.
-- SQLite has no stored functions: the SQLite backend runs healing_record_outcome's two upserts
-- in one BEGIN IMMEDIATE transaction.

create table if not exists healing_schema_version (
    version integer primary key,
    applied_at text not null default (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);

create table if not exists healing_events (
    id integer primary key autoincrement,
    at text not null,
    kind text not null,
    workflow_id text not null,
    connector text,
    operation text,
    error_type text,
    fingerprint text,
    strategy text,
    outcome text,
    duration_s real
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
    seen integer not null default 0,
    first_seen text not null,
    last_seen text not null
);

create index if not exists healing_patterns_seen_idx on healing_patterns (seen desc, last_seen desc);

create table if not exists healing_pattern_outcomes (
    fingerprint text not null references healing_patterns (fingerprint) on delete cascade,
    strategy text not null,
    tries integer not null default 0,
    successes integer not null default 0,
    total_heal_s real not null default 0,
    primary key (fingerprint, strategy)
);
