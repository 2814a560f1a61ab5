-- Live call events (see the PostgreSQL migration of the same number for the design). SQLite
-- has one writer at a time, so the id is taken from the tenant's counter in the change's own
-- transaction (ids commit in order by construction); watchers in the process are woken by an
-- in-process broadcast.
create table if not exists call_events (
    seq              integer primary key autoincrement,
    tenant_id        text not null,
    event_id         integer,
    call_id          text not null,
    event_type       text not null
                     check (event_type in ('created', 'dialing', 'ringing', 'unknown', 'completed', 'failed', 'expired')),
    status           text not null,
    collector_id     text not null,
    case_id          text not null,
    extension_number text,
    result           text,
    talk_seconds     integer,
    error_code       text,
    error_message    text,
    occurred_at      text not null
);
create unique index if not exists call_events_by_id on call_events (tenant_id, event_id) where event_id is not null;
create index if not exists call_events_by_time on call_events (occurred_at);
create index if not exists call_events_by_call on call_events (tenant_id, call_id, event_id);

create table if not exists call_event_seq (
    tenant_id      text primary key,
    last_id        integer not null,
    pruned_through integer not null default 0
);

create table if not exists call_event_relay (
    tenant_id       text primary key,
    relayed_through integer not null default 0,
    -- A replica relaying the tenant's events holds it until then (another replica skips it).
    claimed_until   text,
    updated_at      text not null
);
