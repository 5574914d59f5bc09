//! What a first poll costs RabbitMQ, step by step: `queue.declare` of new and of existing durable
//! postboxes, `queue.bind` (new, then existing), `basic.consume`, `queue.delete`, each for N queues with
//! P operations in flight on P channels (as Postbox's declare pool runs them). No HTTP, no database.
//! docs/BENCHMARKS.md quotes it (session 7).
//!
//! ```sh
//! cargo run --release --example attach_cost -- 3000 16   # N queues, P channels
//! ```
//!
//! `AMQP_URL` selects the broker (default `amqp://guest:guest@127.0.0.1:5672/%2f`). It creates an
//! exchange and N queues named `attach-cost-<pid>...` and deletes them at the end.

use std::time::Instant;

use futures_util::{StreamExt, stream};
use lapin::{
    Channel,
    options::{
        BasicConsumeOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};

mod common;

/// The arguments Postbox declares its postboxes with (default limits; the dead-letter exchange left out).
fn postbox_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(100));
    args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(1 << 20));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("drop-head")),
    );
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(1_800_000));
    args.insert("x-expires".into(), AMQPValue::LongLongInt(3_600_000));
    args
}

#[derive(Clone, Copy)]
enum Step {
    Declare,
    Bind,
    Consume,
    Delete,
}

async fn run(
    step: Step,
    channels: &[Channel],
    queues: &[String],
    exchange: &str,
) -> lapin::Result<()> {
    let results: Vec<lapin::Result<()>> = stream::iter(queues.iter().enumerate())
        .map(|(i, queue)| {
            let channel = channels[i % channels.len()].clone();
            let queue = queue.clone();
            async move {
                match step {
                    Step::Declare => channel
                        .queue_declare(
                            queue.into(),
                            QueueDeclareOptions {
                                durable: true,
                                ..Default::default()
                            },
                            postbox_arguments(),
                        )
                        .await
                        .map(drop),
                    Step::Bind => {
                        channel
                            .queue_bind(
                                queue.into(),
                                exchange.into(),
                                format!("user.{i}").into(),
                                QueueBindOptions::default(),
                                FieldTable::default(),
                            )
                            .await
                    }
                    Step::Consume => channel
                        .basic_consume(
                            queue.into(),
                            format!("attach-cost-{i}").into(),
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .map(drop),
                    Step::Delete => channel
                        .queue_delete(queue.into(), QueueDeleteOptions::default())
                        .await
                        .map(drop),
                }
            }
        })
        .buffer_unordered(channels.len())
        .collect()
        .await;
    results.into_iter().collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(3000), |a| a.parse())?;
    let parallel: usize = args.next().map_or(Ok(16), |a| a.parse())?;
    let (conn, first, name) = common::connect_with_exchange("attach-cost").await?;
    let mut channels = vec![first];
    for _ in 1..parallel.max(1) {
        channels.push(conn.create_channel().await?);
    }
    let queues: Vec<String> = (0..n).map(|i| format!("{name}.{i}")).collect();
    println!("{n} queues, {} in flight", channels.len());
    for (label, step) in [
        ("declare (new)", Step::Declare),
        ("declare (existing)", Step::Declare),
        ("bind (new)", Step::Bind),
        ("bind (existing)", Step::Bind),
        ("consume", Step::Consume),
        ("delete", Step::Delete),
    ] {
        let began = Instant::now();
        run(step, &channels, &queues, &name).await?;
        let secs = began.elapsed().as_secs_f64();
        println!(
            "{label:<20} {secs:>6.2} s  {:>7.0} per second",
            n as f64 / secs
        );
    }
    channels[0]
        .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
        .await?;
    conn.close(200, "done".into()).await?;
    Ok(())
}
