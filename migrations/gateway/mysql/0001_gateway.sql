-- call-gateway-svc schema (MySQL 8.0+ and MariaDB 10.6+): the tables of the PostgreSQL
-- migrations 0001-0006 in syntax both servers accept. Ids and short codes are varchar (indexed
-- ones bounded), long text is text, lists we keep as JSON are json columns, times are
-- datetime(6) in UTC (the service sets the session time zone to +00:00), text is compared
-- byte for byte (utf8mb4_bin), as on PostgreSQL. MySQL has no partial indexes; a unique index
-- allows any number of nulls, which is what the partial unique indexes said. DDL cannot be
-- rolled back, so every statement may run again after a failure half-way; nothing is dropped
-- but triggers, which are made again at once. Secrets are stored sealed, never in clear.

create table if not exists infinity_call_configs (
    config_id               varchar(64) not null,
    tenant_id               varchar(64) not null,
    supplier_id             varchar(128) not null default '',
    api_url                 varchar(1024) not null,
    credential_mode         varchar(16) not null,
    app_id                  varchar(128) null,
    access_token_sealed     text null,
    access_key_sealed       text null,
    caller_number_pool      json not null,
    default_caller_number   varchar(64) not null,
    caller_number_selection varchar(32) not null,
    call_mode               varchar(32) not null,
    destination_prefix      varchar(32) not null default '',
    max_concurrent_calls    integer not null,
    call_timeout_seconds    integer not null,
    api_timeout_ms          integer not null,
    allocation_strategy     varchar(32) not null,
    lease_ttl_seconds       integer not null,
    cooldown_seconds        integer not null default 0,
    callback_secret_sealed  text not null,
    callback_ip_allowlist   json not null,
    callback_time_zone      varchar(64) not null,
    is_active               boolean not null default true,
    phone_region            varchar(8) not null,
    api_encoding            varchar(16) not null,
    version                 bigint not null,
    created_at              datetime(6) not null,
    updated_at              datetime(6) not null,
    allowed_number_types    json not null,
    primary key (config_id),
    unique key infinity_call_configs_tenant_key (tenant_id),
    constraint infinity_call_configs_mode_check check (credential_mode in ('access_token', 'app'))
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

create table if not exists collectors (
    tenant_id             varchar(64) not null,
    collector_id          varchar(64) not null,
    callback_number       varchar(64) null,
    display_name          varchar(512) not null default '',
    active                boolean not null default true,
    last_extension_number varchar(64) null,
    created_at            datetime(6) not null,
    updated_at            datetime(6) not null,
    primary key (tenant_id, collector_id)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

create table if not exists communication_records (
    call_id              varchar(64) not null,
    tenant_id            varchar(64) not null,
    config_id            varchar(64) not null,
    supplier_id          varchar(128) not null default '',
    case_id              varchar(64) not null,
    collector_id         varchar(64) not null,
    destination_number   varchar(64) not null,
    dialled_number       varchar(64) not null,
    caller_number        varchar(64) not null,
    extension_number     varchar(64) null,
    extension_id         varchar(64) null,
    lease_id             varchar(64) null,
    fencing_token        bigint null,
    lease_expires_at     datetime(6) null,
    lease_released       boolean not null default false,
    call_mode            varchar(32) not null,
    call_timeout_seconds integer not null,
    status               varchar(16) not null,
    result               varchar(32) null,
    start_time           datetime(6) null,
    answer_time          datetime(6) null,
    end_time             datetime(6) null,
    talk_seconds         integer null,
    total_seconds        integer null,
    hangup_cause         integer null,
    hangup_side          varchar(16) null,
    record_url           text null,
    record_filename      text null,
    custom_params        json not null,
    infinity_uuid        varchar(128) null,
    infinity_cdr_id      bigint null,
    error_code           varchar(64) null,
    error_message        text null,
    idempotency_key      varchar(128) null,
    attempts             integer not null default 1,
    raw_callback         mediumtext null,
    reconcile_after      datetime(6) not null,
    created_at           datetime(6) not null,
    updated_at           datetime(6) not null,
    primary key (call_id),
    unique key communication_records_idempotency (tenant_id, idempotency_key),
    unique key communication_records_tenant_infinity_uuid (tenant_id, infinity_uuid),
    key communication_records_tenant_time (tenant_id, created_at, call_id),
    key communication_records_collector_time (tenant_id, collector_id, created_at),
    key communication_records_case_time (tenant_id, case_id, created_at),
    -- open calls due for reconciliation (the partial index of the other backends).
    key communication_records_open (status, reconcile_after),
    constraint communication_records_status_check
        check (status in ('dialing', 'ringing', 'unknown', 'completed', 'failed', 'expired'))
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

create table if not exists unmatched_callbacks (
    id            varchar(64) not null,
    tenant_id     varchar(64) null,
    customuuid    text null,
    memberid      text null,
    infinity_uuid text null,
    source_ip     varchar(64) null,
    payload       mediumtext not null,
    reason        text not null,
    received_at   datetime(6) not null,
    created_at    datetime(6) not null,
    updated_at    datetime(6) not null,
    primary key (id),
    key unmatched_callbacks_tenant_time (tenant_id, received_at)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

create table if not exists lease_release_outbox (
    lease_id        varchar(64) not null,
    call_id         varchar(64) not null,
    fencing_token   bigint not null,
    reason          varchar(32) not null,
    attempts        integer not null default 0,
    next_attempt_at datetime(6) not null,
    last_error      text null,
    created_at      datetime(6) not null,
    updated_at      datetime(6) not null,
    primary key (lease_id),
    key lease_release_outbox_due (next_attempt_at)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

create table if not exists caller_number_cursors (
    tenant_id  varchar(64) not null,
    next_index bigint not null default 0,
    created_at datetime(6) not null,
    updated_at datetime(6) not null,
    primary key (tenant_id)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

create table if not exists pool_purge_outbox (
    config_id       varchar(64) not null,
    tenant_id       varchar(64) not null,
    attempts        integer not null default 0,
    next_attempt_at datetime(6) not null,
    last_error      text null,
    created_at      datetime(6) not null,
    updated_at      datetime(6) not null,
    primary key (config_id),
    key pool_purge_outbox_due (next_attempt_at)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

-- Every replica caches configs and collectors. MySQL cannot notify, so (as on SQLite) a one-row
-- counter is bumped by triggers in the writing transaction and read before a cache is used.
-- A collector's last extension (written once per call) changes nothing cached: that update's
-- trigger finds its WHERE false without reading the row, so calls do not queue on the counter.
create table if not exists cache_epoch (
    id integer not null,
    n  bigint not null,
    primary key (id),
    constraint cache_epoch_one_row check (id = 1)
) engine = InnoDB;

insert into cache_epoch (id, n) values (1, 0) on duplicate key update id = id;

drop trigger if exists configs_inserted;
create trigger configs_inserted after insert on infinity_call_configs for each row
    update cache_epoch set n = n + 1 where id = 1;
drop trigger if exists configs_updated;
create trigger configs_updated after update on infinity_call_configs for each row
    update cache_epoch set n = n + 1 where id = 1;
drop trigger if exists configs_deleted;
create trigger configs_deleted after delete on infinity_call_configs for each row
    update cache_epoch set n = n + 1 where id = 1;
drop trigger if exists collectors_inserted;
create trigger collectors_inserted after insert on collectors for each row
    update cache_epoch set n = n + 1 where id = 1;
drop trigger if exists collectors_updated;
create trigger collectors_updated after update on collectors for each row
    update cache_epoch set n = n + 1
    where id = 1 and not (old.tenant_id <=> new.tenant_id and old.collector_id <=> new.collector_id
        and old.callback_number <=> new.callback_number and old.display_name <=> new.display_name
        and old.active <=> new.active);
drop trigger if exists collectors_deleted;
create trigger collectors_deleted after delete on collectors for each row
    update cache_epoch set n = n + 1 where id = 1;

-- Live call events (see the PostgreSQL migration 0006 for the design): written without an id
-- by the call's transaction, numbered per tenant after commit by the sequencer.
create table if not exists call_events (
    seq              bigint not null auto_increment,
    tenant_id        varchar(64) not null,
    event_id         bigint null,
    call_id          varchar(64) not null,
    event_type       varchar(16) not null,
    status           varchar(16) not null,
    collector_id     varchar(64) not null,
    case_id          varchar(64) not null,
    extension_number varchar(64) null,
    result           varchar(32) null,
    talk_seconds     integer null,
    error_code       varchar(64) null,
    error_message    text null,
    occurred_at      datetime(6) not null,
    primary key (seq),
    unique key call_events_by_id (tenant_id, event_id),
    key call_events_unsequenced (event_id, tenant_id, seq),
    key call_events_by_time (occurred_at),
    key call_events_by_call (tenant_id, call_id, event_id),
    constraint call_events_type_check check (event_type in
        ('created', 'dialing', 'ringing', 'unknown', 'completed', 'failed', 'expired'))
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

create table if not exists call_event_seq (
    tenant_id      varchar(64) not null,
    last_id        bigint not null,
    pruned_through bigint not null default 0,
    primary key (tenant_id)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

create table if not exists call_event_relay (
    tenant_id       varchar(64) not null,
    relayed_through bigint not null default 0,
    claimed_until   datetime(6) null,
    updated_at      datetime(6) not null,
    primary key (tenant_id)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;
