-- Hot-path indexes (see docs/performance.md).
--
-- 1. The LRU pick orders free rows by (last_released_at nulls first, length(number), number).
-- With only the first key in the index, every pick read and sorted all free rows of the
-- tenant (a 1,000-extension pool: 1,000 row fetches per Acquire). With the whole order in the
-- index, a pick reads rows in order and stops at the first one it can lock.
create index if not exists extensions_free_lru_order
    on extensions (tenant_id, last_released_at nulls first, length(number), number)
    where status = 'available';
drop index if exists extensions_free_lru;

-- 2. Lease updates that stay HOT. Ending or renewing a lease rewrites its row in `leases`.
-- While `released_at` and `expires_at` were indexed (the reaper's partial index on live
-- leases), every such update was non-HOT and added an entry to each of the table's five
-- indexes. The reaper now finds due leases through
-- the extensions they hold (`extensions.lease_expires_at` is kept equal to the live lease's
-- expiry by acquire and renew), so no index of `leases` covers a column that release or renew
-- changes: those updates are HOT when the page has room, which fillfactor 90 leaves.

create index if not exists extensions_lease_expiry
    on extensions (lease_expires_at)
    where status = 'in_use';

drop index if exists leases_live_expiry;

alter table leases set (fillfactor = 90);
