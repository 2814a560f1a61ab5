-- infinity's call uuid identifies a duplicate callback within one tenant. unique across all
-- tenants, one tenant could post a uuid first and make another tenant's genuine callback look
-- like a duplicate; unique per tenant, it cannot.
drop index if exists communication_records_infinity_uuid;
create unique index if not exists communication_records_tenant_infinity_uuid
    on communication_records (tenant_id, infinity_uuid) where infinity_uuid is not null;
