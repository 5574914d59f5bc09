//! Delivery you can trust: acknowledgement by cursor. A lost response costs a duplicate (same id), never
//! a loss; old clients without a cursor keep the seed's behaviour.

use std::{collections::HashSet, time::Duration};

use serde_json::Value;

use crate::helpers::spawn_app;

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

fn texts(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["data"]["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Polls client `tab` without a cursor until the answer holds `n` events. A send answers once its
/// message is stored; its publish may still be under way, so a poll can come before the last event.
/// Without a cursor nothing is acknowledged: each answer repeats what the one before carried.
async fn poll_until(
    app: &crate::helpers::TestApp,
    user: &crate::helpers::TestUser,
    n: usize,
) -> Vec<Value> {
    let mut got = Vec::new();
    for _ in 0..20 {
        got = app.poll_cursor(user, "tab", None).await;
        if got.len() >= n {
            break;
        }
    }
    got
}

#[tokio::test]
async fn unconfirmed_events_come_again_with_the_same_ids() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    assert!(app.poll_cursor(&bob, "tab", None).await.is_empty()); // registers the client's postbox
    for i in 0..3 {
        app.send_ok(&alice, bob.id, &format!("m{i}")).await;
    }
    let first = poll_until(&app, &bob, 3).await;
    assert_eq!(texts(&first), ["m0", "m1", "m2"]);

    // The response was lost: the client polls again with no cursor and gets the same events, same ids.
    let again = app.poll_cursor(&bob, "tab", None).await;
    assert_eq!(ids(&again), ids(&first));

    // It processed up to m1: m0 and m1 are acknowledged, m2 comes again, then the new m3.
    app.send_ok(&alice, bob.id, "m3").await;
    let cursor = ids(&again)[1].clone();
    let next = app.poll_cursor(&bob, "tab", Some(&cursor)).await;
    assert_eq!(texts(&next), ["m2", "m3"]);
    assert_eq!(next[0]["id"], first[2]["id"]);

    // Confirming the last one empties the postbox for good.
    let last = ids(&next)[1].clone();
    assert!(app.poll_cursor(&bob, "tab", Some(&last)).await.is_empty());
    let queue = format!("{}.client.{}.tab", app.config.broker_prefix, bob.id);
    // Nothing is ready in RabbitMQ and nothing unacknowledged remains: releasing the consumer requeues
    // only what was not confirmed, which is nothing.
    let r = app
        .client
        .post(app.url("/api/v1/communication/poll/disconnect/"))
        .header("Authorization", format!("Token {}", bob.token))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.queue_depth(&queue).await, Some(0));
}

#[tokio::test]
async fn an_unconfirmed_batch_survives_the_service_going_away() {
    let mut app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    assert!(app.poll_cursor(&bob, "tab", None).await.is_empty());
    for i in 0..2 {
        app.send_ok(&alice, bob.id, &format!("m{i}")).await;
    }
    let got = poll_until(&app, &bob, 2).await;
    assert_eq!(got.len(), 2);
    // The client never confirms; the service stops: both events go back to the postbox.
    app.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queue = format!("{}.client.{}.tab", app.config.broker_prefix, bob.id);
    assert_eq!(app.queue_depth(&queue).await, Some(2));
}

#[tokio::test]
async fn a_client_dropping_connections_at_random_loses_nothing() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    assert!(app.poll_cursor(&bob, "flaky", None).await.is_empty());

    let total = 60;
    let sender = {
        let (client, url, token, to) = (
            app.client.clone(),
            app.url("/api/v1/communication/chats/"),
            alice.token.clone(),
            bob.id,
        );
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..total {
                let r = client
                    .post(&url)
                    .header("Authorization", format!("Token {token}"))
                    .json(&serde_json::json!({"receiver": to, "message": format!("n{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), reqwest::StatusCode::CREATED);
                sent.push(format!("n{i}"));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };

    // A client whose requests are cut at random moments (before, during or after the answer).
    let mut seen_ids: HashSet<String> = HashSet::new();
    let mut received: Vec<String> = Vec::new();
    let mut duplicates = 0;
    let mut cursor: Option<String> = None;
    let mut rng = 0x2545F4914F6CDD1Du64;
    let started = std::time::Instant::now();
    while received.len() < total && started.elapsed() < Duration::from_secs(40) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let cut_after = Duration::from_millis(rng % 120);
        let mut query = vec![("client_id", "flaky".to_owned())];
        if let Some(c) = &cursor {
            query.push(("last_event_id", c.clone()));
        }
        let request = app
            .client
            .get(app.url("/api/v1/communication/poll/events/"))
            .query(&query)
            .header("Authorization", format!("Token {}", bob.token))
            .send();
        let answer = async {
            let resp = request.await.ok()?;
            resp.json::<Value>().await.ok()
        };
        // One poll in three is cut; the others run to the end.
        let body = if rng.is_multiple_of(3) {
            tokio::time::timeout(cut_after, answer).await.ok().flatten()
        } else {
            answer.await
        };
        let Some(body) = body else { continue };
        for e in body["events"].as_array().unwrap() {
            let id = e["id"].as_str().unwrap().to_owned();
            if !seen_ids.insert(id.clone()) {
                duplicates += 1;
            } else if e["event"] == "message" {
                received.push(e["data"]["message"].as_str().unwrap().to_owned());
            }
            cursor = Some(id);
        }
    }
    let sent = sender.await.unwrap();
    let missing: Vec<_> = sent.iter().filter(|s| !received.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "lost: {missing:?} (received {}, duplicates {duplicates})",
        received.len()
    );
    assert_eq!(
        received.len(),
        total,
        "each message processed once after dedupe by id"
    );
    let order: Vec<usize> = received.iter().map(|s| s[1..].parse().unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {order:?}");
}

#[tokio::test]
async fn expired_events_are_announced_as_a_gap() {
    let app = crate::helpers::spawn_app_with(|c| c.message_ttl_secs = 1).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    for i in 0..3 {
        app.send_ok(&alice, bob.id, &format!("old {i}")).await;
    }
    // Bob does not poll for longer than the TTL: RabbitMQ expires and dead-letters the three.
    crate::helpers::wait_for_gap(&app, &app.queue_name(&bob), 3).await;
    let events = app.poll_events(&bob).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "resync");
    assert_eq!(events[0]["data"]["reason"], "expired");
    assert_eq!(events[0]["data"]["lost"], 3);
    // Typing events expire by design: never a gap.
    let r = app
        .post_json(
            &alice,
            "/api/v1/communication/chats/typing/",
            serde_json::json!({"receiver": bob.id}),
        )
        .await;
    assert!(r.status().is_success());
    let r = app
        .client
        .post(app.url("/api/v1/communication/poll/disconnect/"))
        .header("Authorization", format!("Token {}", bob.token))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let gap = postbox::db::gaps::find(&app.db, &app.queue_name(&bob))
        .await
        .unwrap();
    assert!(
        gap.is_none(),
        "an expired typing event was counted as lost: {gap:?}"
    );
}

#[tokio::test]
async fn a_deleted_client_postbox_is_announced_as_a_gap() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    assert!(app.poll_cursor(&bob, "tab", None).await.is_empty());
    app.send_ok(&alice, bob.id, "will be lost").await;
    // Let the consumer go, then an operator deletes the client's queue with its event.
    let r = app
        .client
        .post(app.url("/api/v1/communication/poll/disconnect/"))
        .header("Authorization", format!("Token {}", bob.token))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let queue = format!("{}.client.{}.tab", app.config.broker_prefix, bob.id);
    tokio::time::sleep(Duration::from_millis(2500)).await; // the consumer's linger (2 s in tests)
    app.delete_queue(&queue).await;

    let events = app.poll_cursor(&bob, "tab", None).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "resync");
    assert_eq!(events[0]["data"]["reason"], "queue_deleted");
    assert_eq!(events[0]["data"]["lost_unknown"], true);
    // The postbox exists again and works.
    app.send_ok(&alice, bob.id, "after").await;
    let events = app
        .poll_cursor(&bob, "tab", Some(events[0]["id"].as_str().unwrap()))
        .await;
    assert_eq!(texts(&events), ["after"]);
}

#[tokio::test]
async fn a_client_may_ask_for_a_longer_or_shorter_hold_within_bounds() {
    let app = spawn_app().await; // deadline 1 s in tests
    let bob = app.member("bob").await;
    let poll = |timeout: &str| {
        app.client
            .get(app.url("/api/v1/communication/poll/events/"))
            .query(&[("timeout", timeout)])
            .header("Authorization", format!("Token {}", bob.token))
            .send()
    };
    let started = std::time::Instant::now();
    assert_eq!(poll("2.5").await.unwrap().status(), reqwest::StatusCode::OK);
    let held = started.elapsed();
    assert!(
        held >= Duration::from_millis(2400) && held < Duration::from_millis(4000),
        "held {held:?}"
    );
    let started = std::time::Instant::now();
    assert_eq!(poll("0").await.unwrap().status(), reqwest::StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(500));
    for bad in ["61", "-1", "soon", "NaN"] {
        crate::helpers::assert_error(poll(bad).await.unwrap(), reqwest::StatusCode::BAD_REQUEST)
            .await;
    }
}

#[tokio::test]
async fn sends_beyond_the_rate_limit_are_refused_with_retry_after() {
    let app = crate::helpers::spawn_app_with(|c| c.send_rate = 3).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    // At once: the limit refills evenly (one more every third of a second), so sends spread over a
    // slow second could all pass.
    let texts: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    let statuses =
        futures_util::future::join_all(texts.iter().map(|t| app.send(&alice, bob.id, t))).await;
    let refused: Vec<_> = statuses
        .into_iter()
        .filter(|r| r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0].headers()["retry-after"], "1");
    // Refused sends store and publish nothing: bob gets exactly three messages.
    let events = app.collect_events(&bob, 3, 2).await;
    assert_eq!(events.len(), 3);
}

/// Two polls of one registered client overlap (the first one's connection is dead, its answer never
/// read): the newer poll takes the postbox over, the older one answers at once (409 `superseded`, no
/// events), so no event is handed to the dead connection and then acknowledged by the newer cursor.
#[tokio::test]
async fn a_newer_poll_of_a_client_supersedes_a_stale_one_and_no_event_is_lost() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = crate::helpers::spawn_app_with(|c| c.poll_timeout_secs = 5.0).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    // The client registers (its first poll, with nothing waiting).
    assert!(app.poll_client(&bob, "tab").await.is_empty());
    // The stale poll: a raw connection whose answer nobody reads.
    let addr = app.addr.trim_start_matches("http://").to_owned();
    let mut stale = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stale
        .write_all(
            format!(
                "GET /api/v1/communication/poll/events/?client_id=tab&timeout=5 HTTP/1.1\r\n\
                 Host: x\r\nAuthorization: Token {}\r\n\r\n",
                bob.token
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The client's new poll: the stale one is answered (empty) at once.
    let url = app.url("/api/v1/communication/poll/events/?client_id=tab&timeout=5");
    let newer = app
        .client
        .get(&url)
        .header("Authorization", format!("Token {}", bob.token))
        .send();
    let newer = tokio::spawn(newer);
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), stale.read(&mut answer))
        .await
        .expect("the superseded poll answers at once")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 409"), "{text}");
    assert!(text.contains(r#""error":"superseded""#), "{text}");

    // Events now go to the newer poll; the client's cursor then confirms only what it saw.
    app.send_ok(&alice, bob.id, "one").await;
    let first: Value = newer.await.unwrap().unwrap().json().await.unwrap();
    let mut seen: Vec<String> = first["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["message"].as_str().unwrap().to_owned())
        .collect();
    let mut last = first["events"][0]["id"].as_str().unwrap().to_owned();
    app.send_ok(&alice, bob.id, "two").await;
    for _ in 0..3 {
        let body: Value = app
            .client
            .get(format!("{url}&last_event_id={last}"))
            .header("Authorization", format!("Token {}", bob.token))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for e in body["events"].as_array().unwrap() {
            seen.push(e["data"]["message"].as_str().unwrap().to_owned());
            last = e["id"].as_str().unwrap().to_owned();
        }
        if seen.len() >= 2 {
            break;
        }
    }
    assert_eq!(seen, ["one", "two"]);
}
