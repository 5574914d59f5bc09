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
