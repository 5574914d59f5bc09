//! Online presence: a user is online while they poll.
//!
//! The truth lives in the database (`users.online_until`, `users.is_online`), so several Postbox instances
//! agree. This module throttles the writes (a client polling every few seconds costs one UPDATE per
//! [`Presence::refresh_every`], not one per poll) and announces **transitions** only: `is_online` is
//! flipped with a conditional UPDATE, so exactly one instance sees each change and sends one `presence`
//! event to each contact (users sharing a conversation). Going offline happens on `poll/disconnect/` or,
//! when a client just stops polling, in the sweeper ([`Presence::run_sweeper`]) once the window lapsed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use sea_orm::DatabaseConnection;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::Broker,
    db::{self, DbError, entities::user},
    events::{Event, kind, rfc3339},
};

/// How long a presence notice stays deliverable.
const PRESENCE_TTL: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Presence {
    window: Duration,
    last_write: Arc<Mutex<HashMap<i64, Instant>>>,
}

impl Presence {
    pub fn new(window: Duration) -> Self {
        Presence {
            window,
            last_write: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// How often a polling user's `online_until` is pushed forward.
    pub fn refresh_every(&self) -> Duration {
        (self.window / 10).max(Duration::from_secs(1))
    }

    /// Records that a user polled; announces the user to their contacts if they just came online.
    pub async fn seen(
        &self,
        db: &DatabaseConnection,
        broker: &Broker,
        user: &user::Model,
    ) -> Result<(), DbError> {
        {
            let mut map = self.last_write.lock().expect("presence lock");
            if map
                .get(&user.id)
                .is_some_and(|t| t.elapsed() < self.refresh_every())
            {
                return Ok(());
            }
            map.insert(user.id, Instant::now());
            if map.len() > 100_000 {
                let horizon = self.window;
                map.retain(|_, t| t.elapsed() < horizon);
            }
        }
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(self.window).unwrap_or(chrono::Duration::MAX);
        match db::users::mark_online(db, user.id, now, until).await {
            Ok(true) => {
                announce(db.clone(), broker.clone(), user.id, true);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => {
                self.last_write
                    .lock()
                    .expect("presence lock")
                    .remove(&user.id);
                Err(e)
            }
        }
    }

    /// Records that a user went offline (disconnect) and announces it if they were online.
    pub async fn offline(
        &self,
        db: &DatabaseConnection,
        broker: &Broker,
        user_id: i64,
    ) -> Result<(), DbError> {
        self.last_write
            .lock()
            .expect("presence lock")
            .remove(&user_id);
        if db::users::mark_offline_flip(db, user_id).await? {
            announce(db.clone(), broker.clone(), user_id, false);
        }
        Ok(())
    }

    /// Flips users whose window lapsed to offline and announces them, every `period`, until `shutdown`.
    pub async fn run_sweeper(
        db: DatabaseConnection,
        broker: Broker,
        shutdown: CancellationToken,
        period: Duration,
    ) {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => match db::users::expire_online(&db, Utc::now()).await {
                    Ok(ids) => {
                        for id in ids {
                            announce(db.clone(), broker.clone(), id, false);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "presence sweeper cannot read users"),
                },
            }
        }
        tracing::debug!("presence sweeper stopped");
    }
}

/// Announcements running at once; the others wait, small, for their turn (a herd of users coming
/// online after a restart must not become thousands of concurrent queries).
static ANNOUNCERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

/// Sends a `presence` event about `user_id` to each of their contacts, in the background, best effort.
fn announce(db: DatabaseConnection, broker: Broker, user_id: i64, online: bool) {
    tokio::spawn(async move {
        let Ok(_turn) = ANNOUNCERS.acquire().await else {
            return;
        };
        // Boxed: the waiting task stays small; the large database future exists only while it runs.
        Box::pin(announce_now(db, broker, user_id, online)).await;
    });
}

async fn announce_now(db: DatabaseConnection, broker: Broker, user_id: i64, online: bool) {
    let user = match db::users::find(&db, user_id).await {
        Ok(Some(u)) => u,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, user_id, "cannot announce presence");
            return;
        }
    };
    let contacts = match db::chat::contacts(&db, user_id).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, user_id, "cannot announce presence");
            return;
        }
    };
    let event = Event::new(
        kind::PRESENCE,
        json!({
            "user_id": user.id,
            "username": user.username,
            "name": user.display_name,
            "online": online,
            "last_seen_at": user.last_seen_at.map(rfc3339),
        }),
    )
    .to_bytes();
    for contact in contacts {
        if let Err(e) = broker
            .publish_ephemeral(contact, &event, PRESENCE_TTL)
            .await
        {
            tracing::warn!(error = %e, user_id, contact, "cannot announce presence");
        }
    }
}
