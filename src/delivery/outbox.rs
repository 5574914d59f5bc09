//! Publishing stored events without ever losing one: the transactional outbox.
//!
//! Data and the event announcing it are committed together (`db::chat::insert_outbox`). After the commit
//! the request publishes the event at once ([`Outbox::publish`]); when RabbitMQ confirms it, the outbox row
//! is deleted (in batches, off the request path). If the publish fails, or the process dies before it,
//! the row stays and the relay ([`Outbox::run`]) publishes it again later, with the same event id, so
//! clients can drop the rare duplicate. An event is never published for data that was not committed.

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{Broker, BrokerError},
    db::{self, outbox::PendingEvent},
    events::{Audience, Envelope},
};

/// Confirmed outbox ids waiting for their batched delete.
const DONE_QUEUE: usize = 65_536;

#[derive(Clone)]
pub struct Outbox {
    db: DatabaseConnection,
    broker: Broker,
    done: mpsc::Sender<i64>,
}

/// The receiving half of the confirmed-ids queue, consumed by [`Outbox::run`] (shared, so a relay that
/// is started again takes over the same queue).
#[derive(Clone)]
pub struct OutboxDone(Arc<tokio::sync::Mutex<mpsc::Receiver<i64>>>);

impl Outbox {
    pub fn new(db: DatabaseConnection, broker: Broker) -> (Self, OutboxDone) {
        let (done, rx) = mpsc::channel(DONE_QUEUE);
        (
            Outbox { db, broker, done },
            OutboxDone(Arc::new(tokio::sync::Mutex::new(rx))),
        )
    }

    /// Publishes a committed event now. On failure the event stays in the outbox for the relay.
    pub async fn publish(&self, event: &PendingEvent) -> Result<(), BrokerError> {
        self.broker
            .publish_event(&event.audience, &event.event)
            .await?;
        if self.done.try_send(event.outbox_id).is_err() {
            // The delete queue is full (database slow): delete inline rather than grow without bound.
            if let Err(e) = db::outbox::delete(&self.db, &[event.outbox_id]).await {
                tracing::warn!(error = %e, "could not delete a published outbox row; it will be published again");
            }
        }
        Ok(())
    }

    /// Publishes committed events now, all at once; failures are left to the relay.
    pub async fn publish_committed(&self, pending: &[PendingEvent]) {
        let results = futures_util::future::join_all(pending.iter().map(|p| self.publish(p))).await;
        for (p, r) in pending.iter().zip(results) {
            if let Err(e) = r {
                tracing::warn!(error = %e, outbox_id = p.outbox_id, "publish failed after commit; the outbox relay will retry");
            }
        }
    }

    /// Publishes committed events now, in order per audience (a reopened support chat's
    /// `support_chat` before the message); failures are left to the relay, and the later events of that
    /// audience stay behind the failed one (the relay publishes them by id).
    pub async fn publish_in_order(&self, pending: &[PendingEvent]) {
        let mut by_audience: std::collections::HashMap<&Audience, Vec<&PendingEvent>> =
            Default::default();
        for p in pending {
            by_audience.entry(&p.audience).or_default().push(p);
        }
        futures_util::future::join_all(by_audience.into_values().map(|events| async move {
            for p in events {
                if let Err(e) = self.publish(p).await {
                    tracing::warn!(error = %e, outbox_id = p.outbox_id, "publish failed after commit; the outbox relay will retry");
                    break;
                }
            }
        }))
        .await;
    }

    /// Deletes confirmed rows in batches and republishes rows left behind, until `shutdown`.
    pub async fn run(self, done: OutboxDone, shutdown: CancellationToken, relay_after: Duration) {
        let mut done = done.0.lock().await;
        let mut batch = Vec::with_capacity(512);
        let mut relay = tokio::time::interval(relay_after.max(Duration::from_secs(1)) / 2);
        loop {
            tokio::select! {
                n = done.recv_many(&mut batch, 512) => {
                    if n == 0 { break; }
                    if let Err(e) = db::outbox::delete(&self.db, &batch).await {
                        tracing::warn!(error = %e, rows = batch.len(), "could not delete published outbox rows; they will be published again");
                    }
                    batch.clear();
                }
                _ = relay.tick() => self.relay(relay_after).await,
                _ = shutdown.cancelled() => {
                    done.close();
                    while done.recv_many(&mut batch, 512).await > 0 {
                        let _ = db::outbox::delete(&self.db, &batch).await;
                        batch.clear();
                    }
                    break;
                }
            }
        }
        tracing::debug!("outbox relay stopped");
    }

    async fn relay(&self, min_age: Duration) {
        let age = chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::seconds(10));
        let rows = match db::outbox::stale(&self.db, age, 500).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay cannot read the outbox");
                return;
            }
        };
        let mut published = Vec::new();
        for row in rows {
            let (Some(audience), Ok(event)) =
                (&row.audience, Envelope::from_json(row.payload.as_bytes()))
            else {
                tracing::error!(
                    outbox_id = row.id,
                    "an outbox row cannot be read; it is left in place"
                );
                let _ = db::outbox::bump_attempts(&self.db, row.id).await;
                continue;
            };
            match self.broker.publish_event(audience, &event).await {
                Ok(()) => published.push(row.id),
                Err(e) => {
                    tracing::warn!(error = %e, outbox_id = row.id, "outbox relay could not publish; will retry");
                    let _ = db::outbox::bump_attempts(&self.db, row.id).await;
                    break;
                }
            }
        }
        if !published.is_empty() {
            tracing::info!(
                events = published.len(),
                "outbox relay published events left behind"
            );
            if let Err(e) = db::outbox::delete(&self.db, &published).await {
                tracing::warn!(error = %e, "could not delete relayed outbox rows");
            }
        }
    }
}
