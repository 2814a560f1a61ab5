-- allocator-svc schema (MySQL 8.0+ and MariaDB 10.6+): the same tables as on PostgreSQL, in
-- syntax both servers accept. Ids are char(36) text, times datetime(6) in UTC (the service
-- sets the session time zone to +00:00), text compared byte for byte (utf8mb4_bin), as on
-- PostgreSQL. MySQL has no partial indexes: the indexes below lead with the status instead.
-- MySQL cannot roll DDL back, so every statement may run again after a failure half-way
-- (`if not exists`; triggers are dropped and made again); nothing here drops data.

create table if not exists extensions (
    id                   char(36) not null,
    tenant_id            varchar(64) not null,
    config_id            varchar(64) not null default '',
    number               varchar(64) not null,
    status               varchar(16) not null default 'available',
    -- the live lease, set only while status = 'in_use'.
    current_lease_id     char(36) null,
    current_collector_id varchar(64) null,
    lease_expires_at     datetime(6) null,
    -- bumped at every lease; a release must present the value it was given.
    fencing_token        bigint not null default 0,
    last_collector_id    varchar(64) null,
    last_used_at         datetime(6) null,
    last_released_at     datetime(6) null,
    -- cooldown: not leased again before this time.
    available_at         datetime(6) null,
    use_count            bigint not null default 0,
    created_at           datetime(6) not null,
    updated_at           datetime(6) not null,
    -- the number's length, so that number order (shorter numbers first, then text order) is
    -- an index order: a locking pick that had to sort would lock every row it read.
    number_len           integer generated always as (char_length(number)) stored,
    primary key (id),
    unique key extensions_tenant_number_key (tenant_id, number),
    -- the LRU pick: free rows of a tenant in pick order (nulls sort first in MySQL).
    key extensions_free_lru_order (tenant_id, status, last_released_at, number_len, number),
    -- the round-robin pick (free rows in number order), listing and pagination.
    key extensions_free_number_order (tenant_id, status, number_len, number),
    key extensions_number_order (tenant_id, number_len, number),
    -- the reaper finds due leases through the extensions holding them.
    key extensions_lease_expiry (status, lease_expires_at),
    constraint extensions_status_check check (status in ('available', 'in_use', 'offline'))
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

-- one row per lease ever granted: the audit trail and the idempotency record of acquire.
create table if not exists leases (
    lease_id            char(36) not null,
    tenant_id           varchar(64) not null,
    extension_id        char(36) not null,
    extension_number    varchar(64) not null,
    collector_id        varchar(64) not null,
    request_id          varchar(128) not null,
    request_fingerprint text not null,
    strategy            varchar(32) not null,
    fencing_token       bigint not null,
    cooldown_seconds    integer not null default 0,
    acquired_at         datetime(6) not null,
    expires_at          datetime(6) not null,
    released_at         datetime(6) null,
    release_reason      varchar(32) null,
    created_at          datetime(6) not null,
    updated_at          datetime(6) not null,
    primary key (lease_id),
    unique key leases_tenant_request_key (tenant_id, request_id),
    key leases_collector (tenant_id, collector_id, acquired_at),
    key leases_extension_time (extension_id, acquired_at)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

-- per-tenant state: the round-robin cursor; its row lock serialises capped or round-robin
-- acquires of the tenant.
create table if not exists tenant_state (
    tenant_id  varchar(64) not null,
    rr_cursor  varchar(64) null,
    created_at datetime(6) not null,
    updated_at datetime(6) not null,
    primary key (tenant_id)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

-- Identical acquires (same tenant and request id) take turns on this row: it is created in a
-- transaction of its own, then each acquire locks it first thing, so a twin waits until the
-- first commits and then finds its lease. One small row per request id, kept like the lease
-- history (a row inserted or deleted inside the acquire made queued twins insert again into
-- each other's gap locks and deadlock).
create table if not exists acquire_turns (
    tenant_id  varchar(64) not null,
    request_id varchar(128) not null,
    primary key (tenant_id, request_id)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

-- A tenant's pool size, kept by row triggers on insert and delete (stats in time independent
-- of the pool size); acquire and release never insert or delete extensions.
create table if not exists pool_counts (
    tenant_id varchar(64) not null,
    total     bigint not null default 0,
    primary key (tenant_id)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

-- (`create trigger if not exists` is MySQL 8.0.29+: dropped and made again; a trigger holds no data.)
drop trigger if exists extensions_count_added;
create trigger extensions_count_added after insert on extensions for each row
    insert into pool_counts (tenant_id, total) values (new.tenant_id, 1)
    on duplicate key update total = total + 1;

drop trigger if exists extensions_count_removed;
create trigger extensions_count_removed after delete on extensions for each row
    update pool_counts set total = total - 1 where tenant_id = old.tenant_id;
