-- See bench/pair-variants.sh.
alter table extensions add column current_request_id text, add column current_fingerprint text,
  add column current_strategy text, add column current_cooldown integer;
create unique index extensions_live_request on extensions (tenant_id, current_request_id) where current_request_id is not null;
create index extensions_live_lease on extensions (current_lease_id) where current_lease_id is not null;
