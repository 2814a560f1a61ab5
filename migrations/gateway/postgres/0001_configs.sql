-- call-gateway-svc schema (PostgreSQL): tenant configs and collectors.
-- Ids are text (UUID v7 strings) so PostgreSQL and SQLite share the same queries.
-- Secrets are stored sealed (AES-256-GCM, `v1.<key id>.<nonce>.<ciphertext>`), never in clear.

create table if not exists infinity_call_configs (
    config_id               text primary key,
    tenant_id               text not null,
    supplier_id             text not null default '',
    api_url                 text not null,
    -- 'access_token' (static token) or 'app' (app id + access key for App.Sip_Auth.Login).
    credential_mode         text not null check (credential_mode in ('access_token', 'app')),
    app_id                  text,
    access_token_sealed     text,
    access_key_sealed       text,
    -- json array of e.164 numbers.
    caller_number_pool      text not null,
    default_caller_number   text not null,
    caller_number_selection text not null,
    call_mode               text not null,
    destination_prefix      text not null default '',
    max_concurrent_calls    integer not null,
    call_timeout_seconds    integer not null,
    api_timeout_ms          integer not null,
    allocation_strategy     text not null,
    lease_ttl_seconds       integer not null,
    cooldown_seconds        integer not null default 0,
    callback_secret_sealed  text not null,
    -- json array of cidrs; empty allows any address.
    callback_ip_allowlist   text not null default '[]',
    callback_time_zone      text not null,
    is_active               boolean not null default true,
    phone_region            text not null,
    api_encoding            text not null,
    -- optimistic concurrency: every update must name the version it read.
    version                 bigint not null,
    created_at              timestamptz not null,
    updated_at              timestamptz not null,
    constraint infinity_call_configs_tenant_key unique (tenant_id)
);

create table if not exists collectors (
    tenant_id             text not null,
    collector_id          text not null,
    -- e.164; rung first by DoubleCall.
    callback_number       text,
    display_name          text not null default '',
    active                boolean not null default true,
    last_extension_number text,
    created_at            timestamptz not null,
    updated_at            timestamptz not null,
    primary key (tenant_id, collector_id)
);
