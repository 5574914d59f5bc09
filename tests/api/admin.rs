//! `POST /api/v1/admin/users/`: provisioning over HTTP, admin only.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn admin_creates_users_and_their_token_works() {
    let app = spawn_app().await;
    let admin = app.create_user("root", "admin").await;
    let resp = app
        .client
        .post(app.url("/api/v1/admin/users/"))
        .header("Authorization", format!("Token {}", admin.token))
        .json(&json!({"username": "carol", "display_name": "Carol C", "college_id": 7, "role": "staff"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["username"], "carol");
    assert_eq!(created["display_name"], "Carol C");
    assert_eq!(created["college_id"], 7);
    assert_eq!(created["role"], "staff");
    let token = created["token"].as_str().unwrap();
    assert_eq!(token.len(), 40);

    // The new token authenticates.
    let r = app
        .client
        .post(app.url("/api/v1/communication/poll/disconnect/"))
        .header("Authorization", format!("Token {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["user_id"], created["id"]);
}

#[tokio::test]
async fn only_admins_provision_and_input_is_validated() {
    let app = spawn_app().await;
    let admin = app.create_user("root", "admin").await;
    let staff = app.create_user("desk", "staff").await;
    let url = app.url("/api/v1/admin/users/");
    let as_ = |token: &str, body: Value| {
        app.client
            .post(&url)
            .header("Authorization", format!("Token {token}"))
            .json(&body)
    };
    assert_error(
        as_(&staff.token, json!({"username": "x"}))
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_error(
        app.client
            .post(&url)
            .json(&json!({"username": "x"}))
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_error(
        as_(&admin.token, json!({"username": ""}))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(
        as_(&admin.token, json!({"username": "a b"}))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(
        as_(&admin.token, json!({"username": "ok", "role": "god"}))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(
        as_(&admin.token, json!({"username": "ok", "college_id": "x"}))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(
        as_(&admin.token, json!({"username": "ok", "extra": 1}))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    let first = as_(&admin.token, json!({"username": "dup"}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let body = assert_error(
        as_(&admin.token, json!({"username": "dup"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(body["error"], "conflict");
}
