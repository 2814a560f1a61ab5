-- costly destination number types a tenant allows (json array of names such as
-- "premium_rate"); empty: none. (sqlite has no "add column if not exists"; the migration runs
-- once, tracked by its version.)
alter table infinity_call_configs
    add column allowed_number_types text not null default '[]';

-- extension pools the allocator still has to delete because their config was deleted,
-- written in the same transaction as the delete, retried until the allocator confirms.
create table if not exists pool_purge_outbox (
    config_id       text primary key,
    tenant_id       text not null,
    attempts        integer not null default 0,
    next_attempt_at text not null,
    last_error      text,
    created_at      text not null,
    updated_at      text not null
);
create index if not exists pool_purge_outbox_due on pool_purge_outbox (next_attempt_at);
