-- Every replica caches tenant configs and collectors on the call path. SQLite cannot notify,
-- so a one-row counter is bumped by triggers on every change of either table, in the writing
-- transaction; a replica compares it with the value its cache was filled under before using
-- the cache (one read of one row in the same file). Writing a collector's last extension
-- (once per call) changes nothing cached, so it does not bump the counter.
create table if not exists cache_epoch (
    id integer primary key check (id = 1),
    n  integer not null
);
insert or ignore into cache_epoch (id, n) values (1, 0);

create trigger if not exists configs_inserted after insert on infinity_call_configs
begin update cache_epoch set n = n + 1 where id = 1; end;
create trigger if not exists configs_updated after update on infinity_call_configs
begin update cache_epoch set n = n + 1 where id = 1; end;
create trigger if not exists configs_deleted after delete on infinity_call_configs
begin update cache_epoch set n = n + 1 where id = 1; end;
create trigger if not exists collectors_inserted after insert on collectors
begin update cache_epoch set n = n + 1 where id = 1; end;
create trigger if not exists collectors_updated
    after update of tenant_id, collector_id, callback_number, display_name, active on collectors
begin update cache_epoch set n = n + 1 where id = 1; end;
create trigger if not exists collectors_deleted after delete on collectors
begin update cache_epoch set n = n + 1 where id = 1; end;
