//! Server-Sent Events: `connected` first, events with ids in order, heartbeats, and resuming from
//! `Last-Event-ID` after a forced disconnect with nothing lost.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;

use crate::helpers::{TestApp, TestUser, spawn_app_with};

/// One parsed SSE record.
#[derive(Debug, Clone)]
struct Record {
    id: Option<String>,
    event: String,
    data: serde_json::Value,
}

/// Reads records from an open stream until `n` records arrived or `timeout` passed.
async fn read(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buf: &mut String,
    n: usize,
    timeout: Duration,
) -> Vec<Record> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        while let Some(end) = buf.find("\n\n") {
            let raw: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in raw.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v.to_owned();
                }
            }
            out.push(Record {
                id,
                event,
                data: serde_json::from_str(&data).unwrap_or_default(),
            });
            if out.len() >= n {
                return out;
            }
        }
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => buf.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    out
}

async fn open(app: &TestApp, user: &TestUser, last: Option<&str>) -> reqwest::Response {
    let mut req = app.client.get(app.url(&format!(
        "/api/v1/communication/sse/events/?token={}&client_id=sse",
        user.token
    )));
    if let Some(l) = last {
        req = req.header("Last-Event-ID", l);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    resp
}

#[tokio::test]
async fn sse_streams_events_in_order_with_heartbeats_and_resumes_without_loss() {
    let app = spawn_app_with(|c| {
        c.sse_heartbeat_secs = 0.3;
        c.sse_max_duration_secs = 60.0;
    })
    .await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;

    let mut stream = open(&app, &bob, None).await.bytes_stream();
    let mut buf = String::new();
    let first = read(&mut stream, &mut buf, 1, Duration::from_secs(5)).await;
    assert_eq!(first[0].event, "connected");
    assert_eq!(first[0].data["user_id"], bob.id);
    // Idle: heartbeats.
    let beats = read(&mut stream, &mut buf, 2, Duration::from_secs(5)).await;
    assert!(beats.iter().all(|r| r.event == "heartbeat"), "{beats:?}");

    for i in 0..3 {
        app.send_ok(&alice, bob.id, &format!("s{i}")).await;
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let recs = read(&mut stream, &mut buf, 1, Duration::from_secs(5)).await;
        assert!(!recs.is_empty(), "the stream stalled");
        got.extend(recs.into_iter().filter(|r| r.event == "message"));
    }
    let texts: Vec<_> = got
        .iter()
        .map(|r| r.data["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["s0", "s1", "s2"]);
    assert!(
        got.iter()
            .all(|r| r.id.as_ref().is_some_and(|id| id.len() == 36))
    );
    let last_seen = got[2].id.clone().unwrap();

    // A forced disconnect; meanwhile two more messages are sent.
    drop(stream);
    for i in 3..5 {
        app.send_ok(&alice, bob.id, &format!("s{i}")).await;
    }
    // Resume from Last-Event-ID: nothing lost; anything repeated keeps its id.
    let mut stream = open(&app, &bob, Some(&last_seen)).await.bytes_stream();
    let mut buf = String::new();
    let mut resumed = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while resumed.len() < 2 && tokio::time::Instant::now() < deadline {
        let recs = read(&mut stream, &mut buf, 1, Duration::from_secs(5)).await;
        resumed.extend(recs.into_iter().filter(|r| r.event == "message"));
    }
    let texts: Vec<_> = resumed
        .iter()
        .map(|r| r.data["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts,
        ["s3", "s4"],
        "resumed after s2 with nothing lost or repeated"
    );

    // The same events through the long poll of another client are the same events (same ids).
    let polled = app.poll_events(&bob).await;
    assert!(polled.iter().any(|e| e["data"]["message"] == "s0"));
}

#[tokio::test]
async fn sse_test_stream_and_errors() {
    let app = spawn_app_with(|_| {}).await;
    let resp = app
        .client
        .get(app.url("/api/v1/communication/sse/test/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("event: connected"));
    assert_eq!(text.matches("event: test").count(), 3);
    let resp = app
        .client
        .get(app.url("/api/v1/communication/sse/events/"))
        .send()
        .await
        .unwrap();
    crate::helpers::assert_error(resp, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn sse_validates_both_cursors() {
    let app = spawn_app_with(|c| c.sse_max_duration_secs = 1.0).await;
    let bob = app.member("bob").await;
    let long = "x".repeat(65);
    let resp = app
        .client
        .get(app.url(&format!(
            "/api/v1/communication/sse/events/?token={}&last_event_id={long}",
            bob.token
        )))
        .header("Last-Event-ID", "fine")
        .send()
        .await
        .unwrap();
    crate::helpers::assert_error(resp, StatusCode::BAD_REQUEST).await;
    let resp = app
        .client
        .get(app.url(&format!(
            "/api/v1/communication/sse/events/?token={}",
            bob.token
        )))
        .header("Last-Event-ID", long.as_str())
        .send()
        .await
        .unwrap();
    crate::helpers::assert_error(resp, StatusCode::BAD_REQUEST).await;
}

/// A message handed over by a stream counts as delivered, as with the long poll: the sender gets a
/// `delivered` notice and the history shows `delivered_at`.
#[tokio::test]
async fn messages_streamed_to_the_receiver_are_marked_delivered() {
    let app = spawn_app_with(|c| c.sse_heartbeat_secs = 0.5).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let mut stream = open(&app, &bob, None).await.bytes_stream();
    let mut buf = String::new();
    assert_eq!(
        read(&mut stream, &mut buf, 1, Duration::from_secs(5)).await[0].event,
        "connected"
    );
    let sent = app.send_ok(&alice, bob.id, "over the stream").await;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.is_empty() && tokio::time::Instant::now() < deadline {
        let recs = read(&mut stream, &mut buf, 1, Duration::from_secs(5)).await;
        got.extend(recs.into_iter().filter(|r| r.event == "message"));
    }
    assert_eq!(got.len(), 1, "the message came through the stream");
    // Keep reading: the stream confirms the batch when it moves on (a heartbeat follows).
    read(&mut stream, &mut buf, 1, Duration::from_secs(5)).await;

    let mut notices = Vec::new();
    for _ in 0..5 {
        notices.extend(
            app.poll_events(&alice)
                .await
                .into_iter()
                .filter(|e| e["event"] == "delivered"),
        );
        if !notices.is_empty() {
            break;
        }
    }
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(
        notices[0]["data"]["message_ids"],
        serde_json::json!([sent["id"]])
    );
    assert_eq!(notices[0]["data"]["receiver_id"], bob.id);
    let page = app.history(&alice, bob.id).await;
    assert!(page["messages"][0]["delivered_at"].is_string(), "{page}");
}

/// What a stream wrote is not acknowledged by the write: a client whose connection broke before it
/// read an event, and that reconnects with an older `Last-Event-ID`, gets that event again.
#[tokio::test]
async fn an_event_written_but_not_confirmed_comes_again_after_an_older_last_event_id() {
    let app = spawn_app_with(|c| {
        c.sse_heartbeat_secs = 0.2;
        c.sse_max_duration_secs = 60.0;
    })
    .await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let mut stream = open(&app, &bob, None).await.bytes_stream();
    let mut buf = String::new();
    assert_eq!(
        read(&mut stream, &mut buf, 1, Duration::from_secs(5)).await[0].event,
        "connected"
    );
    app.send_ok(&alice, bob.id, "seen").await;
    app.send_ok(&alice, bob.id, "written, never read").await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let recs = read(&mut stream, &mut buf, 1, Duration::from_secs(5)).await;
        assert!(!recs.is_empty(), "the stream stalled");
        got.extend(recs.into_iter().filter(|r| r.event == "message"));
    }
    // The stream moves on (heartbeats) as if the second event had reached the client; it did not.
    let beats = read(&mut stream, &mut buf, 2, Duration::from_secs(5)).await;
    assert!(beats.iter().all(|r| r.event == "heartbeat"), "{beats:?}");
    drop(stream);

    let seen = got[0].id.clone().unwrap();
    let mut stream = open(&app, &bob, Some(&seen)).await.bytes_stream();
    let mut buf = String::new();
    let mut again = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while again.is_empty() && tokio::time::Instant::now() < deadline {
        let recs = read(&mut stream, &mut buf, 1, Duration::from_secs(5)).await;
        again.extend(recs.into_iter().filter(|r| r.event == "message"));
    }
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].data["message"], "written, never read");
    assert_eq!(again[0].id, got[1].id, "the same event, the same id");
}

/// A stream ends by itself once half the postbox's window is in flight unconfirmed, so that the
/// browser reconnects with `Last-Event-ID`; the reconnect confirms and the stream goes on.
#[tokio::test]
async fn a_stream_holding_many_unconfirmed_events_ends_so_the_client_confirms_them() {
    let app = spawn_app_with(|c| {
        c.sse_heartbeat_secs = 0.2;
        c.sse_max_duration_secs = 60.0;
    })
    .await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let resp = open(&app, &bob, None).await;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let first = read(&mut stream, &mut buf, 1, Duration::from_secs(5)).await;
    assert_eq!(first[0].event, "connected");
    let limit = app.config.queue_max_length as usize / 2;
    for i in 0..limit + 5 {
        app.send_ok(&alice, bob.id, &format!("m{i}")).await;
    }
    let mut got = Vec::new();
    let mut last_record = String::new();
    loop {
        let recs = read(&mut stream, &mut buf, 1, Duration::from_secs(5)).await;
        let Some(record) = recs.last() else {
            break; // the stream ended (or stalled: then the count below is short)
        };
        last_record = record.event.clone();
        got.extend(recs.into_iter().filter(|r| r.event == "message"));
    }
    assert_eq!(last_record, "reconnect", "the stream says why it ends");
    assert!(
        got.len() >= limit && got.len() < limit + 5,
        "the stream ended after about {limit} unconfirmed events, got {}",
        got.len()
    );
    let last = got.last().unwrap().id.clone().unwrap();
    let mut stream = open(&app, &bob, Some(&last)).await.bytes_stream();
    let mut buf = String::new();
    let mut rest = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() + rest.len() < limit + 5 && tokio::time::Instant::now() < deadline {
        let recs = read(&mut stream, &mut buf, 1, Duration::from_secs(5)).await;
        rest.extend(recs.into_iter().filter(|r| r.event == "message"));
    }
    let texts: Vec<String> = got
        .iter()
        .chain(&rest)
        .map(|r| r.data["message"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..limit + 5).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, expected, "every event once, in order");
}

/// A newer stream with the same client id takes the postbox over: the older stream says so
/// (`reconnect` with reason `superseded`) and ends.
#[tokio::test]
async fn an_older_stream_of_the_same_client_is_superseded_and_ends() {
    let app = spawn_app_with(|c| {
        c.sse_heartbeat_secs = 0.2;
        c.sse_max_duration_secs = 60.0;
    })
    .await;
    let bob = app.member("bob").await;
    let mut older = open(&app, &bob, None).await.bytes_stream();
    let mut buf = String::new();
    assert_eq!(
        read(&mut older, &mut buf, 1, Duration::from_secs(5)).await[0].event,
        "connected"
    );
    let _newer = open(&app, &bob, None).await;
    let mut last = None;
    loop {
        let recs = read(&mut older, &mut buf, 1, Duration::from_secs(5)).await;
        let Some(r) = recs.into_iter().next() else {
            break;
        };
        last = Some(r);
    }
    let last = last.expect("the older stream wrote something before it ended");
    assert_eq!(last.event, "reconnect");
    assert_eq!(last.data["reason"], "superseded");
}
