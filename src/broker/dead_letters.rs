//! The dead-letter queue: every postbox dead-letters what RabbitMQ drops from it (the oldest event
//! when a full postbox takes one more, `x-death` reason `maxlen`; events past their TTL, `expired`)
//! into `<prefix>.deadletters`. This module reads it and says what each letter is; recording the loss
//! is the delivery's business (`crate::delivery::gaps`).

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio_util::sync::CancellationToken;

use super::{Broker, message};

/// A dead letter: the postbox it left, why, and what it was.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The postbox's queue.
    pub queue: String,
    /// `maxlen` or `expired`.
    pub reason: String,
    /// The lost event's creation time, when known.
    pub since: Option<f64>,
    /// The lost event's number in its user's sequence, when it had one.
    pub seq: Option<i64>,
    /// An ephemeral event (typing, presence, delivered): it expires by design.
    pub ephemeral: bool,
}

/// What a dead letter says: the postbox it left and why.
fn death(headers: Option<&FieldTable>) -> Option<(String, String)> {
    let Some(AMQPValue::FieldArray(deaths)) = headers?.inner().get("x-death") else {
        return None;
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        return None;
    };
    let text = |key: &str| match first.inner().get(key) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    };
    Some((text("queue")?, text("reason")?))
}

/// Reads dead letters until `shutdown`, reconnecting after broker failures. `record` answers whether
/// the letter was taken care of: it is then acknowledged, else given back (after a second) to be
/// read again.
pub async fn run<F, Fut>(broker: Broker, record: F, shutdown: CancellationToken)
where
    F: Fn(DeadLetter) -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        let result = tokio::select! {
            r = consume(&broker, &record) => r,
            _ = shutdown.cancelled() => break,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "dead-letter consumer stopped; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    tracing::debug!("dead-letter consumer stopped");
}

async fn consume<F, Fut>(broker: &Broker, record: &F) -> Result<(), String>
where
    F: Fn(DeadLetter) -> Fut,
    Fut: Future<Output = bool>,
{
    let channel = broker
        .disposable_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .basic_qos(50, BasicQosOptions { global: false })
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = channel
        .basic_consume(
            ShortString::from(broker.topology().dead_letter_queue()),
            ShortString::from(format!("postbox-deadletters-{}", std::process::id())),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    while let Some(next) = consumer.next().await {
        let delivery = next.map_err(|e| e.to_string())?;
        let headers = delivery.properties.headers().as_ref();
        let recorded = match death(headers) {
            Some((queue, reason)) => {
                record(DeadLetter {
                    queue,
                    reason,
                    since: message::timestamp_of(&delivery.properties, &delivery.data),
                    seq: message::seq_of(&delivery.properties),
                    ephemeral: message::is_ephemeral(headers),
                })
                .await
            }
            // Anything without `x-death` is not ours to judge.
            None => true,
        };
        if recorded {
            let _ = delivery
                .acker
                .ack(BasicAckOptions { multiple: false })
                .await;
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = delivery
                .acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await;
        }
    }
    Err("the dead-letter consumer was cancelled".into())
}
