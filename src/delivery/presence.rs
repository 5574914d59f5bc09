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
use tokio_util::sync::CancellationToken;

use crate::{
    broker::Broker,
    db::{self, DbError, batch::Batcher},
    events::{Envelope, data, rfc3339},
    limits::throttle::Throttle,
};

/// How long refreshes of `online_until` wait to be written together (10 000 users polling write about
/// 300 refreshes a second with the default window; one statement each was half of an idle server's CPU).
const REFRESH_GATHER: Duration = Duration::from_millis(100);

/// How long a presence notice stays deliverable.
const PRESENCE_TTL: Duration = Duration::from_secs(60);

/// At most one presence notice per user and this period reaches their contacts; a change meanwhile is
/// announced when it ends (a user flapping online and offline, with polls and disconnects in a loop,
/// would otherwise fill every contact's postbox).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// Who is online: throttled, grouped writes of the users who poll, and announcements of transitions.
/// Cheap to clone.
#[derive(Clone)]
pub struct Presence {
    window: Duration,
    last_write: Arc<Mutex<HashMap<i64, Instant>>>,
    /// Refreshes of many polls written together (see [`crate::db::batch`]).
    writes: Batcher<i64>,
    announcements: Announcements,
    db: DatabaseConnection,
}

impl Presence {
    /// Starts the presence writer; needs a Tokio runtime.
    pub fn new(window: Duration, db: DatabaseConnection, broker: Broker) -> Self {
        let last_write: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
        let announcements = Announcements::new(db.clone(), broker);
        let writes = Batcher::spawn(REFRESH_GATHER, {
            let (announcements, last_write) = (announcements.clone(), last_write.clone());
            let db = db.clone();
            move |mut ids: Vec<i64>| {
                let (db, announcements, last_write) =
                    (db.clone(), announcements.clone(), last_write.clone());
                async move {
                    ids.sort_unstable();
                    ids.dedup();
                    let now = Utc::now();
                    let until =
                        now + chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
                    match db::users::mark_online(&db, &ids, now, until).await {
                        Ok(flipped) => {
                            for id in flipped {
                                announcements.announce(id, true);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, users = ids.len(), "could not record presence; the next polls try again");
                            let mut map = last_write.lock().expect("presence lock");
                            for id in &ids {
                                map.remove(id);
                            }
                        }
                    }
                }
            }
        });
        Presence {
            window,
            last_write,
            writes,
            announcements,
            db,
        }
    }

    /// How often a polling user's `online_until` is pushed forward.
    pub fn refresh_every(&self) -> Duration {
        (self.window / 10).max(Duration::from_secs(1))
    }

    /// Records that a user polled (at most once per [`Self::refresh_every`]; the polls of many users
    /// are written together) and announces the user to their contacts if they just came online. The
    /// first poll this instance sees of a user returns once recorded; later refreshes do not wait. A
    /// failure is logged and retried by the user's next poll.
    pub async fn seen(&self, user_id: i64) {
        {
            let mut map = self.last_write.lock().expect("presence lock");
            if map
                .get(&user_id)
                .is_some_and(|t| t.elapsed() < self.refresh_every())
            {
                return;
            }
            let first = map.insert(user_id, Instant::now()).is_none();
            if map.len() > 100_000 {
                let horizon = self.window;
                map.retain(|_, t| t.elapsed() < horizon);
            }
            if !first {
                // A refresh of a user this instance saw lately: nobody waits for it.
                drop(map);
                self.writes.queue(user_id);
                return;
            }
        }
        // First sight (possibly coming online): recorded before the poll goes on.
        if self.writes.submit(user_id).await.is_err() {
            tracing::debug!(user_id, "presence not recorded: shutting down");
        }
    }

    /// Records that a user went offline (disconnect) and announces it if they were online.
    pub async fn offline(&self, user_id: i64) -> Result<(), DbError> {
        self.last_write
            .lock()
            .expect("presence lock")
            .remove(&user_id);
        if db::users::mark_offline_flip(&self.db, user_id).await? {
            self.announcements.announce(user_id, false);
        }
        Ok(())
    }

    /// Flips users whose window lapsed to offline and announces them, every `period`, until `shutdown`.
    pub async fn run_sweeper(self, shutdown: CancellationToken, period: Duration) {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => match db::users::expire_online(&self.db, Utc::now()).await {
                    Ok(ids) => {
                        for id in ids {
                            self.announcements.announce(id, false);
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

/// Presence notices to contacts, throttled per user ([`ANNOUNCE_EVERY`]). Cheap to clone.
#[derive(Clone)]
struct Announcements {
    throttle: Throttle<i64, bool>,
    db: DatabaseConnection,
    broker: Broker,
}

impl Announcements {
    fn new(db: DatabaseConnection, broker: Broker) -> Self {
        Announcements {
            throttle: Throttle::new(ANNOUNCE_EVERY),
            db,
            broker,
        }
    }

    /// Sends a `presence` event about `user_id` to each of their contacts, in the background, best
    /// effort: now, or when the user's throttle period ends (with the latest state by then).
    fn announce(&self, user_id: i64, online: bool) {
        let (throttle, db, broker) = (self.throttle.clone(), self.db.clone(), self.broker.clone());
        tokio::spawn(async move {
            throttle
                .send(user_id, online, move |online| async move {
                    let Ok(_turn) = ANNOUNCERS.acquire().await else {
                        return;
                    };
                    // Boxed: the waiting task stays small; the large database future exists only
                    // while it runs.
                    Box::pin(announce_now(db, broker, user_id, online)).await;
                })
                .await;
        });
    }
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
    let event = Envelope::of(&data::Presence {
        user_id: user.id,
        username: user.username,
        name: user.display_name,
        online,
        last_seen_at: user.last_seen_at.map(rfc3339),
    });
    for contact in contacts {
        if let Err(e) = broker
            .publish_ephemeral(contact, &event, PRESENCE_TTL)
            .await
        {
            tracing::warn!(error = %e, user_id, contact, "cannot announce presence");
        }
    }
}
