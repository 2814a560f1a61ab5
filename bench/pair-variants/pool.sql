-- See bench/pair-variants.sh.
insert into extensions (id, tenant_id, number)
select gen_random_uuid(), 't' || t, (8000 + i)::text from generate_series(0, 3) t, generate_series(1, 64) i;
