-- Stats in time independent of the pool size. A tenant's total is kept in `pool_counts` by
-- statement-level triggers on insert and delete (an import of 100,000 numbers updates the
-- counter once); acquire and release never insert or delete, so the hot path never touches it.
-- The other figures are counted through partial indexes that hold only the rows in that state
-- (in use, offline, cooling down), and `available` is the rest.

create table if not exists pool_counts (
    tenant_id text primary key,
    total     bigint not null default 0
);

create or replace function pool_counts_added() returns trigger language plpgsql as $$
begin
    insert into pool_counts as c (tenant_id, total)
    select tenant_id, count(*) from added group by tenant_id
    order by tenant_id
    on conflict (tenant_id) do update set total = c.total + excluded.total;
    return null;
end
$$;

create or replace function pool_counts_removed() returns trigger language plpgsql as $$
begin
    update pool_counts c set total = c.total - r.n
    from (select tenant_id, count(*) as n from removed group by tenant_id) r
    where c.tenant_id = r.tenant_id;
    return null;
end
$$;

-- truncate (a restore, a test) empties the counters with the table.
create or replace function pool_counts_truncated() returns trigger language plpgsql as $$
begin
    delete from pool_counts;
    return null;
end
$$;

create or replace trigger extensions_count_added
    after insert on extensions referencing new table as added
    for each statement execute function pool_counts_added();
create or replace trigger extensions_count_removed
    after delete on extensions referencing old table as removed
    for each statement execute function pool_counts_removed();
create or replace trigger extensions_count_truncated
    after truncate on extensions
    for each statement execute function pool_counts_truncated();

-- the pools that existed before this migration.
insert into pool_counts (tenant_id, total)
select tenant_id, count(*) from extensions group by tenant_id
on conflict (tenant_id) do update set total = excluded.total;

-- offline rows of a tenant (only admin changes and the gateway's fault handling write them).
create index if not exists extensions_offline
    on extensions (tenant_id)
    where status = 'offline';
-- rows still cooling down after a release with a cooldown (available_at is null otherwise).
create index if not exists extensions_cooling
    on extensions (tenant_id, available_at)
    where status = 'available' and available_at is not null;
