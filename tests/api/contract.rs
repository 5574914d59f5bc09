//! Regression tests for what schema-driven fuzzing found: the server enforces exactly what the OpenAPI
//! document says, no more and no less.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn ids_follow_the_documented_forms() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let send = |receiver: Value| {
        app.post_json(
            &alice,
            "/api/v1/communication/chats/",
            json!({"receiver": receiver, "message": "x"}),
        )
    };
    // JSON Schema integers include 2.0; numeric strings are documented too.
    assert_eq!(
        send(json!(bob.id as f64)).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        send(json!(bob.id.to_string())).await.status(),
        StatusCode::CREATED
    );
    for bad in [
        json!(2.5),
        json!(" 2"),
        json!("02"),
        json!("-2"),
        json!(0),
        json!(-1),
        json!("1e3"),
        json!(1_000_000_000_000_000_i64),
        json!(null),
    ] {
        assert_error(send(bad).await, StatusCode::BAD_REQUEST).await;
    }
    // Sending to yourself is forbidden, not malformed.
    let body = assert_error(send(json!(alice.id)).await, StatusCode::FORBIDDEN).await;
    assert_eq!(body["error"], "forbidden");
    let r = app
        .post_json(
            &alice,
            "/api/v1/communication/chats/typing/",
            json!({"receiver": alice.id}),
        )
        .await;
    assert_error(r, StatusCode::FORBIDDEN).await;
}

#[tokio::test]
async fn text_limits_count_what_was_sent_and_blank_means_the_documented_blank() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let send = |text: String| {
        app.post_json(
            &alice,
            "/api/v1/communication/chats/",
            json!({"receiver": bob.id, "message": text}),
        )
    };
    // 10 000 characters after trimming, but 10 001 as sent: refused (the document counts what is sent).
    assert_error(
        send(format!("{} ", "a".repeat(10_000))).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(send("a".repeat(10_000)).await.status(), StatusCode::CREATED);
    // The ASCII separators U+001C..U+001F are whitespace to the document's `\S` pattern.
    assert_error(
        send("\u{1c}\u{1f} \n".into()).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        send("\u{90}".into()).await.status(),
        StatusCode::CREATED,
        "a C1 control is not blank"
    );
}

#[tokio::test]
async fn mark_read_accepts_nulls_and_integral_floats_but_needs_a_conversation() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let m = app.send_ok(&alice, bob.id, "hi").await;
    let mark = |body: Value| app.post_json(&bob, "/api/v1/communication/chats/mark-read/", body);
    let r = mark(json!({"user_id": alice.id as f64, "conversation_id": null, "message_ids": [m["id"].as_f64()], "up_to": null})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["marked"], 1);
    for bad in [
        json!({"conversation_id": null}),
        json!({"message_ids": []}),
        json!({"up_to": 5}),
        json!({"user_id": alice.id, "message_ids": [0]}),
        json!({"user_id": alice.id, "message_ids": [1.5]}),
        json!({"user_id": alice.id, "up_to": -1}),
        json!({"user_id": alice.id, "extra": true}),
    ] {
        assert_error(mark(bad).await, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test]
async fn register_takes_no_body_an_empty_object_or_null() {
    let app = spawn_app().await;
    let bob = app.member("bob").await;
    for body in ["", "{}", "null"] {
        let r = app
            .client
            .post(app.url("/api/v1/communication/poll/register/"))
            .header("Authorization", format!("Token {}", bob.token))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "body {body:?}");
    }
    let r = app
        .post_json(
            &bob,
            "/api/v1/communication/poll/register/",
            json!({"client_id": "a", "x": 1}),
        )
        .await;
    assert_error(r, StatusCode::BAD_REQUEST).await;
    // Whitespace is not an empty body: it is not JSON either.
    let r = app
        .client
        .post(app.url("/api/v1/communication/poll/register/"))
        .header("Authorization", format!("Token {}", bob.token))
        .header("Content-Type", "application/json")
        .body("\r")
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn forms_refuse_unknown_fields() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let form = reqwest::multipart::Form::new()
        .text("receiver", bob.id.to_string())
        .text("message", "hi")
        .text("surprise", "field");
    let r = app
        .client
        .post(app.url("/api/v1/communication/chats/"))
        .header("Authorization", format!("Token {}", alice.token))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let body = assert_error(r, StatusCode::BAD_REQUEST).await;
    assert!(body["detail"].as_str().unwrap().contains("surprise"));
    assert!(app.poll_events(&bob).await.is_empty());
}

#[tokio::test]
async fn history_with_before_and_since_is_the_range_between() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            app.send_ok(&alice, bob.id, &format!("m{i}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let (status, page) = app
        .get_json(
            &alice,
            &format!(
                "/api/v1/communication/chats/conversation/{}/?since={}&before={}",
                bob.id, ids[2], ids[7]
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let got: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, ids[3..7]);
}

#[tokio::test]
async fn usernames_and_display_names_follow_the_document() {
    let app = spawn_app().await;
    let admin = app.create_user("root", "admin").await;
    let create = |body: Value| app.post_json(&admin, "/api/v1/admin/users/", body);
    for bad in [
        json!({"username": " bob"}),
        json!({"username": "bób"}),
        json!({"username": "ok1", "display_name": format!("{} ", "d".repeat(150))}),
        json!({"username": "ok2", "display_name": "tab\there"}),
        json!({"username": "ok3", "college_id": 2.5}),
        json!({"username": "ok4", "role": "root"}),
    ] {
        assert_error(create(bad).await, StatusCode::BAD_REQUEST).await;
    }
    let r = create(
        json!({"username": "good.name+1@x", "display_name": null, "college_id": 3.0, "role": null}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["display_name"], "good.name+1@x");
    assert_eq!(body["college_id"], 3);
    assert_eq!(body["role"], "member");
}
