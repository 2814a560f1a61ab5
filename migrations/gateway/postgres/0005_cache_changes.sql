-- Every replica caches tenant configs and collectors on the call path. A change of either
-- table sends a notification on channel `gateway_cache` at commit (PostgreSQL folds the
-- identical notifications of one transaction into one); every replica LISTENs and drops its
-- cache. Writing a collector's last extension (once per call) changes nothing cached, so it
-- does not notify: only the columns a call reads are named for collector updates.
create or replace function gateway_cache_changed() returns trigger language plpgsql as $$
begin
    perform pg_notify('gateway_cache', tg_table_name);
    return null;
end
$$;

drop trigger if exists configs_changed on infinity_call_configs;
create trigger configs_changed
    after insert or update or delete or truncate on infinity_call_configs
    for each statement execute function gateway_cache_changed();

drop trigger if exists collectors_changed on collectors;
create trigger collectors_changed
    after insert or delete or truncate or update of tenant_id, collector_id, callback_number, display_name, active
    on collectors
    for each statement execute function gateway_cache_changed();
