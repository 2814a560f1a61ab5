-- every acquire and release rewrites an extension row, and the status-partial indexes make
-- those updates non-hot: a busy pool of a few hundred rows leaves thousands of dead row versions
-- per second. vacuum it by count, not by the default 20% of a tiny table, without throttling,
-- and leave room on each page. (these settings only act when autovacuum is on for the server;
-- see docs/performance.md.)
alter table extensions set (
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.05
);
-- the lease history only grows; analyse it as it does.
alter table leases set (autovacuum_analyze_scale_factor = 0.05);
