-- Collections compliance at dial time: the tables of PostgreSQL migration 0007 (see it for
-- what each holds), in syntax MySQL 8.0 and MariaDB 10.6 both accept. Every statement may run
-- again after a failure half-way.

create table if not exists compliance_policies (
    tenant_id  varchar(64) not null,
    policy     mediumtext not null,
    version    bigint not null,
    updated_at datetime(6) not null,
    primary key (tenant_id)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

drop trigger if exists compliance_policies_inserted;
create trigger compliance_policies_inserted after insert on compliance_policies for each row
    update cache_epoch set n = n + 1 where id = 1;
drop trigger if exists compliance_policies_updated;
create trigger compliance_policies_updated after update on compliance_policies for each row
    update cache_epoch set n = n + 1 where id = 1;
drop trigger if exists compliance_policies_deleted;
create trigger compliance_policies_deleted after delete on compliance_policies for each row
    update cache_epoch set n = n + 1 where id = 1;

create table if not exists dnc_entries (
    scope      varchar(64) not null,
    number     varchar(20) not null,
    is_prefix  boolean not null,
    reason     varchar(32) not null,
    note       varchar(256) not null default '',
    expires_at datetime(6) null,
    created_at datetime(6) not null,
    primary key (scope, number, is_prefix)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

create table if not exists compliance_locks (
    tenant_id varchar(64) not null,
    lock_key  varchar(200) not null,
    primary key (tenant_id, lock_key)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

create table if not exists dial_attempts (
    tenant_id    varchar(64) not null,
    call_id      varchar(64) not null,
    case_id      varchar(64) not null,
    number       varchar(20) not null,
    collector_id varchar(64) not null,
    attempted_at datetime(6) not null,
    primary key (tenant_id, call_id),
    key dial_attempts_case (tenant_id, case_id, attempted_at),
    key dial_attempts_number (tenant_id, number, attempted_at),
    key dial_attempts_collector (tenant_id, collector_id, attempted_at),
    key dial_attempts_time (attempted_at)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

create table if not exists compliance_overrides (
    override_id  varchar(64) not null,
    tenant_id    varchar(64) not null,
    case_id      varchar(64) not null,
    number       varchar(20) not null,
    reason       text not null,
    granted_by   varchar(200) not null,
    granted_at   datetime(6) not null,
    expires_at   datetime(6) not null,
    used_call_id varchar(64) null,
    used_at      datetime(6) null,
    primary key (override_id),
    key compliance_overrides_time (expires_at)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;

create table if not exists compliance_decisions (
    decision_id   varchar(64) not null,
    tenant_id     varchar(64) not null,
    decided_at    datetime(6) not null,
    collector_id  varchar(64) not null,
    case_id       varchar(64) not null,
    number_masked varchar(32) not null,
    outcome       varchar(16) not null,
    reason        varchar(32) not null,
    details       text not null,
    call_id       varchar(64) null,
    override_id   varchar(64) null,
    not_dialled   text null,
    primary key (decision_id),
    key compliance_decisions_tenant_time (tenant_id, decided_at, decision_id),
    key compliance_decisions_time (decided_at),
    constraint compliance_decisions_outcome_check check (outcome in ('allowed', 'refused', 'overridden'))
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_bin;
