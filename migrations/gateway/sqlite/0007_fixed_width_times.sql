-- One convention for times in both services' SQLite stores: fixed-width RFC 3339 in UTC with
-- microseconds (`2026-12-02T14:30:00.123000+00:00`). Until now sqlx wrote this schema's times
-- with as many fractional digits as needed (none, 3, 6 or 9), which sort as text in time order
-- but do not compare equal to the same instant written another way (the outbox and reconcile
-- claims compare a time they read back). Each value keeps its instant, cut to the microsecond
-- (nanoseconds were never meaningful here: the other backends store microseconds).

update infinity_call_configs set
    created_at = case when created_at is null then null when substr(created_at, 20, 1) = '.' then substr(created_at, 1, 19) || '.' || substr(substr(created_at, 21, length(created_at) - 26) || '000000', 1, 6) || substr(created_at, -6) else substr(created_at, 1, 19) || '.000000' || substr(created_at, -6) end,
    updated_at = case when updated_at is null then null when substr(updated_at, 20, 1) = '.' then substr(updated_at, 1, 19) || '.' || substr(substr(updated_at, 21, length(updated_at) - 26) || '000000', 1, 6) || substr(updated_at, -6) else substr(updated_at, 1, 19) || '.000000' || substr(updated_at, -6) end;

update collectors set
    created_at = case when created_at is null then null when substr(created_at, 20, 1) = '.' then substr(created_at, 1, 19) || '.' || substr(substr(created_at, 21, length(created_at) - 26) || '000000', 1, 6) || substr(created_at, -6) else substr(created_at, 1, 19) || '.000000' || substr(created_at, -6) end,
    updated_at = case when updated_at is null then null when substr(updated_at, 20, 1) = '.' then substr(updated_at, 1, 19) || '.' || substr(substr(updated_at, 21, length(updated_at) - 26) || '000000', 1, 6) || substr(updated_at, -6) else substr(updated_at, 1, 19) || '.000000' || substr(updated_at, -6) end;

update communication_records set
    lease_expires_at = case when lease_expires_at is null then null when substr(lease_expires_at, 20, 1) = '.' then substr(lease_expires_at, 1, 19) || '.' || substr(substr(lease_expires_at, 21, length(lease_expires_at) - 26) || '000000', 1, 6) || substr(lease_expires_at, -6) else substr(lease_expires_at, 1, 19) || '.000000' || substr(lease_expires_at, -6) end,
    start_time = case when start_time is null then null when substr(start_time, 20, 1) = '.' then substr(start_time, 1, 19) || '.' || substr(substr(start_time, 21, length(start_time) - 26) || '000000', 1, 6) || substr(start_time, -6) else substr(start_time, 1, 19) || '.000000' || substr(start_time, -6) end,
    answer_time = case when answer_time is null then null when substr(answer_time, 20, 1) = '.' then substr(answer_time, 1, 19) || '.' || substr(substr(answer_time, 21, length(answer_time) - 26) || '000000', 1, 6) || substr(answer_time, -6) else substr(answer_time, 1, 19) || '.000000' || substr(answer_time, -6) end,
    end_time = case when end_time is null then null when substr(end_time, 20, 1) = '.' then substr(end_time, 1, 19) || '.' || substr(substr(end_time, 21, length(end_time) - 26) || '000000', 1, 6) || substr(end_time, -6) else substr(end_time, 1, 19) || '.000000' || substr(end_time, -6) end,
    reconcile_after = case when reconcile_after is null then null when substr(reconcile_after, 20, 1) = '.' then substr(reconcile_after, 1, 19) || '.' || substr(substr(reconcile_after, 21, length(reconcile_after) - 26) || '000000', 1, 6) || substr(reconcile_after, -6) else substr(reconcile_after, 1, 19) || '.000000' || substr(reconcile_after, -6) end,
    created_at = case when created_at is null then null when substr(created_at, 20, 1) = '.' then substr(created_at, 1, 19) || '.' || substr(substr(created_at, 21, length(created_at) - 26) || '000000', 1, 6) || substr(created_at, -6) else substr(created_at, 1, 19) || '.000000' || substr(created_at, -6) end,
    updated_at = case when updated_at is null then null when substr(updated_at, 20, 1) = '.' then substr(updated_at, 1, 19) || '.' || substr(substr(updated_at, 21, length(updated_at) - 26) || '000000', 1, 6) || substr(updated_at, -6) else substr(updated_at, 1, 19) || '.000000' || substr(updated_at, -6) end;

update unmatched_callbacks set
    received_at = case when received_at is null then null when substr(received_at, 20, 1) = '.' then substr(received_at, 1, 19) || '.' || substr(substr(received_at, 21, length(received_at) - 26) || '000000', 1, 6) || substr(received_at, -6) else substr(received_at, 1, 19) || '.000000' || substr(received_at, -6) end,
    created_at = case when created_at is null then null when substr(created_at, 20, 1) = '.' then substr(created_at, 1, 19) || '.' || substr(substr(created_at, 21, length(created_at) - 26) || '000000', 1, 6) || substr(created_at, -6) else substr(created_at, 1, 19) || '.000000' || substr(created_at, -6) end,
    updated_at = case when updated_at is null then null when substr(updated_at, 20, 1) = '.' then substr(updated_at, 1, 19) || '.' || substr(substr(updated_at, 21, length(updated_at) - 26) || '000000', 1, 6) || substr(updated_at, -6) else substr(updated_at, 1, 19) || '.000000' || substr(updated_at, -6) end;

update lease_release_outbox set
    next_attempt_at = case when next_attempt_at is null then null when substr(next_attempt_at, 20, 1) = '.' then substr(next_attempt_at, 1, 19) || '.' || substr(substr(next_attempt_at, 21, length(next_attempt_at) - 26) || '000000', 1, 6) || substr(next_attempt_at, -6) else substr(next_attempt_at, 1, 19) || '.000000' || substr(next_attempt_at, -6) end,
    created_at = case when created_at is null then null when substr(created_at, 20, 1) = '.' then substr(created_at, 1, 19) || '.' || substr(substr(created_at, 21, length(created_at) - 26) || '000000', 1, 6) || substr(created_at, -6) else substr(created_at, 1, 19) || '.000000' || substr(created_at, -6) end,
    updated_at = case when updated_at is null then null when substr(updated_at, 20, 1) = '.' then substr(updated_at, 1, 19) || '.' || substr(substr(updated_at, 21, length(updated_at) - 26) || '000000', 1, 6) || substr(updated_at, -6) else substr(updated_at, 1, 19) || '.000000' || substr(updated_at, -6) end;

update caller_number_cursors set
    created_at = case when created_at is null then null when substr(created_at, 20, 1) = '.' then substr(created_at, 1, 19) || '.' || substr(substr(created_at, 21, length(created_at) - 26) || '000000', 1, 6) || substr(created_at, -6) else substr(created_at, 1, 19) || '.000000' || substr(created_at, -6) end,
    updated_at = case when updated_at is null then null when substr(updated_at, 20, 1) = '.' then substr(updated_at, 1, 19) || '.' || substr(substr(updated_at, 21, length(updated_at) - 26) || '000000', 1, 6) || substr(updated_at, -6) else substr(updated_at, 1, 19) || '.000000' || substr(updated_at, -6) end;

update pool_purge_outbox set
    next_attempt_at = case when next_attempt_at is null then null when substr(next_attempt_at, 20, 1) = '.' then substr(next_attempt_at, 1, 19) || '.' || substr(substr(next_attempt_at, 21, length(next_attempt_at) - 26) || '000000', 1, 6) || substr(next_attempt_at, -6) else substr(next_attempt_at, 1, 19) || '.000000' || substr(next_attempt_at, -6) end,
    created_at = case when created_at is null then null when substr(created_at, 20, 1) = '.' then substr(created_at, 1, 19) || '.' || substr(substr(created_at, 21, length(created_at) - 26) || '000000', 1, 6) || substr(created_at, -6) else substr(created_at, 1, 19) || '.000000' || substr(created_at, -6) end,
    updated_at = case when updated_at is null then null when substr(updated_at, 20, 1) = '.' then substr(updated_at, 1, 19) || '.' || substr(substr(updated_at, 21, length(updated_at) - 26) || '000000', 1, 6) || substr(updated_at, -6) else substr(updated_at, 1, 19) || '.000000' || substr(updated_at, -6) end;

update call_events set
    occurred_at = case when occurred_at is null then null when substr(occurred_at, 20, 1) = '.' then substr(occurred_at, 1, 19) || '.' || substr(substr(occurred_at, 21, length(occurred_at) - 26) || '000000', 1, 6) || substr(occurred_at, -6) else substr(occurred_at, 1, 19) || '.000000' || substr(occurred_at, -6) end;

update call_event_relay set
    claimed_until = case when claimed_until is null then null when substr(claimed_until, 20, 1) = '.' then substr(claimed_until, 1, 19) || '.' || substr(substr(claimed_until, 21, length(claimed_until) - 26) || '000000', 1, 6) || substr(claimed_until, -6) else substr(claimed_until, 1, 19) || '.000000' || substr(claimed_until, -6) end,
    updated_at = case when updated_at is null then null when substr(updated_at, 20, 1) = '.' then substr(updated_at, 1, 19) || '.' || substr(substr(updated_at, 21, length(updated_at) - 26) || '000000', 1, 6) || substr(updated_at, -6) else substr(updated_at, 1, 19) || '.000000' || substr(updated_at, -6) end;
