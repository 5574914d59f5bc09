//! The `postbox` binary itself: `check-rabbitmq` diagnostics, and a SIGKILL with events in flight.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use lapin::{
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{spawn_app, test_config};

const BIN: &str = env!("CARGO_BIN_EXE_postbox");

fn postbox(config: &postbox::config::Config) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("DATABASE_URL", &config.database_url)
        .env("AMQP_URL", &config.amqp_url)
        .env("POSTBOX_BROKER_PREFIX", &config.broker_prefix)
        .env(
            "POSTBOX_QUEUE_EXPIRES",
            config.queue_expires_secs.to_string(),
        )
        .env("POSTBOX_BACKEND_TIMEOUT", "3")
        .env("RUST_LOG", "warn");
    cmd
}

#[tokio::test]
async fn check_rabbitmq_reports_the_broker_and_finds_mismatched_queues() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let carol = app.member("carol").await;
    app.send_ok(&alice, bob.id, "one").await;

    // The management API's counts lag by its statistics interval: wait until they show the message.
    let (code, report) = check_until(&app.config, &[], |r| r["ready_messages"] == 1).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["product"], "RabbitMQ");
    assert!(
        report["version"].as_str().unwrap().starts_with('3')
            || report["version"].as_str().unwrap().starts_with('4')
    );
    assert!(report["round_trip_ms"].as_f64().unwrap() > 0.0);
    // The message went to bob's postbox only: alice registered no client, so no copy comes back to
    // her; carol has none.
    assert_eq!(report["postbox_queues"], 1);
    assert_eq!(report["ready_messages"], 1);

    // A queue left by an older configuration, with another max length.
    let conn = app.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(5));
    ch.queue_declare(
        app.queue_name(&carol).into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    let out = postbox(&app.config).arg("check-rabbitmq").output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&app.queue_name(&carol)), "{stderr}");
    assert!(stderr.contains("rabbitmqctl delete_queue"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one-line message: {stderr}");

    // The service itself refuses carol's postbox with a clear 503 instead of crashing.
    let resp = app.poll(&carol).await;
    let body = crate::helpers::assert_error(resp, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["error"], "broker_misconfigured");
    ch.queue_delete(app.queue_name(&carol).into(), Default::default())
        .await
        .unwrap();
}

#[test]
fn check_rabbitmq_explains_an_unreachable_or_refusing_broker() {
    let mut config = test_config();
    config.database_url = "sqlite::memory:".into();
    config.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let out = postbox(&config).arg("check-rabbitmq").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not reachable") && stderr.contains("AMQP_URL"),
        "{stderr}"
    );

    config.amqp_url = "amqp://guest:wrong-password@127.0.0.1:5672/%2f".into();
    let out = postbox(&config).arg("check-rabbitmq").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ACCESS_REFUSED") && !stderr.contains("wrong-password"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_refuses_to_start_without_a_broker_with_a_clear_message() {
    let mut config = test_config();
    config.database_url = "sqlite::memory:".into();
    config.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let out = postbox(&config)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to RabbitMQ") && stderr.contains("rabbitmq-server"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigkill_with_events_held_by_the_consumer_loses_nothing() {
    // The app from spawn_app provides the database and a user pair; a separate `postbox serve` process
    // on the same database and prefix is the one we kill.
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let port = free_port();
    let mut child = postbox(&app.config)
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--poll-timeout",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let poll_child = async || {
        client
            .get(format!(
                "{base}/api/v1/communication/poll/events/?token={}",
                bob.token
            ))
            .send()
            .await
    };
    let mut up = false;
    for _ in 0..100 {
        if poll_child()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the child service did not start");
    // Bob's consumer now lingers in the child; events sent now are pushed into it, unacknowledged.
    for i in 0..3 {
        let r = client
            .post(format!("{base}/api/v1/communication/chats/"))
            .header("Authorization", format!("Token {}", alice.token))
            .json(&serde_json::json!({"receiver": bob.id, "message": format!("held {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.queue_depth(&app.queue_name(&bob)).await,
        Some(0),
        "the child holds them unacked"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // RabbitMQ requeued them when the child's connection died; the surviving instance delivers them.
    let texts: Vec<String> = app
        .collect_events(&bob, 3, 5)
        .await
        .iter()
        .map(|e| e["data"]["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["held 0", "held 1", "held 2"]);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `check-rabbitmq --json` with `args` until `done` accepts the report (figures read from the
/// management API lag by its statistics interval: 5 s by default, 30 s with rabbitmq/rabbitmq.conf), or
/// 75 s pass. Returns the exit code and the last report.
async fn check_until(
    config: &postbox::config::Config,
    args: &[&str],
    done: impl Fn(&Value) -> bool,
) -> (Option<i32>, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(75);
    loop {
        let out = tokio::process::Command::from(postbox(config))
            .args(["check-rabbitmq", "--json"])
            .args(args)
            .output()
            .await
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "not a JSON report ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        if done(&report) || std::time::Instant::now() > deadline {
            return (out.status.code(), report);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The management API of the test broker: base URL and credentials (`POSTBOX_MANAGEMENT_URL` if set,
/// else the AMQP host on port 15672 with the AMQP credentials, as `check-rabbitmq` derives it).
fn management() -> (String, String, String) {
    let amqp = reqwest::Url::parse(&crate::helpers::amqp_url()).unwrap();
    let base = std::env::var("POSTBOX_MANAGEMENT_URL")
        .unwrap_or_else(|_| format!("http://{}:15672", amqp.host_str().unwrap()));
    let base = reqwest::Url::parse(&base).unwrap();
    let (user, password) = if base.username().is_empty() {
        (amqp.username(), amqp.password())
    } else {
        (base.username(), base.password())
    };
    let decode = |s: &str| {
        s.replace("%40", "@")
            .replace("%3A", ":")
            .replace("%2F", "/")
    };
    let mut plain = base.clone();
    plain.set_username("").unwrap();
    plain.set_password(None).unwrap();
    (
        plain.as_str().trim_end_matches('/').to_owned(),
        decode(if user.is_empty() { "guest" } else { user }),
        decode(password.unwrap_or("guest")),
    )
}

/// A management API request as the test broker's administrator; panics unless it succeeds (the API
/// gets 10 s to come up: scripts/services.sh may have just enabled the plugin).
async fn management_call(method: reqwest::Method, path: &str, body: Option<Value>) {
    let (base, user, password) = management();
    let mut tries = 0;
    let resp = loop {
        let mut request = reqwest::Client::new()
            .request(method.clone(), format!("{base}/api/{path}"))
            .basic_auth(&user, Some(&password));
        if let Some(body) = &body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(resp) => break resp,
            Err(_) if tries < 40 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!(
                "the RabbitMQ management API is not reachable at {base} ({e}); \
                 enable it with `rabbitmq-plugins enable rabbitmq_management`"
            ),
        }
    };
    assert!(
        resp.status().is_success(),
        "{path}: {}",
        resp.text().await.unwrap_or_default()
    );
}

#[tokio::test]
async fn check_rabbitmq_reads_the_management_api() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let carol = app.member("carol").await;
    let dave = app.member("dave").await;
    let erin = app.member("erin").await;
    // Dave's tab gets its own postbox (`<prefix>.client.<id>.tab1`), counted with the others.
    let resp = app
        .post_json(
            &dave,
            "/api/v1/communication/poll/register/",
            json!({"client_id": "tab1"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    for i in 0..3 {
        app.send_ok(&alice, bob.id, &format!("to bob {i}")).await;
        app.send_ok(&bob, alice.id, &format!("to alice {i}")).await;
    }
    app.send_ok(&carol, dave.id, "to dave").await;
    // Ready now: alice 3, bob 3, dave 1, dave's tab 1 (no sender registered a client: no copies for
    // their devices, and carol has no postbox). Two of alice's are taken without an ack: 1 ready and 2
    // unacked remain.
    let conn = app.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    for _ in 0..2 {
        let got = ch
            .basic_get(
                app.queue_name(&alice).into(),
                lapin::options::BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap();
        assert!(got.is_some(), "alice's postbox holds bob's messages");
    }

    let (code, report) = check_until(&app.config, &[], |r| {
        r["ready_messages"] == 6 && r["unacked_messages"] == 2
    })
    .await;
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["management"]["reachable"], true, "{report:#}");
    assert_eq!(report["management"]["error"], Value::Null);
    assert_eq!(report["management"]["url"], management().0);
    assert_eq!(report["queues_source"], "management_api");
    // Only this test's postboxes: the listing is per prefix, whatever other tests run in parallel.
    assert_eq!(report["postbox_queues"], 4, "{report:#}");
    assert_eq!(report["ready_messages"], 6);
    assert_eq!(report["unacked_messages"], 2);
    let fullest = report["fullest"].as_array().unwrap();
    assert_eq!(
        fullest[0],
        json!({"queue": app.queue_name(&bob), "ready": 3, "unacked": 0, "consumers": 0}),
        "{report:#}"
    );
    assert_eq!(
        fullest[1],
        json!({"queue": app.queue_name(&alice), "ready": 1, "unacked": 2, "consumers": 0}),
        "ties on ready: more unacked first"
    );
    assert_eq!(
        fullest.len(),
        4,
        "every postbox with ready messages, at most 5"
    );
    assert!(
        fullest
            .iter()
            .any(|q| q["queue"] == format!("{}.client.{}.tab1", app.config.broker_prefix, dave.id))
    );
    assert!(
        fullest.iter().all(|q| q["queue"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}.", app.config.broker_prefix))),
        "{report:#}"
    );
    assert_eq!(report["mismatched_queues"], json!([]));
    assert_eq!(report["exchange_present"], true);
    assert_eq!(report["permissions"]["covers_postbox_names"], true);
    assert!(report["permissions"]["configure"].is_string());
    assert!(report["overview"]["rabbitmq_version"].is_string());
    assert!(report["overview"]["queues"].as_u64().unwrap() >= 4);
    for key in [
        "product",
        "version",
        "exchange",
        "round_trip_ms",
        "postbox_queues",
        "ready_messages",
        "mismatched_queues",
        "notes",
    ] {
        assert!(report.get(key).is_some(), "{key} kept in the JSON report");
    }

    // The text report: one line per item, no password.
    let out = tokio::process::Command::from(postbox(&app.config))
        .arg("check-rabbitmq")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |label: &str| {
        text.lines()
            .filter(|l| l.starts_with(label))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(line("management").len(), 1, "{text}");
    assert!(line("management")[0].contains("reachable"), "{text}");
    assert!(line("permissions")[0].contains("configure '"), "{text}");
    assert_eq!(line("unacked"), ["unacked         2 message(s)"], "{text}");
    assert_eq!(line("fullest").len(), 4, "{text}");
    assert_eq!(
        line("fullest")[0],
        format!(
            "fullest         {}: 3 ready, 0 unacked, 0 consumer(s)",
            app.queue_name(&bob)
        )
    );
    assert!(text.lines().last() == Some("OK"), "{text}");
    assert!(!text.contains(":guest@"), "no password: {text}");

    // A postbox left by an older configuration: named, with what differs, exit code 4.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(5));
    ch.queue_declare(
        app.queue_name(&erin).into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    let (code, report) =
        check_until(&app.config, &[], |r| r["mismatched_queues"] != json!([])).await;
    assert_eq!(code, Some(4), "{report:#}");
    assert_eq!(report["mismatched_queues"], json!([app.queue_name(&erin)]));
    let differences = &report["mismatches"][0]["differences"];
    assert!(
        differences
            .as_array()
            .unwrap()
            .contains(&json!("x-max-length is 5, expected 100")),
        "{differences}"
    );
    assert!(
        differences
            .as_array()
            .unwrap()
            .contains(&json!("x-overflow is missing, expected drop-head")),
        "{differences}"
    );
    ch.queue_delete(app.queue_name(&erin).into(), Default::default())
        .await
        .unwrap();
    let _ = conn.close(200, "OK".into()).await;
}

#[tokio::test]
async fn check_rabbitmq_works_through_amqp_without_the_management_api() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    app.send_ok(&alice, bob.id, "one").await;

    let out = tokio::process::Command::from(postbox(&app.config))
        .args(["check-rabbitmq", "--management-url", "http://127.0.0.1:1"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("management API not reachable at http://127.0.0.1:1 (")
            && text.contains("rabbitmq-plugins enable rabbitmq_management"),
        "{text}"
    );
    assert!(text.contains("unacked         unknown"), "{text}");
    assert!(text.contains("fullest         unknown"), "{text}");
    assert!(
        text.contains("postboxes       1 queue(s), 1 ready"),
        "{text}"
    );

    // The same through the environment, as JSON: AMQP's counts are current, no waiting.
    let out = tokio::process::Command::from(postbox(&app.config))
        .env("POSTBOX_MANAGEMENT_URL", "http://127.0.0.1:1")
        .args(["check-rabbitmq", "--json"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["management"]["reachable"], false);
    assert_eq!(report["management"]["url"], "http://127.0.0.1:1");
    assert!(report["management"]["error"].is_string(), "{report:#}");
    assert_eq!(report["queues_source"], "amqp");
    assert_eq!(report["postbox_queues"], 1);
    assert_eq!(report["ready_messages"], 1);
    assert_eq!(report["unacked_messages"], Value::Null);
    assert_eq!(report["fullest"], Value::Null);
    assert_eq!(report["permissions"], Value::Null);
}

/// A broker user created for one test through the management API, deleted when dropped.
struct BrokerUser {
    name: String,
    password: String,
}

impl BrokerUser {
    async fn create() -> Self {
        let user = BrokerUser {
            name: format!(
                "pbt-user-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            password: format!("pw-{}", uuid::Uuid::new_v4().simple()),
        };
        // An administrator, so that the management API shows it its own permissions.
        management_call(
            reqwest::Method::PUT,
            &format!("users/{}", user.name),
            Some(json!({"password": user.password, "tags": "administrator"})),
        )
        .await;
        user
    }

    async fn set_permissions(&self, pattern: &str) {
        management_call(
            reqwest::Method::PUT,
            &format!("permissions/%2F/{}", self.name),
            Some(json!({"configure": pattern, "write": pattern, "read": pattern})),
        )
        .await;
    }

    fn amqp_url(&self) -> String {
        let mut url = reqwest::Url::parse(&crate::helpers::amqp_url()).unwrap();
        url.set_username(&self.name).unwrap();
        url.set_password(Some(&self.password)).unwrap();
        url.to_string()
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let name = self.name.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(management_call(
                    reqwest::Method::DELETE,
                    &format!("users/{name}"),
                    None,
                ))
        })
        .join()
        .ok();
    }
}

#[tokio::test]
async fn check_rabbitmq_judges_the_users_permissions() {
    let mut config = test_config();
    config.database_url = "sqlite::memory:".into();
    let prefix = config.broker_prefix.clone();
    let user = BrokerUser::create().await;
    config.amqp_url = user.amqp_url();

    // Exactly the production advice (rabbitmq/README.md): everything under `<prefix>.`. The whole
    // check, round trip included, works with it.
    let ours = format!(r"^{prefix}\..*");
    user.set_permissions(&ours).await;
    let (code, report) = check_until(&config, &[], |r| r["management"]["reachable"] == true).await;
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["management"]["user"], user.name.as_str());
    let permissions = &report["permissions"];
    assert_eq!(permissions["user"], user.name.as_str());
    assert_eq!(permissions["vhost"], "/");
    assert_eq!(permissions["configure"], ours.as_str());
    assert_eq!(permissions["covers_postbox_names"], true, "{report:#}");

    // Names of another application only: refused, and the report says why (exit code 5).
    user.set_permissions(r"^elsewhere\..*").await;
    let out = tokio::process::Command::from(postbox(&config))
        .arg("check-rabbitmq")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains(&user.name) && stderr.contains("rabbitmqctl set_permissions"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{prefix}.events")), "{stderr}");
    assert!(!stderr.contains(&user.password), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one-line message: {stderr}");

    // Leave nothing behind on the shared broker.
    for path in [
        format!("queues/%2F/{prefix}.deadletters"),
        format!("exchanges/%2F/{prefix}.deadletter"),
        format!("exchanges/%2F/{prefix}.events"),
    ] {
        management_call(reqwest::Method::DELETE, &path, None).await;
    }
}

#[tokio::test]
async fn sigterm_answers_waiting_polls_exits_cleanly_and_logs_no_secrets() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let port = free_port();
    let child = postbox(&app.config)
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--poll-timeout",
            "30",
            "--log-json",
        ])
        .env("RUST_LOG", "postbox=debug,tower_http=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the child service did not start");
    let secret_text = "very secret message body 7f3a";
    let r = client
        .post(format!(
            "{base}/api/v1/communication/chats/?token={}",
            alice.token
        ))
        .json(&serde_json::json!({"receiver": bob.id, "message": secret_text}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Bob receives it, then waits on an empty postbox (deadline 30 s).
    let first = client
        .get(format!(
            "{base}/api/v1/communication/poll/events/?token={}",
            bob.token
        ))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(first["events"][0]["data"]["message"], secret_text);
    let waiting = {
        let (client, url) = (
            client.clone(),
            format!("{base}/api/v1/communication/poll/events/"),
        );
        let auth = format!("Token {}", bob.token);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = client
                .get(url)
                .header("Authorization", auth)
                .send()
                .await
                .unwrap();
            (started.elapsed(), r.status())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Metrics count from the start, not from the first scrape: this is the child's first one.
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l == "postbox_polls_in_flight 1"),
        "one poll waits: {metrics}"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (held, status) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        held < Duration::from_secs(10),
        "the waiting poll was held {held:?} after SIGTERM"
    );
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "clean exit after SIGTERM");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("shutdown requested") && logs.contains("postbox stopped"),
        "{logs}"
    );
    assert!(
        logs.lines().all(|l| l.trim_start().starts_with('{')),
        "JSON lines: {logs}"
    );
    assert!(
        logs.contains("request_id"),
        "requests are logged with their id"
    );
    for secret in [alice.token.as_str(), bob.token.as_str(), secret_text] {
        assert!(!logs.contains(secret), "a secret leaked into the logs");
    }
}

/// A parked outbox row: `check-rabbitmq` reports it (exit code 7, with its error), `outbox list` shows
/// it, `outbox retry` gives it back and the relay delivers it.
#[tokio::test]
async fn parked_events_are_reported_listed_and_retried() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let event = postbox::events::Envelope::custom("test", &json!({"n": 1}));
    let event_id = event.id.clone();
    let pending = postbox::db::outbox::insert(
        &app.db,
        vec![postbox::events::Audience::Users(vec![alice.id])],
        event,
    )
    .await
    .unwrap();
    let row = pending[0].outbox_id;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    postbox::db::outbox::failed(&app.db, row, "refused for the test", later, true)
        .await
        .unwrap();

    let (code, report) = check_until(&app.config, &[], |_| true).await;
    assert_eq!(code, Some(7), "{report:#}");
    assert_eq!(report["parked_events"]["count"], 1);
    assert_eq!(
        report["parked_events"]["oldest_error"],
        "refused for the test"
    );

    let out = postbox(&app.config)
        .args(["outbox", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["id"], row, "{listed}");
    assert_eq!(listed[0]["event_id"], event_id.as_str());
    assert_eq!(listed[0]["audience"], format!("user.{}", alice.id));

    let out = postbox(&app.config)
        .args(["outbox", "retry"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let retried: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(retried["retried"], 1);
    let events = app.collect_events(&alice, 1, 20).await;
    assert!(
        events.iter().any(|e| e["id"] == event_id.as_str()),
        "the relay delivered it: {events:?}"
    );
    let (code, report) = check_until(&app.config, &[], |_| true).await;
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["parked_events"]["count"], 0);
}
