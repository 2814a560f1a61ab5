-- See bench/pair-variants.sh.
\set t random(0, 3)
with e as (update extensions set status = 'in_use', current_lease_id = gen_random_uuid(), fencing_token = fencing_token + 1, last_used_at = clock_timestamp(), use_count = use_count + 1 where id = (select id from extensions where tenant_id = 't' || :t and status = 'available' order by last_released_at nulls first limit 1 for update skip locked) returning id, fencing_token) select e.id, e.fencing_token from (select 1) as one left join e on true \gset
update extensions set status = 'available', current_lease_id = null, last_released_at = clock_timestamp() where id = nullif(:id, '')::uuid and fencing_token = nullif(:fencing_token, '')::bigint;
