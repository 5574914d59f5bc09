//! Publishing stored events without ever losing one: the transactional outbox.
//!
//! Data and the event announcing it are committed together (`db::chat::insert_outbox`). After the commit
//! the request publishes the event at once ([`Outbox::publish`]); when RabbitMQ confirms it, the outbox row
//! is deleted (in batches, off the request path). If the publish fails, or the process dies before it,
//! the row stays and the relay ([`Outbox::run`]) publishes it again later, with the same event id, so
//! clients can drop the rare duplicate. An event is never published for data that was not committed.
//!
//! Failures are per row. A row for several users that some of them confirmed is narrowed to the
//! others, so a retry reaches only the postboxes that lack the event. While RabbitMQ is unreachable the
//! relay waits for it (every row would fail alike, and none is counted against). A row that fails while
//! RabbitMQ answers (a postbox declared with other arguments, a refused message) is tried again after a
//! backoff that grows with its attempts ([`RelayPolicy`]); the later rows of the same audience wait
//! behind it, so a postbox still gets its events in order, while every other audience goes on. After
//! [`RelayPolicy::park_after`] attempts the row is parked: an error in the log, a metric
//! (`postbox_outbox_parked_total`), a line in `check-rabbitmq`, and `postbox outbox list|retry` for the
//! operator once the cause is fixed.

use std::{collections::HashSet, sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{Broker, BrokerError},
    db::{
        self,
        outbox::{PendingEvent, StaleRow},
    },
    events::{Audience, Envelope},
    telemetry::names,
};

/// How the relay retries a row that fails while RabbitMQ answers.
#[derive(Debug, Clone, Copy)]
pub struct RelayPolicy {
    /// The wait after the first failure; doubled after each one.
    pub backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// Attempts after which the row is parked.
    pub park_after: i32,
}

impl Default for RelayPolicy {
    /// 2 s doubling to 5 min; parked after 12 attempts (about 25 minutes of failures).
    fn default() -> Self {
        RelayPolicy {
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
            park_after: 12,
        }
    }
}

impl RelayPolicy {
    /// The wait after a row's `attempts`-th failure.
    pub fn backoff_after(&self, attempts: i32) -> Duration {
        let doublings = attempts.clamp(1, 30) as u32 - 1;
        self.backoff
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.max_backoff)
    }
}

/// Whether a failure is RabbitMQ's as a whole (every row would fail alike) rather than this row's.
fn broker_wide(e: &BrokerError) -> bool {
    matches!(
        e,
        BrokerError::Unavailable(_)
            | BrokerError::Timeout(_)
            | BrokerError::AccessRefused(_)
            | BrokerError::Tls(_)
    )
}

/// Confirmed outbox ids waiting for their batched delete.
const DONE_QUEUE: usize = 65_536;

#[derive(Clone)]
pub struct Outbox {
    db: DatabaseConnection,
    broker: Broker,
    done: mpsc::Sender<i64>,
    policy: RelayPolicy,
}

/// The receiving half of the confirmed-ids queue, consumed by [`Outbox::run`] (shared, so a relay that
/// is started again takes over the same queue).
#[derive(Clone)]
pub struct OutboxDone(Arc<tokio::sync::Mutex<mpsc::Receiver<i64>>>);

impl Outbox {
    pub fn new(db: DatabaseConnection, broker: Broker) -> (Self, OutboxDone) {
        let (done, rx) = mpsc::channel(DONE_QUEUE);
        (
            Outbox {
                db,
                broker,
                done,
                policy: RelayPolicy::default(),
            },
            OutboxDone(Arc::new(tokio::sync::Mutex::new(rx))),
        )
    }

    /// The same outbox, retrying failed rows with `policy`.
    pub fn with_policy(mut self, policy: RelayPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Publishes one row's event to its audience. A row for several users is published to each; when
    /// some of them confirmed and others failed, the row is narrowed to those that failed.
    async fn publish_row(
        &self,
        outbox_id: i64,
        audience: &Audience,
        event: &Envelope,
    ) -> Result<(), BrokerError> {
        let Audience::Users(users) = audience else {
            return self.broker.publish_event(audience, event).await;
        };
        if users.len() < 2 {
            return self.broker.publish_event(audience, event).await;
        }
        let results = futures_util::future::join_all(users.iter().map(|&id| async move {
            let one = Audience::Users(vec![id]);
            (id, self.broker.publish_event(&one, event).await)
        }))
        .await;
        let mut failed = Vec::new();
        let mut first_error = None;
        for (id, result) in results {
            if let Err(e) = result {
                failed.push(id);
                first_error.get_or_insert(e);
            }
        }
        let Some(error) = first_error else {
            return Ok(());
        };
        if failed.len() < users.len()
            && let Err(e) = db::outbox::narrow(&self.db, outbox_id, &Audience::Users(failed)).await
        {
            // The row keeps its whole audience: a retry may give some users a duplicate (same id).
            tracing::warn!(error = %e, outbox_id, "could not narrow an outbox row to the postboxes that did not confirm");
        }
        Err(error)
    }

    /// Publishes a committed event now. On failure the event stays in the outbox for the relay.
    pub async fn publish(&self, event: &PendingEvent) -> Result<(), BrokerError> {
        self.publish_row(event.outbox_id, &event.audience, &event.event)
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
                _ = relay.tick() => { self.relay(relay_after).await; }
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

    /// One pass of the relay over the rows left behind, oldest first: each due row is published; a row
    /// in its backoff, or one that fails now, holds back the later rows of its audience (order within a
    /// postbox) but no other. Stops early while RabbitMQ is unreachable. Returns the rows published.
    pub async fn relay(&self, min_age: Duration) -> usize {
        self.measure().await;
        let age = chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::seconds(10));
        let rows = match db::outbox::stale(&self.db, age, 500).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay cannot read the outbox");
                return 0;
            }
        };
        let now = chrono::Utc::now();
        let mut held: HashSet<String> = HashSet::new();
        let mut published = Vec::new();
        for row in rows {
            if held.contains(&row.routing_key) {
                continue;
            }
            if row.next_attempt_at.is_some_and(|t| t > now) {
                held.insert(row.routing_key);
                continue;
            }
            let (Some(audience), Ok(event)) =
                (&row.audience, Envelope::from_json(row.payload.as_bytes()))
            else {
                // Never readable: parked at once.
                self.row_failed(&row, "the row cannot be read (audience or event)", true)
                    .await;
                continue;
            };
            match self.publish_row(row.id, audience, &event).await {
                Ok(()) => published.push(row.id),
                Err(e) if broker_wide(&e) => {
                    tracing::warn!(error = %e, "outbox relay waits for RabbitMQ");
                    break;
                }
                Err(e) => {
                    let park = row.attempts + 1 >= self.policy.park_after;
                    self.row_failed(&row, &e.to_string(), park).await;
                    held.insert(row.routing_key);
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
        published.len()
    }

    /// Sets the outbox gauges (backlog, oldest age, parked) for the dashboards.
    async fn measure(&self) {
        match db::outbox::backlog(&self.db).await {
            Ok((waiting, oldest, parked)) => {
                let age = oldest.map_or(0.0, |t| {
                    (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
                });
                metrics::gauge!(names::OUTBOX_BACKLOG).set(waiting as f64);
                metrics::gauge!(names::OUTBOX_OLDEST_AGE).set(age);
                metrics::gauge!(names::OUTBOX_PARKED_NOW).set(parked as f64);
            }
            Err(e) => tracing::debug!(error = %e, "could not measure the outbox"),
        }
    }

    /// Records a row's failed attempt: its backoff, or that it is parked.
    async fn row_failed(&self, row: &StaleRow, error: &str, park: bool) {
        let attempts = row.attempts + 1;
        let wait = self.policy.backoff_after(attempts);
        let next = chrono::Utc::now()
            + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::minutes(5));
        if park {
            metrics::counter!(names::OUTBOX_PARKED).increment(1);
            tracing::error!(
                outbox_id = row.id,
                audience = %row.routing_key,
                attempts,
                error,
                "outbox row parked: the relay no longer publishes it; fix the cause, then run `postbox outbox retry`"
            );
        } else {
            tracing::warn!(
                outbox_id = row.id,
                audience = %row.routing_key,
                attempts,
                retry_in_secs = wait.as_secs_f64(),
                error,
                "outbox relay could not publish a row; will retry"
            );
        }
        if let Err(e) = db::outbox::failed(&self.db, row.id, error, next, park).await {
            tracing::warn!(error = %e, outbox_id = row.id, "could not record a failed outbox attempt");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lapin::{
        options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions},
        types::{AMQPValue, FieldTable},
    };
    use tokio_util::sync::CancellationToken;

    use super::{Outbox, RelayPolicy};
    use crate::{
        app::testing::Parts,
        broker::Broker,
        db,
        events::{Audience, Envelope},
    };

    /// The event ids a queue holds now, in order (taken and acknowledged).
    async fn drain(channel: &lapin::Channel, queue: &str) -> Vec<String> {
        let mut ids = Vec::new();
        while let Some(m) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            ids.push(
                m.delivery
                    .properties
                    .message_id()
                    .clone()
                    .unwrap()
                    .to_string(),
            );
        }
        ids
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        let p = RelayPolicy::default();
        assert_eq!(p.backoff_after(1), Duration::from_secs(2));
        assert_eq!(p.backoff_after(3), Duration::from_secs(8));
        assert_eq!(p.backoff_after(30), Duration::from_secs(300));
        assert_eq!(p.backoff_after(i32::MAX), Duration::from_secs(300));
    }

    #[tokio::test]
    async fn a_failing_row_holds_back_only_its_own_audience_is_parked_and_a_retry_skips_confirmed_postboxes()
     {
        let parts = Parts::start().await;
        let (x, y, z) = (
            parts.user("xavier").await.user.id,
            parts.user("yara").await.user.id,
            parts.user("zoe").await.user.id,
        );
        let topology = parts.broker.topology().clone();
        // Xavier's postbox is declared with other arguments (an older configuration): publishing to it
        // fails in a process that declares it, as this fresh one does.
        let conn = lapin::Connection::connect(&parts.config.amqp_url, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let bad = topology.user_queue(x);
        ch.queue_delete(bad.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(5));
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(bad.as_str().into(), durable, args)
            .await
            .unwrap();
        let fresh = Broker::connect(&parts.config, CancellationToken::new())
            .await
            .unwrap();
        let fast = RelayPolicy {
            backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            park_after: 3,
        };
        let (outbox, _done) = Outbox::new(parts.db.clone(), fresh);
        let outbox = outbox.with_policy(fast);

        let event = |n: u32| Envelope::custom("test", &serde_json::json!({ "n": n }));
        let mut ids = Vec::new();
        for audience in [
            Audience::Users(vec![x]),
            Audience::Users(vec![y]),
            Audience::Users(vec![x]),
            Audience::Users(vec![z, x]),
        ] {
            let pending = db::outbox::insert(&parts.db, vec![audience], event(ids.len() as u32))
                .await
                .unwrap();
            ids.push(pending[0].event.id.clone());
        }

        // Yara's and Zoe's events go out although Xavier's come first and fail (the event for Zoe and
        // Xavier is stored as one row each: each carries its user's sequence number).
        assert_eq!(
            outbox.relay(Duration::ZERO).await,
            2,
            "yara's and zoe's rows"
        );
        assert_eq!(drain(&ch, &topology.user_queue(y)).await, [ids[1].clone()]);
        assert_eq!(drain(&ch, &topology.user_queue(z)).await, [ids[3].clone()]);
        // Every row of Xavier's fails until parked; Zoe's copy is not published again meanwhile.
        for _ in 0..12 {
            outbox.relay(Duration::ZERO).await;
        }
        assert!(
            drain(&ch, &topology.user_queue(z)).await.is_empty(),
            "no duplicate for zoe"
        );
        let parked = db::outbox::parked(&parts.db, 10).await.unwrap();
        assert_eq!(parked.len(), 3, "{parked:?}");
        assert!(
            parked
                .iter()
                .all(|p| p.attempts == 3 && p.audience == format!("user.{x}"))
        );
        assert!(
            parked[0]
                .last_error
                .as_deref()
                .unwrap()
                .contains("other arguments"),
            "{parked:?}"
        );
        assert_eq!(
            outbox.relay(Duration::ZERO).await,
            0,
            "parked rows are left alone"
        );

        // The operator deletes the old queue and gives the rows back: Xavier gets all three, in order.
        ch.queue_delete(bad.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        assert_eq!(db::outbox::unpark(&parts.db, None).await.unwrap(), 3);
        let fixed = Broker::connect(&parts.config, CancellationToken::new())
            .await
            .unwrap();
        let (outbox, _done) = Outbox::new(parts.db.clone(), fixed);
        assert_eq!(outbox.relay(Duration::ZERO).await, 3);
        assert_eq!(
            drain(&ch, &bad).await,
            [ids[0].clone(), ids[2].clone(), ids[3].clone()]
        );
        assert_eq!(db::outbox::parked_count(&parts.db).await.unwrap(), 0);
        let _ = conn.close(200, "OK".into()).await;
    }
}
