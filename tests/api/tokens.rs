//! Token lifecycle: expiry, revocation (a waiting poll ends at once with 401), and the CLI to list,
//! create and revoke tokens.

use std::{process::Command, time::Duration};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{assert_error, spawn_app};

fn postbox(app: &crate::helpers::TestApp, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_postbox"))
        .args(args)
        .env("DATABASE_URL", &app.config.database_url)
        .env("AMQP_URL", &app.config.amqp_url)
        .env("POSTBOX_BROKER_PREFIX", &app.config.broker_prefix)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn revoking_a_token_ends_its_waiting_poll_at_once() {
    let app = crate::helpers::spawn_app_with(|c| c.poll_timeout_secs = 20.0).await;
    let bob = app.member("bob").await;
    let poll = app.spawn_poll(&bob);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = postbox(&app, &["tokens", "revoke", "--username", "bob"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["revoked"], 1);
    assert_eq!(report["running_instances_notified"], true);
    let (elapsed, resp) = poll.await.unwrap();
    assert!(
        elapsed < Duration::from_secs(10),
        "the poll was held {elapsed:?} (deadline 20 s)"
    );
    let body = assert_error(resp, StatusCode::UNAUTHORIZED).await;
    assert!(body["detail"].as_str().unwrap().contains("revoked"));
    // Every later request with it is refused too.
    assert_error(app.poll(&bob).await, StatusCode::UNAUTHORIZED).await;
}

/// A revocation whose control message never went out (RabbitMQ was down when it was made, or the token
/// was revoked straight in the database) still ends the token's polls: each instance reads recent
/// revocations every 10 s and forgets them from its token cache.
#[tokio::test]
async fn a_revocation_without_its_control_message_takes_effect_within_the_sweep() {
    let app = crate::helpers::spawn_app_with(|c| c.poll_timeout_secs = 30.0).await;
    let bob = app.member("bob").await;
    // Cached: the poll path remembers the token (POSTBOX_AUTH_CACHE, 300 s by default).
    let first = app
        .client
        .get(app.url("/api/v1/communication/poll/events/?timeout=0"))
        .header("Authorization", format!("Token {}", bob.token))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let poll = app.spawn_poll(&bob);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No control message: only the database knows.
    let revoked = postbox::db::users::revoke_tokens(&app.db, bob.id, None)
        .await
        .unwrap();
    assert_eq!(revoked.len(), 1);
    let (elapsed, resp) = poll.await.unwrap();
    assert!(
        elapsed < Duration::from_secs(15),
        "the poll was held {elapsed:?} (deadline 30 s, sweep every 10 s)"
    );
    assert_error(resp, StatusCode::UNAUTHORIZED).await;
    // The cached token is gone too: the next poll asks the database.
    assert_error(app.poll(&bob).await, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn tokens_are_listed_created_with_expiry_and_revoked_one_by_one() {
    let app = spawn_app().await;
    let bob = app.member("bob").await;
    let out = postbox(
        &app,
        &[
            "tokens",
            "create",
            "--username",
            "bob",
            "--expires-in-days",
            "30",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let second = created["token"].as_str().unwrap().to_owned();
    assert!(created["expires_at"].is_string());
    let r = app
        .client
        .post(app.url("/api/v1/communication/poll/disconnect/"))
        .header("Authorization", format!("Token {second}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let out = postbox(&app, &["tokens", "list", "--username", "bob"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(list.to_string().contains("\"live\""));
    assert!(!list.to_string().contains(&second), "keys are never listed");

    // Revoke only the second one: the first still works.
    let id = created["id"].as_i64().unwrap().to_string();
    let out = postbox(
        &app,
        &["tokens", "revoke", "--username", "bob", "--id", &id],
    );
    assert_eq!(out.status.code(), Some(0));
    let r = app
        .client
        .post(app.url("/api/v1/communication/poll/disconnect/"))
        .header("Authorization", format!("Token {second}"))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED).await;
    let r = app
        .client
        .post(app.url("/api/v1/communication/poll/disconnect/"))
        .header("Authorization", format!("Token {}", bob.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let out = postbox(&app, &["tokens", "list", "--username", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let app = spawn_app().await;
    let bob = app.member("bob").await;
    let secret = postbox::accounts::tokens::TokenSecret::generate();
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    postbox::db::users::insert_token(&app.db, bob.id, secret.key_hash, secret.prefix, Some(past))
        .await
        .unwrap();
    let r = app
        .client
        .post(app.url("/api/v1/communication/poll/disconnect/"))
        .header("Authorization", format!("Token {}", secret.key))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn service_tokens_are_created_listed_and_revoked_with_the_cli() {
    let app = spawn_app().await;
    let user = app.member("reader").await;
    let name = format!("erp-{}", app.config.broker_prefix);
    let out = postbox(&app, &["service-tokens", "create", "--name", &name]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["token"].as_str().unwrap().to_owned();
    assert!(key.starts_with("pbs_"), "{created}");

    let publish = |key: String| {
        let (client, url, user_id) = (app.client.clone(), app.url("/api/v1/publish/"), user.id);
        async move {
            client
                .post(url)
                .header("Authorization", format!("Bearer {key}"))
                .json(&serde_json::json!({"event": "ping", "data": {}, "users": [user_id]}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(publish(key.clone()).await.status(), StatusCode::OK);

    let out = postbox(&app, &["service-tokens", "list"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mine: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == name.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{list}");
    assert_eq!(mine[0]["status"], "live");
    assert!(!list.to_string().contains(&key), "keys are never listed");

    let out = postbox(&app, &["service-tokens", "revoke", "--name", &name]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_error(publish(key).await, StatusCode::UNAUTHORIZED).await;
    let out = postbox(&app, &["service-tokens", "revoke", "--name", &name]);
    assert_eq!(out.status.code(), Some(1), "nothing left to revoke");
}

/// The token lookups of concurrent requests share one query; each still gets its own answer, and a
/// revoked or unknown token none.
#[tokio::test]
async fn concurrent_token_lookups_each_get_their_own_answer() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let carol = app.member("carol").await;
    let out = postbox(&app, &["tokens", "revoke", "--username", "bob"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lookups = postbox::accounts::tokens::TokenLookups::new(app.db.clone());
    let find = |key: &str| lookups.find(postbox::accounts::tokens::hash_token(key));
    let unknown = "0".repeat(40);
    // One runtime thread: all five are queued before the query runs, so one query answers them.
    let (a, b, c, a_again, nobody) = tokio::join!(
        find(&alice.token),
        find(&bob.token),
        find(&carol.token),
        find(&alice.token),
        find(&unknown),
    );
    let user_of = |found: Result<Option<postbox::db::users::LiveToken>, _>| {
        found.expect("lookup").map(|t| t.user.id)
    };
    assert_eq!(user_of(a), Some(alice.id));
    assert_eq!(user_of(b), None, "a revoked token was found");
    assert_eq!(user_of(c), Some(carol.id));
    assert_eq!(user_of(a_again), Some(alice.id));
    assert_eq!(user_of(nobody), None);
}
