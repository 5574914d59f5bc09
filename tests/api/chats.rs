//! The first chat path: sending a message, and every way to send it wrong.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn send_answers_201_with_the_seed_message_shape() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let resp = app.send(&alice, bob.id, "  Hello!  ").await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let m: Value = resp.json().await.unwrap();
    for field in [
        "id",
        "sender_id",
        "sender_name",
        "receiver_id",
        "message",
        "attachment",
        "attachment_type",
        "timestamp",
        "is_read",
        "conversation_id",
    ] {
        assert!(m.get(field).is_some(), "missing field {field}: {m}");
    }
    assert_eq!(m["message"], "Hello!");
    assert_eq!(m["sender_id"], alice.id);
    assert_eq!(m["receiver_id"], bob.id);
    assert!(m["timestamp"].as_str().unwrap().ends_with('Z'));
    // The same conversation both ways.
    let back: Value = app.send_ok(&bob, alice.id, "hi").await;
    assert_eq!(back["conversation_id"], m["conversation_id"]);
}

#[tokio::test]
async fn receiver_as_numeric_string_is_accepted() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let resp = app
        .client
        .post(app.url("/api/v1/communication/chats/"))
        .header("Authorization", format!("Token {}", alice.token))
        .json(&json!({"receiver": bob.id.to_string(), "message": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn bad_sends_are_refused_with_json_errors_and_publish_nothing() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let url = app.url("/api/v1/communication/chats/");
    let auth = format!("Token {}", alice.token);
    let post = |body: String| {
        app.client
            .post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .body(body)
    };

    assert_error(
        post("{\"receiver\": 2,".into()).send().await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(
        post("[1,2]".into()).send().await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(
        post(json!({"message": "no receiver"}).to_string())
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(
        post(json!({"receiver": "abc", "message": "x"}).to_string())
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(
        post(json!({"receiver": bob.id, "message": "   "}).to_string())
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(
        post(json!({"receiver": bob.id}).to_string())
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(
        post(json!({"receiver": bob.id, "message": 5}).to_string())
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(
        post(json!({"receiver": alice.id, "message": "me"}).to_string())
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    let body = assert_error(
        post(json!({"receiver": 999_999, "message": "x"}).to_string())
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(body["error"], "not_found");
    let big = "x".repeat(app.config.max_body_bytes + 10);
    assert_error(
        post(json!({"receiver": bob.id, "message": big}).to_string())
            .send()
            .await
            .unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    let long = "y".repeat(app.config.max_message_chars + 1);
    assert_error(
        post(json!({"receiver": bob.id, "message": long}).to_string())
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(
        app.client
            .post(&url)
            .header("Authorization", &auth)
            .body("receiver=2")
            .send()
            .await
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;

    // Nothing of it reached bob.
    assert!(app.poll_events(&bob).await.is_empty());
    assert_eq!(app.queue_depth(&app.queue_name(&bob)).await.unwrap_or(0), 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    assert_error(
        app.client.get(app.url("/nope")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_error(
        app.client
            .delete(app.url("/api/v1/communication/chats/"))
            .send()
            .await
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
}
