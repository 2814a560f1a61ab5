-- Stats in time independent of the pool size (see the PostgreSQL migration of the same name).
-- SQLite has only row-level triggers: an import updates the counter once per inserted row,
-- inside the import's own transaction. Acquire and release never insert or delete.

create table if not exists pool_counts (
    tenant_id text primary key,
    total     integer not null default 0
);

create trigger if not exists extensions_count_added after insert on extensions
begin
    insert or ignore into pool_counts (tenant_id, total) values (new.tenant_id, 0);
    update pool_counts set total = total + 1 where tenant_id = new.tenant_id;
end;

create trigger if not exists extensions_count_removed after delete on extensions
begin
    update pool_counts set total = total - 1 where tenant_id = old.tenant_id;
end;

insert or replace into pool_counts (tenant_id, total)
select tenant_id, count(*) from extensions group by tenant_id;

create index if not exists extensions_offline
    on extensions (tenant_id)
    where status = 'offline';
create index if not exists extensions_cooling
    on extensions (tenant_id, available_at)
    where status = 'available' and available_at is not null;
