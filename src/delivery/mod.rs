//! A poll's and a stream's whole life: opening a postbox (registered clients, gaps, presence), waiting
//! for its events, handing them over and acknowledging them, and marking chat messages delivered; also
//! the outbox relay that publishes stored events, and the waiting registry that ends polls of revoked
//! or expired tokens.
//!
//! The long poll and the event stream share one path: [`Delivery::open`] gives a [`Session`], whose
//! [`Session::next`] waits for the next [`Batch`]; the HTTP handlers only parse the request and write
//! the answer or the stream, then call [`Batch::handed_over`] once it reached the connection. Events
//! stay unacknowledged in RabbitMQ until then (see [`crate::broker::hub`]).

pub mod clients;
pub mod delivered;
pub mod gaps;
pub mod outbox;
pub mod presence;
pub mod sequence;
pub mod waiting;

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use self::{
    clients::{Clients, groups_of},
    delivered::Deliveries,
    gaps::GapLookups,
    presence::Presence,
    waiting::{Ended, Waiting, WaitingGuard},
};
use crate::{
    accounts::tokens::Caller,
    broker::{
        Broker, BrokerError, Postbox,
        hub::{Acks, Lease, Reader},
        message::Received,
    },
    config::Config,
    db::{
        self, DbError,
        entities::{gap, user},
    },
    events::{Envelope, unix_now},
    limits::{PollSlot, PollSlots, RateLimited},
    telemetry::names,
    validate::Invalid,
};

/// Why a poll, a stream or a registration was refused, failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The user holds too many polls and streams at once.
    #[error(transparent)]
    TooMany(#[from] RateLimited),
    /// The token was revoked or expired while the poll or stream was open.
    #[error("{}", .0.detail())]
    Ended(Ended),
    /// A newer poll or stream with the same `client_id` took the client's postbox over.
    #[error(
        "a newer poll or stream with this client_id took its postbox over; each tab or device needs \
         its own client_id"
    )]
    Superseded,
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The most events one `missed` answer carries.
pub const MISSED_PAGE: u64 = 500;

/// Delivery's slice of the configuration.
#[derive(Debug, Clone)]
pub struct DeliveryLimits {
    /// Events one answer carries at most (a postbox holds no more).
    pub batch: usize,
    pub max_clients_per_user: usize,
}

impl DeliveryLimits {
    pub fn from_config(config: &Config) -> Self {
        DeliveryLimits {
            batch: config.queue_max_length as usize,
            max_clients_per_user: config.max_clients_per_user,
        }
    }
}

/// The delivery service. Cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    db: DatabaseConnection,
    broker: Broker,
    clients: Clients,
    gaps: GapLookups,
    presence: Presence,
    deliveries: Deliveries,
    waiting: Waiting,
    slots: PollSlots,
    limits: Arc<DeliveryLimits>,
}

/// How a client acknowledges what it was handed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// Seed clients: what an answer carried is acknowledged once it was handed over.
    OnHandOver,
    /// Cursor clients: handed-over events stay in flight until a later poll's cursor (the id of the
    /// last event the client processed; `None`: none yet) confirms them; the rest come again, first,
    /// with the same ids.
    Cursor(Option<String>),
}

impl Delivery {
    /// Starts the grouped writers and lookups; needs a Tokio runtime.
    pub fn new(
        db: DatabaseConnection,
        broker: Broker,
        config: &Config,
        presence: Presence,
    ) -> Self {
        Delivery {
            clients: Clients::default(),
            gaps: GapLookups::new(db.clone()),
            deliveries: Deliveries::new(db.clone(), broker.clone(), config.message_ttl()),
            waiting: Waiting::default(),
            // Retry after the default hold: by then an ordinary poll of the user has ended.
            slots: PollSlots::new(
                config.max_polls_per_user,
                config.poll_timeout_secs.ceil().max(1.0) as u64,
            ),
            limits: Arc::new(DeliveryLimits::from_config(config)),
            presence,
            db,
            broker,
        }
    }

    /// The polls waiting now, by token (revocations end them).
    pub fn waiting(&self) -> &Waiting {
        &self.waiting
    }

    /// Who is online (the presence sweeper runs on it).
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// Opens what a poll or a stream of `caller` reads: the postbox of `client_id` (registered on first
    /// use) or the user's shared one, under the user's cap of polls and streams, registered in the
    /// waiting registry. Validates everything before any side effect.
    pub async fn open(
        &self,
        caller: &Caller,
        client_id: Option<&str>,
        ack: Ack,
    ) -> Result<Session, DeliveryError> {
        if let Some(client) = client_id {
            clients::validate_client_id(client)?;
        }
        if let Ack::Cursor(Some(last)) = &ack
            && last.len() > 64
        {
            return Err(Invalid::new("last_event_id", "is longer than 64 characters").into());
        }
        // Counted against the user's cap until the session is dropped.
        let slot = self.slots.acquire(caller.user.id)?;
        // Boxed: the database work of opening is large and done before the wait; inline, its future
        // would stay part of the caller's state for the whole hold.
        let (postbox, gap) = Box::pin(self.open_postbox(&caller.user, client_id)).await?;
        let reader = matches!(ack, Ack::Cursor(_)).then(|| self.broker.hub().reader());
        Ok(Session {
            delivery: self.clone(),
            user_id: caller.user.id,
            postbox,
            gap,
            ack,
            reader,
            settled: false,
            waiting: self.waiting.register(&caller.key_hash, caller.expires_at),
            _slot: slot,
        })
    }

    /// The postbox a poll or a stream reads, and the gap to announce first. Records a `queue_deleted`
    /// gap when a known client's queue vanished.
    async fn open_postbox(
        &self,
        user: &db::entities::user::Model,
        client_id: Option<&str>,
    ) -> Result<(Postbox, Option<gap::Model>), DeliveryError> {
        let (postbox, registered_before) = match client_id {
            Some(client) => {
                self.clients
                    .register(
                        &self.db,
                        &self.broker,
                        self.limits.max_clients_per_user,
                        user,
                        client,
                    )
                    .await?
            }
            None => (Postbox::user(user.id).with_groups(groups_of(user)), false),
        };
        let queue = self.broker.topology().queue(&postbox);
        // A known client whose postbox vanished (deleted, evicted) lost what it held: record the gap
        // before the queue is declared again.
        if registered_before
            && !self.broker.hub().has_slot(&queue)
            && !self.broker.queue_exists(&queue).await?
        {
            db::gaps::record(&self.db, &queue, 0, None, None, "queue_deleted").await?;
        }
        let gap = gaps::pending(&self.gaps, &self.broker, &queue).await?;
        Ok((postbox, gap))
    }

    /// The stored events of `user`'s sequence after `after` (at most `limit`, oldest first): what a
    /// client fills a jump in the numbers it saw with.
    pub async fn missed(
        &self,
        user: &user::Model,
        after: i64,
        limit: u64,
    ) -> Result<db::sequence::Missed, DeliveryError> {
        if after < 0 {
            return Err(Invalid::new("after", "must be a sequence number, 0 or more").into());
        }
        Ok(db::sequence::after(&self.db, user.id, after, limit.clamp(1, MISSED_PAGE)).await?)
    }

    /// Registers a client of `user` (a random id when none is given) and creates its postbox now, so
    /// events from this moment on are kept for it. Returns the client id and the postbox's queue.
    pub async fn register(
        &self,
        user: &db::entities::user::Model,
        client_id: Option<String>,
    ) -> Result<(String, String), DeliveryError> {
        let client_id = client_id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        clients::validate_client_id(&client_id)?;
        let (postbox, _) = self
            .clients
            .register(
                &self.db,
                &self.broker,
                self.limits.max_clients_per_user,
                user,
                &client_id,
            )
            .await?;
        self.broker.declare_postbox(&postbox).await?;
        Ok((client_id, self.broker.topology().queue(&postbox)))
    }

    /// The user went away (page unload): offline now, and the shared postbox's consumer let go.
    pub async fn disconnect(&self, user_id: i64) -> Result<(), DeliveryError> {
        self.presence.offline(user_id).await?;
        self.broker
            .hub()
            .release(&self.broker.topology().user_queue(user_id));
        Ok(())
    }
}

/// One poll's or stream's hold on a postbox. Dropping it gives the user's slot back and leaves the
/// waiting registry.
pub struct Session {
    delivery: Delivery,
    user_id: i64,
    postbox: Postbox,
    /// A gap to announce with the next batch (then cleared once handed over).
    gap: Option<gap::Model>,
    ack: Ack,
    /// A cursor client's claim on its postbox (see [`crate::broker::hub::Acks`]).
    reader: Option<Reader>,
    /// The cursor was applied (by the first wait).
    settled: bool,
    waiting: WaitingGuard,
    _slot: PollSlot,
}

impl Session {
    /// Whether the next batch announces a gap: it then comes at once, with what the postbox holds.
    pub fn has_gap(&self) -> bool {
        self.gap.is_some()
    }

    /// Whether the service is shutting down (a stream ends, a wait returns at once).
    pub fn closing(&self) -> bool {
        self.delivery.broker.hub().is_shutting_down()
    }

    /// Whether the token was revoked or expired.
    pub fn ended(&self) -> Option<Ended> {
        self.waiting.over()
    }

    /// Waits until the postbox holds events or `deadline` passes (at once when a gap is to be
    /// announced) and takes them as a batch, the `resync` of a pending gap first. An empty batch means
    /// the deadline passed. A revoked or expired token ends the wait (and gets nothing, even when events
    /// are ready).
    pub async fn next(&mut self, deadline: tokio::time::Instant) -> Result<Batch, DeliveryError> {
        if let Some(ended) = self.waiting.over() {
            return Err(DeliveryError::Ended(ended));
        }
        let d = &self.delivery;
        d.presence.seen(self.user_id).await;
        let gap = self.gap.take();
        let deadline = if gap.is_some() {
            tokio::time::Instant::now()
        } else {
            deadline
        };
        // The client's cursor is applied once, by the first wait of the poll or stream: what a stream
        // writes later stays in flight until the client reconnects with `Last-Event-ID`.
        let acks = match (&self.ack, &self.reader) {
            (Ack::Cursor(last), Some(reader)) => Acks::Cursor {
                reader,
                settle: (!self.settled).then(|| last.as_deref().filter(|l| !l.is_empty())),
            },
            _ => Acks::OnHandOver,
        };
        let wait = d
            .broker
            .hub()
            .wait(&self.postbox, deadline, d.limits.batch, acks);
        let lease = tokio::select! {
            biased;
            ended = self.waiting.ended() => return Err(DeliveryError::Ended(ended)),
            lease = wait => lease?,
        };
        if lease.is_superseded() {
            // The gap (if any) stays pending for the reader that took over.
            self.gap = gap;
            return Err(DeliveryError::Superseded);
        }
        self.settled = true;
        let resync = gap.as_ref().map(gaps::resync_event);
        let messages = handed_over(self.user_id, lease.events());
        Ok(Batch {
            delivery: d.clone(),
            user_id: self.user_id,
            lease,
            resync,
            gap,
            messages,
        })
    }
}

/// Events taken from a postbox for one answer (or one write of a stream), unacknowledged until
/// [`Batch::handed_over`]. Dropped before that (the client went away), its events stay in the postbox.
pub struct Batch {
    delivery: Delivery,
    user_id: i64,
    lease: Lease,
    /// The `resync` announcing a gap, first.
    resync: Option<Envelope>,
    gap: Option<gap::Model>,
    /// Chat messages to this user in the batch, marked delivered once it was handed over.
    messages: Vec<i64>,
}

impl Batch {
    /// No event (the deadline passed).
    pub fn is_empty(&self) -> bool {
        self.lease.is_empty() && self.resync.is_none()
    }

    /// Empty because the postbox's consumer was still attaching at the deadline (RabbitMQ busy).
    pub fn attaching(&self) -> bool {
        self.lease.attaching()
    }

    /// The events, in postbox order, a `resync` first. Their data is handed over as it came, unparsed.
    pub fn events(&self) -> impl Iterator<Item = Received<'_>> {
        self.resync
            .iter()
            .map(Received::of)
            .chain(self.lease.events())
    }

    /// The batch reached the connection: a seed client's events are acknowledged, a cursor client's
    /// parked in flight; an announced gap is cleared; chat messages are marked delivered. Returns
    /// whether the client should now confirm what it holds (a stream ends so that the client
    /// reconnects with `Last-Event-ID`): its postbox holds [`Hub::in_flight_limit`] events in flight.
    ///
    /// [`Hub::in_flight_limit`]: crate::broker::hub::Hub::in_flight_limit
    pub async fn handed_over(self) -> bool {
        let d = self.delivery;
        let in_flight = self.lease.handed_over().await;
        if let Some(gap) = self.gap
            && let Err(e) = db::gaps::clear(&d.db, &gap).await
        {
            tracing::warn!(error = %e, "could not clear an announced gap; it will be announced again");
        }
        d.deliveries.record(self.user_id, self.messages);
        in_flight >= d.broker.hub().in_flight_limit()
    }
}

/// Of the events handed to `user_id`: records each one's delivery latency and returns the chat
/// messages addressed to that user (to be marked delivered once handed over).
fn handed_over<'a>(user_id: i64, events: impl Iterator<Item = Received<'a>>) -> Vec<i64> {
    let now = unix_now();
    let mut messages = Vec::new();
    for e in events {
        metrics::histogram!(names::DELIVERY_LATENCY).record((now - e.timestamp).max(0.0));
        if let Some(mark) = e.mark
            && mark.receiver_id == user_id
        {
            messages.push(mark.message_id);
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::Ack;
    use crate::app::testing::{Parts, next_events};

    #[tokio::test]
    async fn events_not_handed_over_stay_in_the_postbox_and_handed_over_ones_do_not() {
        let parts = Parts::start().await;
        let (chat, delivery) = (parts.chat(), parts.delivery());
        let alice = parts.user("alice").await;
        let bob = parts.user("bob").await;
        let mut session = delivery.open(&bob, None, Ack::OnHandOver).await.unwrap();
        chat.send(&alice.user, bob.user.id, "one".into(), None)
            .await
            .unwrap();
        // Taken, but the answer never reached the client: dropped, not handed over.
        let first = next_events(&mut session, false).await;
        assert_eq!(first.len(), 1, "{first:?}");
        drop(session);

        let mut again = delivery.open(&bob, None, Ack::OnHandOver).await.unwrap();
        let second = next_events(&mut again, true).await;
        assert_eq!(
            second.iter().map(|e| &e.id).collect::<Vec<_>>(),
            [&first[0].id],
            "the same event, same id"
        );
        drop(again);

        let mut third = delivery.open(&bob, None, Ack::OnHandOver).await.unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
        let batch = third.next(deadline).await.unwrap();
        assert!(batch.is_empty(), "acknowledged once handed over");
    }

    #[tokio::test]
    async fn a_users_polls_and_streams_are_capped() {
        let parts = Parts::start().await;
        let delivery = parts.delivery();
        let bob = parts.user("bob").await;
        let cap = parts.config.max_polls_per_user as usize;
        let mut open = Vec::new();
        for _ in 0..cap {
            open.push(delivery.open(&bob, None, Ack::OnHandOver).await.unwrap());
        }
        let beyond = delivery.open(&bob, None, Ack::OnHandOver).await;
        assert!(
            matches!(beyond, Err(super::DeliveryError::TooMany(_))),
            "{:?}",
            beyond.err()
        );
        open.pop();
        assert!(delivery.open(&bob, None, Ack::OnHandOver).await.is_ok());
    }
}
