//! Registered clients: each tab or device of a user can have its own postbox, so every client receives
//! every event (two tabs sharing the per-user queue would split the events between them).
//!
//! A client registers with `POST poll/register/` or implicitly on its first poll with `?client_id=`.
//! Each user may have at most `max_clients_per_user` clients; registering one more evicts the least
//! recently seen (its queue is deleted). Client queues also expire with `x-expires` when unused.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sea_orm::DatabaseConnection;

use crate::{
    accounts::group_keys,
    broker::{Broker, Postbox},
    db::{self, DbError, entities::user},
    validate::Invalid,
};

/// How often a polling client's `last_seen_at` is written.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Known (user, client) pairs with the time their row was last written, to skip the database on most
/// polls.
#[derive(Clone, Default)]
pub struct Clients {
    seen: Arc<Mutex<HashMap<(i64, String), Instant>>>,
}

/// Checks a client id: 1 to 64 ASCII letters, digits, `-` or `_`.
pub fn validate_client_id(id: &str) -> Result<(), Invalid> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Invalid::new(
            "client_id",
            "must be 1 to 64 ASCII letters, digits, '-' or '_'",
        ));
    }
    Ok(())
}

impl Clients {
    /// Registers (or refreshes) a client of `user` and returns its postbox, and whether the client was
    /// registered before; evicts the least recently seen client beyond `max_clients`. The client id
    /// must be valid ([`validate_client_id`]).
    pub async fn register(
        &self,
        db: &DatabaseConnection,
        broker: &Broker,
        max_clients: usize,
        user: &user::Model,
        client_id: &str,
    ) -> Result<(Postbox, bool), DbError> {
        let user_id = user.id;
        let key = (user_id, client_id.to_owned());
        let fresh = self
            .seen
            .lock()
            .expect("clients lock")
            .get(&key)
            .is_some_and(|t| t.elapsed() < TOUCH_EVERY);
        let postbox = Postbox::client(user_id, client_id).with_groups(groups_of(user));
        if fresh {
            return Ok((postbox, true));
        }
        let (existed, evicted) = db::clients::register(db, user_id, client_id, max_clients).await?;
        self.seen
            .lock()
            .expect("clients lock")
            .insert(key, Instant::now());
        for old in evicted {
            self.seen
                .lock()
                .expect("clients lock")
                .remove(&(user_id, old.clone()));
            let old_postbox = Postbox::client(user_id, &old);
            let queue = broker.topology().queue(&old_postbox);
            broker.hub().release(&queue);
            if let Err(e) = broker.delete_queue(&queue).await {
                tracing::warn!(error = %e, %queue, "could not delete an evicted client's postbox");
            }
        }
        Ok((postbox, existed))
    }
}

/// The group routing keys a user's postboxes are bound to (college, staff).
pub fn groups_of(user: &user::Model) -> Vec<String> {
    group_keys(user.college_id, &user.role)
}
