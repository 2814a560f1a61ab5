-- Times as text, the one convention of both services' SQLite stores: fixed-width RFC 3339 in
-- UTC with microseconds (`2026-12-02T14:30:00.123000+00:00`), so comparing and sorting them as
-- text is comparing and sorting the instants, and the store code is the same on every backend.
-- Until now this schema kept unix milliseconds in integer columns. SQLite cannot change a
-- column's type, so each table is copied into a new one with the times converted (to the
-- millisecond they held), then takes the old one's place; indexes and triggers are made again.
-- Runs in the migration's transaction: all of it or nothing.

create table extensions_new (
    id                   text primary key,
    tenant_id            text not null,
    config_id            text not null default '',
    number               text not null,
    status               text not null default 'available'
                         check (status in ('available', 'in_use', 'offline')),
    current_lease_id     text,
    current_collector_id text,
    lease_expires_at     text,
    fencing_token        integer not null default 0,
    last_collector_id    text,
    last_used_at         text,
    last_released_at     text,
    available_at         text,
    use_count            integer not null default 0,
    created_at           text not null,
    updated_at           text not null,
    unique (tenant_id, number)
);

insert into extensions_new
select id, tenant_id, config_id, number, status, current_lease_id, current_collector_id,
       strftime('%Y-%m-%dT%H:%M:%f', lease_expires_at / 1000.0, 'unixepoch') || '000+00:00',
       fencing_token, last_collector_id,
       strftime('%Y-%m-%dT%H:%M:%f', last_used_at / 1000.0, 'unixepoch') || '000+00:00',
       strftime('%Y-%m-%dT%H:%M:%f', last_released_at / 1000.0, 'unixepoch') || '000+00:00',
       strftime('%Y-%m-%dT%H:%M:%f', available_at / 1000.0, 'unixepoch') || '000+00:00',
       use_count,
       strftime('%Y-%m-%dT%H:%M:%f', created_at / 1000.0, 'unixepoch') || '000+00:00',
       strftime('%Y-%m-%dT%H:%M:%f', updated_at / 1000.0, 'unixepoch') || '000+00:00'
from extensions;

drop table extensions;
alter table extensions_new rename to extensions;

create index extensions_free_lru_order
    on extensions (tenant_id, last_released_at, length(number), number)
    where status = 'available';
create index extensions_number_order
    on extensions (tenant_id, length(number), number);
create index extensions_in_use
    on extensions (tenant_id)
    where status = 'in_use';
create index extensions_offline
    on extensions (tenant_id)
    where status = 'offline';
create index extensions_cooling
    on extensions (tenant_id, available_at)
    where status = 'available' and available_at is not null;
-- the reaper finds due leases through the extensions holding them, as on PostgreSQL.
create index extensions_lease_expiry
    on extensions (lease_expires_at)
    where status = 'in_use';

create trigger extensions_count_added after insert on extensions
begin
    insert or ignore into pool_counts (tenant_id, total) values (new.tenant_id, 0);
    update pool_counts set total = total + 1 where tenant_id = new.tenant_id;
end;

create trigger extensions_count_removed after delete on extensions
begin
    update pool_counts set total = total - 1 where tenant_id = old.tenant_id;
end;

create table leases_new (
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
    acquired_at         text not null,
    expires_at          text not null,
    released_at         text,
    release_reason      text,
    created_at          text not null,
    updated_at          text not null,
    unique (tenant_id, request_id)
);

insert into leases_new
select lease_id, tenant_id, extension_id, extension_number, collector_id, request_id,
       request_fingerprint, strategy, fencing_token, cooldown_seconds,
       strftime('%Y-%m-%dT%H:%M:%f', acquired_at / 1000.0, 'unixepoch') || '000+00:00',
       strftime('%Y-%m-%dT%H:%M:%f', expires_at / 1000.0, 'unixepoch') || '000+00:00',
       strftime('%Y-%m-%dT%H:%M:%f', released_at / 1000.0, 'unixepoch') || '000+00:00',
       release_reason,
       strftime('%Y-%m-%dT%H:%M:%f', created_at / 1000.0, 'unixepoch') || '000+00:00',
       strftime('%Y-%m-%dT%H:%M:%f', updated_at / 1000.0, 'unixepoch') || '000+00:00'
from leases;

drop table leases;
alter table leases_new rename to leases;

create index leases_collector
    on leases (tenant_id, collector_id, acquired_at desc);
create index leases_extension_time
    on leases (extension_id, acquired_at);

create table tenant_state_new (
    tenant_id  text primary key,
    rr_cursor  text,
    created_at text not null,
    updated_at text not null
);

insert into tenant_state_new
select tenant_id, rr_cursor,
       strftime('%Y-%m-%dT%H:%M:%f', created_at / 1000.0, 'unixepoch') || '000+00:00',
       strftime('%Y-%m-%dT%H:%M:%f', updated_at / 1000.0, 'unixepoch') || '000+00:00'
from tenant_state;

drop table tenant_state;
alter table tenant_state_new rename to tenant_state;
