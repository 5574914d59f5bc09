//! Delivered marks: `delivered_at` on the chat messages a client was handed, and the `delivered` notice
//! (✓✓) to their senders.

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;

use crate::{
    broker::Broker,
    db::{self, batch::Batcher, entities::chat_message},
    events::{Envelope, data::Delivered, rfc3339},
};

/// Records that messages were handed to their receivers' clients: sets `delivered_at` and tells each
/// sender with a `delivered` event (best effort). The marks of many polls are written together, in one
/// statement, by one task (see [`crate::db::batch`]). Cheap to clone.
#[derive(Clone)]
pub struct Deliveries {
    writes: Batcher<(i64, Vec<i64>)>,
}

impl Deliveries {
    /// Starts the writer; needs a Tokio runtime.
    pub fn new(db: DatabaseConnection, broker: Broker, notice_ttl: std::time::Duration) -> Self {
        let writes = Batcher::spawn(std::time::Duration::ZERO, move |handed| {
            let (db, broker) = (db.clone(), broker.clone());
            async move {
                let now = Utc::now();
                match db::chat::mark_delivered(&db, &handed, now).await {
                    Ok(marked) if !marked.is_empty() => {
                        tokio::spawn(announce_delivered(broker, marked, now, notice_ttl));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, polls = handed.len(), "could not record delivery");
                    }
                }
            }
        });
        Deliveries { writes }
    }

    /// Records, soon, that `receiver_id`'s client got these messages (ids of messages to others are
    /// ignored).
    pub fn record(&self, receiver_id: i64, message_ids: Vec<i64>) {
        if !message_ids.is_empty() {
            self.writes.queue((receiver_id, message_ids));
        }
    }
}

/// Tells each sender which of their messages were delivered: one `delivered` event per sender,
/// conversation and receiver.
async fn announce_delivered(
    broker: Broker,
    marked: Vec<chat_message::Model>,
    now: DateTime<Utc>,
    ttl: std::time::Duration,
) {
    let mut by_sender: std::collections::BTreeMap<(i64, i64, i64), Vec<i64>> = Default::default();
    for m in &marked {
        by_sender
            .entry((m.sender_id, m.conversation_id, m.receiver_id))
            .or_default()
            .push(m.id);
    }
    let notices = by_sender
        .into_iter()
        .map(|((sender_id, conversation_id, receiver_id), ids)| {
            let event = Envelope::of(&Delivered {
                conversation_id,
                message_ids: ids,
                receiver_id,
                delivered_at: rfc3339(now),
            });
            let broker = broker.clone();
            async move {
                if let Err(e) = broker.publish_ephemeral(sender_id, &event, ttl).await {
                    tracing::warn!(error = %e, sender_id, "could not publish a delivery notice");
                }
            }
        });
    futures_util::future::join_all(notices).await;
}
