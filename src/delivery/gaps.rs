//! Gaps are announced, never silent.
//!
//! Every postbox dead-letters what RabbitMQ drops from it: the oldest event when a 101st arrives
//! (`x-death` reason `maxlen`) and events past their TTL (`expired`). [`run_dead_letter_consumer`] reads
//! the dead-letter queue (each instance competes for it), records the loss per postbox in the
//! database and flags the queue in the hub. A postbox whose client registered before but whose queue
//! vanished (deleted by an operator, evicted) records a `queue_deleted` gap when polled.
//!
//! The next poll of a postbox with a gap answers at once with a `resync` event first:
//! `{"reason": "maxlen,expired", "lost": 50, "lost_unknown": false, "since": <timestamp>}`: the client
//! should reload what it shows from the REST API (conversations, history `since`). The gap is cleared
//! once that answer was handed over. Ephemeral events (typing, presence, delivery notices) expire by
//! design and are not gaps.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{Broker, EXPIRES_AT_HEADER},
    db::{self, DbError, entities::gap},
    events::{Event, data::Resync},
};

/// The `resync` event announcing a gap.
pub fn resync_event(gap: &gap::Model) -> Event {
    Event::of(&Resync {
        reason: gap.reasons.clone(),
        lost: gap.lost,
        lost_unknown: gap.unknown > 0,
        since: gap.since,
    })
}

/// The gap to announce on this poll, if any. Looked up when the postbox has no consumer in this
/// process yet (first poll after a pause, when gaps happen) or when this process recorded one.
pub async fn pending(
    lookups: &GapLookups,
    broker: &Broker,
    queue: &str,
) -> Result<Option<gap::Model>, DbError> {
    let hub = broker.hub();
    if hub.has_slot(queue) && !hub.take_gap_flag(queue) {
        return Ok(None);
    }
    lookups.find(queue.to_owned()).await
}

/// Gap lookups of many polls answered by one query: a herd of first polls (a launch, a restart), each
/// of which looks its postbox up, costs a few statements instead of one each. Cheap to clone.
#[derive(Clone)]
pub struct GapLookups {
    lookups: db::batch::Lookups<String, gap::Model>,
}

impl GapLookups {
    /// Starts the task that runs the queries; needs a Tokio runtime.
    pub fn new(db: DatabaseConnection) -> Self {
        let lookups = db::batch::Lookups::spawn("gap", move |queues: Vec<String>| {
            let db = db.clone();
            async move {
                let found = db::gaps::find_many(&db, queues).await?;
                Ok(found.into_iter().map(|g| (g.queue.clone(), g)).collect())
            }
        });
        GapLookups { lookups }
    }

    /// The gap recorded for a queue now, if any.
    pub async fn find(&self, queue: String) -> Result<Option<gap::Model>, DbError> {
        self.lookups.find(queue).await
    }
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

/// Reads dead letters until `shutdown`, reconnecting after broker failures.
pub async fn run_dead_letter_consumer(
    db: DatabaseConnection,
    broker: Broker,
    shutdown: CancellationToken,
) {
    loop {
        let result = tokio::select! {
            r = consume(&db, &broker) => r,
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

async fn consume(db: &DatabaseConnection, broker: &Broker) -> Result<(), String> {
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
        let ephemeral = headers.is_some_and(|h| h.inner().contains_key(EXPIRES_AT_HEADER));
        let recorded = match (ephemeral, death(headers)) {
            (false, Some((queue, reason))) => {
                let since = serde_json::from_slice::<Event>(&delivery.data)
                    .ok()
                    .map(|e| e.timestamp);
                match db::gaps::record(db, &queue, 1, since, &reason).await {
                    Ok(()) => {
                        broker.hub().flag_gap(&queue);
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %queue, "cannot record a gap; retrying");
                        false
                    }
                }
            }
            // Ephemeral events expire by design; anything without `x-death` is not ours to judge.
            _ => true,
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
