//! The postbox queues: arguments, limits, and no silent loss when a cached queue vanished.

use std::collections::BTreeMap;

use lapin::{
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable, LongString},
};

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_full_postbox_keeps_the_newest_100_events() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    for i in 1..=150 {
        app.send_ok(&alice, bob.id, &format!("m{i}")).await;
    }
    assert_eq!(app.queue_depth(&app.queue_name(&bob)).await, Some(100));
    // The 50 dropped events were dead-lettered and recorded as bob's gap.
    crate::helpers::wait_for_gap(&app, &app.queue_name(&bob), 50).await;

    let events = app.collect_events(&bob, 101, 3).await;
    assert_eq!(events.len(), 101);
    // First, the explicit signal: 50 lost, dropped for length.
    assert_eq!(events[0]["event"], "resync");
    assert_eq!(events[0]["data"]["reason"], "maxlen");
    assert_eq!(events[0]["data"]["lost"], 50);
    assert!(events[0]["data"]["since"].as_f64().is_some());
    assert_eq!(
        events[1]["data"]["message"], "m51",
        "the oldest 50 were dropped"
    );
    assert_eq!(events[100]["data"]["message"], "m150");
    // Announced once.
    let later = app.collect_events(&bob, 1, 1).await;
    assert!(later.iter().all(|e| e["event"] != "resync"));
}

#[tokio::test]
async fn a_postbox_keeps_at_most_its_byte_cap_and_announces_what_it_dropped() {
    let app = crate::helpers::spawn_app_with(|c| c.queue_max_bytes = 8 * 1024).await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    // Twenty events of about 2 KiB each: far fewer than 100, far more than 8 KiB.
    let big = "x".repeat(2000);
    for i in 1..=20 {
        app.send_ok(&alice, bob.id, &format!("{i:02} {big}")).await;
    }
    let depth = app.queue_depth(&app.queue_name(&bob)).await.unwrap();
    assert!(
        (1..=4).contains(&depth),
        "8 KiB hold at most four 2 KiB events, not {depth}"
    );
    let lost = 20 - i64::from(depth);
    crate::helpers::wait_for_gap(&app, &app.queue_name(&bob), lost).await;
    let events = app.collect_events(&bob, depth as usize + 1, 3).await;
    assert_eq!(events[0]["event"], "resync", "{:?}", events[0]);
    assert_eq!(events[0]["data"]["reason"], "maxlen");
    assert_eq!(events[0]["data"]["lost"], lost);
    let last = events.last().unwrap()["data"]["message"].as_str().unwrap();
    assert!(last.starts_with("20 "), "the newest event is kept");
}

#[tokio::test]
async fn postbox_is_declared_with_the_configured_arguments() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    app.send_ok(&alice, bob.id, "hi").await;
    let queue = app.queue_name(&bob);
    let conn = app.amqp().await;

    // Re-declaring with exactly these arguments succeeds; any other value fails with 406.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(100));
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(1_048_576),
    );
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(1_800_000));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("drop-head")),
    );
    args.insert("x-expires".into(), AMQPValue::LongLongInt(120_000));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(format!(
            "{}.deadletter",
            app.config.broker_prefix
        ))),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(queue.clone().into(), durable, args.clone())
        .await
        .expect("same arguments are accepted");

    let mut other = args.clone();
    other.insert("x-max-length".into(), AMQPValue::LongLongInt(99));
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .queue_declare(queue.clone().into(), durable, other)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("PRECONDITION_FAILED") || err.to_string().contains("406"),
        "{err}"
    );
    let _ = conn.close(200, "OK".into()).await;

    // The same facts, from the service's own topology.
    let topology = postbox::broker::Topology::from_config(&app.config);
    let expected: BTreeMap<_, _> = topology.expected_arguments().into_iter().collect();
    assert_eq!(expected["x-max-length"], "100");
    assert_eq!(expected["x-message-ttl"], "1800000");
    assert_eq!(expected["x-overflow"], "drop-head");
}

#[tokio::test]
async fn a_deleted_cached_postbox_does_not_swallow_events() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    app.send_ok(&alice, bob.id, "first").await; // declares and caches bob's postbox
    let queue = app.queue_name(&bob);
    app.delete_queue(&queue).await; // an operator (or x-expires) removes it
    assert_eq!(app.queue_depth(&queue).await, None);

    app.send_ok(&alice, bob.id, "second").await;
    assert_eq!(
        app.queue_depth(&queue).await,
        Some(1),
        "the returned event was published again"
    );
    let events = app.collect_events(&bob, 1, 2).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["message"], "second");
}

#[tokio::test]
async fn events_are_persistent_messages_with_their_id_and_type_as_properties() {
    let app = spawn_app().await;
    let alice = app.member("alice").await;
    let bob = app.member("bob").await;
    app.send_ok(&alice, bob.id, "durable").await;
    let conn = app.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    let got = ch
        .basic_get(
            app.queue_name(&bob).into(),
            lapin::options::BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("the event is in the postbox");
    let props = &got.delivery.properties;
    assert_eq!(props.delivery_mode(), &Some(2));
    // The event's id and type travel as properties; the body is its data.
    assert_eq!(props.kind().as_ref().map(|k| k.as_str()), Some("message"));
    assert_eq!(
        props.message_id().as_ref().map(|id| id.as_str().len()),
        Some(36)
    );
    let body: serde_json::Value = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(body["message"], "durable");
    let _ = conn.close(200, "OK".into()).await; // unacked: requeued
}
