//! Broker outages, injected with a TCP proxy in front of the real RabbitMQ (so other tests, which share
//! the broker, are not disturbed): sends answer 503 while events cannot be published, and every send
//! that answered 201 is delivered once the broker is back.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use reqwest::StatusCode;
use tokio::{net::TcpListener, task::JoinSet};

use crate::helpers::{assert_error, spawn_app_with};

/// Forwards TCP connections to a real server (RabbitMQ, PostgreSQL) until cut; while cut, every
/// connection is refused.
pub struct TcpProxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    links: Arc<tokio::sync::Mutex<JoinSet<()>>>,
}

impl TcpProxy {
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let links = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let (up2, links2) = (up.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                links2.lock().await.spawn(async move {
                    if let Ok(mut upstream) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        TcpProxy { port, up, links }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Drops every open connection and refuses new ones.
    pub async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.links.lock().await.abort_all();
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn broker_outage_answers_503_and_loses_no_acknowledged_send() {
    let proxy = TcpProxy::start(5672).await;
    let app = spawn_app_with(|c| {
        c.amqp_url = proxy.amqp_url();
        c.backend_timeout_secs = 1;
    })
    .await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;

    let mut acknowledged = HashSet::new();
    let mut send = async |text: String| {
        let resp = app.send(&alice, bob.id, &text).await;
        match resp.status() {
            StatusCode::CREATED => {
                acknowledged.insert(text);
                StatusCode::CREATED
            }
            status => {
                assert_error(resp, status).await;
                status
            }
        }
    };
    for i in 0..5 {
        assert_eq!(send(format!("before {i}")).await, StatusCode::CREATED);
    }

    proxy.cut().await;
    let mut refused = 0;
    for i in 0..5 {
        let status = send(format!("during {i}")).await;
        assert!(
            status == StatusCode::CREATED || status == StatusCode::SERVICE_UNAVAILABLE,
            "unexpected {status}"
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            refused += 1;
        }
    }
    assert!(
        refused >= 4,
        "sends must be refused while the broker is down ({refused} of 5 were)"
    );
    let poll = app.poll(&bob).await;
    let body = assert_error(poll, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["error"], "broker_unavailable");
    // Provisioning does not wait for the broker: the newcomer's postbox comes with their first poll.
    let admin = app.create_user("root", "admin").await;
    let resp = app
        .post_json(
            &admin,
            "/api/v1/admin/users/",
            serde_json::json!({"username": "newcomer"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: serde_json::Value = resp.json().await.unwrap();
    let newcomer = crate::helpers::TestUser {
        id: created["id"].as_i64().unwrap(),
        token: created["token"].as_str().unwrap().to_owned(),
    };

    proxy.restore();
    // The service reconnects by itself; sends succeed again within a few attempts.
    let mut back = false;
    for i in 0..50 {
        if send(format!("after {i}")).await == StatusCode::CREATED {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        back,
        "the service did not recover after the broker came back"
    );

    // Everything that was acknowledged with 201 arrives (the outbox relay republishes what was stored
    // but not confirmed), and nothing that was refused does.
    let mut received = HashSet::new();
    for _ in 0..20 {
        let events = app.poll_events(&bob).await;
        for e in &events {
            received.insert(e["data"]["message"].as_str().unwrap().to_owned());
        }
        if acknowledged.is_subset(&received) {
            break;
        }
    }
    assert!(app.queue_depth(&app.queue_name(&newcomer)).await.is_none());
    let resp = app.poll(&newcomer).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(app.queue_depth(&app.queue_name(&newcomer)).await, Some(0));
    let missing: Vec<_> = acknowledged.difference(&received).collect();
    assert!(missing.is_empty(), "acknowledged sends lost: {missing:?}");
    let unexpected: Vec<_> = received.difference(&acknowledged).collect();
    assert!(
        unexpected.is_empty(),
        "refused sends delivered: {unexpected:?}"
    );
}

#[tokio::test]
async fn database_outage_answers_503_and_publishes_nothing() {
    // Always on PostgreSQL, reached through the proxy (an embedded SQLite file cannot go away).
    let proxy = TcpProxy::start(5432).await;
    let app =
        crate::helpers::spawn_app_on_postgres_via(proxy.port, |c| c.backend_timeout_secs = 1).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    app.send_ok(&alice, bob.id, "stored").await;
    assert_eq!(app.poll_events(&bob).await.len(), 1);

    proxy.cut().await;
    let body = assert_error(
        app.send(&alice, bob.id, "lost?").await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(body["error"], "database_unavailable");
    assert!(body["detail"].as_str().unwrap().contains("retry"));

    proxy.restore();
    let mut back = false;
    for _ in 0..50 {
        if app.send(&alice, bob.id, "after").await.status() == StatusCode::CREATED {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        back,
        "the service did not recover after the database came back"
    );
    let texts: Vec<String> = app
        .collect_events(&bob, 1, 3)
        .await
        .iter()
        .map(|e| e["data"]["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts,
        ["after"],
        "nothing is published for a send that was refused"
    );
}

#[tokio::test]
async fn two_instances_share_the_work_and_lose_nothing() {
    let a = crate::helpers::spawn_app().await;
    let b = crate::helpers::spawn_twin(&a).await;
    let alice = a.member("alice").await;
    let bob = a.member("bob").await;
    assert!(a.poll_cursor(&bob, "phone", None).await.is_empty());

    let mut sent = Vec::new();
    let mut received = Vec::new();
    let mut seen = HashSet::new();
    let mut cursor: Option<String> = None;
    for round in 0..8 {
        // Sends go through either instance…
        for i in 0..5 {
            let text = format!("r{round}m{i}");
            let via = if i % 2 == 0 { &a } else { &b };
            via.send_ok(&alice, bob.id, &text).await;
            sent.push(text);
        }
        // …and the client's polls land on either instance, as behind a round-robin balancer.
        let via = if round % 2 == 0 { &b } else { &a };
        let events = via.poll_cursor(&bob, "phone", cursor.as_deref()).await;
        for e in &events {
            let id = e["id"].as_str().unwrap().to_owned();
            if seen.insert(id.clone()) && e["event"] == "message" {
                received.push(e["data"]["message"].as_str().unwrap().to_owned());
            }
            cursor = Some(id);
        }
    }
    // Drain: events parked in the other instance's lingering consumer come back after its linger.
    let started = std::time::Instant::now();
    while received.len() < sent.len() && started.elapsed() < Duration::from_secs(20) {
        let events = b.poll_cursor(&bob, "phone", cursor.as_deref()).await;
        for e in &events {
            let id = e["id"].as_str().unwrap().to_owned();
            if seen.insert(id.clone()) && e["event"] == "message" {
                received.push(e["data"]["message"].as_str().unwrap().to_owned());
            }
            cursor = Some(id);
        }
    }
    let missing: Vec<_> = sent.iter().filter(|s| !received.contains(s)).collect();
    assert!(missing.is_empty(), "lost across instances: {missing:?}");
    assert_eq!(
        received.len(),
        sent.len(),
        "each message processed once (after dedupe by id)"
    );
}

/// Polls bob's phone postbox with a cursor; an error status (503 while the broker restarts) is
/// returned rather than asserted.
async fn poll_tolerant(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    cursor: Option<&str>,
) -> Result<Vec<serde_json::Value>, String> {
    let mut query = vec![("client_id", "phone".to_owned())];
    if let Some(c) = cursor {
        query.push(("last_event_id", c.to_owned()));
    }
    let resp = client
        .get(url)
        .query(&query)
        .header("Authorization", format!("Token {token}"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(resp.status().to_string());
    }
    let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    Ok(body["events"].as_array().cloned().unwrap_or_default())
}

/// A real RabbitMQ restart (the node stopped and started again), not a cut connection. Needs a broker
/// of its own, so it is ignored by default and run by `scripts/fault-broker-restart.sh`, which starts a
/// private RabbitMQ node and says how to stop and start it (`POSTBOX_FAULT_AMQP_URL`,
/// `POSTBOX_FAULT_STOP`, `POSTBOX_FAULT_START`).
#[tokio::test]
#[ignore = "restarts a RabbitMQ node: run by scripts/fault-broker-restart.sh"]
async fn a_real_broker_restart_loses_no_acknowledged_send() {
    let env = |k: &str| {
        std::env::var(k)
            .unwrap_or_else(|_| panic!("{k} is not set: run scripts/fault-broker-restart.sh"))
    };
    let (url, stop, start) = (
        env("POSTBOX_FAULT_AMQP_URL"),
        env("POSTBOX_FAULT_STOP"),
        env("POSTBOX_FAULT_START"),
    );
    let app = spawn_app_with(|c| {
        c.amqp_url = url;
        c.backend_timeout_secs = 2;
    })
    .await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let poll_url = app.url("/api/v1/communication/poll/events/");
    poll_tolerant(&app.client, &poll_url, &bob.token, None)
        .await
        .expect("first poll");

    // Bob's phone polls all along, through the outage, acknowledging by cursor.
    let received = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (client, url, token) = (app.client.clone(), poll_url.clone(), bob.token.clone());
        let (received, done) = (received.clone(), done.clone());
        tokio::spawn(async move {
            let (mut cursor, mut seen, mut errors) = (None::<String>, HashSet::new(), 0);
            while !done.load(Ordering::SeqCst) {
                match poll_tolerant(&client, &url, &token, cursor.as_deref()).await {
                    Ok(events) => {
                        for e in events {
                            let id = e["id"].as_str().unwrap_or_default().to_owned();
                            if seen.insert(id.clone()) && e["event"] == "message" {
                                let text = e["data"]["message"].as_str().unwrap().to_owned();
                                received.lock().unwrap().push(text);
                            }
                            cursor = Some(id);
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
            errors
        })
    };

    // Alice sends 150 messages, about 20 a second; the broker restarts a second in.
    let restarter = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(1));
        for cmd in [stop, start] {
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .status();
            assert!(status.is_ok_and(|s| s.success()), "`{cmd}` failed");
        }
    });
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..150 {
        let text = format!("m{i}");
        // A refused send (503) stored nothing: the client sends it again, as a real one would.
        loop {
            let resp = app.send(&alice, bob.id, &text).await;
            match resp.status() {
                StatusCode::CREATED => break,
                StatusCode::SERVICE_UNAVAILABLE => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("send {text}: unexpected {other}"),
            }
        }
        acknowledged.push(text);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    restarter.await.unwrap();
    assert!(
        refused > 0,
        "the restart was not noticed: no send was refused"
    );

    // Wait until bob has every acknowledged message, or a minute.
    let started = std::time::Instant::now();
    while received.lock().unwrap().len() < acknowledged.len()
        && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    done.store(true, Ordering::SeqCst);
    let poll_errors = poller.await.unwrap();
    let received = received.lock().unwrap().clone();
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|t| !received.contains(t))
        .collect();
    eprintln!(
        "restart: {} acknowledged, {refused} refused with 503 and sent again, {} received, \
         {poll_errors} polls failed during the outage",
        acknowledged.len(),
        received.len(),
    );
    assert!(missing.is_empty(), "lost across the restart: {missing:?}");
    assert_eq!(
        received.len(),
        acknowledged.len(),
        "each message once (after dedupe by event id)"
    );
}
