//! `loadgen`: drives the services' hot paths and, in the same run and on the same database, the
//! database's own ceiling (`raw-sql`), so the two can be compared on a noisy machine.
//!
//! Modes: `acquire-release` (Acquire + Release over gRPC), `direct` (the same pair through the
//! in-process allocator service, without gRPC or auth), `lease-channel` (the pair as messages
//! on one `LeaseChannel` stream per client), `raw-sql` (the statement pair of the
//! ceiling straight to the database with sqlx), `calls` (MakeCall end to end: the simulator answers at
//! once and posts the callback, which frees the extension), `stats` (Stats on a tenant with
//! 100,000 extensions). Closed loop (`--clients N`) or open loop (`--rate R` per second, latency
//! measured from each request's scheduled start). The services run in this process on port 0
//! over a fresh database (PostgreSQL at TEST_DATABASE_URL, or SQLite in a temporary folder).
//! Output: throughput, p50/p90/p99/max latency and errors by code, as a table or `--json`.
//! `--check` exits non-zero on any error or if the pool is not back to full afterwards.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as gpb;
use cco_platform::auth::BearerInterceptor;
use cco_platform::testing::{Backend, TestDb};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// The external allocator's port, when `--allocator-port` is given.
static EXTERNAL: std::sync::OnceLock<Option<u16>> = std::sync::OnceLock::new();
/// The in-process allocator, to read its coalescing counters after a run.
static LOCAL: std::sync::OnceLock<allocator_svc::service::Allocator> = std::sync::OnceLock::new();
/// `--coalesce-max-batch` and `--coalesce-in-flight`.
static COALESCE: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
/// `--db-connections`: the in-process services' database pool size.
static DB_CONNECTIONS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn db_connections() -> u32 {
    DB_CONNECTIONS.get().copied().unwrap_or(32)
}

#[derive(Debug, Clone, Copy, ValueEnum, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    AcquireRelease,
    /// Acquire + Release as messages on one lease channel per client (the `LeaseChannel` stream)
    /// instead of two unary calls.
    LeaseChannel,
    /// Acquire + Release through the in-process allocator service (policy, coalescing, our
    /// statements) without gRPC or auth: with `acquire-release` and `raw-sql`, it splits a
    /// pair's cost into the RPC part and the database part.
    Direct,
    RawSql,
    Calls,
    Stats,
}

#[derive(Debug, Clone, Copy, ValueEnum, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Db {
    Postgres,
    Sqlite,
    /// MariaDB (or MySQL 8): the server of `TEST_MYSQL_URL`.
    Mariadb,
}

/// Load generator for the CCO Infinity services.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// What to drive.
    #[arg(long, value_enum)]
    mode: Mode,
    /// The database backend.
    #[arg(long, value_enum, default_value = "postgres")]
    db: Db,
    /// Concurrent clients (closed loop), or the most requests in flight (open loop).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Run for this many seconds...
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// ...after a warm-up of this many seconds that is not measured, followed by ANALYZE of the
    /// run's databases (steady state rather than empty tables; skipped with --count).
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// ...or for this many operations in total.
    #[arg(long)]
    count: Option<u64>,
    /// Open loop: this many operations per second in total.
    #[arg(long)]
    rate: Option<f64>,
    /// Tenants.
    #[arg(long, default_value_t = 4)]
    tenants: usize,
    /// Extensions per tenant.
    #[arg(long, default_value_t = 64)]
    extensions: usize,
    /// Extensions of the tenant in `stats` mode.
    #[arg(long, default_value_t = 100_000)]
    stats_extensions: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Exit non-zero on any error, or if the pool is not back to full afterwards.
    #[arg(long)]
    check: bool,
    /// The in-process allocator's ALLOCATOR__COALESCE__MAX_BATCH (1 turns coalescing off).
    #[arg(long, default_value_t = 32)]
    coalesce_max_batch: u32,
    /// The in-process allocator's ALLOCATOR__COALESCE__IN_FLIGHT.
    #[arg(long, default_value_t = 2)]
    coalesce_in_flight: u32,
    /// The in-process services' database pool size (*__DATABASE__MAX_CONNECTIONS).
    #[arg(long, default_value_t = 32)]
    db_connections: u32,
    /// calls: import this many do-not-call entries into the tenant's list first (numbers that
    /// are never dialled, plus 100 prefixes), to measure the lookup at that size.
    #[arg(long, default_value_t = 0)]
    dnc_entries: u64,
    /// calls: enable frequency caps (per number, case and collector, never reached) and the
    /// cool-down, so every MakeCall takes the gate's counting path (rule-key locks, counts,
    /// attempt and decision in a transaction of its own).
    #[arg(long)]
    caps: bool,
    /// acquire-release/stats: drive an allocator already running at this port on 127.0.0.1
    /// (e.g. `cco serve allocator`, to measure its memory) instead of one in this process.
    #[arg(long)]
    allocator_port: Option<u16>,
}

/// What one run measured.
#[derive(Debug, Serialize)]
struct Report {
    mode: Mode,
    db: Db,
    clients: usize,
    rate: Option<f64>,
    operations: u64,
    seconds: f64,
    per_second: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: BTreeMap<String, u64>,
    pool_full_after: Option<bool>,
    /// Percentiles of one phase of the operation (e.g. Acquire alone), in milliseconds.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    phases: BTreeMap<String, f64>,
    /// calls: transactions committed per completed call, per database (`gateway`,
    /// `allocator`, `total`), from PostgreSQL's own counters (`pg_stat_database`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    db_commits_per_call: BTreeMap<String, f64>,
    /// calls: statements executed per completed call, per database, from
    /// `pg_stat_statements` (when the server loads it; empty otherwise).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    db_round_trips_per_call: BTreeMap<String, f64>,
}

/// Collects latencies (microseconds) and errors.
#[derive(Default)]
struct Sink {
    micros: Mutex<Vec<u32>>,
    errors: Mutex<BTreeMap<String, u64>>,
    ops: AtomicU64,
}

impl Sink {
    fn record(&self, started: Instant, r: Result<(), String>) {
        let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        match r {
            Ok(()) => {
                if let Ok(mut m) = self.micros.lock() {
                    m.push(us);
                }
            }
            Err(code) => {
                if let Ok(mut e) = self.errors.lock() {
                    *e.entry(code).or_default() += 1;
                }
            }
        }
        self.ops.fetch_add(1, Ordering::Relaxed);
    }
}

fn code(s: &tonic::Status) -> String {
    // The first message of each code goes to stderr, so an error count can be explained.
    static SEEN: Mutex<Vec<tonic::Code>> = Mutex::new(Vec::new());
    if let Ok(mut seen) = SEEN.lock()
        && !seen.contains(&s.code())
    {
        seen.push(s.code());
        eprintln!("loadgen: first {:?}: {}", s.code(), s.message());
    }
    cco_platform::metrics::code_name(s.code()).to_owned()
}

/// False during the warm-up: per-phase timings recorded by an operation are kept only when set.
static MEASURING: AtomicBool = AtomicBool::new(true);

/// Databases of this run, analysed after the warm-up.
static DATABASES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Creates a fresh test database and remembers it for [`analyze_all`].
async fn test_db(backend: Backend) -> TestDb {
    let db = TestDb::new(backend).await;
    if let Ok(mut d) = DATABASES.lock() {
        d.push(db.url.clone());
    }
    db
}

/// ANALYZE every database of the run, as autovacuum would on a production server: the tables
/// start empty, and without statistics the planner may pick a tenant-prefix index over a
/// unique one. (The machine's shared server runs with autovacuum off.)
async fn analyze_all() -> anyhow::Result<()> {
    use sqlx::Connection;
    let urls = DATABASES.lock().map(|d| d.clone()).unwrap_or_default();
    for url in urls {
        if url.starts_with("postgres") {
            let mut c = sqlx::PgConnection::connect(&url).await?;
            sqlx::query("analyze").execute(&mut c).await?;
            c.close().await?;
        } else if url.starts_with("mysql") {
            let mut c = sqlx::MySqlConnection::connect(&url).await?;
            let tables: Vec<String> = sqlx::query_scalar(
                "select cast(table_name as char) from information_schema.tables \
                 where table_schema = database() and table_type = 'BASE TABLE'",
            )
            .fetch_all(&mut c)
            .await?;
            if !tables.is_empty() {
                let list = tables.join(", ");
                sqlx::query(sqlx::AssertSqlSafe(format!("analyze table {list}")))
                    .execute(&mut c)
                    .await?;
            }
            c.close().await?;
        } else {
            let mut c = sqlx::SqliteConnection::connect(&url).await?;
            sqlx::query("analyze").execute(&mut c).await?;
            c.close().await?;
        }
    }
    Ok(())
}

/// Runs `op(client, seq)` closed-loop on `clients` tasks, or open-loop at `rate`: first for
/// `--warmup-seconds` (not measured; the databases are analysed afterwards), then measured.
async fn drive<F, Fut>(cli: &Cli, op: F) -> (Arc<Sink>, f64, u64)
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut first = 0;
    let mut warm_ok = 0;
    let mut warm_errors = BTreeMap::new();
    if cli.warmup_seconds > 0.0 && cli.count.is_none() {
        MEASURING.store(false, Ordering::Relaxed);
        let (warm, _, next) = drive_for(cli, op.clone(), cli.warmup_seconds, 0).await;
        MEASURING.store(true, Ordering::Relaxed);
        first = next;
        warm_ok = warm.micros.lock().map(|m| m.len() as u64).unwrap_or(0);
        if let Err(e) = analyze_all().await {
            eprintln!("loadgen: analyze after warm-up: {e}");
            warm_errors.insert("warmup_analyze".to_owned(), 1);
        }
        for (code, n) in warm.errors.lock().map(|e| e.clone()).unwrap_or_default() {
            warm_errors.insert(format!("warmup_{code}"), n);
        }
    }
    let (sink, secs, _) = drive_for(cli, op, cli.seconds, first).await;
    // Errors of the warm-up are reported (and fail --check) under their own names.
    if let Ok(mut e) = sink.errors.lock() {
        e.extend(warm_errors);
    }
    (sink, secs, warm_ok)
}

/// One closed- or open-loop phase of `seconds`; sequence numbers start at `first`. Returns the
/// results, the elapsed time and the next unused sequence number.
async fn drive_for<F, Fut>(cli: &Cli, op: F, seconds: f64, first: u64) -> (Arc<Sink>, f64, u64)
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let sink = Arc::new(Sink::default());
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let budget = cli.count.map_or(u64::MAX, |c| first + c);
    let issued = Arc::new(AtomicU64::new(first));
    let started = Instant::now();
    match cli.rate {
        None => {
            let mut tasks = Vec::new();
            for c in 0..cli.clients {
                let (op, sink, issued) = (op.clone(), sink.clone(), issued.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let n = issued.fetch_add(1, Ordering::Relaxed);
                        if n >= budget || Instant::now() >= deadline {
                            break;
                        }
                        let t = Instant::now();
                        let r = op(c, n).await;
                        sink.record(t, r);
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
        Some(rate) => {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(cli.clients.max(1) * 8));
            let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = Vec::new();
            let mut n = first;
            while n < budget && Instant::now() < deadline {
                let scheduled = tick.tick().await.into_std();
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let (op, sink) = (op.clone(), sink.clone());
                let c = usize::try_from((n - first) % cli.clients.max(1) as u64).unwrap_or(0);
                tasks.push(tokio::spawn(async move {
                    let r = op(c, n).await;
                    // Latency from the scheduled start: waiting behind a slow server counts.
                    sink.record(scheduled, r);
                    drop(permit);
                }));
                n += 1;
            }
            for t in tasks {
                let _ = t.await;
            }
            issued.store(n, Ordering::Relaxed);
        }
    }
    let next = issued.load(Ordering::Relaxed);
    (sink, started.elapsed().as_secs_f64(), next)
}

/// The `p` percentile of sorted microseconds, in milliseconds.
fn percentile(m: &[u32], p: f64) -> f64 {
    if m.is_empty() {
        return 0.0;
    }
    let i = ((m.len() as f64 - 1.0) * p).round() as usize;
    f64::from(m[i.min(m.len() - 1)]) / 1000.0
}

fn report(cli: &Cli, sink: &Sink, seconds: f64, pool_full_after: Option<bool>) -> Report {
    let mut m = sink.micros.lock().map(|m| m.clone()).unwrap_or_default();
    m.sort_unstable();
    let pct = |p: f64| percentile(&m, p);
    let ops = m.len() as u64;
    Report {
        mode: cli.mode,
        db: cli.db,
        clients: cli.clients,
        rate: cli.rate,
        operations: ops,
        seconds,
        per_second: ops as f64 / seconds.max(1e-9),
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: m.last().map_or(0.0, |v| f64::from(*v) / 1000.0),
        errors: sink.errors.lock().map(|e| e.clone()).unwrap_or_default(),
        pool_full_after,
        phases: BTreeMap::new(),
        db_commits_per_call: BTreeMap::new(),
        db_round_trips_per_call: BTreeMap::new(),
    }
}

/// A database's own counters: transactions committed, and statements executed when
/// `pg_stat_statements` is loaded. PostgreSQL only (SQLite keeps no such counters).
#[derive(Debug, Clone, Copy)]
struct DbCounters {
    commits: i64,
    statements: Option<i64>,
}

async fn db_counters(url: &str) -> anyhow::Result<Option<DbCounters>> {
    use sqlx::Connection;
    if !url.starts_with("postgres") {
        return Ok(None);
    }
    let mut c = sqlx::PgConnection::connect(url).await?;
    sqlx::query("select pg_stat_clear_snapshot()")
        .execute(&mut c)
        .await?;
    let commits: i64 = sqlx::query_scalar(
        "select xact_commit from pg_stat_database where datname = current_database()",
    )
    .fetch_one(&mut c)
    .await?;
    // Statements of this database, ours excluded (none while the services are stopped).
    let statements: Option<i64> = sqlx::query_scalar(
        "select coalesce(sum(calls), 0)::bigint from pg_stat_statements \
         where dbid = (select oid from pg_database where datname = current_database())",
    )
    .fetch_one(&mut c)
    .await
    .ok();
    c.close().await?;
    Ok(Some(DbCounters {
        commits,
        statements,
    }))
}

/// Enables `pg_stat_statements` in a database when the server loads it.
async fn enable_statement_counts(url: &str) {
    use sqlx::Connection;
    if !url.starts_with("postgres") {
        return;
    }
    if let Ok(mut c) = sqlx::PgConnection::connect(url).await {
        let _ = sqlx::query("create extension if not exists pg_stat_statements")
            .execute(&mut c)
            .await;
        let _ = c.close().await;
    }
}

/// The mean of each part of the gateway's MakeCall latency, read from its `/metrics`.
async fn make_call_parts(http_port: u16) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(body) = http_get(&format!("http://127.0.0.1:{http_port}/metrics")).await else {
        return out;
    };
    for part in ["total", "acquire", "infinity", "own"] {
        let value = |suffix: &str| {
            body.lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "gateway_make_call_duration_seconds_{suffix}{{part=\"{part}\"}}"
                    ))
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        if let (Some(sum), Some(count)) = (value("sum"), value("count"))
            && count > 0.0
        {
            out.insert(format!("make_call_{part}_mean_ms"), sum / count * 1000.0);
        }
    }
    out
}

/// A plain HTTP GET on loopback (no client library needed for one request).
async fn http_get(url: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(buf)
}

/// A channel for the long set-up requests (imports of many thousands of lines, which a debug
/// build on a loaded machine can take longer than [`lazy`]'s 10 s deadline to answer).
fn patient(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map(|e| {
            e.timeout(Duration::from_secs(600))
                .tcp_nodelay(true)
                .connect_lazy()
        })
        .unwrap_or_else(|_| unreachable_channel())
}

fn lazy(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map(|e| {
            e.timeout(Duration::from_secs(10))
                .tcp_nodelay(true)
                .connect_lazy()
        })
        .unwrap_or_else(|_| unreachable_channel())
}

fn unreachable_channel() -> Channel {
    Endpoint::from_static("http://127.0.0.1:1").connect_lazy()
}

/// An allocator on port 0 over `db`, with a static policy (no cap), or the external one.
async fn allocator(db: &TestDb, stop: &CancellationToken) -> anyhow::Result<u16> {
    if let Some(port) = EXTERNAL.get().copied().flatten() {
        return Ok(port);
    }
    let mut s = allocator_svc::settings::Settings::default();
    s.grpc.host = "127.0.0.1".into();
    s.grpc.port = 0;
    s.metrics.enabled = false;
    s.database.url = db.url.clone();
    s.database.max_connections = db_connections();
    s.policy.source = allocator_svc::settings::PolicySourceKind::Static;
    s.auth.rate_limit_per_second = 0;
    s.log.filter = "warn".into();
    if let Some(&(max_batch, in_flight)) = COALESCE.get() {
        s.coalesce.max_batch = max_batch;
        s.coalesce.in_flight = in_flight;
    }
    let app = allocator_svc::app::Application::build(s).await?;
    let _ = LOCAL.set(app.allocator().clone());
    let port = app.grpc_addr().port();
    tokio::spawn(app.run_until_stopped(stop.clone()));
    Ok(port)
}

/// [`allocator`] with the run's pool imported: `--tenants` tenants `t0`, `t1`, ... of
/// `--extensions` extensions each.
async fn pooled_allocator(cli: &Cli, db: &TestDb, stop: &CancellationToken) -> anyhow::Result<u16> {
    let port = allocator(db, stop).await?;
    for t in 0..cli.tenants {
        import(
            port,
            &format!("t{t}"),
            (0..cli.extensions)
                .map(|i| format!("{}", 10_000 + i))
                .collect(),
        )
        .await?;
    }
    Ok(port)
}

async fn import(port: u16, tenant: &str, numbers: Vec<String>) -> anyhow::Result<()> {
    let mut pool = apb::extension_pool_client::ExtensionPoolClient::with_interceptor(
        patient(port),
        BearerInterceptor::new("dev-admin-key"),
    );
    for chunk in numbers.chunks(10_000) {
        pool.batch_import(apb::BatchImportRequest {
            tenant_id: tenant.into(),
            config_id: String::new(),
            numbers: chunk.to_vec(),
        })
        .await?;
    }
    Ok(())
}

async fn in_use(port: u16, tenants: usize) -> anyhow::Result<u32> {
    let mut c = apb::extension_allocator_client::ExtensionAllocatorClient::with_interceptor(
        lazy(port),
        BearerInterceptor::new("dev-admin-key"),
    );
    let mut total = 0;
    for t in 0..tenants {
        total += c
            .stats(apb::StatsRequest {
                tenant_id: format!("t{t}"),
                ..Default::default()
            })
            .await?
            .into_inner()
            .in_use;
    }
    Ok(total)
}

async fn acquire_release(
    cli: &Cli,
    db: &TestDb,
    stop: &CancellationToken,
) -> anyhow::Result<Report> {
    let port = pooled_allocator(cli, db, stop).await?;
    // One HTTP/2 connection per client, as separate gateway replicas would have.
    let clients: Vec<_> = (0..cli.clients)
        .map(|_| {
            apb::extension_allocator_client::ExtensionAllocatorClient::with_interceptor(
                lazy(port),
                BearerInterceptor::new("dev-peer-key"),
            )
        })
        .collect();
    let clients = Arc::new(clients);
    let tenants = cli.tenants;
    let acquire_us: Arc<Mutex<Vec<u32>>> = Arc::default();
    let acq = acquire_us.clone();
    let (sink, secs, _) = drive(cli, move |c, n| {
        let mut client = clients[c % clients.len()].clone();
        let acq = acq.clone();
        async move {
            let t = Instant::now();
            let l = client
                .acquire(apb::AcquireRequest {
                    tenant_id: format!("t{}", c % tenants),
                    collector_id: format!("c{c}"),
                    strategy: 0,
                    request_id: format!("r{n}-{c}"),
                    ttl_seconds: 0,
                })
                .await
                .map_err(|s| code(&s))?
                .into_inner()
                .lease
                .ok_or("no_lease")?;
            if MEASURING.load(Ordering::Relaxed)
                && let Ok(mut a) = acq.lock()
            {
                a.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            let r = client
                .release(apb::ReleaseRequest {
                    lease_id: l.lease_id,
                    fencing_token: l.fencing_token,
                    reason: 0,
                    tenant_id: String::new(),
                })
                .await
                .map_err(|s| code(&s))?;
            if r.into_inner().released {
                Ok(())
            } else {
                Err("not_released".into())
            }
        }
    })
    .await;
    let full = in_use(port, cli.tenants).await? == 0;
    let mut r = report(cli, &sink, secs, Some(full));
    let mut a = acquire_us.lock().map(|a| a.clone()).unwrap_or_default();
    a.sort_unstable();
    r.phases
        .insert("acquire_p50_ms".into(), percentile(&a, 0.50));
    r.phases
        .insert("acquire_p99_ms".into(), percentile(&a, 0.99));
    // requests per statement: how much coalescing the run saw.
    for (op, statements, requests) in LOCAL
        .get()
        .map(|a| a.store().coalescing())
        .unwrap_or_default()
    {
        if statements > 0 {
            #[allow(clippy::cast_precision_loss)]
            r.phases.insert(
                format!("{op}_requests_per_statement"),
                requests as f64 / statements as f64,
            );
        }
    }
    Ok(r)
}

/// One client's lease channel: the command sender and the reply stream.
type LeaseChannel = (
    tokio::sync::mpsc::Sender<apb::LeaseCommand>,
    tonic::Streaming<apb::LeaseReply>,
);

/// Sends one command on a lease channel and waits for its reply (one command in flight per
/// client, so the next reply is this command's).
async fn lease_command(
    ch: &mut LeaseChannel,
    id: u64,
    command: apb::lease_command::Command,
) -> Result<apb::lease_reply::Reply, String> {
    ch.0.send(apb::LeaseCommand {
        id,
        command: Some(command),
    })
    .await
    .map_err(|_| "channel_closed".to_owned())?;
    let reply =
        ch.1.message()
            .await
            .map_err(|s| code(&s))?
            .ok_or("channel_closed")?;
    if reply.id != id {
        return Err("reply_out_of_order".into());
    }
    match reply.reply {
        Some(apb::lease_reply::Reply::Error(e)) => Err(code(&tonic::Status::new(
            tonic::Code::from(e.code),
            e.message,
        ))),
        Some(r) => Ok(r),
        None => Err("empty_reply".into()),
    }
}

/// Acquire + Release as two messages each way on one lease channel per client.
async fn lease_channel(cli: &Cli, db: &TestDb, stop: &CancellationToken) -> anyhow::Result<Report> {
    let port = pooled_allocator(cli, db, stop).await?;
    let mut channels = Vec::with_capacity(cli.clients);
    for _ in 0..cli.clients {
        // One HTTP/2 connection per client, as in acquire-release; no per-call deadline (the
        // stream lives for the whole run).
        let conn = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
            .tcp_nodelay(true)
            .connect_lazy();
        let mut client =
            apb::extension_allocator_client::ExtensionAllocatorClient::with_interceptor(
                conn,
                BearerInterceptor::new("dev-peer-key"),
            );
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let replies = client
            .lease_channel(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        channels.push(Arc::new(tokio::sync::Mutex::new((tx, replies))));
    }
    let channels = Arc::new(channels);
    let tenants = cli.tenants;
    let (sink, secs, _) = drive(cli, move |c, n| {
        let ch = channels[c % channels.len()].clone();
        async move {
            let mut ch = ch.lock().await;
            let acquired = lease_command(
                &mut ch,
                n.saturating_mul(2),
                apb::lease_command::Command::Acquire(apb::AcquireRequest {
                    tenant_id: format!("t{}", c % tenants),
                    collector_id: format!("c{c}"),
                    strategy: 0,
                    request_id: format!("r{n}-{c}"),
                    ttl_seconds: 0,
                }),
            )
            .await?;
            let apb::lease_reply::Reply::Acquire(a) = acquired else {
                return Err("wrong_reply".into());
            };
            let l = a.lease.ok_or("no_lease")?;
            let released = lease_command(
                &mut ch,
                n.saturating_mul(2).saturating_add(1),
                apb::lease_command::Command::Release(apb::ReleaseRequest {
                    lease_id: l.lease_id,
                    fencing_token: l.fencing_token,
                    reason: 0,
                    tenant_id: String::new(),
                }),
            )
            .await?;
            match released {
                apb::lease_reply::Reply::Release(r) if r.released => Ok(()),
                _ => Err("not_released".into()),
            }
        }
    })
    .await;
    let full = in_use(port, cli.tenants).await? == 0;
    Ok(report(cli, &sink, secs, Some(full)))
}

/// Acquire + Release straight through the in-process [`allocator_svc::service::Allocator`]:
/// the same requests as [`acquire_release`], minus the gRPC client, server and auth layers.
async fn direct(cli: &Cli, db: &TestDb, stop: &CancellationToken) -> anyhow::Result<Report> {
    use allocator_svc::domain::{CollectorId, ReleaseReason, RequestId, TenantId};
    let port = pooled_allocator(cli, db, stop).await?;
    let svc = LOCAL
        .get()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("--mode direct needs the in-process allocator"))?;
    let tenants = cli.tenants;
    let (sink, secs, _) = drive(cli, move |c, n| {
        let svc = svc.clone();
        async move {
            let bad = |e: allocator_svc::domain::AllocError| e.to_string();
            let input = allocator_svc::service::AcquireInput {
                tenant_id: TenantId::parse("tenant_id", &format!("t{}", c % tenants))
                    .map_err(bad)?,
                collector_id: CollectorId::parse("collector_id", &format!("c{c}")).map_err(bad)?,
                request_id: RequestId::parse("request_id", &format!("r{n}-{c}")).map_err(bad)?,
                strategy: None,
                ttl_seconds: None,
            };
            let (lease, _) = svc.acquire(input).await.map_err(bad)?;
            match svc
                .release(
                    lease.lease_id,
                    lease.fencing_token,
                    ReleaseReason::CallEnded,
                )
                .await
                .map_err(bad)?
            {
                allocator_svc::store::LeaseChange::Changed(_) => Ok(()),
                _ => Err("not_released".into()),
            }
        }
    })
    .await;
    let full = in_use(port, cli.tenants).await? == 0;
    Ok(report(cli, &sink, secs, Some(full)))
}

async fn raw_sql(cli: &Cli, db: &TestDb, stop: &CancellationToken) -> anyhow::Result<Report> {
    // The allocator migrates the schema and imports the same pool; then it is left alone.
    let port = pooled_allocator(cli, db, stop).await?;
    let mut settings = cco_platform::db::DatabaseSettings::sqlite_default("x");
    settings.url = db.url.clone();
    settings.max_connections = u32::try_from(cli.clients).unwrap_or(32).max(1);
    settings.migrate_on_start = false;
    let pool = cco_platform::db::DbPool::connect(&settings).await?;
    let tenants = cli.tenants;
    let p2 = pool.clone();
    let (sink, secs, _) = drive(cli, move |c, _| {
        let pool = p2.clone();
        async move {
            let tenant = format!("t{}", c % tenants);
            match &pool {
                cco_platform::db::DbPool::Postgres(p) => {
                    let row = sqlx::query(
                        "update extensions set status = 'in_use', current_lease_id = gen_random_uuid(), \
                         fencing_token = fencing_token + 1, last_used_at = clock_timestamp(), use_count = use_count + 1 \
                         where id = (select id from extensions where tenant_id = $1 and status = 'available' \
                           order by last_released_at nulls first limit 1 for update skip locked) \
                         returning id, fencing_token",
                    )
                    .bind(&tenant)
                    .fetch_optional(p)
                    .await
                    .map_err(|e| format!("sql: {e}"))?
                    .ok_or("resource_exhausted")?;
                    let id: uuid::Uuid = row.get("id");
                    let token: i64 = row.get("fencing_token");
                    sqlx::query(
                        "update extensions set status = 'available', current_lease_id = null, last_released_at = clock_timestamp() \
                         where id = $1 and fencing_token = $2",
                    )
                    .bind(id)
                    .bind(token)
                    .execute(p)
                    .await
                    .map_err(|e| format!("sql: {e}"))?;
                }
                cco_platform::db::DbPool::Sqlite(p) => {
                    let now = cco_platform::sql::sqlite_now();
                    let row = sqlx::query(
                        "update extensions set status = 'in_use', fencing_token = fencing_token + 1, last_used_at = $2, \
                         use_count = use_count + 1 where id = (select id from extensions where tenant_id = $1 and \
                         status = 'available' order by last_released_at limit 1) \
                         returning id, fencing_token",
                    )
                    .bind(&tenant)
                    .bind(&now)
                    .fetch_optional(p)
                    .await
                    .map_err(|e| format!("sql: {e}"))?
                    .ok_or("resource_exhausted")?;
                    let id: String = row.get("id");
                    let token: i64 = row.get("fencing_token");
                    sqlx::query("update extensions set status = 'available', last_released_at = $3 where id = $1 and fencing_token = $2")
                        .bind(id)
                        .bind(token)
                        .bind(&now)
                        .execute(p)
                        .await
                        .map_err(|e| format!("sql: {e}"))?;
                }
                cco_platform::db::DbPool::MySql(p) => {
                    // MySQL has no `returning`: pick and lock, then mark, in one transaction.
                    let mut tx = p.begin().await.map_err(|e| format!("sql: {e}"))?;
                    let row = sqlx::query(
                        "select id, fencing_token from extensions where tenant_id = ? and status = 'available' \
                         order by last_released_at limit 1 for update skip locked",
                    )
                    .bind(&tenant)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| format!("sql: {e}"))?
                    .ok_or("resource_exhausted")?;
                    let id: String = row.get("id");
                    let token: i64 = row.get("fencing_token");
                    sqlx::query(
                        "update extensions set status = 'in_use', fencing_token = fencing_token + 1, \
                         last_used_at = utc_timestamp(6), use_count = use_count + 1 where id = ?",
                    )
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| format!("sql: {e}"))?;
                    tx.commit().await.map_err(|e| format!("sql: {e}"))?;
                    sqlx::query(
                        "update extensions set status = 'available', last_released_at = utc_timestamp(6) \
                         where id = ? and fencing_token = ?",
                    )
                    .bind(&id)
                    .bind(token + 1)
                    .execute(p)
                    .await
                    .map_err(|e| format!("sql: {e}"))?;
                }
            }
            Ok(())
        }
    })
    .await;
    pool.close().await;
    let full = in_use(port, cli.tenants).await? == 0;
    Ok(report(cli, &sink, secs, Some(full)))
}

async fn stats(cli: &Cli, db: &TestDb, stop: &CancellationToken) -> anyhow::Result<Report> {
    let port = allocator(db, stop).await?;
    import(
        port,
        "t0",
        (0..cli.stats_extensions)
            .map(|i| format!("{}", 1_000_000 + i))
            .collect(),
    )
    .await?;
    let client = apb::extension_allocator_client::ExtensionAllocatorClient::with_interceptor(
        lazy(port),
        BearerInterceptor::new("dev-peer-key"),
    );
    let expected = u32::try_from(cli.stats_extensions).unwrap_or(u32::MAX);
    let (sink, secs, _) = drive(cli, move |_, _| {
        let mut c = client.clone();
        async move {
            let s = c
                .stats(apb::StatsRequest {
                    tenant_id: "t0".into(),
                    ..Default::default()
                })
                .await
                .map_err(|s| code(&s))?
                .into_inner();
            if s.total == expected {
                Ok(())
            } else {
                Err("wrong_total".into())
            }
        }
    })
    .await;
    Ok(report(cli, &sink, secs, None))
}

/// `--dnc-entries` and `--caps`: fills the tenant's do-not-call list through ImportDoNotCall
/// (100,000 lines a request, as the API allows) and sets a policy whose caps count every call.
async fn compliance_setup(cli: &Cli, g: u16, db_url: &str) -> anyhow::Result<()> {
    let admin = BearerInterceptor::new("dev-admin-key");
    let mut c = gpb::compliance_policies_client::CompliancePoliciesClient::with_interceptor(
        patient(g),
        admin,
    );
    if cli.dnc_entries > 0 {
        let started = Instant::now();
        let mut next: u64 = 0;
        while next < cli.dnc_entries {
            let end = (next + 100_000).min(cli.dnc_entries);
            let lines: Vec<String> = (next..end)
                .map(|i| {
                    if i < 100 {
                        // Prefixes nothing dialled starts with (dialled numbers are 1390...).
                        format!("+86150{i:02}*")
                    } else {
                        format!("1370{:07}", i % 10_000_000)
                    }
                })
                .collect();
            let chunks: Vec<gpb::ImportDoNotCallRequest> = lines
                .chunks(5_000)
                .enumerate()
                .map(|(k, l)| gpb::ImportDoNotCallRequest {
                    tenant_id: if k == 0 { "t0".into() } else { String::new() },
                    lines: l.to_vec(),
                    default_reason: gpb::DoNotCallReason::CeaseContact as i32,
                })
                .collect();
            let r = c
                .import_do_not_call(tokio_stream::iter(chunks))
                .await?
                .into_inner();
            anyhow::ensure!(r.rejected == 0, "do-not-call import rejected lines: {r:?}");
            next = end;
        }
        eprintln!(
            "imported {} do-not-call entries in {:.1} s",
            cli.dnc_entries,
            started.elapsed().as_secs_f64()
        );
        // Settle the import before measuring: its vacuum, statistics and dirty pages would
        // otherwise land in the measured seconds.
        if db_url.starts_with("postgres") {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(db_url).await?;
            sqlx::query("vacuum (analyze) dnc_entries")
                .execute(&mut c)
                .await?;
            sqlx::query("checkpoint").execute(&mut c).await?;
            c.close().await?;
        }
    }
    if cli.caps {
        let cap = |max_attempts, window_seconds| {
            Some(gpb::FrequencyCap {
                max_attempts,
                window_seconds,
            })
        };
        c.set_policy(gpb::SetCompliancePolicyRequest {
            policy: Some(gpb::CompliancePolicy {
                tenant_id: "t0".into(),
                number_cap: cap(3, 86_400),
                case_cap: cap(7, 7 * 86_400),
                collector_cap: cap(10_000, 60),
                case_cooldown_seconds: 7 * 86_400,
                ..Default::default()
            }),
            expected_version: 0,
        })
        .await?;
    }
    Ok(())
}

async fn calls(cli: &Cli, backend: Backend, stop: &CancellationToken) -> anyhow::Result<Report> {
    let gw_db = test_db(backend).await;
    let al_db = test_db(backend).await;
    for db in [&gw_db, &al_db] {
        enable_statement_counts(&db.url).await;
    }
    // The services stop before the counters are read, so every backend has flushed its
    // statistics (PostgreSQL reports a backend's counts when it exits at the latest).
    let services = stop.child_token();
    let numbers: Vec<String> = (0..cli.extensions.max(cli.clients * 2))
        .map(|i| format!("{}", 10_000 + i))
        .collect();
    let sim = infinity_sim::Simulator::start(infinity_sim::SimConfig {
        extensions: numbers.iter().map(|n| (n.clone(), true)).collect(),
        ..Default::default()
    })
    .await?;
    sim.state().set_script(
        None,
        infinity_sim::Script {
            callback_delay_ms: 0,
            ..Default::default()
        },
    );
    let gl = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hl = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let al = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (g, h, a) = (
        gl.local_addr()?.port(),
        hl.local_addr()?.port(),
        al.local_addr()?.port(),
    );
    let mut gs = call_gateway_svc::settings::Settings::default();
    gs.database.url = gw_db.url.clone();
    gs.database.max_connections = db_connections();
    gs.allocator.url = format!("http://127.0.0.1:{a}");
    gs.auth.rate_limit_per_second = 0;
    gs.log.filter = "warn".into();
    let mut als = allocator_svc::settings::Settings::default();
    als.database.url = al_db.url.clone();
    als.database.max_connections = db_connections();
    als.policy.gateway_url = format!("http://127.0.0.1:{g}");
    als.auth.rate_limit_per_second = 0;
    let gateway = tokio::spawn(
        call_gateway_svc::app::Application::build_with(gs, Some((gl, hl)))
            .await?
            .run_until_stopped(services.clone()),
    );
    let allocator = tokio::spawn(
        allocator_svc::app::Application::build_with(als, Some((al, None)))
            .await?
            .run_until_stopped(services.clone()),
    );
    let admin = BearerInterceptor::new("dev-admin-key");
    gpb::tenant_configs_client::TenantConfigsClient::with_interceptor(lazy(g), admin.clone())
        .create_config(gpb::CreateConfigRequest {
            config: Some(gpb::ConfigInput {
                tenant_id: "t0".into(),
                api_url: sim.api_url(),
                credentials: Some(gpb::Credentials {
                    kind: Some(gpb::credentials::Kind::AccessToken(
                        "0123456789abcdef0123456789abcdef".into(),
                    )),
                }),
                caller_number_pool: vec!["02566823420".into()],
                callback_secret: "loadgen-callback-secret".into(),
                max_concurrent_calls: Some(10_000),
                ..Default::default()
            }),
        })
        .await?;
    sim.state().set_callback_url(Some(format!(
        "http://127.0.0.1:{h}/api/v1/infinity/callback/t0/loadgen-callback-secret"
    )));
    let mut coll =
        gpb::collectors_client::CollectorsClient::with_interceptor(lazy(g), admin.clone());
    for c in 0..cli.clients {
        coll.upsert_collector(gpb::UpsertCollectorRequest {
            tenant_id: "t0".into(),
            collector_id: format!("c{c}"),
            callback_number: format!("1380013{c:04}"),
            display_name: String::new(),
            active: None,
        })
        .await?;
    }
    import(a, "t0", numbers.clone()).await?;
    compliance_setup(cli, g, &gw_db.url).await?;
    let before = [
        db_counters(&gw_db.url).await?,
        db_counters(&al_db.url).await?,
    ];
    let clients: Arc<Vec<_>> = Arc::new(
        (0..cli.clients)
            .map(|_| {
                gpb::calls_client::CallsClient::with_interceptor(
                    lazy(g),
                    BearerInterceptor::new("dev-caller-key"),
                )
            })
            .collect(),
    );
    let busy = Arc::new(AtomicBool::new(false));
    let b2 = busy.clone();
    let (sink, secs, warm_ok) = drive(cli, move |c, n| {
        let mut client = clients[c % clients.len()].clone();
        let busy = b2.clone();
        async move {
            let r = client
                .make_call(gpb::MakeCallRequest {
                    tenant_id: "t0".into(),
                    collector_id: format!("c{c}"),
                    case_id: format!("case-{n}"),
                    destination_number: format!("1390{:07}", n % 10_000_000),
                    ..Default::default()
                })
                .await;
            match r {
                Ok(r) if r.get_ref().status == gpb::CallStatus::Failed as i32 => {
                    Err("refused".into())
                }
                Ok(_) => Ok(()),
                Err(s) => {
                    if s.code() == tonic::Code::ResourceExhausted {
                        busy.store(true, Ordering::Relaxed);
                    }
                    Err(code(&s))
                }
            }
        }
    })
    .await;
    // Wait (bounded) for every callback to free its extension.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut full = false;
    while Instant::now() < deadline {
        if in_use(a, 1).await? == 0 {
            full = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut r = report(cli, &sink, secs, Some(full));
    r.phases = make_call_parts(h).await;
    services.cancel();
    let _ = gateway.await;
    let _ = allocator.await;
    sim.stop().await;
    let after = [
        db_counters(&gw_db.url).await?,
        db_counters(&al_db.url).await?,
    ];
    // Every completed call (warm-up included) against every commit and statement of the run.
    let completed = (r.operations + warm_ok).max(1) as f64;
    let mut commits = 0;
    let mut statements = Some(0);
    for (name, (b, a)) in ["gateway", "allocator"]
        .into_iter()
        .zip(before.iter().zip(&after))
    {
        if let (Some(b), Some(a)) = (b, a) {
            let c = a.commits - b.commits;
            commits += c;
            r.db_commits_per_call
                .insert(name.into(), c as f64 / completed);
            match (b.statements, a.statements) {
                (Some(sb), Some(sa)) => {
                    statements = statements.map(|t| t + sa - sb);
                    r.db_round_trips_per_call
                        .insert(name.into(), (sa - sb) as f64 / completed);
                }
                _ => statements = None,
            }
        }
    }
    if !r.db_commits_per_call.is_empty() {
        r.db_commits_per_call
            .insert("total".into(), commits as f64 / completed);
    }
    match statements {
        Some(t) if !r.db_round_trips_per_call.is_empty() => {
            r.db_round_trips_per_call
                .insert("total".into(), t as f64 / completed);
        }
        _ => r.db_round_trips_per_call.clear(),
    }
    Ok(r)
}

fn print(r: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let errors = if r.errors.is_empty() {
        "none".to_owned()
    } else {
        format!("{:?}", r.errors)
    };
    println!(
        "{:<16} {:<8} clients {:>3}{}  ops {:>7}  {:>9.1}/s  p50 {:>7.3} ms  p90 {:>7.3} ms  p99 {:>7.3} ms  max {:>8.3} ms  errors {errors}{}",
        format!("{:?}", r.mode),
        format!("{:?}", r.db),
        r.clients,
        r.rate.map(|x| format!(" rate {x}/s")).unwrap_or_default(),
        r.operations,
        r.per_second,
        r.p50_ms,
        r.p90_ms,
        r.p99_ms,
        r.max_ms,
        r.pool_full_after
            .map(|f| format!("  pool full after: {f}"))
            .unwrap_or_default(),
    );
    for (k, v) in &r.phases {
        println!("    {k}: {v:.3}");
    }
    for (k, v) in &r.db_commits_per_call {
        println!("    db commits per call, {k}: {v:.2}");
    }
    for (k, v) in &r.db_round_trips_per_call {
        println!("    db round trips per call, {k}: {v:.2}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _ = EXTERNAL.set(cli.allocator_port);
    let _ = COALESCE.set((cli.coalesce_max_batch, cli.coalesce_in_flight));
    let _ = DB_CONNECTIONS.set(cli.db_connections.max(1));
    let backend = match cli.db {
        Db::Postgres => Backend::Postgres,
        Db::Sqlite => Backend::Sqlite,
        Db::Mariadb => Backend::MariaDb,
    };
    let stop = CancellationToken::new();
    let result = async {
        match cli.mode {
            Mode::Calls => calls(&cli, backend, &stop).await,
            _ => {
                let db = test_db(backend).await;
                let r = match cli.mode {
                    Mode::AcquireRelease => acquire_release(&cli, &db, &stop).await,
                    Mode::Direct => direct(&cli, &db, &stop).await,
                    Mode::LeaseChannel => lease_channel(&cli, &db, &stop).await,
                    Mode::RawSql => raw_sql(&cli, &db, &stop).await,
                    _ => stats(&cli, &db, &stop).await,
                };
                stop.cancel();
                tokio::time::sleep(Duration::from_millis(100)).await;
                r
            }
        }
    }
    .await;
    stop.cancel();
    match result {
        Ok(r) => {
            if let Err(e) = print(&r, cli.json) {
                eprintln!("loadgen: {e}");
                return std::process::ExitCode::FAILURE;
            }
            let bad = !r.errors.is_empty() || r.pool_full_after == Some(false) || r.operations == 0;
            if cli.check && bad {
                eprintln!(
                    "loadgen: check failed: {} operations, errors {:?}, pool full after: {:?}",
                    r.operations, r.errors, r.pool_full_after
                );
                return std::process::ExitCode::FAILURE;
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
