//! Connection limits: the header-read and keep-alive timeouts close connections that send nothing, trickle
//! their request head or idle between requests, without ever cutting a long poll or an event stream;
//! the global connection cap holds new connections until one closes; a user's long polls and streams
//! beyond their cap are answered 429.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{TestApp, TestUser, assert_error, spawn_app_with};

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

/// Starts a poll of `user` held up to `hold` seconds, in the background.
fn hold_poll(
    app: &TestApp,
    user: &TestUser,
    hold: u32,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let request = app
        .client
        .get(app.url(&format!(
            "/api/v1/communication/poll/events/?timeout={hold}"
        )))
        .header("Authorization", format!("Token {}", user.token));
    tokio::spawn(async move { request.send().await.expect("poll request") })
}

/// A poll of `user` that answers at once (`?timeout=0`) unless it is refused.
async fn quick_poll(app: &TestApp, user: &TestUser) -> reqwest::Response {
    app.client
        .get(app.url("/api/v1/communication/poll/events/?timeout=0"))
        .header("Authorization", format!("Token {}", user.token))
        .send()
        .await
        .expect("poll request")
}

/// Opens an event stream of `user`; `Some` (the open stream) once its `connected` record arrived,
/// `None` when it was refused with 429.
async fn open_stream(
    app: &TestApp,
    user: &TestUser,
) -> Option<impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>>> {
    let resp = app
        .client
        .get(app.url(&format!(
            "/api/v1/communication/sse/events/?token={}",
            user.token
        )))
        .send()
        .await
        .unwrap();
    if resp.status() == StatusCode::TOO_MANY_REQUESTS {
        assert!(resp.headers().contains_key("retry-after"));
        assert_eq!(
            assert_error(resp, StatusCode::TOO_MANY_REQUESTS).await["error"],
            "rate_limited"
        );
        return None;
    }
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = Box::pin(resp.bytes_stream());
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no record within 10 s")
        .expect("stream ended")
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: connected"));
    Some(stream)
}

/// Waits (polling, up to 15 s) until `attempt` succeeds; the slots it waits for come free in the
/// background.
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(done) = attempt().await {
            return done;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_users_polls_beyond_the_cap_get_429_and_their_slots_come_back() {
    let app = spawn_app_with(|c| c.max_polls_per_user = 2).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    // Bob holds an event stream (admitted: it has its `connected` record) and a long poll.
    let stream = open_stream(&app, &bob)
        .await
        .expect("first stream admitted");
    let mut long = hold_poll(&app, &bob, 4);

    // With both held, bob's next poll is refused with the JSON error and Retry-After. (The long poll
    // cannot be seen waiting: poll at once until refused, and start the long poll again if a quick
    // poll got its slot first and it was the one refused.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let refused = loop {
        let resp = quick_poll(&app, &bob).await;
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            break resp;
        }
        assert_eq!(resp.status(), StatusCode::OK);
        if long.is_finished() {
            let raced = long.await.unwrap();
            assert_eq!(raced.status(), StatusCode::TOO_MANY_REQUESTS);
            long = hold_poll(&app, &bob, 4);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no poll refused within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body = assert_error(refused, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(body["error"], "rate_limited");
    // A stream counts against the same cap; other users are not affected.
    assert!(open_stream(&app, &bob).await.is_none());
    assert_eq!(quick_poll(&app, &alice).await.status(), StatusCode::OK);

    // The long poll answers: bob may poll again.
    assert_eq!(long.await.unwrap().status(), StatusCode::OK);
    eventually("a poll after the long one ended", || async {
        (quick_poll(&app, &bob).await.status() == StatusCode::OK).then_some(())
    })
    .await;

    // A stream whose client went away gives its slot back too: two new ones fit.
    drop(stream);
    let _first = open_stream(&app, &bob)
        .await
        .expect("the long poll's slot is free");
    let _second = eventually("a second stream after one was dropped", || {
        open_stream(&app, &bob)
    })
    .await;
}
