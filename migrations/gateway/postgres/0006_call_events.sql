-- Live call events: one row per change of a call, written in the same transaction as the
-- change (no event without its change, no change without its event). The row is written
-- without its public id (`event_id` null): a per-tenant sequencer gives committed events their
-- ids afterwards, in the order it finds them (oldest `seq` first), incrementing the tenant's
-- counter in call_event_seq in its own short transaction, which holds the counter row to its
-- commit. So ids are dense per tenant (1, 2, 3, ...) and commit in order, and no call's
-- transaction waits on another's for its event. A call's events are numbered in the order they
-- happened: a later change of a call starts after the earlier one committed, so its `seq` is
-- higher and it becomes visible later. Retention deletes a prefix of each tenant's ids and
-- records it in pruned_through; a watcher asking for older ids is told so.
create table if not exists call_events (
    seq              bigserial primary key,
    tenant_id        text not null,
    event_id         bigint,
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
    occurred_at      timestamptz not null
);
create unique index if not exists call_events_by_id on call_events (tenant_id, event_id) where event_id is not null;
-- The sequencer's work list.
create index if not exists call_events_unsequenced on call_events (tenant_id, seq) where event_id is null;
create index if not exists call_events_by_time on call_events (occurred_at);
-- A watch of one call reads only its events.
create index if not exists call_events_by_call on call_events (tenant_id, call_id, event_id);

create table if not exists call_event_seq (
    tenant_id      text primary key,
    last_id        bigint not null,
    pruned_through bigint not null default 0
);

-- How far the NATS relay has published each tenant's events.
create table if not exists call_event_relay (
    tenant_id       text primary key,
    relayed_through bigint not null default 0,
    -- A replica relaying the tenant's events holds it until then (another replica skips it).
    claimed_until   timestamptz,
    updated_at      timestamptz not null
);
