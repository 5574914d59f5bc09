//! Connection limits: the header-read and keep-alive timeouts close connections that send nothing, trickle
//! their request head or idle between requests, without ever cutting a long poll or an event stream;
//! the global connection cap holds new connections until one closes.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{TestApp, spawn_app_with};

fn host(app: &TestApp) -> String {
    app.addr.trim_start_matches("http://").to_owned()
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: postbox\r\n\r\n";

/// Reads one HTTP/1.1 response (Content-Length or chunked body) and returns its status and body, or
/// `None` when the connection closed first or nothing complete came within `limit`.
async fn read_response(socket: &mut TcpStream, limit: Duration) -> Option<(u16, String)> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let status = head.split(' ').nth(1)?.parse().ok()?;
            let body = &buf[head_end + 4..];
            let length = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            let complete = match length {
                Some(n) => body.len() >= n,
                None => body.ends_with(b"0\r\n\r\n"),
            };
            if complete {
                return Some((status, String::from_utf8_lossy(body).into_owned()));
            }
        }
        match tokio::time::timeout_at(deadline, socket.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// Waits until the server closes `socket` (a read returns 0 or the connection is reset); fails when it
/// sends data instead or is still open after `limit`.
async fn expect_closed(socket: &mut TcpStream, limit: Duration, what: &str) {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(limit, socket.read(&mut buf)).await {
        Ok(Ok(0)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Ok(n)) => panic!(
            "{what}: the server sent {:?} instead of closing",
            String::from_utf8_lossy(&buf[..n])
        ),
        Ok(Err(e)) => panic!("{what}: unexpected error {e}"),
        Err(_) => panic!("{what}: still open after {limit:?}"),
    }
}

/// Sends a request head one byte every 500 ms (it would take a minute to complete) until the server
/// closes the connection; returns how many bytes went out. Fails if the server answers, or if it
/// still has not closed the connection after 30 s.
async fn trickle(addr: String) -> usize {
    let head = format!(
        "GET /api/v1/communication/poll/test/ HTTP/1.1\r\nHost: postbox\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(60)
    );
    let mut socket = TcpStream::connect(&addr).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 1024];
    for (sent, byte) in head.bytes().enumerate() {
        if socket.write_all(&[byte]).await.is_err() {
            return sent;
        }
        tokio::select! {
            read = socket.read(&mut buf) => match read {
                Ok(0) | Err(_) => return sent + 1,
                Ok(n) => panic!("a trickled head was answered: {:?}", String::from_utf8_lossy(&buf[..n])),
            },
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a trickling connection is still open after 30 s ({sent} bytes sent)"
        );
    }
    panic!("the whole trickled head went out without the server closing the connection");
}

async fn metrics_text(app: &TestApp) -> String {
    // A fresh client: the shared one's pooled connection may be gone or counted against a cap.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let resp = client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.text().await.unwrap()
}

#[tokio::test]
async fn silent_and_trickling_connections_are_closed_by_the_header_timeout() {
    let app = spawn_app_with(|c| c.header_timeout_secs = 1.0).await;
    let bob = app.member("bob").await;
    let addr = host(&app);
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    let tricklers: Vec<_> = (0..5)
        .map(|_| tokio::spawn(trickle(addr.clone())))
        .collect();

    // Meanwhile a new client polls as usual, on a connection of its own.
    let fresh = reqwest::Client::new();
    let resp = fresh
        .get(app.url("/api/v1/communication/poll/events/"))
        .header("Authorization", format!("Token {}", bob.token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.unwrap().contains("\"events\":[]"));

    for (i, socket) in silent.iter_mut().enumerate() {
        expect_closed(
            socket,
            Duration::from_secs(20),
            &format!("silent connection {i}"),
        )
        .await;
    }
    for trickler in tricklers {
        let sent = trickler.await.unwrap();
        assert!(sent > 0);
    }
    let text = metrics_text(&app).await;
    assert!(
        text.contains("postbox_connections_closed_total{reason=\"header_timeout\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_but_long_polls_and_streams_are_not_cut() {
    let app = spawn_app_with(|c| {
        c.header_timeout_secs = 0.5;
        c.keepalive_timeout_secs = 2.0;
        c.sse_heartbeat_secs = 0.3;
    })
    .await;
    let bob = app.member("bob").await;
    let addr = host(&app);

    // An idle kept-alive connection stays open past the header timeout (it is not reading a head),
    // then the keep-alive timeout closes it.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(HEALTHZ).await.unwrap();
    let (status, _) = read_response(&mut idle, Duration::from_secs(10))
        .await
        .expect("healthz answered");
    assert_eq!(status, 200);
    let mut buf = [0u8; 16];
    assert!(
        tokio::time::timeout(Duration::from_millis(1200), idle.read(&mut buf))
            .await
            .is_err(),
        "an idle kept-alive connection was closed before its keep-alive timeout"
    );
    expect_closed(
        &mut idle,
        Duration::from_secs(20),
        "idle kept-alive connection",
    )
    .await;

    // A long poll held longer than both timeouts, sent at once on a kept-alive connection (as a poll
    // client does after each answer), is answered; the connection then serves the next request.
    let mut polling = TcpStream::connect(&addr).await.unwrap();
    polling.write_all(HEALTHZ).await.unwrap();
    assert_eq!(
        read_response(&mut polling, Duration::from_secs(10))
            .await
            .map(|r| r.0),
        Some(200)
    );
    let poll = format!(
        "GET /api/v1/communication/poll/events/?timeout=5 HTTP/1.1\r\nHost: postbox\r\nAuthorization: Token {}\r\n\r\n",
        bob.token
    );
    polling.write_all(poll.as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut polling, Duration::from_secs(30))
        .await
        .expect("the long poll was cut");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"events\":[]"), "{body}");
    polling.write_all(HEALTHZ).await.unwrap();
    assert_eq!(
        read_response(&mut polling, Duration::from_secs(10))
            .await
            .map(|r| r.0),
        Some(200)
    );

    // An event stream lasting longer than both timeouts keeps streaming.
    let resp = app
        .client
        .get(app.url(&format!(
            "/api/v1/communication/sse/events/?token={}",
            bob.token
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream();
    let started = tokio::time::Instant::now();
    let mut heartbeats_after = 0;
    while heartbeats_after < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the stream went quiet")
            .expect("the stream was cut")
            .expect("the stream failed");
        if started.elapsed() > Duration::from_secs(4)
            && String::from_utf8_lossy(&chunk).contains("event: heartbeat")
        {
            heartbeats_after += 1;
        }
    }
    drop(stream);

    let text = metrics_text(&app).await;
    assert!(
        text.contains("postbox_connections_closed_total{reason=\"idle_timeout\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn the_connection_cap_holds_new_connections_until_one_closes() {
    const CAP: usize = 3;
    let app = spawn_app_with(|c| {
        c.max_connections = CAP;
        c.header_timeout_secs = 1.0;
        c.keepalive_timeout_secs = 60.0;
    })
    .await;
    let addr = host(&app);
    // The harness's client may still hold its readiness probe's kept-alive connection: open served
    // connections (kept alive) until one is not served.
    let mut held = Vec::new();
    let mut waiting = None;
    for _ in 0..=CAP {
        let mut socket = TcpStream::connect(&addr).await.unwrap();
        socket.write_all(HEALTHZ).await.unwrap();
        match read_response(&mut socket, Duration::from_secs(3)).await {
            Some((status, _)) => {
                assert_eq!(status, 200);
                held.push(socket);
            }
            None => {
                waiting = Some(socket);
                break;
            }
        }
    }
    let mut waiting = waiting
        .unwrap_or_else(|| panic!("{} connections were served with a cap of {CAP}", held.len()));
    assert!(
        held.len() == CAP || held.len() == CAP - 1,
        "{} connections served before the cap was reached",
        held.len()
    );

    // One closes: the waiting connection is accepted and its request answered.
    drop(held.pop());
    let (status, _) = read_response(&mut waiting, Duration::from_secs(20))
        .await
        .expect("the waiting connection is served once another one closed");
    assert_eq!(status, 200);

    drop(held);
    drop(waiting);
    let text = metrics_text(&app).await;
    for name in [
        "postbox_connections_open ",
        "postbox_connection_cap_waits_total ",
    ] {
        assert!(text.contains(name), "missing {name} in:\n{text}");
    }
}
