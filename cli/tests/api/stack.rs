//! Smoke test of the README's first command: `cco stack` starts, a demo call placed with the CLI
//! completes, the pool is back to full, Ctrl-C stops everything, and a second run reuses the data.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const CCO: &str = env!("CARGO_BIN_EXE_cco");

pub(crate) struct Stack {
    child: Child,
    pub(crate) gateway: String,
    pub(crate) allocator: String,
    /// The collector alice's token, as printed.
    pub(crate) alice: String,
    /// The console's URL.
    pub(crate) console: String,
    /// The simulator's API URL (its control API is at the same host).
    pub(crate) sim_api: String,
}

/// The browser origin the stack is started to allow (gRPC-Web CORS).
const WEB_ORIGIN: &str = "http://localhost:5173";

fn port_of(line: &str, label: &str) -> Option<u16> {
    let rest = line.trim().strip_prefix(label)?.trim();
    rest.split_whitespace()
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

pub(crate) fn start(dir: &std::path::Path) -> Stack {
    start_with(dir, &[])
}

/// [`start`] with more settings in the environment.
pub(crate) fn start_with(dir: &std::path::Path, env: &[(&str, &str)]) -> Stack {
    let mut child = Command::new(CCO)
        .arg("stack")
        .envs(env.iter().copied())
        .current_dir(dir)
        .env("ALLOCATOR__GRPC__HOST", "127.0.0.1")
        .env("ALLOCATOR__GRPC__PORT", "0")
        .env("ALLOCATOR__METRICS__PORT", "0")
        .env("GATEWAY__GRPC__HOST", "127.0.0.1")
        .env("GATEWAY__GRPC__PORT", "0")
        .env("GATEWAY__HTTP__PORT", "0")
        .env("CCO_SIM_PORT", "0")
        .env("CONSOLE__HTTP__PORT", "0")
        .env("GATEWAY__GRPC__WEB__ALLOWED_ORIGINS", WEB_ORIGIN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut gw, mut al, mut alice, mut console, mut sim) = (None, None, None, None, None);
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("stack printed its endpoints");
        al = al.or_else(|| port_of(&line, "allocator gRPC"));
        gw = gw.or_else(|| port_of(&line, "gateway gRPC"));
        console = console.or_else(|| port_of(&line, "console"));
        sim = sim.or_else(|| {
            let rest = line.trim().strip_prefix("Infinity sim")?;
            rest.split_whitespace().next().map(str::to_owned)
        });
        alice = alice.or_else(|| {
            line.trim()
                .strip_prefix("alice")
                .map(|t| t.trim().to_owned())
                .filter(|t| t.starts_with("eyJ"))
        });
        if line.contains("Ctrl-C stops everything") {
            break;
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Stack {
        child,
        gateway: format!("http://127.0.0.1:{}", gw.expect("gateway port")),
        allocator: format!("http://127.0.0.1:{}", al.expect("allocator port")),
        alice: alice.expect("a token for alice printed"),
        console: format!("http://127.0.0.1:{}", console.expect("console port")),
        sim_api: sim.expect("simulator URL"),
    }
}

impl Drop for Stack {
    /// A test that panics midway still leaves no stack running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Stack {
    pub(crate) fn cco(&self, args: &[&str]) -> Output {
        Command::new(CCO)
            .args(["--gateway", &self.gateway, "--allocator", &self.allocator])
            .args(args)
            .output()
            .unwrap()
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cco(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub(crate) fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(code) = self.child.try_wait().unwrap() {
                assert!(code.success(), "stack exited with {code:?}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "stack did not stop on Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The README's demo call: `call make` as alice, then `call watch` until it ends; the call id
/// and the events printed.
fn demo_call(stack: &Stack) -> (String, String) {
    let made = stack.json(&[
        "call",
        "make",
        "--tenant",
        "demo",
        "--collector",
        "alice",
        "--case",
        "case-1",
        "--to",
        "13900139000",
    ]);
    let call_id = made["call_id"].as_str().unwrap().to_owned();
    let watched = stack.cco(&[
        "call",
        "watch",
        "--tenant",
        "demo",
        "--id",
        &call_id,
        "--max-wait",
        "60",
    ]);
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    (
        call_id,
        String::from_utf8_lossy(&watched.stdout).into_owned(),
    )
}

/// The README's MariaDB variant: `cco stack` with `mysql://` URLs (fresh databases on the test
/// server) migrates both, places the demo call, and frees its extension.
#[test]
fn stack_runs_on_mariadb() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (alloc_db, gw_db) = rt.block_on(async {
        (
            cco_platform::testing::TestDb::new(cco_platform::testing::Backend::MariaDb).await,
            cco_platform::testing::TestDb::new(cco_platform::testing::Backend::MariaDb).await,
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let stack = start_with(
        dir.path(),
        &[
            ("ALLOCATOR__DATABASE__URL", &alloc_db.url),
            ("GATEWAY__DATABASE__URL", &gw_db.url),
        ],
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing written to SQLite files"
    );
    let (_, events) = demo_call(&stack);
    assert!(events.contains("COMPLETED"), "{events}");
    let stats = stack.json(&["ext", "stats", "--tenant", "demo"]);
    assert_eq!(stats["in_use"].as_u64(), Some(0), "{stats}");
    assert!(stats["available"].as_u64().unwrap_or(0) > 0, "{stats}");
    stack.stop();
    drop((alloc_db, gw_db));
}

#[test]
fn readme_stack_places_a_demo_call() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start(dir.path());
    assert!(
        dir.path().join("data/allocator.db").exists()
            && dir.path().join("data/gateway.db").exists()
    );
    let (call_id, events) = demo_call(&stack);
    assert!(
        events.contains("CREATED") && events.contains("RINGING") && events.contains("COMPLETED"),
        "watch prints the call's events: {events}"
    );
    // `call list --result` filters on the server.
    let ids = |result: &str| -> Vec<String> {
        let list = stack.json(&["call", "list", "--tenant", "demo", "--result", result]);
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["call_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids("connected"), std::slice::from_ref(&call_id));
    assert!(ids("busy").is_empty());
    // `call tail` replays the tenant's events and keeps following (stopped here by a kill).
    let mut tail = Command::new(CCO)
        .args([
            "--gateway",
            &stack.gateway,
            "--json",
            "call",
            "tail",
            "--tenant",
            "demo",
            "--from-start",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut types = Vec::new();
    for line in lines {
        let e: Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_eq!(e["call_id"], call_id.as_str());
        types.push(e["type"].as_str().unwrap().to_owned());
        if types
            .last()
            .is_some_and(|t| t == "CALL_EVENT_TYPE_COMPLETED")
        {
            break;
        }
    }
    tail.kill().unwrap();
    let _ = tail.wait();
    assert_eq!(
        types,
        [
            "CALL_EVENT_TYPE_CREATED",
            "CALL_EVENT_TYPE_RINGING",
            "CALL_EVENT_TYPE_COMPLETED"
        ]
    );
    let record = stack.json(&["call", "get", "--tenant", "demo", "--id", &call_id]);
    assert_eq!(record["status"], "CALL_STATUS_COMPLETED");
    assert_eq!(record["result"], "CALL_RESULT_CONNECTED");
    assert_eq!(record["lease_released"], true);
    let stats = stack.json(&["ext", "stats", "--tenant", "demo"]);
    assert_eq!(
        (
            stats["total"].as_u64(),
            stats["available"].as_u64(),
            stats["in_use"].as_u64()
        ),
        (Some(5), Some(5), Some(0))
    );
    // A failure exits non-zero with the server's code.
    let missing = stack.cco(&[
        "call",
        "get",
        "--tenant",
        "demo",
        "--id",
        "0123456789abcdef0123456789abcdef",
    ]);
    assert_eq!(missing.status.code(), Some(5), "NOT_FOUND");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));
    compliance_through_the_cli(&stack);
    stack.stop();

    // Again, on the same data: the demo tenant is reused, nothing is duplicated.
    let stack = start(dir.path());
    let stats = stack.json(&["ext", "stats", "--tenant", "demo"]);
    assert_eq!(stats["total"].as_u64(), Some(5));
    let calls = stack.json(&["call", "list", "--tenant", "demo"]);
    assert_eq!(
        calls.as_array().unwrap().len(),
        1,
        "the first run's record is still there"
    );
    stack.stop();
}

/// The compliance commands: a do-not-call entry refuses the call with the reason in words
/// (exit code 9, FAILED_PRECONDITION), `call check` says the same without dialling, a preset
/// is applied, and the audit lists the refusals.
fn compliance_through_the_cli(stack: &Stack) {
    let added = stack.json(&[
        "compliance",
        "dnc",
        "add",
        "--tenant",
        "demo",
        "--number",
        "13900139001",
        "--reason",
        "cease-contact",
    ]);
    assert_eq!(added["number"], "+8613900139001");
    let make = [
        "call",
        "make",
        "--tenant",
        "demo",
        "--collector",
        "alice",
        "--case",
        "case-2",
        "--to",
        "13900139001",
    ];
    let refused = stack.cco(&make);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(9), "{err}");
    assert!(
        err.contains("refused: the number is on a do-not-call list")
            && err.contains("entry_reason: cease_contact"),
        "{err}"
    );
    let check = stack.cco(&[
        "call",
        "check",
        "--tenant",
        "demo",
        "--collector",
        "alice",
        "--case",
        "case-2",
        "--to",
        "13900139001",
    ]);
    assert!(!check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("do-not-call list"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let policy = stack.json(&[
        "compliance",
        "preset",
        "--tenant",
        "demo",
        "--name",
        "us_reg_f",
        "--zone",
        "America/Chicago",
    ]);
    assert_eq!(policy["preset"], "us_reg_f");
    assert_eq!(policy["default_time_zone"], "America/Chicago");
    assert_eq!(policy["case_cap"]["max_attempts"], 7);
    let cleared = stack.json(&["compliance", "clear", "--tenant", "demo"]);
    assert_eq!(cleared["version"], "2", "int64 is a string in proto3 JSON");
    let decisions = stack.json(&[
        "compliance",
        "decisions",
        "--tenant",
        "demo",
        "--outcome",
        "refused",
    ]);
    let reasons: Vec<&str> = decisions
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["DO_NOT_CALL"]);
}

/// A client written with a mainstream gRPC-Web library from npm (Connect + protobuf-es, code
/// generated from proto/ by buf; `clients/web`) places a call as alice with her printed token,
/// watches it to completion and reads the record, in gRPC-Web binary and text, with CORS.
#[test]
fn a_web_client_calls_watches_and_reads_through_grpc_web() {
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/web");
    assert!(
        web.join("node_modules").is_dir() && web.join("gen").is_dir(),
        "clients/web is not set up: run `npm ci && npm run generate` there (.ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let stack = start(dir.path());
    let out = Command::new("node")
        .arg("test.mjs")
        .current_dir(&web)
        .env("GATEWAY_URL", &stack.gateway)
        .env("TOKEN", &stack.alice)
        .env("ORIGIN", WEB_ORIGIN)
        .output()
        .expect("node is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("web client: all checks passed"),
        "web client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same token through the CLI: alice may not act for bob.
    let refused = stack.cco(&[
        "--api-key",
        &stack.alice,
        "call",
        "make",
        "--tenant",
        "demo",
        "--collector",
        "bob",
        "--case",
        "case-9",
        "--to",
        "13900139000",
    ]);
    assert_eq!(refused.status.code(), Some(7), "PERMISSION_DENIED exits 7");
    stack.stop();
}
