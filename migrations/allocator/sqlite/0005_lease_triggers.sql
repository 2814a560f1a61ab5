-- The lease row drives its extension on SQLite: inserting a lease marks its extension in use,
-- and ending a lease frees its extension, inside the statement that writes the lease. An
-- acquire and a release are then one statement each: one trip to SQLite's connection thread
-- and one implicit transaction, instead of `begin immediate`, two or three statements and a
-- commit, while every other writer of the process waits its turn. The store no longer writes
-- these extension columns itself for a lease on SQLite (PostgreSQL and MySQL still do, in
-- their statements).

-- A lease is inserted from its extension's row (its number and the next fencing token, from
-- `fencing_token + 1`); the extension must still be available, or the insert fails whole.
create trigger leases_take_extension after insert on leases
begin
    update extensions set
        status = 'in_use',
        current_lease_id = new.lease_id,
        current_collector_id = new.collector_id,
        lease_expires_at = new.expires_at,
        fencing_token = new.fencing_token,
        last_collector_id = new.collector_id,
        last_used_at = new.acquired_at,
        use_count = use_count + 1,
        available_at = null,
        updated_at = new.acquired_at
    where id = new.extension_id and status = 'available';
    select raise(abort, 'lease inserted for an extension that is not available')
    where not exists (
        select 1 from extensions where id = new.extension_id and current_lease_id = new.lease_id
    );
end;

-- Ending a lease frees the extension it holds (an offline extension stays offline), cooling
-- down for the lease's cooldown from the moment it ended.
create trigger leases_free_extension after update of released_at on leases
when old.released_at is null and new.released_at is not null
begin
    update extensions set
        status = case when status = 'in_use' then 'available' else status end,
        current_lease_id = null,
        current_collector_id = null,
        lease_expires_at = null,
        last_released_at = new.released_at,
        available_at = case when new.cooldown_seconds > 0
            then strftime('%Y-%m-%dT%H:%M:%f000+00:00', new.released_at,
                          new.cooldown_seconds || ' seconds')
            else null end,
        updated_at = new.released_at
    where id = new.extension_id and current_lease_id = new.lease_id;
end;
