//! The long poll: immediate answers, deadlines, push wake-ups, no loss on disconnect.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::helpers::spawn_app;

#[tokio::test]
async fn send_then_poll_returns_the_event() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let sent = app.send_ok(&alice, bob.id, "hello bob").await;

    let started = Instant::now();
    let events = app.poll_events(&bob).await;
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "queued events are answered at once"
    );
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["event"], "message");
    assert!(e["id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(e["timestamp"].as_f64().is_some());
    assert_eq!(e["data"]["id"], sent["id"]);
    assert_eq!(e["data"]["message"], "hello bob");
    assert_eq!(e["data"]["sender_id"], alice.id);
    assert_eq!(e["data"]["sender_name"], "alice display");
    assert_eq!(e["data"]["receiver_id"], bob.id);
    assert_eq!(e["data"]["is_read"], false);
    // Delivered once: the next poll has nothing.
    assert!(app.poll_events(&bob).await.is_empty());
}

#[tokio::test]
async fn empty_poll_answers_empty_after_the_deadline() {
    let app = spawn_app().await;
    let bob = app.member("bob").await;
    let started = Instant::now();
    let resp = app.poll(&bob).await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["events"], serde_json::json!([]));
    assert!(body["timestamp"].as_f64().unwrap() > 1.7e9);
    // The test deadline is 1 s.
    assert!(
        elapsed >= Duration::from_millis(950),
        "answered too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(3000),
        "answered too late: {elapsed:?}"
    );
}

#[tokio::test]
async fn event_published_during_a_waiting_poll_is_pushed_at_once() {
    let app = spawn_app_long().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    // Attach bob's consumer first, so the measured poll really waits.
    assert!(app.poll_events(&bob).await.is_empty());

    let poll = {
        let client = app.client.clone();
        let url = app.url("/api/v1/communication/poll/events/");
        let token = bob.token.clone();
        tokio::spawn(async move {
            let resp = client
                .get(url)
                .header("Authorization", format!("Token {token}"))
                .send()
                .await
                .unwrap();
            let body: Value = resp.json().await.unwrap();
            (Instant::now(), body)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent_at = Instant::now();
    app.send_ok(&alice, bob.id, "while you wait").await;
    let (answered_at, body) = poll.await.unwrap();
    let latency = answered_at.duration_since(sent_at);
    assert_eq!(body["events"][0]["data"]["message"], "while you wait");
    // The deadline here is 5 s: an answer in well under a second can only come from the push.
    assert!(
        latency < Duration::from_millis(500),
        "delivery took {latency:?}"
    );
}

async fn spawn_app_long() -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(|c| c.poll_timeout_secs = 5.0).await
}

#[tokio::test]
async fn client_gone_mid_poll_leaves_the_event_for_the_next_poll() {
    let app = spawn_app_long().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    // A raw client starts a poll and vanishes while the server waits.
    let addr = app.addr.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    socket
        .write_all(
            format!(
                "GET /api/v1/communication/poll/events/?token={} HTTP/1.1\r\nHost: x\r\n\r\n",
                bob.token
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(socket);
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.send_ok(&alice, bob.id, "are you there?").await;

    let events = app.collect_events(&bob, 1, 3).await;
    assert_eq!(
        events.len(),
        1,
        "the event must survive the abandoned poll: {events:?}"
    );
    assert_eq!(events[0]["data"]["message"], "are you there?");
}

#[tokio::test]
async fn several_queued_events_come_in_one_batch_in_order() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    for i in 0..5 {
        app.send_ok(&alice, bob.id, &format!("m{i}")).await;
    }
    let events = app.collect_events(&bob, 5, 3).await;
    let texts: Vec<_> = events
        .iter()
        .map(|e| e["data"]["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["m0", "m1", "m2", "m3", "m4"]);
    let ids: std::collections::HashSet<_> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 5, "every event has a unique id");
}

#[tokio::test]
async fn poll_test_and_disconnect_follow_the_seed_contract() {
    let app = spawn_app().await;
    let bob = app.member("bob").await;
    let body: Value = app
        .client
        .get(app.url("/api/v1/communication/poll/test/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["message"], "Long polling is working");
    assert!(body["timestamp"].as_f64().is_some());

    // Polling marks the user online; disconnect marks them offline.
    app.poll_events(&bob).await;
    let user = postbox::db::users::find(&app.db, bob.id)
        .await
        .unwrap()
        .unwrap();
    assert!(user.last_seen_at.is_some());
    assert!(user.online_until.is_some_and(|t| t > chrono::Utc::now()));

    let resp = app
        .client
        .post(app.url(&format!(
            "/api/v1/communication/poll/disconnect/?token={}",
            bob.token
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"status": "disconnected", "user_id": bob.id})
    );
    let user = postbox::db::users::find(&app.db, bob.id)
        .await
        .unwrap()
        .unwrap();
    assert!(user.online_until.is_none());
}

#[tokio::test]
async fn shutdown_answers_waiting_polls_at_once_and_keeps_their_events() {
    let mut app = spawn_app_long().await;
    let bob = app.member("bob").await;
    let poll = app.spawn_poll(&bob);
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.stop().await.expect("clean stop");
    let (elapsed, resp) = poll.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        elapsed < Duration::from_secs(3),
        "the waiting poll was held {elapsed:?}"
    );
}
