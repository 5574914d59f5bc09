//! `postbox-loadtest` against a real spawned service: a short run of each mode must complete, lose and
//! duplicate nothing, and write a JSON report that parses. No timing assertions.

use std::process::Command;

use serde_json::Value;

use crate::helpers::spawn_app;

const BIN: &str = env!("CARGO_BIN_EXE_postbox-loadtest");

#[tokio::test]
async fn a_short_send_run_loses_and_duplicates_nothing() {
    let app = spawn_app().await;
    let admin = app.create_user("lt-admin", "admin").await;
    let report = tokio::task::spawn_blocking({
        let token = admin.token.clone();
        let app_addr = app.addr.clone();
        let config = app.config.clone();
        move || {
            let app = AppRef {
                addr: app_addr,
                config,
            };
            run(
                &app,
                &token,
                &[
                    "--users",
                    "5",
                    "--senders",
                    "4",
                    "--rate",
                    "50",
                    "--duration",
                    "2",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(report["mode"], "send");
    assert_eq!(report["available"], true);
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent > 0, "{report:#}");
    assert_eq!(report["lost"], 0, "{report:#}");
    assert_eq!(report["duplicated"], 0, "{report:#}");
    assert_eq!(report["delivered"].as_u64().unwrap(), sent, "{report:#}");
    assert_eq!(report["send_errors"], 0, "{report:#}");
    assert!(report["delivery_latency_ms"]["p99"].as_f64().is_some());
    assert!(report["polls"].as_u64().unwrap() > 0);
    assert!(
        report["server"]["cpu_secs"].as_f64().is_some(),
        "{report:#}"
    );
    assert!(report["server"]["peak_rss_mb"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn idle_broadcast_and_raw_modes_complete() {
    let app = spawn_app().await;
    let admin = app.create_user("lt-admin", "admin").await;
    let (addr, config, token) = (app.addr.clone(), app.config.clone(), admin.token.clone());
    let (idle, broadcast, raw) = tokio::task::spawn_blocking(move || {
        let app = AppRef { addr, config };
        let idle = run(
            &app,
            &token,
            &["--mode", "idle", "--users", "3", "--duration", "1"],
        );
        let broadcast = run(
            &app,
            &token,
            &[
                "--mode",
                "broadcast",
                "--users",
                "3",
                "--duration",
                "1",
                "--drain",
                "2",
            ],
        );
        let raw = run(
            &app,
            &token,
            &[
                "--mode",
                "raw",
                "--users",
                "3",
                "--senders",
                "2",
                "--rate",
                "50",
                "--duration",
                "1",
            ],
        );
        (idle, broadcast, raw)
    })
    .await
    .unwrap();

    assert_eq!(idle["mode"], "idle");
    assert_eq!(idle["sent"], 0);
    assert_eq!(idle["poll_errors"], 0, "{idle:#}");

    // One notification to a college of 3: every member has it.
    let b = &broadcast["broadcast"];
    assert_eq!(broadcast["available"], true, "{broadcast:#}");
    assert_eq!(b["status"], 201, "{broadcast:#}");
    assert_eq!(b["members"], 3, "{broadcast:#}");
    assert_eq!(b["received"], b["members"], "{broadcast:#}");

    assert_eq!(raw["mode"], "raw");
    assert!(raw["sent"].as_u64().unwrap() > 0, "{raw:#}");
    assert_eq!(raw["lost"], 0, "{raw:#}");
    assert_eq!(raw["duplicated"], 0, "{raw:#}");
    assert!(raw["params"]["message_size"].as_u64().unwrap() > 64);
}

/// What a blocking thread needs of the app to run the binary against it.
struct AppRef {
    addr: String,
    config: postbox::config::Config,
}

/// Runs `postbox-loadtest` with `args` against the app (from a blocking thread: the service runs on
/// this test's runtime) and returns the parsed JSON report.
fn run(app: &AppRef, admin_token: &str, args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(BIN)
        .args(["--url", &app.addr, "--admin-token", admin_token])
        .args(["--amqp-url", &app.config.amqp_url])
        // The service runs inside this test process.
        .args(["--server-pid", &std::process::id().to_string()])
        .arg("--json")
        .arg(&json)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("mode"), "{stdout}");
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}
