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

use crate::{broker::Postbox, db, error::AppError, state::AppState};

/// How often a polling client's `last_seen_at` is written.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Known (user, client) pairs with the time their row was last written, to skip the database on most
/// polls.
#[derive(Clone, Default)]
pub struct Clients {
    seen: Arc<Mutex<HashMap<(i64, String), Instant>>>,
}

/// Checks a client id: 1 to 64 ASCII letters, digits, `-` or `_`.
pub fn validate_client_id(id: &str) -> Result<(), AppError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(AppError::field(
            "client_id",
            "must be 1 to 64 ASCII letters, digits, '-' or '_'",
        ));
    }
    Ok(())
}

impl Clients {
    /// Registers (or refreshes) a client of `user_id` and returns its postbox, and whether the client
    /// was registered before; evicts the least recently seen client beyond the cap.
    pub async fn register(
        &self,
        state: &AppState,
        user: &crate::db::entities::user::Model,
        client_id: &str,
    ) -> Result<(Postbox, bool), AppError> {
        let user_id = user.id;
        validate_client_id(client_id)?;
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
        let (existed, evicted) = db::clients::register(
            &state.db,
            user_id,
            client_id,
            state.config.max_clients_per_user,
        )
        .await?;
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
            let queue = state.broker.topology().queue(&old_postbox);
            state.broker.hub().release(&queue);
            if let Err(e) = state.broker.delete_queue(&queue).await {
                tracing::warn!(error = %e, %queue, "could not delete an evicted client's postbox");
            }
        }
        Ok((postbox, existed))
    }
}

/// The group routing keys a user's postboxes are bound to (college, staff).
pub fn groups_of(user: &crate::db::entities::user::Model) -> Vec<String> {
    group_keys(user.college_id, &user.role)
}

/// The group routing keys of a user in `college_id` with `role`.
pub fn group_keys(college_id: Option<i64>, role: &str) -> Vec<String> {
    let staff = crate::accounts::tokens::Role::parse(role)
        .is_some_and(|r| r >= crate::accounts::tokens::Role::Staff);
    crate::broker::group_routing_keys(college_id, staff)
}

/// A postbox opened for a poll or a stream: which one, its queue, and the gap to announce first.
pub struct Opened {
    pub postbox: Postbox,
    pub gap: Option<crate::db::entities::gap::Model>,
}

/// Opens the postbox a poll or an SSE stream reads: the client's own (registering it) or the user's
/// shared one. Records a `queue_deleted` gap when a known client's queue vanished, finds the gap to
/// announce, and records the user's presence.
pub async fn open(
    state: &AppState,
    user: &crate::db::entities::user::Model,
    client_id: Option<&str>,
) -> Result<Opened, AppError> {
    let (postbox, registered_before) = match client_id {
        Some(client) => state.clients.register(state, user, client).await?,
        None => (Postbox::user(user.id).with_groups(groups_of(user)), false),
    };
    let queue = state.broker.topology().queue(&postbox);
    // A known client whose postbox vanished (deleted, evicted) lost what it held: record the gap
    // before the queue is declared again.
    if registered_before
        && !state.broker.hub().has_slot(&queue)
        && !state.broker.queue_exists(&queue).await?
    {
        db::gaps::record(&state.db, &queue, 0, None, "queue_deleted").await?;
    }
    let gap = crate::delivery::gaps::pending(&state.gap_lookups, &state.broker, &queue).await?;
    state.presence.seen(user.id).await;
    Ok(Opened { postbox, gap })
}
