-- Times are fixed-width RFC 3339 text (see 0007_fixed_width_times). Collections compliance at dial time (README "Compliance"): each tenant's policy, the
-- do-not-call lists, the dial attempts the frequency caps count, one-call overrides granted by
-- supervisors, and the audit of every decision.

-- A tenant's policy as one JSON document (calling windows, holidays, caps, cool-down); no row
-- means no restriction.
create table if not exists compliance_policies (
    tenant_id  text primary key,
    policy     text not null,
    version    integer not null,
    updated_at text not null
);

create trigger if not exists compliance_policies_inserted after insert on compliance_policies
begin update cache_epoch set n = n + 1 where id = 1; end;
create trigger if not exists compliance_policies_updated after update on compliance_policies
begin update cache_epoch set n = n + 1 where id = 1; end;
create trigger if not exists compliance_policies_deleted after delete on compliance_policies
begin update cache_epoch set n = n + 1 where id = 1; end;

-- Do-not-call entries: scope is a tenant id, or '*' for the platform-wide list. number holds
-- the digits of the E.164 form without '+' (a prefix for prefix entries), so a lookup is one
-- index probe per candidate prefix.
create table if not exists dnc_entries (
    scope      text not null,
    number     text not null,
    is_prefix  integer not null,
    reason     text not null,
    note       text not null default '',
    expires_at text,
    created_at text not null,
    primary key (scope, number, is_prefix)
);

-- One row per (tenant, rule key) to serialise the gates that count the same case, number or
-- collector: the gate locks its rows, counts, and records its attempt before committing.
create table if not exists compliance_locks (
    tenant_id text not null,
    lock_key  text not null,
    primary key (tenant_id, lock_key)
);

-- Every attempt the gate let through (one per call id, however many extensions it tried),
-- withdrawn only when nothing was sent to Infinity.
create table if not exists dial_attempts (
    tenant_id    text not null,
    call_id      text not null,
    case_id      text not null,
    number       text not null,
    collector_id text not null,
    attempted_at text not null,
    primary key (tenant_id, call_id)
);
create index if not exists dial_attempts_case on dial_attempts (tenant_id, case_id, attempted_at);
create index if not exists dial_attempts_number on dial_attempts (tenant_id, number, attempted_at);
create index if not exists dial_attempts_collector on dial_attempts (tenant_id, collector_id, attempted_at);
create index if not exists dial_attempts_time on dial_attempts (attempted_at);

-- A supervisor's permission for one call about (case, number) despite a refusal.
create table if not exists compliance_overrides (
    override_id  text primary key,
    tenant_id    text not null,
    case_id      text not null,
    number       text not null,
    reason       text not null,
    granted_by   text not null,
    granted_at   text not null,
    expires_at   text not null,
    used_call_id text,
    used_at      text
);
create index if not exists compliance_overrides_time on compliance_overrides (expires_at);

-- Every decision of the gate at dial time.
create table if not exists compliance_decisions (
    decision_id   text primary key,
    tenant_id     text not null,
    decided_at    text not null,
    collector_id  text not null,
    case_id       text not null,
    number_masked text not null,
    outcome       text not null check (outcome in ('allowed', 'refused', 'overridden')),
    reason        text not null,
    details       text not null,
    call_id       text,
    override_id   text,
    -- why an allowed call was not dialled after all (no extension, ...); null when it was.
    not_dialled   text
);
create index if not exists compliance_decisions_tenant_time
    on compliance_decisions (tenant_id, decided_at, decision_id);
create index if not exists compliance_decisions_time on compliance_decisions (decided_at);
