//! TLS to RabbitMQ: `amqps://` is a verified rustls connection or no connection at all.
//!
//! The first tests need only the shared plain broker and run with the suite. The ignored ones need the
//! TLS nodes, certificates and environment that `scripts/tls-broker.sh` makes (it runs them):
//! `POSTBOX_TLS_CERTS` (ca.pem, other-ca.pem, client.pem/.key, server.key), `POSTBOX_TLS_AMQPS_PORT`
//! (TLS, client certificates optional), `POSTBOX_TLS_PLAIN_PORT` (the same node in plain text),
//! `POSTBOX_TLS_MTLS_PORT` (another node requiring client certificates) and `POSTBOX_TLS_MANAGEMENT_URL`
//! (the first node's management API over HTTPS only). The server certificate names `localhost` only.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use postbox::{RunError, broker::BrokerError, config::Config};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{spawn_app_with, test_config};

const BIN: &str = env!("CARGO_BIN_EXE_postbox");

/// The `postbox` binary with `config`'s broker settings, TLS files included (and only those).
fn postbox(config: &Config) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("DATABASE_URL", &config.database_url)
        .env("AMQP_URL", &config.amqp_url)
        .env("POSTBOX_BROKER_PREFIX", &config.broker_prefix)
        .env("POSTBOX_BACKEND_TIMEOUT", "3")
        .env("RUST_LOG", "off");
    for (var, value) in [
        ("POSTBOX_AMQP_CA_FILE", &config.amqp_ca_file),
        ("POSTBOX_AMQP_CLIENT_CERT", &config.amqp_client_cert),
        ("POSTBOX_AMQP_CLIENT_KEY", &config.amqp_client_key),
    ] {
        match value {
            Some(path) => cmd.env(var, path),
            None => cmd.env_remove(var),
        };
    }
    cmd.env_remove("POSTBOX_MANAGEMENT_URL");
    cmd
}

/// Runs `postbox serve` on a free port; it must refuse to start. Returns its standard error.
fn serve_refuses(config: &Config) -> String {
    let out = postbox(config)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "serve must refuse: {stderr}");
    stderr
}

/// Runs `postbox check-rabbitmq [args]`: exit code, standard output, standard error.
fn check(config: &Config, args: &[&str]) -> (Option<i32>, String, String) {
    let out = postbox(config)
        .arg("check-rabbitmq")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn offline_config() -> Config {
    let mut config = test_config();
    config.database_url = "sqlite::memory:".into();
    config
}

#[test]
fn tls_files_that_cannot_work_stop_the_service_before_it_connects() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-certificate.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let mut config = offline_config();
    config.amqp_url = "amqps://guest:guest@localhost:5671/%2f".into();

    config.amqp_ca_file = Some(dir.path().join("missing.pem"));
    let stderr = serve_refuses(&config);
    assert!(
        stderr.contains("POSTBOX_AMQP_CA_FILE") && stderr.contains("cannot read it"),
        "{stderr}"
    );

    config.amqp_ca_file = Some(not_pem.clone());
    let stderr = serve_refuses(&config);
    assert!(
        stderr.contains("POSTBOX_AMQP_CA_FILE") && stderr.contains("holds no PEM certificate"),
        "{stderr}"
    );

    config.amqp_ca_file = None;
    config.amqp_client_cert = Some(not_pem.clone());
    let stderr = serve_refuses(&config);
    assert!(stderr.contains("go together: set both"), "{stderr}");

    // TLS settings with a plain URL are refused, not ignored: nothing would encrypt the connection.
    config.amqp_client_cert = None;
    config.amqp_ca_file = Some(not_pem);
    config.amqp_url = crate::helpers::amqp_url();
    let stderr = serve_refuses(&config);
    assert!(
        stderr.contains("amqp:// (plain text, no TLS)") && stderr.contains("amqps://"),
        "{stderr}"
    );
    let (code, _, stderr) = check(&config, &[]);
    assert_eq!(code, Some(1), "{stderr}");
}

/// The regression this module exists for: built without a TLS feature, lapin connected an `amqps://`
/// URL in plain text, and `check-rabbitmq` said OK. Against the shared broker's plain listener.
#[test]
fn amqps_to_a_plain_text_listener_never_connects() {
    let mut config = offline_config();
    let plain = reqwest::Url::parse(&crate::helpers::amqp_url()).unwrap();
    config.amqp_url = format!(
        "amqps://guest:guest@{}:{}/%2f",
        plain.host_str().unwrap(),
        plain.port().unwrap_or(5672)
    );
    let stderr = serve_refuses(&config);
    assert!(
        stderr.contains("TLS handshake with RabbitMQ at") && stderr.contains("does not speak TLS"),
        "{stderr}"
    );
    let (code, stdout, stderr) = check(&config, &[]);
    assert_eq!(code, Some(6), "{stdout}{stderr}");
    assert!(!stdout.contains("OK"), "{stdout}");
    assert!(stderr.contains("does not speak TLS"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------------
// Against the TLS nodes of scripts/tls-broker.sh
// ---------------------------------------------------------------------------------------------------

struct Nodes {
    certs: PathBuf,
    amqps_port: u16,
    plain_port: u16,
    mtls_port: u16,
    management_url: String,
}

fn nodes() -> Nodes {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: this test needs the TLS RabbitMQ nodes of scripts/tls-broker.sh"
            )
        })
    };
    let port = |name: &str| var(name).parse::<u16>().expect("a port number");
    Nodes {
        certs: PathBuf::from(var("POSTBOX_TLS_CERTS")),
        amqps_port: port("POSTBOX_TLS_AMQPS_PORT"),
        plain_port: port("POSTBOX_TLS_PLAIN_PORT"),
        mtls_port: port("POSTBOX_TLS_MTLS_PORT"),
        management_url: var("POSTBOX_TLS_MANAGEMENT_URL"),
    }
}

impl Nodes {
    fn cert(&self, name: &str) -> PathBuf {
        self.certs.join(name)
    }

    fn url(&self, host: &str, port: u16) -> String {
        format!("amqps://guest:guest@{host}:{port}/%2f")
    }

    /// `config` pointed at the TLS node, trusting the test CA.
    fn trusting(&self, config: &mut Config) {
        config.amqp_url = self.url("localhost", self.amqps_port);
        config.amqp_ca_file = Some(self.cert("ca.pem"));
    }

    /// A management API request over HTTPS, trusting only the test CA.
    async fn management(&self, path: &str) -> Value {
        let pem = std::fs::read(self.cert("ca.pem")).unwrap();
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        let resp = client
            .get(format!("{}/api/{path}", self.management_url))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }
}

fn exists(path: &Path) -> &Path {
    assert!(path.exists(), "{} is missing", path.display());
    path
}

#[tokio::test]
#[ignore = "needs a TLS RabbitMQ node: run by scripts/tls-broker.sh"]
async fn amqps_with_the_ca_file_carries_a_message_to_a_long_poll() {
    let nodes = nodes();
    let app = spawn_app_with(|c| nodes.trusting(c)).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let waiting = app.spawn_poll(&bob);
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.send_ok(&alice, bob.id, "over TLS").await;
    let (_, resp) = waiting.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut events: Vec<Value> = resp.json::<Value>().await.unwrap()["events"]
        .as_array()
        .unwrap()
        .clone();
    if events.is_empty() {
        events = app.collect_events(&bob, 1, 3).await;
    }
    assert_eq!(events[0]["data"]["message"], "over TLS", "{events:?}");

    // The broker's own view: Postbox's connections are TLS ones (nothing connects to this node in
    // plain text; the management API registers a connection a moment after it opens).
    let mut connections = Vec::new();
    for _ in 0..40 {
        connections = nodes
            .management("connections")
            .await
            .as_array()
            .unwrap()
            .clone();
        if !connections.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!connections.is_empty(), "no connection registered");
    for c in &connections {
        assert_eq!(c["ssl"], true, "a connection without TLS: {c:#}");
        assert!(
            c["ssl_protocol"]
                .as_str()
                .is_some_and(|p| p.starts_with("tlsv1.")),
            "{c:#}"
        );
    }
}

#[tokio::test]
#[ignore = "needs a TLS RabbitMQ node: run by scripts/tls-broker.sh"]
async fn amqps_that_does_not_verify_never_connects() {
    let nodes = nodes();
    let mut config = offline_config();
    nodes.trusting(&mut config);

    // No CA file: the system trust store does not know the test CA.
    config.amqp_ca_file = None;
    let stderr = serve_refuses(&config);
    assert!(
        stderr.contains(&format!(
            "TLS handshake with RabbitMQ at localhost:{} failed",
            nodes.amqps_port
        )) && stderr.contains("UnknownIssuer")
            && stderr.contains("set POSTBOX_AMQP_CA_FILE"),
        "{stderr}"
    );
    // Classified as a TLS failure (what `serve` and `check-rabbitmq` act on), in-process.
    match postbox::connect(config.clone(), Default::default()).await {
        Err(RunError::Broker(BrokerError::Tls(message))) => {
            assert!(message.contains("UnknownIssuer"), "{message}")
        }
        Err(other) => panic!("not a TLS error: {other}"),
        Ok(_) => panic!("connected without trusting the broker's certificate"),
    }

    // A CA file, but not the one that signed the broker's certificate.
    config.amqp_ca_file = Some(exists(&nodes.cert("other-ca.pem")).to_owned());
    let stderr = serve_refuses(&config);
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");

    // The right CA, a host name the certificate does not list (it names `localhost` only).
    config.amqp_ca_file = Some(nodes.cert("ca.pem"));
    config.amqp_url = nodes.url("127.0.0.1", nodes.amqps_port);
    let stderr = serve_refuses(&config);
    assert!(
        stderr.contains("not valid for name") && stderr.contains("subjectAltName"),
        "{stderr}"
    );

    // amqps:// to the same node's plain-text listener.
    config.amqp_url = nodes.url("localhost", nodes.plain_port);
    let stderr = serve_refuses(&config);
    assert!(stderr.contains("does not speak TLS"), "{stderr}");
}

#[tokio::test]
#[ignore = "needs a TLS RabbitMQ node: run by scripts/tls-broker.sh"]
async fn check_rabbitmq_reports_tls_over_amqps_and_https() {
    let nodes = nodes();
    let mut config = offline_config();
    nodes.trusting(&mut config);
    let management = ["--management-url", nodes.management_url.as_str()];

    let (code, stdout, stderr) = check(&config, &[&management[..], &["--json"]].concat());
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["transport"], "tls", "{report:#}");
    let tls = &report["tls"];
    assert_eq!(tls["library"], "rustls");
    assert!(
        ["TLS 1.2", "TLS 1.3"].contains(&tls["protocol"].as_str().unwrap()),
        "{tls}"
    );
    assert!(tls["cipher"].as_str().unwrap().starts_with("TLS"), "{tls}");
    assert!(
        tls["verified_with"]
            .as_str()
            .unwrap()
            .contains("POSTBOX_AMQP_CA_FILE"),
        "{tls}"
    );
    assert_eq!(tls["client_certificate"], false);
    // The management API answered over HTTPS, verified with the same CA file.
    assert_eq!(report["management"]["reachable"], true, "{report:#}");
    assert_eq!(report["management"]["url"], nodes.management_url.as_str());

    let (code, stdout, _) = check(&config, &management);
    assert_eq!(code, Some(0), "{stdout}");
    let transport: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("transport"))
        .collect();
    assert_eq!(transport.len(), 1, "{stdout}");
    assert!(
        transport[0].starts_with("transport       TLS (rustls: TLS 1."),
        "{stdout}"
    );

    // By default an amqps:// broker's management API is looked for over HTTPS (port 15671), never
    // with the credentials in clear text on 15672.
    let (_, stdout, _) = check(&config, &["--json"]);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["management"]["url"], "https://localhost:15671");

    // Without the CA: exit code 6 and one line naming what to set.
    config.amqp_ca_file = None;
    let (code, stdout, stderr) = check(&config, &management);
    assert_eq!(code, Some(6), "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one-line message: {stderr}");
    assert!(
        stderr.contains("TLS handshake with RabbitMQ at")
            && stderr.contains("UnknownIssuer")
            && stderr.contains("POSTBOX_AMQP_CA_FILE"),
        "{stderr}"
    );
    let (code, stdout, _) = check(&config, &[&management[..], &["--json"]].concat());
    assert_eq!(code, Some(6));
    let failure: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(failure["exit_code"], 6);
}

#[tokio::test]
#[ignore = "needs a TLS RabbitMQ node: run by scripts/tls-broker.sh"]
async fn a_broker_requiring_client_certificates_takes_postboxes_and_refuses_others() {
    let nodes = nodes();
    let with_identity = |c: &mut Config| {
        nodes.trusting(c);
        c.amqp_url = nodes.url("localhost", nodes.mtls_port);
        c.amqp_client_cert = Some(nodes.cert("client.pem"));
        c.amqp_client_key = Some(nodes.cert("client.key"));
    };
    let app = spawn_app_with(with_identity).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    app.send_ok(&alice, bob.id, "mutual").await;
    let events = app.collect_events(&bob, 1, 3).await;
    assert_eq!(events[0]["data"]["message"], "mutual", "{events:?}");

    let mut config = offline_config();
    with_identity(&mut config);
    let (code, stdout, stderr) = check(
        &config,
        &["--json", "--management-url", "http://127.0.0.1:1"],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["tls"]["client_certificate"], true, "{report:#}");

    // Without the client certificate the broker ends the handshake; Postbox says what to set.
    config.amqp_client_cert = None;
    config.amqp_client_key = None;
    let (code, stdout, stderr) = check(&config, &["--management-url", "http://127.0.0.1:1"]);
    assert_eq!(code, Some(6), "{stdout}{stderr}");
    assert!(
        stderr.contains("POSTBOX_AMQP_CLIENT_CERT") && stderr.contains("POSTBOX_AMQP_CLIENT_KEY"),
        "{stderr}"
    );
    let stderr = serve_refuses(&config);
    assert!(stderr.contains("POSTBOX_AMQP_CLIENT_CERT"), "{stderr}");

    // A key that is not the certificate's: refused at start-up, before any connection.
    config.amqp_client_cert = Some(nodes.cert("client.pem"));
    config.amqp_client_key = Some(exists(&nodes.cert("server.key")).to_owned());
    let stderr = serve_refuses(&config);
    assert!(
        stderr.contains("do not make a usable client identity"),
        "{stderr}"
    );
}
