//! Fault injection, scenario 4: PostgreSQL restarted mid-run. The test makes its own throwaway
//! cluster (`initdb` in a temporary folder, its own port; never the machine's shared server),
//! runs the allocator and the gateway on it, stops the server, and checks that callers get
//! UNAVAILABLE within their deadline (no panic, no hang), then starts it again and checks the
//! services recover without a restart of their own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cco_contracts::allocator::v1 as apb;
use cco_contracts::gateway::v1 as pb;
use cco_platform::auth::BearerInterceptor;
use infinity_sim::{SimConfig, Simulator};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use tonic::Code;

fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are required for this test")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("no initdb under /usr/lib/postgresql/*/bin")
}

/// Runs a PostgreSQL tool as the `postgres` user when we are root (initdb refuses root).
fn pg(tool: &str, args: &[&str]) {
    let bin = pg_bin().join(tool);
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let status = if root {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&bin)
            .args(args)
            .status()
    } else {
        Command::new(&bin).args(args).status()
    }
    .unwrap();
    assert!(status.success(), "{tool} {args:?} failed");
}

struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        pg(
            "pg_ctl",
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        );
    }

    fn stop(&self) {
        pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.stop());
    }
}

fn new_cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _ = Command::new("chown")
        .args(["postgres:postgres", &dir.path().display().to_string()])
        .status();
    let c = Cluster { dir, port };
    pg(
        "initdb",
        &[
            "-D",
            &c.data(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
    );
    c.start();
    c
}

fn chan(port: u16) -> tonic::transport::Channel {
    crate::common::endpoint(port)
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_ride_out_a_postgres_restart() {
    let cluster = new_cluster();
    assert!(
        !Path::new(&cluster.data())
            .join("postmaster.pid")
            .as_os_str()
            .is_empty()
    );
    let mut admin = sqlx::PgConnection::connect(&cluster.url("postgres"))
        .await
        .unwrap();
    for db in ["allocator", "gateway"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {db}")))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    drop(admin);
    let gl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let al = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (g, h, a) = (
        gl.local_addr().unwrap().port(),
        hl.local_addr().unwrap().port(),
        al.local_addr().unwrap().port(),
    );
    let mut gs = call_gateway_svc::settings::Settings::default();
    gs.database.url = cluster.url("gateway");
    gs.database.acquire_timeout_ms = 2_000;
    gs.allocator.url = format!("http://127.0.0.1:{a}");
    // A callback lost to the outage is settled by the reconciler, quickly here.
    gs.calls.reconcile_after_seconds = 2;
    gs.calls.reconcile_every_seconds = 1;
    gs.calls.reconcile_interval_ms = 200;
    gs.calls.outbox_interval_ms = 200;
    let mut als = allocator_svc::settings::Settings::default();
    als.database.url = cluster.url("allocator");
    als.database.acquire_timeout_ms = 2_000;
    als.policy.gateway_url = format!("http://127.0.0.1:{g}");
    als.policy.cache_ttl_ms = 0;
    als.policy.stale_ttl_ms = 0;
    let stop = CancellationToken::new();
    let gw = tokio::spawn(
        call_gateway_svc::app::Application::build_with(gs, Some((gl, hl)))
            .await
            .unwrap()
            .run_until_stopped(stop.clone()),
    );
    let alloc = tokio::spawn(
        allocator_svc::app::Application::build_with(als, Some((al, None)))
            .await
            .unwrap()
            .run_until_stopped(stop.clone()),
    );
    let sim = Simulator::start(SimConfig {
        extensions: vec![("8001".into(), true), ("8002".into(), true)],
        callback_url: Some(format!(
            "http://127.0.0.1:{h}/api/v1/infinity/callback/t1/pg-restart-secret-0001"
        )),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    crate::common::tenant(
        chan(g),
        chan(a),
        crate::common::config(&sim, "pg-restart-secret-0001"),
        1,
        &["8001".into(), "8002".into()],
    )
    .await;
    let mut calls = pb::calls_client::CallsClient::with_interceptor(
        chan(g),
        BearerInterceptor::new("dev-caller-key"),
    );
    let mut leases = apb::extension_allocator_client::ExtensionAllocatorClient::with_interceptor(
        chan(a),
        BearerInterceptor::new("dev-admin-key"),
    );
    let call = |n: usize| pb::MakeCallRequest {
        tenant_id: "t1".into(),
        collector_id: "c0".into(),
        case_id: format!("case-{n}"),
        destination_number: "13900139000".into(),
        idempotency_key: format!("restart-{n}"),
        ..Default::default()
    };
    calls.make_call(call(0)).await.unwrap();

    cluster.stop();
    let mut outage_codes = Vec::new();
    for n in 1..=3 {
        let t = Instant::now();
        let e = calls.make_call(call(n)).await.unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "MakeCall hung for {:?} during the outage",
            t.elapsed()
        );
        outage_codes.push(e.code());
        let t = Instant::now();
        let e = leases
            .stats(apb::StatsRequest {
                tenant_id: "t1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "Stats hung for {:?}",
            t.elapsed()
        );
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    }
    assert!(
        outage_codes.iter().all(|c| *c == Code::Unavailable),
        "{outage_codes:?}"
    );

    cluster.start();
    // The same processes recover: retries go through once the server is back.
    let deadline = Instant::now() + Duration::from_secs(30);
    let resp = loop {
        match calls.make_call(call(4)).await {
            Ok(r) => break r.into_inner(),
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                assert!(Instant::now() < deadline, "no recovery after the restart");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = calls
            .get_call(pb::GetCallRequest {
                tenant_id: "t1".into(),
                call_id: resp.call_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if r.status == pb::CallStatus::Completed as i32 && r.lease_released {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the call after the restart never completed: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every lease comes back, including the first call's whose callback may have hit the outage.
    let deadline = Instant::now() + Duration::from_secs(30);
    while leases
        .stats(apb::StatsRequest {
            tenant_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .in_use
        != 0
    {
        assert!(
            Instant::now() < deadline,
            "a lease leaked across the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim.stop().await;
    stop.cancel();
    gw.await.unwrap().unwrap();
    alloc.await.unwrap().unwrap();
}
