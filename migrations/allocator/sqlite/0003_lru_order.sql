-- The LRU pick orders free rows by (last_released_at, length(number), number), nulls first as
-- SQLite always sorts them; with the whole order in the index a pick stops at the first row
-- instead of sorting the tenant's free rows.
create index if not exists extensions_free_lru_order
    on extensions (tenant_id, last_released_at, length(number), number)
    where status = 'available';
drop index if exists extensions_free_lru;
