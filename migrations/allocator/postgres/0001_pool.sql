-- allocator-svc schema (PostgreSQL): the extension pool, the lease history, per-tenant state.
-- Idempotent (`if not exists`) and additive: migrations never drop data.

-- one row per Infinity SIP extension of a tenant's pool.
create table if not exists extensions (
    id                   uuid primary key,
    tenant_id            text not null,
    config_id            text not null default '',
    number               text not null,
    status               text not null default 'available'
                         check (status in ('available', 'in_use', 'offline')),
    -- the live lease, set only while status = 'in_use'.
    current_lease_id     uuid,
    current_collector_id text,
    lease_expires_at     timestamptz,
    -- bumped at every lease; a release must present the value it was given.
    fencing_token        bigint not null default 0,
    last_collector_id    text,
    last_used_at         timestamptz,
    last_released_at     timestamptz,
    -- cooldown: not leased again before this time.
    available_at         timestamptz,
    use_count            bigint not null default 0,
    created_at           timestamptz not null default now(),
    updated_at           timestamptz not null default now(),
    constraint extensions_tenant_number_key unique (tenant_id, number)
);

-- lru pick: free rows of one tenant, never-released first.
create index if not exists extensions_free_lru
    on extensions (tenant_id, last_released_at nulls first)
    where status = 'available';
-- round robin, listing and pagination: number order (shorter numbers first, then text order).
create index if not exists extensions_number_order
    on extensions (tenant_id, length(number), number);
-- the cap check counts a tenant's in-use rows.
create index if not exists extensions_in_use
    on extensions (tenant_id)
    where status = 'in_use';

-- one row per lease ever granted: the audit trail and the idempotency record of acquire.
create table if not exists leases (
    lease_id            uuid primary key,
    tenant_id           text not null,
    extension_id        uuid not null,
    extension_number    text not null,
    collector_id        text not null,
    -- the caller's id for the acquire; a retry with the same id gets this lease back.
    request_id          text not null,
    -- collector and strategy of the original request, to refuse a reused id with other parameters.
    request_fingerprint text not null,
    strategy            text not null,
    fencing_token       bigint not null,
    -- cooldown applied to the extension when this lease ends.
    cooldown_seconds    integer not null default 0,
    acquired_at         timestamptz not null,
    expires_at          timestamptz not null,
    released_at         timestamptz,
    release_reason      text,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    constraint leases_tenant_request_key unique (tenant_id, request_id)
);

-- the reaper scans live leases by expiry.
create index if not exists leases_live_expiry
    on leases (expires_at)
    where released_at is null;
-- collector affinity and force-release look up a collector's leases.
create index if not exists leases_collector
    on leases (tenant_id, collector_id, acquired_at desc);
-- usage statistics and the overlap check read one extension's history in time order.
create index if not exists leases_extension_time
    on leases (extension_id, acquired_at);

-- per-tenant state: the round-robin cursor; its row lock serialises capped or round-robin acquires.
create table if not exists tenant_state (
    tenant_id  text primary key,
    rr_cursor  text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
