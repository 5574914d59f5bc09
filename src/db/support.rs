//! Support chats and their messages: every SQL statement of the support desk.
//!
//! A message, the chat's new state and the outbox rows announcing them are written in one transaction
//! that first locks the chat's row (`SELECT ... FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE`
//! already serialises writers). Under that lock a message gets `created_at = max(now, previous + 1 ms)`
//! in whole milliseconds, so within a chat `created_at` is unique, strictly increasing and in commit
//! order: a reader that saw a message has seen every older one, and `created_at > since` with the
//! millisecond time a client echoes back neither repeats nor skips a message.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, Set,
};

use crate::events::{Audience, Envelope};

use super::{
    DbError,
    entities::{support_chat, support_message, user},
    outbox::{self, PendingEvent},
};

/// A chat whose conversation goes on.
pub const OPEN: &str = "open";
/// A chat an agent closed; the next message reopens it.
pub const CLOSED: &str = "closed";

/// Length of the last-message preview kept on a chat.
const PREVIEW_CHARS: usize = 100;

/// Events to store with a change, each for its audiences, in this order.
pub type Events = Vec<(Vec<Audience>, Envelope)>;

pub async fn find_chat(
    db: &DatabaseConnection,
    id: i64,
) -> Result<Option<support_chat::Model>, DbError> {
    Ok(support_chat::Entity::find_by_id(id).one(db).await?)
}

pub async fn find_chat_of_user(
    db: &DatabaseConnection,
    user_id: i64,
) -> Result<Option<support_chat::Model>, DbError> {
    Ok(support_chat::Entity::find()
        .filter(support_chat::Column::UserId.eq(user_id))
        .one(db)
        .await?)
}

/// The user's support chat, created (open) on first use. Race-free: insert-or-ignore on the unique
/// `user_id`, then read.
pub async fn chat_of_user(
    db: &DatabaseConnection,
    user_id: i64,
) -> Result<support_chat::Model, DbError> {
    if let Some(chat) = find_chat_of_user(db, user_id).await? {
        return Ok(chat);
    }
    let now = super::now_ms();
    support_chat::Entity::insert(support_chat::ActiveModel {
        user_id: Set(user_id),
        status: Set(OPEN.to_owned()),
        last_message_preview: Set(String::new()),
        created_at: Set(now),
        updated_at: Set(now),
        closed_at: Set(None),
        closed_by: Set(None),
        ..Default::default()
    })
    .on_conflict_do_nothing_on([support_chat::Column::UserId])
    .exec(db)
    .await?;
    find_chat_of_user(db, user_id)
        .await?
        .ok_or_else(|| DbError::Other(sea_orm::DbErr::RecordNotFound("support chat".into())))
}

/// Reads a chat inside a write transaction, locking its row until the commit.
async fn lock_chat(
    txn: &DatabaseTransaction,
    id: i64,
) -> Result<Option<support_chat::Model>, DbError> {
    Ok(support_chat::Entity::find_by_id(id)
        .lock_exclusive()
        .one(txn)
        .await?)
}

/// Adds each event to the outbox once per audience, inside the transaction.
async fn insert_events(
    txn: &DatabaseTransaction,
    events: Events,
) -> Result<Vec<PendingEvent>, DbError> {
    let mut pending = Vec::new();
    for (audiences, event) in events {
        pending.extend(outbox::insert(txn, audiences, event).await?);
    }
    Ok(pending)
}

/// What storing a message changed.
#[derive(Debug)]
pub struct Stored {
    pub message: support_message::Model,
    /// The chat after the message.
    pub chat: support_chat::Model,
    /// The chat was closed and the message reopened it.
    pub reopened: bool,
    pub pending: Vec<PendingEvent>,
}

/// Stores a message in chat `chat_id` (reopening it when closed) and, in the same transaction, the
/// events `events_for` builds from the result. `None` when the chat does not exist.
pub async fn store_message(
    db: &DatabaseConnection,
    chat_id: i64,
    sender_id: i64,
    is_from_admin: bool,
    text: String,
    events_for: impl FnOnce(&support_message::Model, &support_chat::Model, bool) -> Events,
) -> Result<Option<Stored>, DbError> {
    let txn = super::begin_write(db).await?;
    let Some(chat) = lock_chat(&txn, chat_id).await? else {
        return Ok(None);
    };
    let previous: Option<DateTime<Utc>> = support_message::Entity::find()
        .select_only()
        .column(support_message::Column::CreatedAt)
        .filter(support_message::Column::ChatId.eq(chat_id))
        .order_by_desc(support_message::Column::CreatedAt)
        .limit(1)
        .into_tuple()
        .one(&txn)
        .await?;
    let created_at = super::next_message_time(previous);
    let message = support_message::ActiveModel {
        id: Set(uuid::Uuid::now_v7().to_string()),
        chat_id: Set(chat_id),
        sender_id: Set(sender_id),
        is_from_admin: Set(is_from_admin),
        message: Set(text),
        created_at: Set(created_at),
    }
    .insert(&txn)
    .await?;
    let reopened = chat.status != OPEN;
    let updated_at = created_at.max(chat.updated_at);
    let mut active = chat.into_active_model();
    active.status = Set(OPEN.to_owned());
    active.last_message_preview = Set(message.message.chars().take(PREVIEW_CHARS).collect());
    active.updated_at = Set(updated_at);
    active.closed_at = Set(None);
    active.closed_by = Set(None);
    let chat = active.update(&txn).await?;
    let pending = insert_events(&txn, events_for(&message, &chat, reopened)).await?;
    txn.commit().await?;
    Ok(Some(Stored {
        message,
        chat,
        reopened,
        pending,
    }))
}

/// Whether the last `count` messages of chat `chat_id` all come from its user, none from an agent
/// (the user wrote that many in a row without an answer).
pub async fn unanswered_at_least(
    db: &DatabaseConnection,
    chat_id: i64,
    count: u64,
) -> Result<bool, DbError> {
    let latest: Vec<bool> = support_message::Entity::find()
        .select_only()
        .column(support_message::Column::IsFromAdmin)
        .filter(support_message::Column::ChatId.eq(chat_id))
        .order_by_desc(support_message::Column::CreatedAt)
        .limit(count)
        .into_tuple()
        .all(db)
        .await?;
    Ok(latest.len() as u64 >= count && !latest.contains(&true))
}

/// Closes chat `chat_id` (by agent `by`) and stores the events `events_for` builds. Closing a closed chat
/// changes nothing and stores no event. `None` when the chat does not exist; else the chat and the
/// events to publish.
pub async fn close(
    db: &DatabaseConnection,
    chat_id: i64,
    by: i64,
    events_for: impl FnOnce(&support_chat::Model) -> Events,
) -> Result<Option<(support_chat::Model, Vec<PendingEvent>)>, DbError> {
    let txn = super::begin_write(db).await?;
    let Some(chat) = lock_chat(&txn, chat_id).await? else {
        return Ok(None);
    };
    if chat.status == CLOSED {
        txn.commit().await?;
        return Ok(Some((chat, Vec::new())));
    }
    let now = super::now_ms().max(chat.updated_at);
    let mut active = chat.into_active_model();
    active.status = Set(CLOSED.to_owned());
    active.updated_at = Set(now);
    active.closed_at = Set(Some(now));
    active.closed_by = Set(Some(by));
    let chat = active.update(&txn).await?;
    let pending = insert_events(&txn, events_for(&chat)).await?;
    txn.commit().await?;
    Ok(Some((chat, pending)))
}

/// Messages of a chat in chronological order, at most `limit`, and whether more exist beyond them. With
/// `since`: the oldest ones newer than it (catch up by passing the last `created_at` again); without:
/// the newest ones.
pub async fn messages(
    db: &DatabaseConnection,
    chat_id: i64,
    since: Option<DateTime<Utc>>,
    limit: u64,
) -> Result<(Vec<support_message::Model>, bool), DbError> {
    let base = support_message::Entity::find().filter(support_message::Column::ChatId.eq(chat_id));
    let query = match since {
        Some(t) => base
            .filter(support_message::Column::CreatedAt.gt(t))
            .order_by_asc(support_message::Column::CreatedAt)
            .order_by_asc(support_message::Column::Id),
        None => base
            .order_by_desc(support_message::Column::CreatedAt)
            .order_by_desc(support_message::Column::Id),
    };
    let mut rows = query.limit(limit + 1).all(db).await?;
    let has_more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    if since.is_none() {
        rows.reverse();
    }
    Ok((rows, has_more))
}

/// Users by id (senders, chat owners).
pub async fn users(
    db: &DatabaseConnection,
    ids: impl IntoIterator<Item = i64>,
) -> Result<HashMap<i64, user::Model>, DbError> {
    let mut ids: Vec<i64> = ids.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(user::Entity::find()
        .filter(user::Column::Id.is_in(ids))
        .all(db)
        .await?
        .into_iter()
        .map(|u| (u.id, u))
        .collect())
}

/// Chats (optionally only those with `status`), most recently updated first, at most `limit`.
pub async fn list_chats(
    db: &DatabaseConnection,
    status: Option<&str>,
    limit: u64,
) -> Result<Vec<support_chat::Model>, DbError> {
    let mut query = support_chat::Entity::find();
    if let Some(s) = status {
        query = query.filter(support_chat::Column::Status.eq(s));
    }
    Ok(query
        .order_by_desc(support_chat::Column::UpdatedAt)
        .order_by_desc(support_chat::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}
