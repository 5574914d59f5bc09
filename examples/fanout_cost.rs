//! What a broadcast costs RabbitMQ alone: one message published to a topic exchange that N durable
//! queues are bound to (as a college notification reaches N postboxes), each queue with a consumer on
//! channels of 256 consumers (as Postbox's hub attaches them); prints the time until the last consumer
//! has it and until the publisher confirm. No HTTP, no database. docs/BENCHMARKS.md quotes it for (d).
//!
//! ```sh
//! cargo run --release --example fanout_cost -- 5000                              # persistent, confirmed
//! cargo run --release --example fanout_cost -- 5000 --transient                  # as POSTBOX_BROADCAST_DELIVERY=transient
//! cargo run --release --example fanout_cost -- 5000 --no-confirm --bytes 5000    # other variants
//! ```
//!
//! `AMQP_URL` selects the broker (default `amqp://guest:guest@127.0.0.1:5672/%2f`). It creates an
//! exchange and N queues named `fanout-cost-<pid>...` and deletes them at the end.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::{
    BasicProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};

mod common;

const ROUTING_KEY: &str = "college.1";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut queues = 5000usize;
    let (mut confirm, mut persistent, mut bytes) = (true, true, 600usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--transient" => persistent = false,
            "--no-confirm" => confirm = false,
            "--bytes" => bytes = args.next().context("--bytes needs a number")?.parse()?,
            n => {
                queues = n
                    .parse()
                    .context("usage: fanout_cost [N] [--transient] [--no-confirm] [--bytes B]")?
            }
        }
    }
    let (conn, setup, name) = common::connect_with_exchange("fanout-cost").await?;

    let (delivered, mut deliveries) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut channel = None;
    for i in 0..queues {
        if i % 256 == 0 {
            let c = conn.create_channel().await?;
            c.basic_qos(100, BasicQosOptions::default()).await?;
            channel = Some(c);
        }
        let queue = format!("{name}.{i}");
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(100));
        setup
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await?;
        setup
            .queue_bind(
                queue.as_str().into(),
                name.as_str().into(),
                ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .as_ref()
            .context("a consumer channel")?
            .basic_consume(
                queue.as_str().into(),
                format!("fanout-cost-{i}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let delivered = delivered.clone();
        tokio::spawn(async move {
            if let Some(Ok(delivery)) = consumer.next().await {
                let _ = delivered.send(Instant::now());
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
        });
    }

    let publisher = conn.create_channel().await?;
    if confirm {
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    let properties = BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
    let began = Instant::now();
    let confirmation = publisher
        .basic_publish(
            name.as_str().into(),
            ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            &vec![b'x'; bytes],
            properties,
        )
        .await?;
    let confirmed = tokio::spawn(async move { confirmation.await.map(|_| Instant::now()) });
    let mut last = began;
    for _ in 0..queues {
        last = tokio::time::timeout(Duration::from_secs(60), deliveries.recv())
            .await
            .context("a queue got nothing within 60 s")?
            .context("the consumers ended")?;
    }
    let confirmed = confirmed.await??;
    println!(
        "{queues} queues, {} {bytes}-byte message{}: last delivery {:.0} ms, confirm {}",
        if persistent {
            "persistent"
        } else {
            "transient"
        },
        if confirm { "" } else { " (no confirms)" },
        (last - began).as_secs_f64() * 1e3,
        if confirm {
            format!("{:.0} ms", (confirmed - began).as_secs_f64() * 1e3)
        } else {
            "–".to_owned()
        },
    );

    for i in 0..queues {
        setup
            .queue_delete(
                format!("{name}.{i}").as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await?;
    }
    setup
        .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
        .await?;
    conn.close(200, "done".into()).await?;
    Ok(())
}
