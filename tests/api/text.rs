//! Control characters in stored text: every text field a client sends and Postbox stores refuses NUL,
//! the other C0 controls except tab, line feed and carriage return, and DEL, with a 400 naming the field
//! (on PostgreSQL a NUL used to answer 500; SQLite stored it). Tab, LF and CR (CRLF newlines) are kept.

use reqwest::{
    StatusCode,
    multipart::{Form, Part},
};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, spawn_app};

/// Texts each field must refuse: NUL, another C0 control, the ASCII separators, DEL.
const REFUSED: &[&str] = &[
    "a\u{0}b",
    "bell\u{7}",
    "x\u{1b}[31m",
    "sep\u{1f}",
    "del\u{7f}",
];

/// Accepted everywhere: tab, LF, CR (a CRLF newline), and non-ASCII text.
const KEPT: &str = "line 1\r\nline 2\n\tindented — ok";

/// Asserts a 400 `validation_error` naming `field`.
async fn refused(resp: reqwest::Response, field: &str) {
    let body = assert_error(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["error"], "validation_error", "{body}");
    assert!(
        body["fields"][field]
            .as_str()
            .is_some_and(|m| m.contains("control characters")),
        "the error names {field}: {body}"
    );
}

/// Rows in `table` (what was stored).
pub async fn count_rows(app: &TestApp, table: &str) -> i64 {
    use sea_orm::{ConnectionTrait, Statement};
    let backend = app.db.get_database_backend();
    let row = app
        .db
        .query_one_raw(Statement::from_string(
            backend,
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .unwrap()
        .expect("a count");
    row.try_get::<i64>("", "n").unwrap()
}

#[tokio::test]
async fn chat_messages_refuse_control_characters_as_json_and_as_forms() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    for text in REFUSED {
        let resp = app.send(&alice, bob.id, text).await;
        refused(resp, "message").await;
        let form = Form::new()
            .text("receiver", bob.id.to_string())
            .text("message", text.to_string());
        let resp = app
            .client
            .post(app.url("/api/v1/communication/chats/"))
            .header("Authorization", format!("Token {}", alice.token))
            .multipart(form)
            .send()
            .await
            .unwrap();
        refused(resp, "message").await;
        // With an attachment too (a blank text would be allowed there, a control character is not).
        let form = Form::new()
            .text("receiver", bob.id.to_string())
            .text("message", text.to_string())
            .part("attachment", Part::bytes(b"%PDF-1.4\n".to_vec()));
        let resp = app
            .client
            .post(app.url("/api/v1/communication/chats/"))
            .header("Authorization", format!("Token {}", alice.token))
            .multipart(form)
            .send()
            .await
            .unwrap();
        refused(resp, "message").await;
    }
    assert_eq!(count_rows(&app, "chat_messages").await, 0);

    let m = app.send_ok(&alice, bob.id, KEPT).await;
    assert_eq!(m["message"], KEPT);
    let page = app.history(&bob, alice.id).await;
    assert_eq!(page["messages"][0]["message"], KEPT);
}

#[tokio::test]
async fn support_messages_refuse_control_characters_from_users_and_agents() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let agent = app.create_user("desk", "staff").await;
    let mine = "/api/support/chats/my-chat/messages/";
    for text in REFUSED {
        let resp = app.post_json(&alice, mine, json!({"message": text})).await;
        refused(resp, "message").await;
    }
    let resp = app.post_json(&alice, mine, json!({"message": KEPT})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let sent: Value = resp.json().await.unwrap();
    assert_eq!(sent["message"], KEPT);

    let agents = format!("/api/support/chats/{}/messages/", sent["chat_id"]);
    for text in REFUSED {
        let resp = app
            .post_json(&agent, &agents, json!({"message": text}))
            .await;
        refused(resp, "message").await;
    }
    assert_eq!(count_rows(&app, "support_messages").await, 1);
    let resp = app
        .post_json(&agent, &agents, json!({"message": KEPT}))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn notifications_refuse_control_characters_from_staff_and_hosts() {
    let app = spawn_app().await;
    let staff = app.create_user("staff", "staff").await;
    let bob = app.member("bob").await;
    let (_, key) = app.service_token("erp").await;
    let host = |body: Value| {
        app.client
            .post(app.url("/api/v1/publish/"))
            .header("Authorization", format!("Bearer {key}"))
            .json(&body)
            .send()
    };
    let staff_api = "/api/v1/communication/notifications/";
    for text in REFUSED {
        let resp = app
            .post_json(
                &staff,
                staff_api,
                json!({"user_id": bob.id, "title": text, "message": "m"}),
            )
            .await;
        refused(resp, "title").await;
        let resp = app
            .post_json(
                &staff,
                staff_api,
                json!({"user_id": bob.id, "title": "t", "message": text}),
            )
            .await;
        refused(resp, "message").await;
        let resp = host(json!({"event": "notification", "users": [bob.id],
                                "data": {"title": text, "message": "m"}}))
        .await
        .unwrap();
        refused(resp, "title").await;
        let resp = host(json!({"event": "notification", "users": [bob.id],
                                "data": {"title": "t", "message": text}}))
        .await
        .unwrap();
        refused(resp, "message").await;
    }
    assert_eq!(count_rows(&app, "notifications").await, 0);

    // Kept: tab, newlines; and a NUL inside `data` is fine, as JSON stores it escaped (`\u0000`).
    let resp = app
        .post_json(
            &staff,
            staff_api,
            json!({"user_id": bob.id, "title": "Fees\tdue", "message": KEPT, "data": {"raw": "a\u{0}b"}}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let (status, page) = app
        .get_json(&bob, "/api/v1/communication/notifications/")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["results"][0]["message"], KEPT);
    assert_eq!(page["results"][0]["data"]["raw"], "a\u{0}b");
}

#[tokio::test]
async fn display_names_refuse_control_characters() {
    let app = spawn_app().await;
    let admin = app.create_user("root", "admin").await;
    let bob = app.member("bob").await;
    for text in REFUSED {
        let resp = app
            .post_json(
                &admin,
                "/api/v1/admin/users/",
                json!({"username": "carol", "display_name": text}),
            )
            .await;
        refused(resp, "display_name").await;
        let resp = app
            .client
            .patch(app.url(&format!("/api/v1/admin/users/{}/", bob.id)))
            .header("Authorization", format!("Token {}", admin.token))
            .json(&json!({"display_name": text}))
            .send()
            .await
            .unwrap();
        refused(resp, "display_name").await;
    }
}
