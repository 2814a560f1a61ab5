-- communication records (通信记录), callbacks that matched no call, the lease-release outbox,
-- and the caller-number round-robin cursor.

create table if not exists communication_records (
    -- our call id, 32 lowercase hex, sent to infinity as customuuid.
    call_id              text primary key,
    tenant_id            text not null,
    config_id            text not null,
    supplier_id          text not null default '',
    case_id              text not null,
    collector_id         text not null,
    destination_number   text not null,
    dialled_number       text not null,
    caller_number        text not null,
    extension_number     text,
    extension_id         text,
    lease_id             text,
    fencing_token        integer,
    lease_expires_at     text,
    lease_released       integer not null default 0,
    call_mode            text not null,
    call_timeout_seconds integer not null,
    status               text not null
                         check (status in ('dialing', 'ringing', 'unknown', 'completed', 'failed', 'expired')),
    result               text,
    start_time           text,
    answer_time          text,
    end_time             text,
    talk_seconds         integer,
    total_seconds        integer,
    hangup_cause         integer,
    hangup_side          text,
    record_url           text,
    record_filename      text,
    -- json object of the caller's custom parameters.
    custom_params        text not null default '{}',
    infinity_uuid        text,
    infinity_cdr_id      integer,
    error_code           text,
    error_message        text,
    idempotency_key      text,
    attempts             integer not null default 1,
    raw_callback         text,
    -- the reconciler looks at open calls from this time on (and claims them by moving it).
    reconcile_after      text not null,
    created_at           text not null,
    updated_at           text not null
);

create unique index if not exists communication_records_idempotency
    on communication_records (tenant_id, idempotency_key) where idempotency_key is not null;
create unique index if not exists communication_records_infinity_uuid
    on communication_records (infinity_uuid) where infinity_uuid is not null;
-- listcalls: by tenant and time, by collector, by case.
create index if not exists communication_records_tenant_time
    on communication_records (tenant_id, created_at desc, call_id desc);
create index if not exists communication_records_collector_time
    on communication_records (tenant_id, collector_id, created_at desc);
create index if not exists communication_records_case_time
    on communication_records (tenant_id, case_id, created_at desc);
-- the reconciler scans open calls only.
create index if not exists communication_records_open
    on communication_records (reconcile_after) where status in ('dialing', 'ringing', 'unknown');

-- callbacks that matched no call: kept for audit and reconciliation.
create table if not exists unmatched_callbacks (
    id            text primary key,
    tenant_id     text,
    customuuid    text,
    memberid      text,
    infinity_uuid text,
    source_ip     text,
    payload       text not null,
    reason        text not null,
    received_at   text not null,
    created_at    text not null,
    updated_at    text not null
);
create index if not exists unmatched_callbacks_tenant_time on unmatched_callbacks (tenant_id, received_at);

-- releases still owed to the allocator, written in the same transaction as the record change,
-- retried until the allocator confirms (survives restarts of the gateway).
create table if not exists lease_release_outbox (
    lease_id        text primary key,
    call_id         text not null,
    fencing_token   integer not null,
    reason          text not null,
    attempts        integer not null default 0,
    next_attempt_at text not null,
    last_error      text,
    created_at      text not null,
    updated_at      text not null
);
create index if not exists lease_release_outbox_due on lease_release_outbox (next_attempt_at);

create table if not exists caller_number_cursors (
    tenant_id  text primary key,
    next_index integer not null default 0,
    created_at text not null,
    updated_at text not null
);
