//! The real binary: starts on SQLite with its defaults (file under ./data, created if missing),
//! serves health, and exits cleanly on SIGTERM.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn starts_on_sqlite_defaults_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_allocator-svc"))
        .current_dir(dir.path())
        .env("ALLOCATOR__GRPC__HOST", "127.0.0.1")
        .env("ALLOCATOR__GRPC__PORT", port.to_string())
        .env("ALLOCATOR__METRICS__ENABLED", "false")
        .env("ALLOCATOR__POLICY__SOURCE", "static")
        .env("ALLOCATOR__LOG__FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    // The file is created before the port is bound; waiting for both keeps another test's
    // listener (the freed port handed out again) from passing for ours.
    let db = dir.path().join("data/allocator.db");
    while !db.exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "allocator did not create data/allocator.db and start listening"
        );
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("allocator exited early ({status}): {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        dir.path().join("data/allocator.db").exists(),
        "SQLite file created under ./data"
    );
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let code = loop {
        if let Some(code) = child.try_wait().unwrap() {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "allocator did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(code.success(), "exit {code:?}: {out}");
    assert!(out.contains("allocator stopped"), "{out}");
}

#[test]
fn bad_settings_fail_with_the_key_named() {
    let cases: [(&[(&str, &str)], &str); 6] = [
        (
            &[("ALLOCATOR__POLICY__STATIC_STRATEGY", "fastest")],
            "policy.static_strategy",
        ),
        (
            &[
                ("ALLOCATOR__DATABASE__URL", "oracle://x"),
                ("ALLOCATOR__POLICY__SOURCE", "static"),
            ],
            "database.url",
        ),
        (
            &[("ALLOCATOR__COALESCE__MAX_BATCH", "0")],
            "coalesce.max_batch",
        ),
        (
            &[("ALLOCATOR__COALESCE__IN_FLIGHT", "65")],
            "coalesce.in_flight",
        ),
        (&[("ALLOCATOR__COALESCE__MAX_BATCH", "many")], "max_batch"),
        (
            &[("ALLOCATOR__LOG__OTLP_ENDPOINT", "collector:4317")],
            "log.otlp_endpoint",
        ),
    ];
    for (env, key) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_allocator-svc"))
            .current_dir(dir.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{env:?} was accepted");
        // (the config loader spells a key it cannot parse in capitals)
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains(key), "{env:?}: want {key} named, got {err}");
        // refused before anything was opened or written
        assert!(!dir.path().join("data").exists(), "{env:?} created ./data");
    }
}
