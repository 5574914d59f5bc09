//! The support desk (seed 003) end to end: a user's chat with the agents, `since` polling, the
//! `support_message` and `support_chat` events through the long poll, closing and reopening, and who may
//! do what.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, assert_error, spawn_app, spawn_app_with};

const MY_CHAT: &str = "/api/support/chats/my-chat/";
const MY_MESSAGES: &str = "/api/support/chats/my-chat/messages/";

fn chat_messages(chat_id: &Value) -> String {
    format!("/api/support/chats/{chat_id}/messages/")
}

fn close_path(chat_id: &Value) -> String {
    format!("/api/support/chats/{chat_id}/close/")
}

/// `path?since=<t>`, with the time percent-encoded (`+` offsets).
fn since(path: &str, t: &Value) -> String {
    let t = t.as_str().expect("a time string").replace('+', "%2B");
    format!("{path}?since={t}")
}

async fn post_ok(app: &TestApp, user: &TestUser, path: &str, text: &str) -> Value {
    let resp = app.post_json(user, path, json!({"message": text})).await;
    assert_eq!(resp.status(), StatusCode::CREATED, "POST {path}");
    resp.json().await.unwrap()
}

async fn get_ok(app: &TestApp, user: &TestUser, path: &str) -> Value {
    let (status, body) = app.get_json(user, path).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

fn texts(page: &Value) -> Vec<&str> {
    page["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect()
}

/// Polls `user` until an event of `kind` matching `pred` arrives (or 5 polls passed).
async fn wait_event(
    app: &TestApp,
    user: &TestUser,
    kind: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut seen = Vec::new();
    for _ in 0..5 {
        for e in app.poll_events(user).await {
            if e["event"] == kind && pred(&e["data"]) {
                return e;
            }
            seen.push(e);
        }
    }
    panic!("no {kind} event arrived; got {seen:?}");
}

#[tokio::test]
async fn a_user_and_an_agent_talk_and_since_returns_only_newer_messages() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let admin = app.create_user("desk", "admin").await;

    // Nothing yet: no chat, no messages, no last update.
    let page = get_ok(&app, &alice, MY_MESSAGES).await;
    assert_eq!(page["messages"], json!([]));
    assert_eq!(page["chat_status"], "open");
    assert_eq!(page["last_updated"], Value::Null);

    let chat = get_ok(&app, &alice, MY_CHAT).await;
    assert_eq!(chat["user_id"], alice.id);
    assert_eq!(chat["status"], "open");
    assert_eq!(chat["user"]["username"], "alice");
    assert!(chat["created_at"].is_string() && chat["last_updated"].is_string());
    // The same chat on every access.
    assert_eq!(get_ok(&app, &alice, MY_CHAT).await["id"], chat["id"]);

    let hello = post_ok(&app, &alice, MY_MESSAGES, "  hello support  ").await;
    assert_eq!(hello["message"], "hello support");
    assert_eq!(hello["is_from_admin"], false);
    assert_eq!(hello["chat_id"], chat["id"]);
    assert_eq!(hello["sender_id"], alice.id);
    assert_eq!(hello["user_email"], "alice");
    assert_eq!(hello["sender_name"], "alice display");
    assert_eq!(hello["attachment_url"], Value::Null);
    assert_eq!(hello["id"].as_str().unwrap().len(), 36);
    let created = hello["created_at"].as_str().unwrap();
    assert!(
        created.ends_with('Z') && created.len() == "2025-10-14T23:30:00.000Z".len(),
        "{created}"
    );

    // The agent sees the chat in the list and reads it.
    let list = get_ok(&app, &admin, "/api/support/chats/").await;
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == chat["id"])
        .expect("the chat is listed");
    assert_eq!(listed["user"]["id"], alice.id);
    assert_eq!(listed["user"]["display_name"], "alice display");
    assert_eq!(listed["last_message"], "hello support");
    assert_eq!(listed["last_updated"], hello["created_at"]);
    let page = get_ok(&app, &admin, &chat_messages(&chat["id"])).await;
    assert_eq!(texts(&page), ["hello support"]);
    assert_eq!(page["messages"][0], hello);

    let reply = post_ok(
        &app,
        &admin,
        &chat_messages(&chat["id"]),
        "how can we help?",
    )
    .await;
    assert_eq!(reply["is_from_admin"], true);
    assert_eq!(reply["sender_id"], admin.id);
    assert_eq!(reply["user_email"], "desk");

    // The user catches up from the last message seen: only the reply, then nothing.
    let page = get_ok(&app, &alice, &since(MY_MESSAGES, &hello["created_at"])).await;
    assert_eq!(texts(&page), ["how can we help?"]);
    assert_eq!(page["chat_status"], "open");
    assert_eq!(page["last_updated"], reply["created_at"]);
    assert_eq!(page["has_more"], false);
    let page = get_ok(&app, &alice, &since(MY_MESSAGES, &reply["created_at"])).await;
    assert_eq!(page["messages"], json!([]));

    // A burst in the same milliseconds: every created_at is distinct, and echoing each back answers
    // exactly the messages after it (no duplicate, none skipped).
    for i in 0..5 {
        post_ok(&app, &alice, MY_MESSAGES, &format!("burst {i}")).await;
    }
    let all = get_ok(&app, &admin, &chat_messages(&chat["id"])).await;
    let all = all["messages"].as_array().unwrap().clone();
    assert_eq!(all.len(), 7);
    for (i, m) in all.iter().enumerate() {
        let after = get_ok(&app, &alice, &since(MY_MESSAGES, &m["created_at"])).await;
        let ids: Vec<&Value> = after["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["id"])
            .collect();
        let expected: Vec<&Value> = all[i + 1..].iter().map(|m| &m["id"]).collect();
        assert_eq!(ids, expected, "since message {i}");
    }
    // A `since` with another offset means the same instant; an unencoded `+` (read as a space) too.
    let t = chrono::DateTime::parse_from_rfc3339(hello["created_at"].as_str().unwrap()).unwrap();
    let shifted = t
        .with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
    let page = get_ok(&app, &alice, &since(MY_MESSAGES, &json!(shifted))).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 6);
    let page = get_ok(&app, &alice, &format!("{MY_MESSAGES}?since={shifted}")).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn the_long_poll_delivers_support_messages_to_every_agent_and_to_the_user() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let admin = app.create_user("desk", "admin").await;
    let staff = app.create_user("helper", "staff").await;
    let bob = app.member("bob").await;
    // Each polls once, so their postboxes exist (the agents' bound to the staff group key).
    for u in [&alice, &admin, &staff, &bob] {
        app.poll_events(u).await;
    }

    let hello = post_ok(&app, &alice, MY_MESSAGES, "my order is late").await;
    for agent in [&admin, &staff] {
        let e = wait_event(&app, agent, "support_message", |d| d["id"] == hello["id"]).await;
        assert_eq!(e["data"]["message"], "my order is late");
        assert_eq!(e["data"]["chat_id"], hello["chat_id"]);
        assert_eq!(e["data"]["is_from_admin"], false);
        assert_eq!(e["data"]["user_email"], "alice");
    }
    // The user's other devices see it too.
    wait_event(&app, &alice, "support_message", |d| d["id"] == hello["id"]).await;

    let reply = post_ok(
        &app,
        &admin,
        &chat_messages(&hello["chat_id"]),
        "on its way",
    )
    .await;
    let e = wait_event(&app, &alice, "support_message", |d| d["id"] == reply["id"]).await;
    assert_eq!(e["data"]["is_from_admin"], true);
    assert_eq!(e["data"]["message"], "on its way");
    // The other agent sees the reply, so two agents do not answer twice.
    wait_event(&app, &staff, "support_message", |d| d["id"] == reply["id"]).await;

    // Another member hears nothing of it.
    let events = app.poll_events(&bob).await;
    assert!(
        events
            .iter()
            .all(|e| !e["event"].as_str().unwrap().starts_with("support")),
        "{events:?}"
    );
}

#[tokio::test]
async fn closing_is_idempotent_and_a_message_reopens_the_chat() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let admin = app.create_user("desk", "admin").await;
    let staff = app.create_user("helper", "staff").await;
    app.poll_events(&alice).await;
    app.poll_events(&staff).await;
    let hello = post_ok(&app, &alice, MY_MESSAGES, "thanks, solved").await;
    let chat_id = hello["chat_id"].clone();

    let resp = app
        .post_json(&admin, &close_path(&chat_id), json!({}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let closed: Value = resp.json().await.unwrap();
    assert_eq!(closed["status"], "closed");
    assert_eq!(closed["closed_by"], admin.id);
    assert!(closed["closed_at"].is_string());
    // Closing again answers the same closed chat.
    let again: Value = app
        .post_json(&staff, &close_path(&chat_id), json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again, closed);

    let e = wait_event(&app, &alice, "support_chat", |d| d["status"] == "closed").await;
    assert_eq!(e["data"]["chat_id"], chat_id);
    assert_eq!(e["data"]["user_id"], alice.id);
    wait_event(&app, &staff, "support_chat", |d| d["status"] == "closed").await;

    let page = get_ok(&app, &alice, MY_MESSAGES).await;
    assert_eq!(page["chat_status"], "closed");
    assert_eq!(get_ok(&app, &alice, MY_CHAT).await["status"], "closed");
    let ids = |list: Value| -> Vec<Value> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].clone())
            .collect()
    };
    let listed = ids(get_ok(&app, &admin, "/api/support/chats/?status=closed").await);
    assert_eq!(listed, std::slice::from_ref(&chat_id));
    assert!(ids(get_ok(&app, &admin, "/api/support/chats/?status=open").await).is_empty());

    // The user writes again: the chat is open again, and everyone is told.
    post_ok(&app, &alice, MY_MESSAGES, "actually, one more thing").await;
    let chat = get_ok(&app, &alice, MY_CHAT).await;
    assert_eq!(chat["status"], "open");
    assert_eq!(chat["closed_at"], Value::Null);
    assert_eq!(chat["last_message"], "actually, one more thing");
    wait_event(&app, &staff, "support_chat", |d| d["status"] == "open").await;
    let listed = ids(get_ok(&app, &admin, "/api/support/chats/?status=open").await);
    assert_eq!(listed, std::slice::from_ref(&chat_id));

    // An agent's reply reopens a closed chat as well.
    app.post_json(&admin, &close_path(&chat_id), json!({}))
        .await;
    post_ok(&app, &admin, &chat_messages(&chat_id), "reopening").await;
    assert_eq!(get_ok(&app, &alice, MY_CHAT).await["status"], "open");
}

#[tokio::test]
async fn only_agents_use_the_agent_routes_and_tokens_are_required() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let staff = app.create_user("helper", "staff").await;
    let alice_chat = post_ok(&app, &alice, MY_MESSAGES, "private")
        .await
        .get("chat_id")
        .cloned()
        .unwrap();
    let bob_chat = get_ok(&app, &bob, MY_CHAT).await["id"].clone();

    // A member lists nothing, reads, writes and closes no chat through the agents' routes, not even
    // their own (members use my-chat).
    let (status, _) = app.get_json(&bob, "/api/support/chats/").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for chat in [&alice_chat, &bob_chat, &json!(999_999)] {
        let resp = app
            .client
            .get(app.url(&chat_messages(chat)))
            .header("Authorization", format!("Token {}", bob.token))
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::FORBIDDEN).await;
        let resp = app
            .post_json(&bob, &chat_messages(chat), json!({"message": "hi"}))
            .await;
        assert_error(resp, StatusCode::FORBIDDEN).await;
        let resp = app.post_json(&bob, &close_path(chat), json!({})).await;
        assert_error(resp, StatusCode::FORBIDDEN).await;
    }
    // Nothing leaked into alice's chat, and it is still open.
    let page = get_ok(&app, &staff, &chat_messages(&alice_chat)).await;
    assert_eq!(texts(&page), ["private"]);
    assert_eq!(page["chat_status"], "open");

    // Staff (not only admins) are agents.
    assert_eq!(
        get_ok(&app, &staff, "/api/support/chats/")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Unknown chat: 404; an id that is not one: 400.
    let unknown = json!(999_999);
    let (status, _) = app.get_json(&staff, &chat_messages(&unknown)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let resp = app
        .post_json(&staff, &chat_messages(&unknown), json!({"message": "hi"}))
        .await;
    assert_error(resp, StatusCode::NOT_FOUND).await;
    let resp = app
        .post_json(&staff, &close_path(&unknown), json!({}))
        .await;
    assert_error(resp, StatusCode::NOT_FOUND).await;
    let (status, body) = app
        .get_json(&staff, "/api/support/chats/abc/messages/")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // No token: 401 everywhere.
    let routes = [
        ("GET", MY_CHAT.to_owned()),
        ("GET", MY_MESSAGES.to_owned()),
        ("POST", MY_MESSAGES.to_owned()),
        ("GET", "/api/support/chats/".to_owned()),
        ("GET", chat_messages(&alice_chat)),
        ("POST", chat_messages(&alice_chat)),
        ("POST", close_path(&alice_chat)),
    ];
    for (method, path) in routes {
        let resp = app
            .client
            .request(method.parse().unwrap(), app.url(&path))
            .json(&json!({"message": "hi"}))
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::UNAUTHORIZED).await;
    }
}

#[tokio::test]
async fn bad_input_is_refused_with_json_errors() {
    let app = spawn_app_with(|c| c.max_message_chars = 20).await;
    let alice = app.member("alice").await;
    let admin = app.create_user("desk", "admin").await;
    let chat_id = get_ok(&app, &alice, MY_CHAT).await["id"].clone();

    for bad in ["yesterday", "2025-10-14", "1700000000", ""] {
        let resp = app
            .client
            .get(app.url(&format!("{MY_MESSAGES}?since={bad}")))
            .header("Authorization", format!("Token {}", alice.token))
            .send()
            .await
            .unwrap();
        let body = assert_error(resp, StatusCode::BAD_REQUEST).await;
        assert_eq!(body["error"], "validation_error", "{body}");
        let (status, _) = app
            .get_json(&admin, &format!("{}?since={bad}", chat_messages(&chat_id)))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let (status, _) = app
        .get_json(&admin, "/api/support/chats/?status=pending")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    for (path, user) in [
        (MY_MESSAGES.to_owned(), &alice),
        (chat_messages(&chat_id), &admin),
    ] {
        for body in [
            json!({"message": " \n\t "}),
            json!({"message": "x".repeat(21)}),
            json!({}),
            json!({"message": 5}),
        ] {
            let resp = app.post_json(user, &path, body.clone()).await;
            assert_error(resp, StatusCode::BAD_REQUEST).await;
        }
        // Exactly the limit is fine.
        post_ok(&app, user, &path, &"y".repeat(20)).await;
    }
    // Nothing invalid was stored.
    let page = get_ok(&app, &alice, MY_MESSAGES).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
}
