//! What an attacker or a careless operator could do and must not: polls outliving their token's
//! expiry, service tokens in URLs, secrets in `--help`, colour escapes in logs, out-of-range CLI values,
//! and browsers of origins nobody allowed.

use std::{process::Command, time::Duration};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestUser, assert_error, spawn_app, spawn_app_with, test_config};

const BIN: &str = env!("CARGO_BIN_EXE_postbox");

/// A second token of `user` that expires `in_ms` from now.
async fn expiring_token(app: &crate::helpers::TestApp, user: &TestUser, in_ms: i64) -> TestUser {
    let secret = postbox::accounts::tokens::TokenSecret::generate();
    let at = chrono::Utc::now() + chrono::Duration::milliseconds(in_ms);
    postbox::db::users::insert_token(&app.db, user.id, secret.key_hash, secret.prefix, Some(at))
        .await
        .unwrap();
    TestUser {
        id: user.id,
        token: secret.key,
    }
}

#[tokio::test]
async fn a_waiting_poll_ends_with_401_when_its_token_expires() {
    let app = spawn_app_with(|c| c.poll_timeout_secs = 30.0).await;
    let bob = app.member("bob").await;
    let short = expiring_token(&app, &bob, 2_000).await;
    // Authenticated while the token is live (and then remembered by the token cache).
    let poll = app.spawn_poll(&short);
    let (held, resp) = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .expect("the poll was held past its token's expiry")
        .unwrap();
    assert!(
        held < Duration::from_secs(10),
        "held {held:?}: the deadline (30 s) answered, not the expiry"
    );
    let body = assert_error(resp, StatusCode::UNAUTHORIZED).await;
    assert!(
        body["detail"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    // Events sent afterwards are not handed to that token.
    let alice = app.member("alice").await;
    app.send_ok(&alice, bob.id, "after the expiry").await;
    assert_error(app.poll(&short).await, StatusCode::UNAUTHORIZED).await;
    // The user's live token still gets the message.
    let events = app.collect_events(&bob, 1, 5).await;
    assert_eq!(events[0]["data"]["message"], "after the expiry");
}

#[tokio::test]
async fn an_event_stream_ends_when_its_token_expires() {
    let app = spawn_app_with(|c| {
        c.sse_heartbeat_secs = 0.5;
        c.sse_max_duration_secs = 60.0;
    })
    .await;
    let bob = app.member("bob").await;
    let short = expiring_token(&app, &bob, 2_000).await;
    let resp = app
        .client
        .get(app.url(&format!(
            "/api/v1/communication/sse/events/?token={}",
            short.token
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let started = std::time::Instant::now();
    let mut stream = resp.bytes_stream();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = stream.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its token by 18 s");
    assert!(
        started.elapsed() >= Duration::from_millis(1_000),
        "the stream ended before the token expired ({:?})",
        started.elapsed()
    );
    // A reconnect with it is refused.
    let again = app
        .client
        .get(app.url(&format!(
            "/api/v1/communication/sse/events/?token={}",
            short.token
        )))
        .send()
        .await
        .unwrap();
    assert_error(again, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn service_tokens_are_accepted_only_in_the_authorization_header() {
    let app = spawn_app().await;
    let user = app.member("reader").await;
    let (_, key) = app.service_token("erp").await;
    let body = json!({"event": "invoice.paid", "data": {"n": 1}, "users": [user.id]});
    let in_url = app
        .client
        .post(app.url(&format!("/api/v1/publish/?token={key}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    let refused = assert_error(in_url, StatusCode::UNAUTHORIZED).await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("Authorization"),
        "{refused}"
    );
    assert!(
        app.poll_events(&user).await.is_empty(),
        "nothing was published"
    );
    let in_header = app
        .client
        .post(app.url("/api/v1/publish/"))
        .header("Authorization", format!("Bearer {key}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(in_header.status(), StatusCode::OK);
}

#[test]
fn help_never_shows_the_secrets_in_the_environment() {
    for args in [
        &["serve", "--help"][..],
        &["migrate", "--help"],
        &["check-rabbitmq", "--help"],
        &["tokens", "create", "--help"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .env(
                "DATABASE_URL",
                "postgres://postbox:db-secret-1@db.internal/postbox",
            )
            .env(
                "AMQP_URL",
                "amqp://postbox:amqp-secret-2@mq.internal:5672/%2f",
            )
            .env(
                "POSTBOX_MANAGEMENT_URL",
                "http://admin:mgmt-secret-3@mq.internal:15672",
            )
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("DATABASE_URL"), "{args:?}: {help}");
        for secret in ["db-secret-1", "amqp-secret-2", "mgmt-secret-3"] {
            assert!(!help.contains(secret), "{args:?} shows {secret}: {help}");
        }
    }
}

#[test]
fn logs_carry_no_colour_escapes_when_not_written_to_a_terminal() {
    let mut config = test_config();
    config.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let out = Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("DATABASE_URL", "sqlite::memory:")
        .env("AMQP_URL", &config.amqp_url)
        .env("POSTBOX_BACKEND_TIMEOUT", "2")
        // A warning is logged through `tracing` before the broker is reached.
        .env("POSTBOX_QUEUE_EXPIRES", "60")
        .env("RUST_LOG", "postbox=info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("POSTBOX_QUEUE_EXPIRES"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "escape sequences in piped logs: {logs:?}"
    );
}

#[tokio::test]
async fn token_lifetimes_out_of_range_are_refused_with_a_clear_message() {
    let app = spawn_app().await;
    app.member("bob").await;
    for days in ["100000000", "0", "36501", "-1"] {
        let out = Command::new(BIN)
            .args([
                "tokens",
                "create",
                "--username",
                "bob",
                &format!("--expires-in-days={days}"),
            ])
            .env("DATABASE_URL", &app.config.database_url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{days}: {stderr}");
        assert!(
            stderr.contains("--expires-in-days") && !stderr.contains("panicked"),
            "{days}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "no token was printed for {days}");
    }
    let ok = Command::new(BIN)
        .args([
            "tokens",
            "create",
            "--username",
            "bob",
            "--expires-in-days",
            "36500",
        ])
        .env("DATABASE_URL", &app.config.database_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

const PAGE: &str = "https://app.example.com";

#[tokio::test]
async fn allowed_origins_get_cors_answers_and_others_none() {
    let app = spawn_app_with(|c| c.cors_origins = format!("{PAGE}, http://localhost:3000")).await;
    let bob = app.member("bob").await;
    // A preflight, answered before authentication (it carries no token).
    let preflight = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            app.url("/api/v1/communication/chats/"),
        )
        .header("Origin", PAGE)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], PAGE);
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    // An answer, an error one included, exposes what a client reads.
    let resp = app
        .client
        .get(app.url("/api/v1/communication/me/"))
        .header("Origin", PAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["access-control-allow-origin"], PAGE);
    let exposed = resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in ["retry-after", "www-authenticate", "x-request-id"] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    let me = app
        .client
        .get(app.url("/api/v1/communication/me/"))
        .header("Origin", "http://localhost:3000")
        .header("Authorization", format!("Token {}", bob.token))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(
        me.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    // An origin nobody allowed gets no CORS header: the browser keeps the answer from its page.
    for origin in [
        "https://evil.example",
        "https://app.example.com.evil.example",
    ] {
        let other = app
            .client
            .request(
                reqwest::Method::OPTIONS,
                app.url("/api/v1/communication/chats/"),
            )
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .send()
            .await
            .unwrap();
        assert!(
            other.headers().get("access-control-allow-origin").is_none(),
            "{origin} was allowed"
        );
    }
}

#[tokio::test]
async fn without_configured_origins_no_cors_headers_are_sent() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(app.url("/api/v1/communication/poll/test/"))
        .header("Origin", PAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-")),
        "{:?}",
        resp.headers()
    );
}

#[tokio::test]
async fn one_sender_cannot_fill_a_receivers_postbox() {
    let app = spawn_app_with(|c| c.max_undelivered = 5).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let carol = app.member("carol").await;
    for n in 0..5 {
        app.send_ok(&alice, bob.id, &format!("m{n}")).await;
    }
    // Bob has not polled: five of Alice's messages wait in his postbox; a sixth is refused.
    let refused = app.send(&alice, bob.id, "one too many").await;
    assert!(refused.headers().contains_key("retry-after"));
    let body = assert_error(refused, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(
        body["detail"].as_str().unwrap().contains("not received"),
        "{body}"
    );
    // Others still reach him, and Alice still reaches others.
    app.send_ok(&carol, bob.id, "from carol").await;
    app.send_ok(&alice, carol.id, "to carol").await;
    // Once Bob's client got them (delivery marks are written just after the poll), Alice may go on.
    let events = app.collect_events(&bob, 6, 5).await;
    assert_eq!(events.len(), 6, "{events:?}");
    let mut sent = false;
    for _ in 0..50 {
        let r = app.send(&alice, bob.id, "after delivery").await;
        if r.status() == StatusCode::CREATED {
            sent = true;
            break;
        }
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sent, "the delivered messages still counted against Alice");
    // The refused message was not stored.
    let history = app.history(&bob, alice.id).await;
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert!(!texts.contains(&"one too many"), "{texts:?}");
}

#[tokio::test]
async fn one_member_cannot_fill_the_agents_postboxes() {
    let app = spawn_app_with(|c| c.support_max_unanswered = 3).await;
    let member = app.member("member").await;
    let agent = app.create_user("agent", "staff").await;
    let path = "/api/support/chats/my-chat/messages/";
    for n in 0..3 {
        let r = app
            .post_json(&member, path, json!({"message": format!("help {n}")}))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let refused = app
        .post_json(&member, path, json!({"message": "help again"}))
        .await;
    assert!(refused.headers().contains_key("retry-after"));
    assert_error(refused, StatusCode::TOO_MANY_REQUESTS).await;
    // An agent answers: the member may write again.
    let (_, chat) = app.get_json(&member, "/api/support/chats/my-chat/").await;
    let answer = app
        .post_json(
            &agent,
            &format!("/api/support/chats/{}/messages/", chat["id"]),
            json!({"message": "how can I help?"}),
        )
        .await;
    assert_eq!(answer.status(), StatusCode::CREATED);
    let again = app
        .post_json(&member, path, json!({"message": "thanks"}))
        .await;
    assert_eq!(again.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_flood_of_typing_signals_reaches_the_receiver_as_a_few_with_the_last_state() {
    // Typing signals live 3 s: one per second of a sender reaches a receiver.
    let app = spawn_app_with(|c| {
        c.typing_ttl_secs = 3.0;
        c.typing_rate = 1_000;
    })
    .await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let started = std::time::Instant::now();
    for n in 0..40 {
        let r = app
            .post_json(
                &alice,
                "/api/v1/communication/chats/typing/",
                json!({"receiver": bob.id, "is_typing": n % 2 == 0 || n == 38}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    // The last signal said "stopped" (n = 39); it arrives once its period ends.
    let mut typing = Vec::new();
    for _ in 0..6 {
        for e in app.poll_events(&bob).await {
            if e["event"] == "typing" {
                typing.push(e["data"]["is_typing"].clone());
            }
        }
        if typing.last() == Some(&json!(false)) {
            break;
        }
    }
    let periods = started.elapsed().as_secs() + 2;
    assert!(
        !typing.is_empty() && typing.len() as u64 <= periods,
        "{} typing events in about {periods} periods: {typing:?}",
        typing.len()
    );
    assert_eq!(typing.last(), Some(&json!(false)), "{typing:?}");
}

#[tokio::test]
async fn a_user_flapping_online_and_offline_costs_each_contact_a_few_notices() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    app.send_ok(&alice, bob.id, "we are contacts").await;
    app.poll_events(&alice).await;
    let started = std::time::Instant::now();
    for _ in 0..10 {
        let r = app
            .client
            .get(app.url(&format!(
                "/api/v1/communication/poll/events/?timeout=0&token={}",
                bob.token
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = app
            .client
            .post(app.url(&format!(
                "/api/v1/communication/poll/disconnect/?token={}",
                bob.token
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    // Bob ended offline: Alice's last notice says so, after at most one notice per 2 s period.
    let mut notices = Vec::new();
    for _ in 0..8 {
        for e in app.poll_events(&alice).await {
            if e["event"] == "presence" {
                notices.push(e["data"]["online"].clone());
            }
        }
        if notices.last() == Some(&json!(false)) && started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let periods = started.elapsed().as_secs() / 2 + 2;
    assert!(
        notices.len() as u64 <= periods,
        "{} presence notices in about {periods} periods: {notices:?}",
        notices.len()
    );
    assert_eq!(notices.last(), Some(&json!(false)), "{notices:?}");
}
