//! Gaps are announced, never silent.
//!
//! Every postbox dead-letters what RabbitMQ drops from it: the oldest event when a 101st arrives
//! (`x-death` reason `maxlen`) and events past their TTL (`expired`). [`crate::broker::dead_letters::run`] reads
//! the dead-letter queue (each instance competes for it), records the loss per postbox in the
//! database and flags the queue in the hub. A postbox whose client registered before but whose queue
//! vanished (deleted by an operator, evicted) records a `queue_deleted` gap when polled.
//!
//! The next poll of a postbox with a gap answers at once with a `resync` event first:
//! `{"reason": "maxlen,expired", "lost": 50, "lost_unknown": false, "since": <timestamp>,
//! "seq_from": 41, "seq_to": 90}`: the client fetches the range from `GET poll/missed/?after=40`, or,
//! when that is no longer kept (or the loss has no range), reloads what it shows from the REST API;
//! `"lost_unnumbered": 3` says that lost events without a number were among them (reload for those). The gap is cleared
//! once that answer was handed over. Ephemeral events (typing, presence, delivery notices) expire by
//! design and are not gaps.

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{
        Broker,
        dead_letters::{self, DeadLetter},
    },
    db::{self, DbError, entities::gap},
    events::{Envelope, data::Resync},
    telemetry::names,
};

/// The `resync` event announcing a gap.
pub fn resync_event(gap: &gap::Model) -> Envelope {
    Envelope::of(&Resync {
        reason: gap.reasons.clone(),
        lost: gap.lost,
        lost_unknown: gap.unknown > 0,
        since: gap.since,
        seq_from: gap.seq_from,
        seq_to: gap.seq_to,
        lost_unnumbered: (gap.unnumbered > 0).then_some(gap.unnumbered),
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

/// Records the gaps RabbitMQ's dead letters announce, until `shutdown` (each instance competes for
/// the dead-letter queue): one lost event of its postbox each, and the postbox's next poll looks its
/// gap up. Ephemeral events expire by design and are not gaps.
pub async fn record_dead_letters(
    db: DatabaseConnection,
    broker: Broker,
    shutdown: CancellationToken,
) {
    let hub = broker.hub().clone();
    dead_letters::run(
        broker,
        move |letter: DeadLetter| {
            let (db, hub) = (db.clone(), hub.clone());
            async move {
                if letter.ephemeral {
                    return true;
                }
                match db::gaps::record(&db, &letter.queue, 1, letter.since, letter.seq, &letter.reason)
                    .await {
                    Ok(()) => {
                        metrics::counter!(names::EVENTS_DROPPED, "reason" => letter.reason.clone())
                            .increment(1);
                        hub.flag_gap(&letter.queue);
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, queue = %letter.queue, "cannot record a gap; retrying");
                        false
                    }
                }
            }
        },
        shutdown,
    )
    .await;
}
