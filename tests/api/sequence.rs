//! Every user's event sequence: stored events numbered per user, `GET poll/missed/?after=` filling a
//! jump, a `resync` naming the lost range, and a broadcast numbered for each member.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, assert_error, spawn_app};

async fn missed(app: &TestApp, user: &TestUser, query: &str) -> Value {
    let (status, body) = app
        .get_json(user, &format!("/api/v1/communication/poll/missed/?{query}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Polls until `n` events of these kinds arrived (the publish follows the 201 by a moment).
async fn events_of(app: &TestApp, user: &TestUser, kinds: &[&str], n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(
            app.poll_events(user)
                .await
                .into_iter()
                .filter(|e| kinds.contains(&e["event"].as_str().unwrap_or_default())),
        );
        if got.len() >= n {
            break;
        }
    }
    got
}

fn seqs(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["seq"].as_i64().unwrap_or(-1))
        .collect()
}

fn ids(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn every_stored_event_carries_the_next_number_of_its_users_sequence() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let admin = app.create_user("admin", "admin").await;
    let m1 = app.send_ok(&alice, bob.id, "one").await;
    app.send_ok(&alice, bob.id, "two").await;
    let r = app
        .post_json(
            &admin,
            "/api/v1/communication/notifications/",
            json!({"user_id": bob.id, "title": "Hi", "message": "hello"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .post_json(
            &alice,
            "/api/v1/communication/chats/typing/",
            json!({"receiver": bob.id}),
        )
        .await;
    assert!(r.status().is_success());

    let mut got = events_of(&app, &bob, &["message", "notification"], 3).await;
    // Each is published after its 201: neighbours may arrive swapped.
    got.sort_by_key(|e| e["seq"].as_i64());
    assert_eq!(seqs(&got), [1, 2, 3], "{got:?}");
    assert_eq!(got[0]["data"]["id"], m1["id"]);
    // Ephemeral events carry no number.
    let r = app
        .post_json(
            &alice,
            "/api/v1/communication/chats/typing/",
            json!({"receiver": bob.id}),
        )
        .await;
    assert!(r.status().is_success());
    let typing = events_of(&app, &bob, &["typing"], 1).await;
    assert!(!typing.is_empty());
    assert!(typing.iter().all(|e| e.get("seq").is_none()), "{typing:?}");

    // Alice's sequence is her own: bob's read receipt is her first.
    let r = app
        .post_json(
            &bob,
            "/api/v1/communication/chats/mark-read/",
            json!({"conversation_id": m1["conversation_id"]}),
        )
        .await;
    assert!(r.status().is_success());
    let receipts = events_of(&app, &alice, &["read_receipt"], 1).await;
    assert_eq!(seqs(&receipts), [1], "{receipts:?}");

    // What the postbox carried is kept under the same numbers and ids.
    let all = missed(&app, &bob, "after=0").await;
    assert_eq!(all["last_seq"], 3);
    assert_eq!(all["kept"], true);
    assert_eq!(all["more"], false);
    let kept = all["events"].as_array().unwrap();
    assert_eq!(seqs(kept), [1, 2, 3]);
    assert_eq!(ids(kept), ids(&got));
    assert_eq!(kept[2]["event"], "notification");
    let page = missed(&app, &bob, "after=1&limit=1").await;
    assert_eq!(seqs(page["events"].as_array().unwrap()), [2]);
    assert_eq!(page["more"], true);
    let none = missed(&app, &bob, "after=3").await;
    assert!(none["events"].as_array().unwrap().is_empty());
    assert_eq!(none["more"], false);
    assert_eq!(none["kept"], true);
}

#[tokio::test]
async fn missed_refuses_what_is_not_a_number_with_the_field_named() {
    let app = spawn_app().await;
    let bob = app.member("bob").await;
    for query in [
        "after=-1",
        "after=abc",
        "",
        "after=0&limit=0",
        "after=0&limit=501",
    ] {
        let resp = app
            .client
            .get(app.url(&format!("/api/v1/communication/poll/missed/?{query}")))
            .header("Authorization", format!("Token {}", bob.token))
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::BAD_REQUEST).await;
    }
    let resp = app
        .client
        .get(app.url("/api/v1/communication/poll/missed/?after=0"))
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn a_full_postbox_names_the_lost_range_and_missed_fills_it() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let mut sent = Vec::new();
    for i in 1..=105 {
        sent.push(app.send_ok(&alice, bob.id, &format!("m{i}")).await);
    }
    crate::helpers::wait_for_gap(&app, &app.queue_name(&bob), 5).await;
    let events = app.collect_events(&bob, 101, 5).await;
    assert_eq!(events[0]["event"], "resync", "{:?}", events[0]);
    assert_eq!(events[0]["data"]["lost"], 5);
    // Sends are published after their 201, so neighbours may reach the postbox swapped: the range
    // covers the five dropped, whichever they were.
    let from = events[0]["data"]["seq_from"].as_i64().unwrap();
    let to = events[0]["data"]["seq_to"].as_i64().unwrap();
    assert!(from >= 1 && to - from >= 4, "{:?}", events[0]);
    let mut have: std::collections::BTreeSet<i64> = seqs(&events[1..]).into_iter().collect();
    assert_eq!(have.len(), 100);

    let filled = missed(
        &app,
        &bob,
        &format!("after={}&limit={}", from - 1, to - from + 1),
    )
    .await;
    let filled = filled["events"].as_array().unwrap();
    for e in filled {
        // Numbers follow the order the sends were stored in: the n-th message is number n.
        let n = e["seq"].as_i64().unwrap();
        assert_eq!(e["data"]["message"], format!("m{n}"));
        assert_eq!(e["data"]["id"], sent[n as usize - 1]["id"]);
        have.insert(n);
    }
    assert_eq!(
        have,
        (1..=105).collect(),
        "the postbox and the fill hold every number"
    );
}

#[tokio::test]
async fn a_college_broadcast_is_numbered_for_each_member() {
    let app = spawn_app().await;
    let college = rand::random::<u32>() as i64 + 2_000_000;
    let staff = app.create_user("staff", "staff").await;
    let a = app.create_user_in("a", "member", college).await;
    let b = app.create_user_in("b", "member", college).await;
    let outsider = app.member("outsider").await;
    // a has received one event before: the broadcast is a's second, b's first.
    app.send_ok(&outsider, a.id, "earlier").await;
    assert!(app.poll_client(&b, "tab").await.is_empty());
    let r = app
        .post_json(
            &staff,
            "/api/v1/communication/notifications/",
            json!({"college_id": college, "title": "Exams", "message": "soon"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);

    let mut for_a = events_of(&app, &a, &["message", "notification"], 2).await;
    for_a.sort_by_key(|e| e["seq"].as_i64());
    assert_eq!(seqs(&for_a), [1, 2], "{for_a:?}");
    let mut for_b = Vec::new();
    for _ in 0..10 {
        for_b.extend(
            app.poll_client(&b, "tab")
                .await
                .into_iter()
                .filter(|e| e["event"] == "notification"),
        );
        if !for_b.is_empty() {
            break;
        }
    }
    assert_eq!(seqs(&for_b), [1], "{for_b:?}");
    assert_eq!(for_a[1]["id"], for_b[0]["id"], "one event, two numbers");
    let kept = missed(&app, &b, "after=0").await;
    assert_eq!(seqs(kept["events"].as_array().unwrap()), [1]);
    // Members who are not in the college get nothing, and no number.
    assert_eq!(missed(&app, &outsider, "after=0").await["last_seq"], 0);
}

#[tokio::test]
async fn events_past_their_retention_are_swept_and_missed_says_so() {
    let app = crate::helpers::spawn_app_with(|c| {
        c.message_ttl_secs = 1;
        c.event_retention_secs = 1;
    })
    .await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    app.send_ok(&alice, bob.id, "old").await;
    let mut swept = false;
    for _ in 0..60 {
        let body = missed(&app, &bob, "after=0").await;
        assert_eq!(body["last_seq"], 1);
        if body["kept"] == false {
            assert!(body["events"].as_array().unwrap().is_empty());
            swept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(swept, "the event was never swept");
    // After the last number the client has, nothing is missing.
    assert_eq!(missed(&app, &bob, "after=1").await["kept"], true);
}

#[tokio::test]
async fn a_lost_event_without_a_number_is_counted_apart() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let (_, key) = app.service_token("host").await;
    let r = app
        .client
        .post(app.url("/api/v1/publish/"))
        .header("Authorization", format!("Bearer {key}"))
        .json(&json!({"event": "host_thing", "data": {"n": 1}, "users": [bob.id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The host event is the oldest in the postbox: the 101st event pushes it out.
    for i in 1..=100 {
        app.send_ok(&alice, bob.id, &format!("m{i}")).await;
    }
    crate::helpers::wait_for_gap(&app, &app.queue_name(&bob), 1).await;
    let events = app.poll_events(&bob).await;
    assert_eq!(events[0]["event"], "resync", "{:?}", events[0]);
    let data = &events[0]["data"];
    assert_eq!(data["lost"], 1);
    assert_eq!(data["lost_unnumbered"], 1, "{data}");
    assert!(data.get("seq_from").is_none(), "nothing to fetch: {data}");
}
