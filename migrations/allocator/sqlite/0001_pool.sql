-- allocator-svc schema (SQLite): same shape as the PostgreSQL schema; times are unix milliseconds,
-- ids are text. Writers are serialised by `begin immediate`, so no row locks are needed.

create table if not exists extensions (
    id                   text primary key,
    tenant_id            text not null,
    config_id            text not null default '',
    number               text not null,
    status               text not null default 'available'
                         check (status in ('available', 'in_use', 'offline')),
    current_lease_id     text,
    current_collector_id text,
    lease_expires_at     integer,
    fencing_token        integer not null default 0,
    last_collector_id    text,
    last_used_at         integer,
    last_released_at     integer,
    available_at         integer,
    use_count            integer not null default 0,
    created_at           integer not null,
    updated_at           integer not null,
    unique (tenant_id, number)
);

create index if not exists extensions_free_lru
    on extensions (tenant_id, last_released_at)
    where status = 'available';
create index if not exists extensions_number_order
    on extensions (tenant_id, length(number), number);
create index if not exists extensions_in_use
    on extensions (tenant_id)
    where status = 'in_use';

create table if not exists leases (
    lease_id            text primary key,
    tenant_id           text not null,
    extension_id        text not null,
    extension_number    text not null,
    collector_id        text not null,
    request_id          text not null,
    request_fingerprint text not null,
    strategy            text not null,
    fencing_token       integer not null,
    cooldown_seconds    integer not null default 0,
    acquired_at         integer not null,
    expires_at          integer not null,
    released_at         integer,
    release_reason      text,
    created_at          integer not null,
    updated_at          integer not null,
    unique (tenant_id, request_id)
);

create index if not exists leases_live_expiry
    on leases (expires_at)
    where released_at is null;
create index if not exists leases_collector
    on leases (tenant_id, collector_id, acquired_at desc);
create index if not exists leases_extension_time
    on leases (extension_id, acquired_at);

create table if not exists tenant_state (
    tenant_id  text primary key,
    rr_cursor  text,
    created_at integer not null,
    updated_at integer not null
);
