//! The chat API end to end through the long poll: conversations, history, read receipts, delivery
//! status, typing, unread counts, presence, several clients per user, and who may see what.

use std::{collections::HashSet, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, assert_error, spawn_app, spawn_app_with};

/// Events of one kind among a list.
fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

async fn unread(app: &TestApp, user: &TestUser) -> Value {
    let (status, body) = app
        .get_json(user, "/api/v1/communication/chats/unread-count/")
        .await;
    assert_eq!(status, StatusCode::OK);
    body
}

#[tokio::test]
async fn a_conversation_through_the_long_poll() {
    let app = spawn_app_with(|c| c.typing_ttl_secs = 30.0).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let carol = app.member("carol").await;

    // Alice writes to bob twice; bob's unread count goes up.
    let m1 = app.send_ok(&alice, bob.id, "hi bob").await;
    let m2 = app.send_ok(&alice, bob.id, "are you there?").await;
    let counts = unread(&app, &bob).await;
    assert_eq!(counts["unread_count"], 2);
    assert_eq!(counts["conversations"][0]["user_id"], alice.id);
    assert_eq!(counts["conversations"][0]["unread_count"], 2);

    // Bob is typing; alice sees it through her poll.
    let r = app
        .post_json(
            &bob,
            "/api/v1/communication/chats/typing/",
            json!({"receiver": alice.id, "is_typing": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Bob polls: both messages; that marks them delivered and tells alice.
    let events = app.collect_events(&bob, 2, 3).await;
    let msgs = of_kind(&events, "message");
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["data"]["id"], m1["id"]);
    assert_eq!(msgs[1]["data"]["id"], m2["id"]);

    let mut alice_events = Vec::new();
    for _ in 0..5 {
        alice_events.extend(app.poll_events(&alice).await);
        if !of_kind(&alice_events, "delivered").is_empty()
            && !of_kind(&alice_events, "typing").is_empty()
        {
            break;
        }
    }
    let typing = of_kind(&alice_events, "typing");
    assert_eq!(typing.len(), 1, "{alice_events:?}");
    assert_eq!(typing[0]["data"]["sender_id"], bob.id);
    assert_eq!(typing[0]["data"]["is_typing"], true);
    assert_eq!(typing[0]["data"]["sender_name"], "bob display");
    let delivered = of_kind(&alice_events, "delivered");
    assert_eq!(delivered.len(), 1, "{alice_events:?}");
    assert_eq!(
        delivered[0]["data"]["message_ids"],
        json!([m1["id"], m2["id"]])
    );
    assert_eq!(delivered[0]["data"]["receiver_id"], bob.id);
    // Alice polls her default postbox, as the seeds' frontends do: her own messages do not come back
    // to it (they would show as new messages from someone else); only registered clients get copies.
    assert_eq!(
        of_kind(&alice_events, "message").len(),
        0,
        "{alice_events:?}"
    );

    // The history shows delivered_at (✓✓ for the sender).
    let page = app.history(&alice, bob.id).await;
    assert!(page["messages"][0]["delivered_at"].is_string(), "{page}");
    assert_eq!(page["messages"][0]["is_read"], false);

    // Bob reads: alice gets a read receipt; bob's unread count drops to zero.
    let r = app
        .post_json(
            &bob,
            "/api/v1/communication/chats/mark-read/",
            json!({"user_id": alice.id}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let result: Value = r.json().await.unwrap();
    assert_eq!(result["marked"], 2);
    assert_eq!(result["unread_count"], 0);
    assert_eq!(unread(&app, &bob).await["unread_count"], 0);
    // Other events may come first (bob's presence is announced every few seconds).
    let mut alice_events = Vec::new();
    for _ in 0..5 {
        alice_events.extend(app.poll_events(&alice).await);
        if !of_kind(&alice_events, "read_receipt").is_empty() {
            break;
        }
    }
    let receipts = of_kind(&alice_events, "read_receipt");
    assert_eq!(receipts.len(), 1, "{alice_events:?}");
    assert_eq!(receipts[0]["data"]["reader_id"], bob.id);
    assert_eq!(
        receipts[0]["data"]["message_ids"],
        json!([m1["id"], m2["id"]])
    );
    assert_eq!(receipts[0]["data"]["message_id"], m2["id"]);
    assert!(receipts[0]["data"]["read_at"].is_string());
    // Marking again marks nothing and sends nothing.
    let again: Value = app
        .post_json(
            &bob,
            "/api/v1/communication/chats/mark-read/",
            json!({"user_id": alice.id}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["marked"], 0);

    // The conversation list: most recent activity first, with the other user and unread counts.
    app.send_ok(&carol, bob.id, "hello from carol").await;
    let (status, list) = app
        .get_json(&bob, "/api/v1/communication/chats/conversations/")
        .await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["other_user"]["id"], carol.id);
    assert_eq!(list[0]["unread_count"], 1);
    assert_eq!(list[0]["last_message"], "hello from carol");
    assert_eq!(list[1]["other_user"]["id"], alice.id);
    assert_eq!(list[1]["unread_count"], 0);
    assert_eq!(
        list[1]["other_user"]["online"], true,
        "alice polled, so she is online"
    );
    // A new message from alice moves her conversation back to the top.
    app.send_ok(&alice, bob.id, "again").await;
    let (_, list) = app
        .get_json(&bob, "/api/v1/communication/chats/conversations/")
        .await;
    assert_eq!(list[0]["other_user"]["id"], alice.id);
    assert_eq!(list[0]["unread_count"], 1);
}

/// Seed 003's catch-up: `since=<timestamp of the last message I have>` selects exactly the messages after
/// it, also for messages stored in the same millisecond (a burst, sent concurrently so the group commit
/// stores several in one transaction), and the last page does not repeat.
#[tokio::test]
async fn paging_forward_by_time_gives_every_message_once_and_stops() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let texts: Vec<String> = (0..40).map(|i| format!("burst {i}")).collect();
    let sends = texts.iter().enumerate().map(|(i, text)| {
        let (from, to) = if i % 2 == 0 {
            (&alice, bob.id)
        } else {
            (&bob, alice.id)
        };
        app.send_ok(from, to, text)
    });
    let mut sent: Vec<i64> = futures_util::future::join_all(sends)
        .await
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    sent.sort_unstable();
    let base = format!("/api/v1/communication/chats/conversation/{}/", bob.id);

    let mut seen: Vec<i64> = Vec::new();
    let mut since = "2000-01-01T00:00:00Z".to_owned();
    for round in 0.. {
        assert!(round < 20, "catch-up by time does not end: {seen:?}");
        let (status, page) = app
            .get_json(
                &alice,
                &format!("{base}?limit=7&since={}", urlencode(&since)),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let messages = page["messages"].as_array().unwrap();
        if messages.is_empty() {
            break;
        }
        seen.extend(messages.iter().map(|m| m["id"].as_i64().unwrap()));
        since = messages.last().unwrap()["timestamp"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    assert_eq!(seen, sent, "each message once, in order");
    let stamps: Vec<String> =
        app.get_json(&alice, &format!("{base}?limit=200")).await.1["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["timestamp"].as_str().unwrap().to_owned())
            .collect();
    let unique: HashSet<_> = stamps.iter().collect();
    assert_eq!(
        unique.len(),
        stamps.len(),
        "a conversation's timestamps are unique"
    );
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn history_pages_250_messages_both_ways_without_gaps_or_duplicates() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let mut sent = Vec::new();
    for i in 0..250 {
        let (from, to) = if i % 3 == 0 {
            (&bob, alice.id)
        } else {
            (&alice, bob.id)
        };
        sent.push(
            app.send_ok(from, to, &format!("m{i}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let base = format!("/api/v1/communication/chats/conversation/{}/", bob.id);

    // Backwards (infinite scroll): newest page first, then `before`.
    let mut seen = Vec::new();
    let mut url = format!("{base}?limit=40");
    loop {
        let (status, page) = app.get_json(&alice, &url).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let ids: Vec<i64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_i64().unwrap())
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "chronological within a page"
        );
        seen.splice(0..0, ids);
        if page["has_more"] == false {
            break;
        }
        // A message arriving while scrolling back does not shift the older pages.
        app.send_ok(&bob, alice.id, "interleaved").await;
        url = format!("{base}?limit=40&before={}", page["next_before"]);
    }
    assert_eq!(seen, sent, "every message exactly once, in order");

    // Forwards (catch-up): from the start with `since`, then `next_since`.
    let mut forward: Vec<i64> = Vec::new();
    let mut since = 0;
    loop {
        let (_, page) = app
            .get_json(&alice, &format!("{base}?limit=60&since={since}"))
            .await;
        let ids: Vec<i64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_i64().unwrap())
            .collect();
        forward.extend(&ids);
        if page["has_more"] == false {
            break;
        }
        since = page["next_since"].as_i64().unwrap();
    }
    let unique: HashSet<_> = forward.iter().collect();
    assert_eq!(unique.len(), forward.len(), "no duplicates");
    assert_eq!(
        &forward[..250],
        &sent[..],
        "the 250 in order, then the interleaved ones"
    );
    assert_eq!(forward.len(), 250 + 6);

    // `since` as a time (seed 003) returns only newer messages.
    let (_, page) = app
        .get_json(
            &alice,
            &format!("{base}?since=2000-01-01T00:00:00Z&limit=5"),
        )
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 5);
    let (_, page) = app
        .get_json(&alice, &format!("{base}?since=2999-01-01T00:00:00Z"))
        .await;
    assert_eq!(page["messages"], json!([]));

    for bad in [
        "?limit=0",
        "?limit=201",
        "?limit=x",
        "?before=abc",
        "?since=yesterday",
    ] {
        let resp = app
            .client
            .get(app.url(&format!("{base}{bad}")))
            .header("Authorization", format!("Token {}", alice.token))
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::BAD_REQUEST).await;
    }
    let (status, _) = app
        .get_json(&alice, "/api/v1/communication/chats/conversation/999999/")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn two_clients_of_one_user_each_receive_every_event() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    // Tab 1 registers explicitly, tab 2 implicitly on its first poll.
    let r = app
        .post_json(
            &bob,
            "/api/v1/communication/poll/register/",
            json!({"client_id": "tab-1"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let reg: Value = r.json().await.unwrap();
    assert_eq!(reg["client_id"], "tab-1");
    assert!(app.poll_client(&bob, "tab-2").await.is_empty());

    for i in 0..3 {
        app.send_ok(&alice, bob.id, &format!("m{i}")).await;
    }
    let texts = |events: Vec<Value>| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["event"] == "message")
            .map(|e| e["data"]["message"].as_str().unwrap().to_owned())
            .collect()
    };
    // A send answers once stored and publishes right after: poll until all three are there (a
    // client's poll without a cursor acknowledges nothing, so each answer repeats the last one).
    let until_three = async |client: &str| {
        let mut got = Vec::new();
        for _ in 0..20 {
            got = texts(app.poll_client(&bob, client).await);
            if got.len() >= 3 {
                break;
            }
        }
        got
    };
    let tab1 = until_three("tab-1").await;
    let tab2 = until_three("tab-2").await;
    assert_eq!(tab1, ["m0", "m1", "m2"]);
    assert_eq!(tab2, ["m0", "m1", "m2"]);
    // Old clients without a client id keep their shared per-user postbox.
    assert_eq!(
        texts(app.collect_events(&bob, 3, 2).await),
        ["m0", "m1", "m2"]
    );

    // The sender's own other device sees what she sent.
    let alice_tab = texts(app.poll_client(&alice, "phone").await);
    assert!(
        alice_tab.is_empty(),
        "registered after the sends: starts empty"
    );
    app.send_ok(&alice, bob.id, "from laptop").await;
    assert_eq!(
        texts(app.poll_client(&alice, "phone").await),
        ["from laptop"]
    );
    // Her default postbox (a seed-style client, which cannot tell its own events) gets no copy.
    let (status, body) = app
        .get_json(&alice, "/api/v1/communication/poll/events/?timeout=0")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        texts(body["events"].as_array().unwrap().clone()),
        Vec::<String>::new()
    );

    for bad in ["", "has space", &"x".repeat(65), "semi;colon"] {
        let resp = app
            .client
            .get(app.url("/api/v1/communication/poll/events/"))
            .query(&[("client_id", bad)])
            .header("Authorization", format!("Token {}", bob.token))
            .send()
            .await
            .unwrap();
        assert_error(resp, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test]
async fn clients_per_user_are_capped_by_evicting_the_least_recent() {
    let app = spawn_app_with(|c| c.max_clients_per_user = 2).await;
    let bob = app.member("bob").await;
    for id in ["a", "b", "c"] {
        let r = app
            .post_json(
                &bob,
                "/api/v1/communication/poll/register/",
                json!({"client_id": id}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queue = |c: &str| format!("{}.client.{}.{c}", app.config.broker_prefix, bob.id);
    assert_eq!(
        app.queue_depth(&queue("a")).await,
        None,
        "the oldest client's postbox was deleted"
    );
    assert!(app.queue_depth(&queue("b")).await.is_some());
    assert!(app.queue_depth(&queue("c")).await.is_some());
    let r = app
        .post_json(
            &bob,
            "/api/v1/communication/poll/register/",
            json!({"client_id": "bad id"}),
        )
        .await;
    assert_error(r, StatusCode::BAD_REQUEST).await;
    // No body: a random client id.
    let r = app
        .client
        .post(app.url("/api/v1/communication/poll/register/"))
        .header("Authorization", format!("Token {}", bob.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["client_id"].as_str().unwrap().len(), 32);
}

#[tokio::test]
async fn typing_expires_and_is_rate_limited() {
    let app = spawn_app_with(|c| {
        c.typing_ttl_secs = 0.5;
        c.typing_rate = 3;
    })
    .await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let typing = |to: i64| {
        app.post_json(
            &alice,
            "/api/v1/communication/chats/typing/",
            json!({"receiver": to, "is_typing": true}),
        )
    };
    assert_eq!(typing(bob.id).await.status(), StatusCode::OK);
    // Bob polls only after the typing event expired: he never sees it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    app.send_ok(&alice, bob.id, "after typing").await;
    let events = app.collect_events(&bob, 1, 2).await;
    assert!(
        of_kind(&events, "typing").is_empty(),
        "stale typing delivered: {events:?}"
    );
    assert_eq!(of_kind(&events, "message").len(), 1);

    // A lingering consumer that already holds the typing event drops it once expired, too.
    assert_eq!(typing(bob.id).await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let events = app.poll_events(&bob).await;
    assert!(
        of_kind(&events, "typing").is_empty(),
        "stale typing delivered: {events:?}"
    );

    // Rate limit: 3 per second per sender.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // At once: the limit refills evenly (one more every third of a second), so requests spread over
    // a slow second could all pass.
    let statuses = futures_util::future::join_all((0..5).map(|_| typing(bob.id))).await;
    let limited = statuses
        .into_iter()
        .filter(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
        .collect::<Vec<_>>();
    assert_eq!(limited.len(), 2);
    let retry = limited[0]
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(retry.as_deref(), Some("1"));
    let body = assert_error(
        limited.into_iter().next().unwrap(),
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    assert_eq!(body["error"], "rate_limited");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let bad = [
        json!({}),
        json!({"receiver": "x"}),
        json!({"receiver": bob.id, "is_typing": "yes"}),
    ];
    for body in bad {
        let r = app
            .post_json(&alice, "/api/v1/communication/chats/typing/", body)
            .await;
        assert_error(r, StatusCode::BAD_REQUEST).await;
    }
    let r = app
        .post_json(
            &alice,
            "/api/v1/communication/chats/typing/",
            json!({"receiver": 999999}),
        )
        .await;
    assert_error(r, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn unread_counts_stay_right_under_concurrent_senders() {
    let app = spawn_app().await;
    let bob = app.member("bob").await;
    let mut senders = Vec::new();
    for i in 0..4 {
        senders.push(app.member(&format!("sender{i}")).await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for s in &senders {
        for j in 0..10 {
            let (client, url, token, to) = (
                app.client.clone(),
                app.url("/api/v1/communication/chats/"),
                s.token.clone(),
                bob.id,
            );
            tasks.spawn(async move {
                client
                    .post(url)
                    .header("Authorization", format!("Token {token}"))
                    .json(&json!({"receiver": to, "message": format!("c{j}")}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            });
        }
    }
    // Bob reads while the sends race.
    let reader = {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/api/v1/communication/chats/mark-read/"),
            bob.token.clone(),
        );
        let first = senders[0].id;
        tokio::spawn(async move {
            for _ in 0..5 {
                let _ = client
                    .post(&url)
                    .header("Authorization", format!("Token {token}"))
                    .json(&json!({"user_id": first}))
                    .send()
                    .await;
            }
        })
    };
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::CREATED);
    }
    reader.await.unwrap();
    // Whatever the interleaving, each count equals the messages really unread.
    let counts = unread(&app, &bob).await;
    let mut total = 0;
    for s in &senders {
        let (_, page) = app
            .get_json(
                &bob,
                &format!(
                    "/api/v1/communication/chats/conversation/{}/?limit=200",
                    s.id
                ),
            )
            .await;
        let really_unread = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["is_read"] == false)
            .count() as i64;
        let reported = counts["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["user_id"] == s.id)
            .map(|c| c["unread_count"].as_i64().unwrap())
            .unwrap_or(0);
        assert_eq!(reported, really_unread, "sender {}", s.id);
        total += really_unread;
    }
    assert_eq!(counts["unread_count"], total);
    assert!(
        total >= 30,
        "three senders' messages were never read: {total}"
    );
}

#[tokio::test]
async fn presence_is_announced_to_contacts_on_transitions_only() {
    let app = spawn_app_with(|c| c.online_window_secs = 3).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let carol = app.member("carol").await;
    app.send_ok(&alice, bob.id, "we are contacts").await;
    app.collect_events(&alice, 1, 1).await; // alice's echo; alice is online now

    // Bob comes online by polling: alice (a contact) is told once, carol (a stranger) never.
    for _ in 0..3 {
        app.poll_events(&bob).await;
    }
    let events = app.collect_events(&alice, 1, 3).await;
    let presence = of_kind(&events, "presence");
    assert_eq!(
        presence.len(),
        1,
        "one event per transition, not per poll: {events:?}"
    );
    assert_eq!(presence[0]["data"]["user_id"], bob.id);
    assert_eq!(presence[0]["data"]["online"], true);

    let (_, online) = app
        .get_json(&alice, "/api/v1/communication/chats/online-users/")
        .await;
    assert!(
        online["online_user_ids"]
            .as_array()
            .unwrap()
            .contains(&json!(bob.id)),
        "{online}"
    );
    assert!(
        !online["online_user_ids"]
            .as_array()
            .unwrap()
            .contains(&json!(carol.id))
    );

    // Bob leaves: alice is told he went offline.
    let r = app
        .client
        .post(app.url(&format!(
            "/api/v1/communication/poll/disconnect/?token={}",
            bob.token
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let events = app.collect_events(&alice, 1, 3).await;
    let presence = of_kind(&events, "presence");
    assert_eq!(presence.len(), 1, "{events:?}");
    assert_eq!(presence[0]["data"]["online"], false);
    let (_, online) = app
        .get_json(&alice, "/api/v1/communication/chats/online-users/")
        .await;
    assert!(
        !online["online_user_ids"]
            .as_array()
            .unwrap()
            .contains(&json!(bob.id))
    );
    assert!(carol.id > 0);
}

#[tokio::test]
async fn nobody_reads_or_changes_a_conversation_they_are_not_in() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let mallory = app.member("mallory").await;
    let m = app.send_ok(&alice, bob.id, "private").await;
    let conv = m["conversation_id"].as_i64().unwrap();

    // Mallory's "history with alice" is her own (empty) conversation, never alice↔bob.
    let page = app.history(&mallory, alice.id).await;
    assert_eq!(page["messages"], json!([]));
    assert_eq!(page["conversation_id"], Value::Null);
    // She cannot mark it read, by conversation or by message id.
    for body in [
        json!({"conversation_id": conv}),
        json!({"message_ids": [m["id"]]}),
    ] {
        let r = app
            .post_json(&mallory, "/api/v1/communication/chats/mark-read/", body)
            .await;
        assert_error(r, StatusCode::NOT_FOUND).await;
    }
    // Nothing changed for bob.
    assert_eq!(unread(&app, &bob).await["unread_count"], 1);
    let (_, list) = app
        .get_json(&mallory, "/api/v1/communication/chats/conversations/")
        .await;
    assert_eq!(list, json!([]));
    let r = app
        .post_json(&bob, "/api/v1/communication/chats/mark-read/", json!({}))
        .await;
    assert_error(r, StatusCode::BAD_REQUEST).await;
}

/// Deliveries of many polls are marked in one statement: each message only for its own receiver, and
/// each only once (the second of two racing marks changes nothing, so one notice is sent).
#[tokio::test]
async fn delivery_marks_of_many_receivers_are_written_together_and_once() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let carol = app.member("carol").await;
    let to_bob = app.send_ok(&alice, bob.id, "b1").await["id"]
        .as_i64()
        .unwrap();
    let to_carol = app.send_ok(&alice, carol.id, "c1").await["id"]
        .as_i64()
        .unwrap();
    let also_to_bob = app.send_ok(&alice, bob.id, "b2").await["id"]
        .as_i64()
        .unwrap();
    let now = chrono::Utc::now();
    let marked = postbox::db::chat::mark_delivered(
        &app.db,
        &[
            (bob.id, vec![to_bob]),
            // Carol claims bob's second message too: not hers, so not marked.
            (carol.id, vec![to_carol, also_to_bob]),
            (bob.id, vec![]),
        ],
        now,
    )
    .await
    .unwrap();
    let mut ids: Vec<i64> = marked.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [to_bob, to_carol]);
    assert!(marked.iter().all(|m| m.delivered_at.is_some()));
    let again =
        postbox::db::chat::mark_delivered(&app.db, &[(bob.id, vec![to_bob, also_to_bob])], now)
            .await
            .unwrap();
    assert_eq!(
        again.iter().map(|m| m.id).collect::<Vec<_>>(),
        [also_to_bob]
    );
}

/// Group commit: the messages of concurrent sends are stored in one transaction; one that cannot be
/// stored (its receiver does not exist) fails alone and the others of its group are stored, in order,
/// with the unread count they add up to.
#[tokio::test]
async fn a_message_that_cannot_be_stored_fails_alone_in_its_group() {
    use postbox::db::chat::NewMessage;
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    let service = app.service().await;
    let messages = postbox::chat::messages::Messages::new(app.db.clone(), service.outbox.clone());
    let message = |receiver_id: i64, text: &str| NewMessage {
        sender_id: alice.id,
        receiver_id,
        text: text.to_owned(),
        attachment: None,
        event_for: Box::new(|m| {
            (
                vec![postbox::events::Audience::Users(vec![m.receiver_id])],
                postbox::events::Envelope::custom("test", &serde_json::json!({})),
            )
        }),
    };
    // One runtime thread: the three are queued before the writer runs, so they form one group.
    let (first, bad, last) = tokio::join!(
        messages.store(message(bob.id, "one")),
        messages.store(message(i64::MAX, "to nobody")),
        messages.store(message(bob.id, "two")),
    );
    assert!(bad.is_err(), "a message to a missing user was stored");
    let (first, last) = (first.unwrap().0, last.unwrap().0);
    assert!(first.id < last.id);
    let page = app.history(&bob, alice.id).await;
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one", "two"]);
    assert_eq!(unread(&app, &bob).await["unread_count"], 2);
}
