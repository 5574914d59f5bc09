//! `postbox-loadtest --mode raw`: RabbitMQ's own limit on this machine, to read Postbox's figures
//! against. It publishes persistent messages with confirms (each sender a confirm-mode channel awaiting
//! every confirm, as a Postbox send does) to up to 1 000 durable queues, consumes them with manual acks
//! and a prefetch of 100, and measures like the HTTP modes: no HTTP, no database, no Postbox.
//!
//! The bodies have the size of the `message` event Postbox publishes for a chat message of
//! `--message-chars` characters. The queues are the run's own (`loadtest.raw.<run>.<i>`), auto-deleted
//! when the run ends.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Confirmation, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};

use super::{
    LoadtestArgs, Mode, Outcome, Tracker, drive, empty_report, message_text, parse_text,
    report::{Report, clock_ticks},
    unix_nanos,
};
use postbox::events::{Event, MessageView, kind};

/// Queues the baseline spreads its messages over, at most.
const MAX_QUEUES: u32 = 1000;
/// Channels the consumers share.
const CONSUMER_CHANNELS: usize = 8;

/// Bytes of the event Postbox publishes for a chat message of `chars` characters.
pub fn event_size(chars: usize) -> usize {
    let view = MessageView {
        id: 1_000_000,
        conversation_id: 1_000_000,
        sender_id: 100_000,
        sender_name: "ltabcdef12m1234 display".into(),
        receiver_id: 100_001,
        message: "x".repeat(chars),
        attachment: None,
        attachment_type: None,
        timestamp: postbox::events::rfc3339(chrono::Utc::now()),
        is_read: false,
        delivered_at: None,
        read_at: None,
    };
    Event::new(
        kind::MESSAGE,
        serde_json::to_value(view).expect("a MessageView serialises"),
    )
    .to_bytes()
    .len()
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .context("RabbitMQ did not answer within 10 s")?
    .with_context(|| {
        format!(
            "cannot connect to RabbitMQ at {}",
            postbox::config::redact_url(url)
        )
    })
}

/// Runs the raw broker baseline.
pub async fn run(args: &LoadtestArgs) -> anyhow::Result<Report> {
    let started_at = postbox::events::rfc3339(chrono::Utc::now());
    let setup_began = Instant::now();
    let run = super::run_id();
    let ticks = clock_ticks();
    let size = event_size(args.message_chars);
    let queues: Vec<String> = (0..args.users.min(MAX_QUEUES))
        .map(|i| format!("loadtest.raw.{run}.{i}"))
        .collect();
    let publish_conn = connect(&args.amqp_url).await?;
    let consume_conn = connect(&args.amqp_url).await?;

    // Durable queues like postboxes, removed when the run's consumers go (and after a minute unused).
    let setup = consume_conn.create_channel().await?;
    let mut queue_args = FieldTable::default();
    queue_args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    for q in &queues {
        setup
            .queue_declare(
                ShortString::from(q.clone()),
                QueueDeclareOptions {
                    durable: true,
                    auto_delete: true,
                    ..Default::default()
                },
                queue_args.clone(),
            )
            .await
            .with_context(|| format!("cannot declare {q}"))?;
    }
    let _ = setup.close(200, "setup done".into()).await;

    let tracker = Arc::new(Tracker::new(run.clone(), args.planned_messages()));
    let mut consumer_channels = Vec::new();
    for _ in 0..CONSUMER_CHANNELS.min(queues.len()) {
        let ch = consume_conn.create_channel().await?;
        ch.basic_qos(100, BasicQosOptions { global: false }).await?;
        consumer_channels.push(ch);
    }
    let mut consumers = tokio::task::JoinSet::new();
    for (i, q) in queues.iter().enumerate() {
        let ch = &consumer_channels[i % consumer_channels.len()];
        let mut consumer = ch
            .basic_consume(
                ShortString::from(q.clone()),
                ShortString::from(format!("loadtest-{run}-{i}")),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot consume {q}"))?;
        let (tracker, run) = (tracker.clone(), run.clone());
        consumers.spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let now = unix_nanos();
                if let Some((seq, sent)) = std::str::from_utf8(&delivery.data)
                    .ok()
                    .and_then(|text| parse_text(&run, text))
                {
                    tracker.record_delivery(seq, sent, now);
                }
                if delivery
                    .acker
                    .ack(BasicAckOptions { multiple: false })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }

    let mut publishers = Vec::new();
    for _ in 0..args.senders {
        let ch = publish_conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        publishers.push(ch);
    }
    let publishers = Arc::new(publishers);
    let queues = Arc::new(queues);
    let mut report = empty_report(args, Mode::Raw, started_at, size);
    report.setup_secs = setup_began.elapsed().as_secs_f64();
    report.notes.push(format!(
        "{} durable queues, {} consumer channels (prefetch 100, manual acks), {} confirm-mode publishing \
         channels, persistent {size}-byte messages; Postbox publishes two events per chat message \
         (receiver and sender's own postbox), so compare its rate with half of this one too",
        queues.len(),
        consumer_channels.len(),
        args.senders
    ));

    let watched = super::Watched::start(args, ticks);
    let window_began = Instant::now();
    let start = tokio::time::Instant::now();
    let (run_tag, senders) = (run.clone(), args.senders as u64);
    let send = move |seq: u64| {
        let (publishers, queues) = (publishers.clone(), queues.clone());
        let mut body = message_text(&run_tag, seq, unix_nanos(), 0).into_bytes();
        body.resize(size.max(body.len()), b' ');
        async move {
            // Each sender keeps to its own channel (seq ≡ sender mod S).
            let ch = &publishers[(seq % senders) as usize];
            let queue = &queues[(seq % queues.len() as u64) as usize];
            let confirm = ch
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue.clone()),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await;
            match confirm {
                Ok(c) => match c.await {
                    Ok(Confirmation::Ack(_)) => Outcome::Accepted,
                    _ => Outcome::Failed,
                },
                Err(_) => Outcome::Failed,
            }
        }
    };
    let duration = Duration::from_secs_f64(args.duration);
    drive(
        tracker.clone(),
        args.senders,
        args.rate,
        duration,
        start,
        send,
    )
    .await;
    let window_secs = args.duration.min(window_began.elapsed().as_secs_f64());
    watched.finish(&mut report, window_secs);
    let drain_began = Instant::now();
    let limit = Instant::now() + Duration::from_secs_f64(args.drain);
    while !tracker.all_delivered() && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain_secs = drain_began.elapsed().as_secs_f64();
    for ch in &consumer_channels {
        let _ = ch.close(200, "loadtest done".into()).await;
    }
    consumers.abort_all();
    while consumers.join_next().await.is_some() {}
    let _ = publish_conn.close(200, "loadtest done".into()).await;
    let _ = consume_conn.close(200, "loadtest done".into()).await;
    tracker.fill(&mut report, window_secs, drain_secs);
    report.polls = 0;
    report.window_secs = window_secs;
    report.drain_secs = drain_secs;
    if tracker.accepted.load(Ordering::Relaxed) == 0 {
        report
            .notes
            .push("no publish was confirmed: check the broker".into());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_size_grows_with_the_message() {
        let small = super::event_size(64);
        assert!(small > 300, "{small}");
        let larger = super::event_size(164);
        // The event's float timestamp may print a digit more or less.
        assert!(
            (larger as i64 - small as i64 - 100).abs() <= 3,
            "{small} {larger}"
        );
    }
}
