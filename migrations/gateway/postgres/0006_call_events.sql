-- Live call events: one row per change of a call, written in the same transaction as the
-- change. Event ids are per tenant and dense (1, 2, 3, ...): the tenant's counter row in
-- call_event_seq is incremented as the last statement of every such transaction and stays
-- locked until its commit, so a tenant's events commit in id order and a watcher that has seen
-- id N has seen everything up to N. Retention deletes a prefix of each tenant's ids and records
-- it in pruned_through; a watcher asking for older ids is told so.
create table if not exists call_events (
    tenant_id        text not null,
    event_id         bigint not null,
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
    occurred_at      timestamptz not null,
    primary key (tenant_id, event_id)
);
create index if not exists call_events_by_time on call_events (occurred_at);
-- A watch of one call, or of one collector, reads only its events.
create index if not exists call_events_by_call on call_events (tenant_id, call_id, event_id);
create index if not exists call_events_by_collector on call_events (tenant_id, collector_id, event_id);

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
