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

#[tokio::test]
async fn a_user_change_reaches_their_next_poll_in_every_instance() {
    // Polls authenticate through each instance's token cache. The serving instance forgets the user at
    // once, the other one on the control message; without it, `b` would serve the old college and
    // role from memory for the cache's lifetime (30 s) and bind the old college again.
    let a = spawn_app().await;
    let b = crate::helpers::spawn_twin(&a).await;
    let (old, new) = (
        rand::random::<u32>() as i64 + 2_000_000,
        rand::random::<u32>() as i64 + 2_000_000,
    );
    let admin = a.create_user("boss", "admin").await;
    let user = a.create_user_in("climber", "member", old).await;
    assert!(b.poll_events(&user).await.is_empty()); // `b` now remembers the member
    let resp = a
        .client
        .patch(a.url(&format!("/api/v1/admin/users/{}/", user.id)))
        .header("Authorization", format!("Token {}", admin.token))
        .json(&json!({"role": "staff", "college_id": new}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, me) = a.get_json(&user, "/api/v1/communication/me/").await;
    assert_eq!(me["role"], "staff");

    // Once `b`'s consumer is gone (linger 2 s), its next poll declares the postbox again with the
    // user's groups as `b` knows them.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    assert!(b.poll_events(&user).await.is_empty());
    for (college, title) in [(old, "old college"), (new, "new college")] {
        let resp = a
            .post_json(
                &admin,
                "/api/v1/communication/notifications/",
                json!({"college_id": college, "title": title}),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let events = b.collect_events(&user, 2, 3).await; // 2: give a wrong one the time to come
    let titles: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "notification")
        .map(|e| &e["data"]["title"])
        .collect();
    assert_eq!(titles, [&json!("new college")], "{events:?}");
    // The new role applies on `b` too: staff may notify.
    let resp = b
        .post_json(
            &user,
            "/api/v1/communication/notifications/",
            json!({"user_id": admin.id, "title": "hello from staff"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_user_created_over_http_has_a_postbox_bound_to_their_college_before_polling() {
    let app = spawn_app().await;
    let admin = app.create_user("root", "admin").await;
    let college = rand::random::<u32>() as i64 + 2_000_000;
    let resp = app
        .post_json(
            &admin,
            "/api/v1/admin/users/",
            json!({"username": "newcomer", "college_id": college}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.unwrap();
    let user = crate::helpers::TestUser {
        id: created["id"].as_i64().unwrap(),
        token: created["token"].as_str().unwrap().to_owned(),
    };
    let queue = app.queue_name(&user);
    assert_eq!(app.queue_depth(&queue).await, Some(0), "no postbox yet");

    // A college broadcast sent before the newcomer ever polled waits in their postbox.
    let resp = app
        .post_json(
            &admin,
            "/api/v1/communication/notifications/",
            json!({"college_id": college, "title": "Welcome"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    // The broadcast is published right after the answer: wait for it to land.
    let mut depth = None;
    for _ in 0..100 {
        depth = app.queue_depth(&queue).await;
        if depth == Some(1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(depth, Some(1), "the broadcast did not reach the postbox");
    let events = app.poll_events(&user).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "notification");
    assert_eq!(events[0]["data"]["title"], "Welcome");
}
