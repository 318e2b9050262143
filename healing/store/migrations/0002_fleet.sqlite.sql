-- Healing store, version 2 in SQLite's dialect: the same tables as 0002_fleet.sql. SQLite has no
-- stored functions; SQLiteStore runs the same logic inside BEGIN IMMEDIATE transactions.

create table if not exists healing_state (
    space text not null,
    key text not null,
    version integer not null,
    value text not null,
    updated_at real not null,
    primary key (space, key)
);

create table if not exists healing_leases (
    name text primary key,
    holder text not null,
    expires_at real not null
);

create table if not exists healing_counters (
    key text not null,
    bucket integer not null,
    n integer not null default 0,
    primary key (key, bucket)
);

create table if not exists healing_slots (
    key text primary key,
    tat real not null
);
