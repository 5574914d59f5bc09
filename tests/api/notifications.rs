//! Notifications (stored, read state, college broadcast by routing), moving a user between colleges,
//! and the host applications' publish API with service tokens.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, assert_error, spawn_app};

/// A college id no other test uses (the PostgreSQL suite shares one database).
fn fresh_college() -> i64 {
    rand::random::<u32>() as i64 + 1_000_000
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

async fn notify(app: &TestApp, by: &TestUser, body: Value) -> reqwest::Response {
    app.post_json(by, "/api/v1/communication/notifications/", body)
        .await
}

async fn publish(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/publish/"))
        .header("Authorization", format!("Bearer {key}"))
        .json(&body)
        .send()
        .await
        .expect("publish request")
}

#[tokio::test]
async fn a_college_notification_reaches_every_member_and_no_one_else() {
    let app = spawn_app().await;
    let college = fresh_college();
    let staff = app.create_user("staff", "staff").await;
    let a = app.create_user_in("a", "member", college).await;
    let b = app.create_user_in("b", "member", college).await;
    let outsider = app.create_user_in("outsider", "member", college + 1).await;
    // Each member's postboxes exist (a poll declares them, bound to the college's key); b reads
    // through a registered client's own postbox.
    assert!(app.poll_events(&a).await.is_empty());
    assert!(app.poll_client(&b, "tab1").await.is_empty());
    assert!(app.poll_events(&outsider).await.is_empty());

    let resp = notify(
        &app,
        &staff,
        json!({"college_id": college, "title": "Exams", "message": "Schedule released",
               "notification_type": "notice", "data": {"url": "/exams"}}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["recipients"], 2, "{created}");
    assert_eq!(
        created["postboxes"], 3,
        "a's postbox, b's and b's client's: {created}"
    );
    let id = created["id"].as_i64().unwrap();

    for (who, events) in [
        ("a", app.poll_events(&a).await),
        ("b's client", app.poll_client(&b, "tab1").await),
    ] {
        let got = of_kind(&events, "notification");
        assert_eq!(got.len(), 1, "{who} got {events:?}");
        assert_eq!(got[0]["data"]["title"], "Exams");
        assert_eq!(got[0]["data"]["message"], "Schedule released");
        assert_eq!(got[0]["data"]["notification_type"], "notice");
        assert_eq!(got[0]["data"]["id"], id);
        assert!(got[0]["data"]["timestamp"].is_string());
    }
    assert!(
        of_kind(&app.poll_events(&outsider).await, "notification").is_empty(),
        "the outsider's postbox got nothing"
    );

    // Stored, with read state per member.
    let (status, list) = app
        .get_json(&a, "/api/v1/communication/notifications/")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["unread_count"], 1, "{list}");
    assert_eq!(list["results"][0]["id"], id);
    assert_eq!(list["results"][0]["is_read"], false);
    assert_eq!(list["results"][0]["data"]["url"], "/exams");
    let resp = app
        .post_json(
            &a,
            &format!("/api/v1/communication/notifications/{id}/read/"),
            json!({}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let read: Value = resp.json().await.unwrap();
    assert_eq!(read["is_read"], true);
    assert!(read["read_at"].is_string());
    let (_, list) = app
        .get_json(&a, "/api/v1/communication/notifications/")
        .await;
    assert_eq!(list["unread_count"], 0);
    let (_, list) = app
        .get_json(&b, "/api/v1/communication/notifications/?unread=true")
        .await;
    assert_eq!(list["unread_count"], 1, "b's read state is b's own: {list}");
    assert_eq!(list["results"].as_array().unwrap().len(), 1);

    // Someone outside the college neither sees nor reads it.
    let (_, list) = app
        .get_json(&outsider, "/api/v1/communication/notifications/")
        .await;
    assert_eq!(list["results"], json!([]));
    let resp = app
        .post_json(
            &outsider,
            &format!("/api/v1/communication/notifications/{id}/read/"),
            json!({}),
        )
        .await;
    assert_error(resp, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn notifications_to_one_user_mark_all_read_and_authorization() {
    let app = spawn_app().await;
    let admin = app.create_user("admin", "admin").await;
    let member = app.member("member").await;
    let other = app.member("other").await;

    for n in 0..3 {
        let resp = notify(
            &app,
            &admin,
            json!({"user_id": member.id, "title": format!("n{n}")}),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let events = app.collect_events(&member, 3, 3).await;
    assert_eq!(of_kind(&events, "notification").len(), 3, "{events:?}");

    // Paging, newest first.
    let (_, page) = app
        .get_json(&member, "/api/v1/communication/notifications/?limit=2")
        .await;
    assert_eq!(page["results"][0]["title"], "n2");
    assert_eq!(page["results"].as_array().unwrap().len(), 2);
    let before = page["next_before"].as_i64().expect("a next page");
    let (_, rest) = app
        .get_json(
            &member,
            &format!("/api/v1/communication/notifications/?before={before}"),
        )
        .await;
    assert_eq!(rest["results"].as_array().unwrap().len(), 1);
    assert_eq!(rest["results"][0]["title"], "n0");

    let resp = app
        .post_json(
            &member,
            "/api/v1/communication/notifications/read-all/",
            json!({}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["marked"], 3);
    assert_eq!(body["unread_count"], 0);

    // Members cannot create notifications; nobody reads someone else's.
    let resp = notify(&app, &member, json!({"user_id": other.id, "title": "x"})).await;
    assert_error(resp, StatusCode::FORBIDDEN).await;
    let (_, theirs) = app
        .get_json(&other, "/api/v1/communication/notifications/")
        .await;
    assert_eq!(theirs["results"], json!([]));
    let resp = app
        .client
        .get(app.url("/api/v1/communication/notifications/"))
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::UNAUTHORIZED).await;

    // Bad input: no target, both targets, unknown user, blank title, data not an object.
    for body in [
        json!({"title": "x"}),
        json!({"title": "x", "user_id": member.id, "college_id": 1}),
        json!({"title": "  ", "user_id": member.id}),
        json!({"title": "x", "user_id": member.id, "data": [1, 2]}),
        json!({"title": "x", "user_id": member.id, "notification_type": "Bad Type"}),
    ] {
        let resp = notify(&app, &admin, body.clone()).await;
        assert_error(resp, StatusCode::BAD_REQUEST).await;
    }
    let resp = notify(&app, &admin, json!({"title": "x", "user_id": 999_999_999})).await;
    assert_error(resp, StatusCode::NOT_FOUND).await;
    let (_, list) = app
        .get_json(&member, "/api/v1/communication/notifications/")
        .await;
    assert_eq!(
        list["results"].as_array().unwrap().len(),
        3,
        "refused requests stored nothing"
    );
}

#[tokio::test]
async fn changing_a_users_college_moves_their_postbox_binding() {
    let app = spawn_app().await;
    let (old, new) = (fresh_college(), fresh_college() + 7);
    let admin = app.create_user("admin", "admin").await;
    let user = app.create_user_in("mover", "member", old).await;
    assert!(app.poll_events(&user).await.is_empty());

    let resp = app
        .client
        .patch(app.url(&format!("/api/v1/admin/users/{}/", user.id)))
        .header("Authorization", format!("Token {}", admin.token))
        .json(&json!({"college_id": new}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let changed: Value = resp.json().await.unwrap();
    assert_eq!(changed["college_id"], new);

    for (college, title) in [(old, "old college"), (new, "new college")] {
        let resp = notify(&app, &admin, json!({"college_id": college, "title": title})).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let events = app.collect_events(&user, 1, 2).await;
    let titles: Vec<&Value> = of_kind(&events, "notification")
        .iter()
        .map(|e| &e["data"]["title"])
        .collect();
    assert_eq!(titles, [&json!("new college")], "{events:?}");

    // Only admins change users; unknown users are 404.
    let resp = app
        .client
        .patch(app.url(&format!("/api/v1/admin/users/{}/", user.id)))
        .header("Authorization", format!("Token {}", user.token))
        .json(&json!({"college_id": old}))
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::FORBIDDEN).await;
    let resp = app
        .client
        .patch(app.url("/api/v1/admin/users/999999999/"))
        .header("Authorization", format!("Token {}", admin.token))
        .json(&json!({"role": "staff"}))
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::NOT_FOUND).await;

    // Bad input answers 400 with the JSON error shape and changes nothing.
    for body in [
        json!({"role": "king"}),
        json!({"college_id": -1}),
        json!({"display_name": "   "}),
        json!({"nickname": "x"}),
    ] {
        let resp = app
            .client
            .patch(app.url(&format!("/api/v1/admin/users/{}/", user.id)))
            .header("Authorization", format!("Token {}", admin.token))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::BAD_REQUEST).await;
    }
    let (_, me) = app.get_json(&user, "/api/v1/communication/me/").await;
    assert_eq!(me["college_id"], new, "refused changes changed nothing");
    assert_eq!(me["role"], "member");
}

/// A stored host notification to many users is one outbox row whose audience lists them all: it must
/// fit (on PostgreSQL the column was 255 characters: 60 users failed with a database error).
#[tokio::test]
async fn a_host_notification_to_many_users_is_stored_and_reaches_them_all() {
    let app = spawn_app().await;
    let mut users = Vec::new();
    for i in 0..60 {
        users.push(app.member(&format!("many{i}")).await);
    }
    let (_, key) = app.service_token("erp").await;
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let resp = publish(
        &app,
        &key,
        json!({"event": "notification", "data": {"title": "Closed", "message": "snow day"},
               "users": ids}),
    )
    .await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        resp.text().await.unwrap()
    );
    for u in [&users[0], &users[59]] {
        let got = of_kind(&app.poll_events(u).await, "notification").len();
        assert_eq!(got, 1);
    }
}

#[tokio::test]
async fn hosts_publish_to_users_and_colleges_with_service_tokens() {
    let app = spawn_app().await;
    let college = fresh_college();
    let users = [
        app.member("u1").await,
        app.member("u2").await,
        app.member("u3").await,
    ];
    let (token_id, key) = app.service_token("erp").await;

    // To three users: no poll needed first (their postboxes are declared on publish).
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let resp = publish(
        &app,
        &key,
        json!({"event": "invoice.paid", "data": {"invoice": 42}, "users": ids}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["recipients"], 3, "{body}");
    assert_eq!(body["postboxes"], 3, "{body}");
    for u in &users {
        let events = app.poll_events(u).await;
        let got = of_kind(&events, "invoice.paid");
        assert_eq!(got.len(), 1, "{events:?}");
        assert_eq!(got[0]["data"], json!({"invoice": 42}));
        assert_eq!(got[0]["id"], body["event_id"]);
    }

    // To a college: one publish, routed to the members' postboxes.
    let member = app.create_user_in("member", "member", college).await;
    let outsider = app.member("outsider").await;
    assert!(app.poll_events(&member).await.is_empty());
    let resp = publish(
        &app,
        &key,
        json!({"event": "timetable", "data": {"week": 3}, "college_id": college}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["recipients"], 1);
    assert_eq!(
        of_kind(&app.poll_events(&member).await, "timetable").len(),
        1
    );
    assert!(of_kind(&app.poll_events(&outsider).await, "timetable").is_empty());

    // `notification` from a host is stored like a staff notification.
    let resp = publish(
        &app,
        &key,
        json!({"event": "notification", "data": {"title": "Fees due", "message": "by Friday"},
               "users": [users[0].id]}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, list) = app
        .get_json(&users[0], "/api/v1/communication/notifications/")
        .await;
    assert_eq!(list["results"][0]["title"], "Fees due", "{list}");

    // Refused: reserved or malformed event names, non-object data, unknown users, both or no
    // audience, a user's token, a revoked service token.
    for bad in [
        json!({"event": "message", "data": {}, "users": [users[0].id]}),
        json!({"event": "Bad Name", "data": {}, "users": [users[0].id]}),
        json!({"event": "x", "data": [1], "users": [users[0].id]}),
        json!({"event": "x", "data": {}, "users": [users[0].id], "college_id": college}),
        json!({"event": "x", "data": {}}),
    ] {
        let resp = publish(&app, &key, bad.clone()).await;
        assert_error(resp, StatusCode::BAD_REQUEST).await;
    }
    let resp = publish(
        &app,
        &key,
        json!({"event": "x", "data": {}, "users": [users[0].id, 999_999_999]}),
    )
    .await;
    let body = assert_error(resp, StatusCode::NOT_FOUND).await;
    assert!(
        body["detail"].as_str().unwrap().contains("999999999"),
        "{body}"
    );
    let resp = publish(
        &app,
        &users[0].token,
        json!({"event": "x", "data": {}, "users": [users[1].id]}),
    )
    .await;
    assert_error(resp, StatusCode::UNAUTHORIZED).await;
    let revoked = postbox::db::notifications::revoke_service_tokens(&app.db, Some(token_id), None)
        .await
        .unwrap();
    assert_eq!(revoked, 1);
    let resp = publish(
        &app,
        &key,
        json!({"event": "x", "data": {}, "users": [users[1].id]}),
    )
    .await;
    assert_error(resp, StatusCode::UNAUTHORIZED).await;
    assert!(
        of_kind(&app.poll_events(&users[1]).await, "x").is_empty(),
        "nothing refused was published"
    );
}

/// The AMQP delivery mode of the next message in a queue (taken off it), waiting for one to arrive.
async fn next_delivery_mode(app: &TestApp, queue: &str) -> Option<u8> {
    use lapin::options::BasicGetOptions;
    let conn = app.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    let mut mode = None;
    for _ in 0..100 {
        if let Some(msg) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            mode = msg.delivery.properties.delivery_mode().to_owned();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = conn.close(200, "OK".into()).await;
    mode
}

#[tokio::test]
async fn broadcasts_are_persistent_unless_configured_transient() {
    for (delivery, expected) in [
        (postbox::config::BroadcastDelivery::Persistent, 2),
        (postbox::config::BroadcastDelivery::Transient, 1),
    ] {
        let app = crate::helpers::spawn_app_with(|c| c.broadcast_delivery = delivery).await;
        let college = fresh_college();
        let admin = app.create_user("boss", "admin").await;
        let member = app.create_user_in("member", "member", college).await;
        assert!(app.poll_events(&member).await.is_empty()); // declares and binds the postbox
        // Let the consumer go, so the broadcast stays in the queue to be inspected.
        let resp = app
            .post_json(&member, "/api/v1/communication/poll/disconnect/", json!({}))
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = notify(&app, &admin, json!({"college_id": college, "title": "hi"})).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(
            next_delivery_mode(&app, &app.queue_name(&member)).await,
            Some(expected),
            "{delivery:?}"
        );
    }
}
