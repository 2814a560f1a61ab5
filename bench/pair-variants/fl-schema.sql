-- See bench/pair-variants.sh.
drop index extensions_free_lru_order, extensions_in_use, extensions_offline, extensions_cooling, extensions_lease_expiry;
alter table extensions set (fillfactor = 50);
vacuum full extensions;
create table free_extensions (id uuid primary key, tenant_id text not null, released_at timestamptz, number_len int not null, number text not null);
create index free_extensions_lru on free_extensions (tenant_id, released_at nulls first, number_len, number);
insert into free_extensions select id, tenant_id, null, length(number), number from extensions;
