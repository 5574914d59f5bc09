//! Authentication: header and query-string tokens, and 401s with the JSON shape.

use reqwest::StatusCode;

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn missing_or_wrong_tokens_are_refused() {
    let app = spawn_app().await;
    let url = app.url("/api/v1/communication/poll/events/");
    let body = assert_error(
        app.client.get(&url).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body["error"], "unauthorized");
    assert_error(
        app.client
            .get(&url)
            .header("Authorization", "Token nope")
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_error(
        app.client
            .get(format!("{url}?token=nope"))
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_error(
        app.client
            .get(&url)
            .header("Authorization", "Basic Zm9vOmJhcg==")
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_error(
        app.client
            .post(app.url("/api/v1/communication/chats/"))
            .json(&serde_json::json!({"receiver": 1, "message": "x"}))
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn header_and_query_tokens_both_work() {
    let app = spawn_app().await;
    let bob = app.member("bob").await;
    let url = app.url("/api/v1/communication/poll/disconnect/");
    let r = app
        .client
        .post(&url)
        .header("Authorization", format!("Token {}", bob.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .client
        .post(&url)
        .header("Authorization", format!("Bearer {}", bob.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .client
        .post(format!("{url}?token={}", bob.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn tokens_are_stored_hashed() {
    let app = spawn_app().await;
    let bob = app.member("bob").await;
    use sea_orm::EntityTrait;
    let rows = postbox::db::entities::api_token::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_ne!(rows[0].key_hash, bob.token);
    assert!(!rows[0].key_hash.contains(&bob.token));
    assert_eq!(
        rows[0].key_hash,
        postbox::accounts::tokens::hash_token(&bob.token)
    );
}

#[tokio::test]
async fn me_tells_the_caller_who_they_are() {
    let app = spawn_app().await;
    let alice = app.create_user_in("alice", "staff", 12).await;
    let (status, me) = app.get_json(&alice, "/api/v1/communication/me/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["id"], alice.id);
    assert_eq!(me["username"], "alice");
    assert_eq!(me["college_id"], 12);
    assert_eq!(me["role"], "staff");
    let resp = app
        .client
        .get(app.url("/api/v1/communication/me/"))
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::UNAUTHORIZED).await;
}
