//! Conversations and chat messages.
//!
//! A message is stored under its conversation's row lock (`SELECT ... FOR UPDATE` on PostgreSQL;
//! SQLite's write transaction already serialises writers) with `created_at` from
//! [`super::next_message_time`]: unique, strictly increasing and in id order within the conversation, in
//! whole milliseconds, so seed 003's `since=<the last timestamp I have>` is exact.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, ExprTrait,
    QueryFilter, QuerySelect, Set, sea_query::Expr,
};

use super::{
    DbError,
    entities::{chat_message, conversation, user},
    outbox::{self, PendingEvent},
};
use crate::events::{Audience, Envelope};

/// Length of the last-message preview kept on a conversation.
const PREVIEW_CHARS: usize = 100;

/// Conversation ids by user pair, so a send skips looking its conversation up. Conversations are never
/// deleted, so a remembered id stays right; only committed ones are remembered. One per process and
/// database (kept in the application state). Bounded: past the cap it starts over.
#[derive(Clone, Default)]
pub struct ConversationIds {
    ids: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(i64, i64), i64>>>,
}

/// Pairs remembered at most.
const CONVERSATION_IDS_MAX: usize = 1_000_000;

impl ConversationIds {
    fn get(&self, pair: (i64, i64)) -> Option<i64> {
        self.ids
            .lock()
            .expect("conversation ids lock")
            .get(&pair)
            .copied()
    }

    fn remember(&self, pair: (i64, i64), id: i64) {
        let mut ids = self.ids.lock().expect("conversation ids lock");
        if ids.len() >= CONVERSATION_IDS_MAX {
            ids.clear();
        }
        ids.insert(pair, id);
    }
}

/// How a message's event is built once the message has its id: routing keys and payload.
pub type EventFor = Box<dyn Fn(&chat_message::Model) -> (Vec<Audience>, Envelope) + Send + Sync>;

/// A chat message to store, and how to build the event announcing it.
pub struct NewMessage {
    pub sender_id: i64,
    pub receiver_id: i64,
    pub text: String,
    /// An attachment already stored.
    pub attachment: Option<NewAttachment>,
    pub event_for: EventFor,
}

/// A stored attachment to link to a new message.
#[derive(Debug, Clone)]
pub struct NewAttachment {
    /// Storage key, returned by the attachment store.
    pub key: String,
    /// `image`, `video` or `document`.
    pub kind: String,
    /// Bytes (counted by the sender's quota).
    pub size: i64,
}

/// A stored message and its events, to publish after the commit.
pub type StoredMessage = (chat_message::Model, Vec<PendingEvent>);

/// Stores messages and, in the same transaction, the events announcing them (outbox rows): either all
/// are stored or none (group commit: one transaction for the messages of many requests). Each
/// conversation's preview and the receiver's unread count are updated atomically (`unread = unread + 1`
/// in SQL, no read-modify-write). Results are in the order of `messages`.
pub async fn store_messages(
    db: &DatabaseConnection,
    conversations: &ConversationIds,
    messages: &[NewMessage],
) -> Result<Vec<StoredMessage>, DbError> {
    let txn = super::begin_write(db).await?;
    let mut stored = Vec::with_capacity(messages.len());
    let mut pairs = Vec::with_capacity(messages.len());
    for m in messages {
        let (pair, conversation_id, message) = store_one(&txn, conversations, m).await?;
        pairs.push((pair, conversation_id));
        stored.push(message);
    }
    txn.commit().await?;
    for (pair, id) in pairs {
        conversations.remember(pair, id);
    }
    Ok(stored)
}

/// One message of [`store_messages`], inside its transaction; also returns its user pair and
/// conversation id (remembered once committed).
async fn store_one<C: ConnectionTrait>(
    txn: &C,
    conversations: &ConversationIds,
    m: &NewMessage,
) -> Result<((i64, i64), i64, StoredMessage), DbError> {
    let (sender_id, receiver_id) = (m.sender_id, m.receiver_id);
    let pair = (
        Ord::min(sender_id, receiver_id),
        Ord::max(sender_id, receiver_id),
    );
    let conversation_id = match conversations.get(pair) {
        Some(id) => id,
        None => conversation_for(txn, sender_id, receiver_id).await?.id,
    };
    let previous: Option<Option<DateTime<Utc>>> = conversation::Entity::find_by_id(conversation_id)
        .select_only()
        .column(conversation::Column::LastMessageAt)
        .lock_exclusive()
        .into_tuple()
        .one(txn)
        .await?;
    let now = super::next_message_time(previous.flatten());
    let msg = chat_message::ActiveModel {
        conversation_id: Set(conversation_id),
        sender_id: Set(sender_id),
        receiver_id: Set(receiver_id),
        message: Set(m.text.clone()),
        attachment: Set(m.attachment.as_ref().map(|a| a.key.clone())),
        attachment_type: Set(m.attachment.as_ref().map(|a| a.kind.clone())),
        attachment_size: Set(m.attachment.as_ref().map(|a| a.size)),
        created_at: Set(now),
        delivered_at: Set(None),
        read_at: Set(None),
        ..Default::default()
    }
    .insert(txn)
    .await?;
    let preview: String = msg.message.chars().take(PREVIEW_CHARS).collect();
    // The pair's first user is the conversation's `user1` (the lower id, see `conversation_for`).
    let unread_col = unread_column(pair.0, receiver_id);
    conversation::Entity::update_many()
        .col_expr(conversation::Column::LastMessageId, Expr::value(msg.id))
        .col_expr(conversation::Column::LastMessageBy, Expr::value(sender_id))
        .col_expr(
            conversation::Column::LastMessagePreview,
            Expr::value(preview),
        )
        .col_expr(conversation::Column::LastMessageAt, Expr::value(now))
        .col_expr(unread_col, Expr::col(unread_col).add(1))
        .filter(conversation::Column::Id.eq(conversation_id))
        .exec(txn)
        .await?;
    let (audiences, event) = (m.event_for)(&msg);
    let pending = outbox::insert(txn, audiences, event).await?;
    Ok((pair, conversation_id, (msg, pending)))
}

/// The conversation of a pair of users, created on first use (race-free: insert-or-ignore on the unique
/// pair, then read).
async fn conversation_for<C: ConnectionTrait>(
    db: &C,
    a: i64,
    b: i64,
) -> Result<conversation::Model, DbError> {
    let (user1, user2) = if a < b { (a, b) } else { (b, a) };
    let find = || {
        conversation::Entity::find()
            .filter(conversation::Column::User1Id.eq(user1))
            .filter(conversation::Column::User2Id.eq(user2))
    };
    if let Some(c) = find().one(db).await? {
        return Ok(c);
    }
    let insert = conversation::Entity::insert(conversation::ActiveModel {
        user1_id: Set(user1),
        user2_id: Set(user2),
        last_message_preview: Set(String::new()),
        user1_unread: Set(0),
        user2_unread: Set(0),
        created_at: Set(Utc::now()),
        ..Default::default()
    })
    .on_conflict_do_nothing_on([conversation::Column::User1Id, conversation::Column::User2Id])
    .exec(db)
    .await;
    if let Err(e) = insert {
        return Err(e.into());
    }
    find()
        .one(db)
        .await?
        .ok_or_else(|| DbError::Other(sea_orm::DbErr::RecordNotFound("conversation".into())))
}

/// The conversation between two users, if they ever exchanged a message.
pub async fn find_conversation(
    db: &DatabaseConnection,
    a: i64,
    b: i64,
) -> Result<Option<conversation::Model>, DbError> {
    let (user1, user2) = if a < b { (a, b) } else { (b, a) };
    Ok(conversation::Entity::find()
        .filter(conversation::Column::User1Id.eq(user1))
        .filter(conversation::Column::User2Id.eq(user2))
        .one(db)
        .await?)
}

pub async fn find_conversation_by_id(
    db: &DatabaseConnection,
    id: i64,
) -> Result<Option<conversation::Model>, DbError> {
    Ok(conversation::Entity::find_by_id(id).one(db).await?)
}

/// A user's conversations, most recent activity first, each with the other participant.
pub async fn list_conversations(
    db: &DatabaseConnection,
    user_id: i64,
    limit: u64,
) -> Result<Vec<(conversation::Model, user::Model)>, DbError> {
    use sea_orm::{Condition, QueryOrder, QuerySelect};
    let conversations = conversation::Entity::find()
        .filter(
            Condition::any()
                .add(conversation::Column::User1Id.eq(user_id))
                .add(conversation::Column::User2Id.eq(user_id)),
        )
        .order_by_desc(conversation::Column::LastMessageId)
        .limit(limit)
        .all(db)
        .await?;
    let others: Vec<i64> = conversations
        .iter()
        .map(|c| other_party(c, user_id))
        .collect();
    let users: std::collections::HashMap<i64, user::Model> = user::Entity::find()
        .filter(user::Column::Id.is_in(others))
        .all(db)
        .await?
        .into_iter()
        .map(|u| (u.id, u))
        .collect();
    Ok(conversations
        .into_iter()
        .filter_map(|c| {
            let other = users.get(&other_party(&c, user_id))?.clone();
            Some((c, other))
        })
        .collect())
}

/// The participant of a conversation who is not `user_id`.
pub fn other_party(c: &conversation::Model, user_id: i64) -> i64 {
    if c.user1_id == user_id {
        c.user2_id
    } else {
        c.user1_id
    }
}

/// The column holding `user_id`'s unread count in a conversation whose first user is `user1_id`.
fn unread_column(user1_id: i64, user_id: i64) -> conversation::Column {
    if user1_id == user_id {
        conversation::Column::User1Unread
    } else {
        conversation::Column::User2Unread
    }
}

/// The caller's unread count in a conversation.
pub fn unread_for(c: &conversation::Model, user_id: i64) -> i64 {
    if c.user1_id == user_id {
        c.user1_unread
    } else {
        c.user2_unread
    }
}

/// Where a history page starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cursor {
    /// The newest page.
    Latest,
    /// Older than this message id (infinite scroll backwards).
    Before(i64),
    /// Newer than this message id (catch-up forwards).
    SinceId(i64),
    /// Newer than this time (seed 003's `since`).
    SinceTime(chrono::DateTime<Utc>),
    /// Newer than `since` (an id or a time) and older than the `before` id, oldest first.
    Between {
        since_id: Option<i64>,
        since_time: Option<chrono::DateTime<Utc>>,
        before: i64,
    },
}

/// One page of a conversation, in chronological order, and whether more lies beyond it (older messages
/// for `Latest`/`Before`, newer ones for `Since*`). Paging by id keeps pages stable under inserts.
pub async fn history(
    db: &DatabaseConnection,
    conversation_id: i64,
    cursor: Cursor,
    limit: u64,
) -> Result<(Vec<chat_message::Model>, bool), DbError> {
    use sea_orm::{QueryOrder, QuerySelect};
    let base = chat_message::Entity::find()
        .filter(chat_message::Column::ConversationId.eq(conversation_id));
    let (query, backwards) = match cursor {
        Cursor::Latest => (base.order_by_desc(chat_message::Column::Id), true),
        Cursor::Before(id) => (
            base.filter(chat_message::Column::Id.lt(id))
                .order_by_desc(chat_message::Column::Id),
            true,
        ),
        Cursor::SinceId(id) => (
            base.filter(chat_message::Column::Id.gt(id))
                .order_by_asc(chat_message::Column::Id),
            false,
        ),
        Cursor::SinceTime(t) => (
            base.filter(chat_message::Column::CreatedAt.gt(t))
                .order_by_asc(chat_message::Column::Id),
            false,
        ),
        Cursor::Between {
            since_id,
            since_time,
            before,
        } => {
            let mut bounded = base.filter(chat_message::Column::Id.lt(before));
            if let Some(id) = since_id {
                bounded = bounded.filter(chat_message::Column::Id.gt(id));
            }
            if let Some(t) = since_time {
                bounded = bounded.filter(chat_message::Column::CreatedAt.gt(t));
            }
            (bounded.order_by_asc(chat_message::Column::Id), false)
        }
    };
    let mut rows = query.limit(limit + 1).all(db).await?;
    let has_more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    if backwards {
        rows.reverse();
    }
    Ok((rows, has_more))
}

/// Which of a conversation's unread messages to mark read.
#[derive(Debug, Clone, Default)]
pub struct ReadSelection {
    /// Only these messages (else all unread ones).
    pub message_ids: Option<Vec<i64>>,
    /// Only messages up to this id.
    pub up_to: Option<i64>,
}

/// Marks the reader's unread messages of a conversation read, lowers the reader's unread count by the
/// number actually marked (a relative update: it commutes with concurrent sends), and stores the events
/// built by `events_for` from the marked messages. Returns the marked messages and the events.
pub async fn mark_read(
    db: &DatabaseConnection,
    reader_id: i64,
    conv: &conversation::Model,
    selection: ReadSelection,
    read_at: chrono::DateTime<Utc>,
    events_for: impl FnOnce(&[chat_message::Model]) -> (Vec<Audience>, Envelope),
) -> Result<(Vec<chat_message::Model>, Vec<PendingEvent>), DbError> {
    use sea_orm::QueryOrder;
    let txn = super::begin_write(db).await?;
    let mut query = chat_message::Entity::find()
        .filter(chat_message::Column::ConversationId.eq(conv.id))
        .filter(chat_message::Column::ReceiverId.eq(reader_id))
        .filter(chat_message::Column::ReadAt.is_null());
    if let Some(ids) = &selection.message_ids {
        query = query.filter(chat_message::Column::Id.is_in(ids.iter().copied()));
    }
    if let Some(up_to) = selection.up_to {
        query = query.filter(chat_message::Column::Id.lte(up_to));
    }
    let mut marked = query
        .order_by_asc(chat_message::Column::Id)
        .all(&txn)
        .await?;
    if marked.is_empty() {
        txn.commit().await?;
        return Ok((marked, Vec::new()));
    }
    let ids: Vec<i64> = marked.iter().map(|m| m.id).collect();
    let updated = chat_message::Entity::update_many()
        .col_expr(chat_message::Column::ReadAt, Expr::value(read_at))
        .filter(chat_message::Column::Id.is_in(ids))
        .filter(chat_message::Column::ReadAt.is_null())
        .exec(&txn)
        .await?
        .rows_affected as i64;
    let unread_col = unread_column(conv.user1_id, reader_id);
    conversation::Entity::update_many()
        .col_expr(
            unread_col,
            Expr::case(
                Expr::col(unread_col).gte(updated),
                Expr::col(unread_col).sub(updated),
            )
            .finally(0)
            .into(),
        )
        .filter(conversation::Column::Id.eq(conv.id))
        .exec(&txn)
        .await?;
    for m in &mut marked {
        m.read_at = Some(read_at);
    }
    let (audiences, event) = events_for(&marked);
    let pending = outbox::insert(&txn, audiences, event).await?;
    txn.commit().await?;
    Ok((marked, pending))
}

/// Sets `delivered_at` on the messages handed to their receivers, for many polls in one statement:
/// each entry is a receiver and the ids of messages it got (a message counts only for its own
/// receiver). Returns the messages this call changed: two polls racing over the same messages announce
/// each delivery once.
pub async fn mark_delivered(
    db: &DatabaseConnection,
    handed: &[(i64, Vec<i64>)],
    delivered_at: chrono::DateTime<Utc>,
) -> Result<Vec<chat_message::Model>, DbError> {
    use sea_orm::Condition;
    /// Message ids per statement at most (each is bound twice; SQLite allows 32 766 parameters).
    const IDS_PER_STATEMENT: usize = 2_000;
    let mut changed = Vec::new();
    let mut next = 0;
    while next < handed.len() {
        let (mut all_ids, mut receivers) = (Vec::new(), Condition::any());
        while next < handed.len() && all_ids.len() < IDS_PER_STATEMENT {
            let (receiver_id, ids) = &handed[next];
            next += 1;
            all_ids.extend(ids.iter().copied());
            receivers = receivers.add(
                Condition::all()
                    .add(chat_message::Column::ReceiverId.eq(*receiver_id))
                    .add(chat_message::Column::Id.is_in(ids.iter().copied())),
            );
        }
        if all_ids.is_empty() {
            continue;
        }
        changed.extend(
            chat_message::Entity::update_many()
                .col_expr(chat_message::Column::DeliveredAt, Expr::value(delivered_at))
                .filter(chat_message::Column::Id.is_in(all_ids))
                .filter(chat_message::Column::DeliveredAt.is_null())
                .filter(receivers)
                .exec_with_returning(db)
                .await?,
        );
    }
    Ok(changed)
}

/// Whether `sender_id` has at least `count` messages to `receiver_id`, created after `since`, that no
/// client of the receiver was handed yet. Reads at most `count` entries of the partial index
/// `idx_chat_messages_undelivered`.
pub async fn undelivered_at_least(
    db: &DatabaseConnection,
    sender_id: i64,
    receiver_id: i64,
    since: chrono::DateTime<Utc>,
    count: u64,
) -> Result<bool, DbError> {
    use sea_orm::QuerySelect;
    let nth: Option<i64> = chat_message::Entity::find()
        .select_only()
        .column(chat_message::Column::Id)
        .filter(chat_message::Column::ReceiverId.eq(receiver_id))
        .filter(chat_message::Column::SenderId.eq(sender_id))
        .filter(chat_message::Column::DeliveredAt.is_null())
        .filter(chat_message::Column::CreatedAt.gt(since))
        .offset(count.saturating_sub(1))
        .limit(1)
        .into_tuple()
        .one(db)
        .await?;
    Ok(nth.is_some())
}

/// Bytes of attachments `sender_id` has sent, in all (those stored without a size count 0).
pub async fn attachment_bytes(db: &DatabaseConnection, sender_id: i64) -> Result<i64, DbError> {
    use sea_orm::{QuerySelect, sea_query::Func};
    // SUM of a bigint is a numeric on PostgreSQL: cast back, to read it as an integer on both.
    let total: Option<Option<i64>> = chat_message::Entity::find()
        .select_only()
        .expr(Func::cast_as(
            Func::sum(Expr::col(chat_message::Column::AttachmentSize)),
            "BIGINT",
        ))
        .filter(chat_message::Column::SenderId.eq(sender_id))
        .filter(chat_message::Column::AttachmentSize.is_not_null())
        .into_tuple()
        .one(db)
        .await?;
    Ok(total.flatten().unwrap_or(0))
}

/// Which of these attachment keys messages refer to.
pub async fn referenced_attachments(
    db: &DatabaseConnection,
    keys: &[String],
) -> Result<std::collections::HashSet<String>, DbError> {
    use sea_orm::QuerySelect;
    if keys.is_empty() {
        return Ok(Default::default());
    }
    let found: Vec<String> = chat_message::Entity::find()
        .select_only()
        .column(chat_message::Column::Attachment)
        .filter(chat_message::Column::Attachment.is_not_null())
        .filter(chat_message::Column::Attachment.is_in(keys.iter().cloned()))
        .into_tuple()
        .all(db)
        .await?;
    Ok(found.into_iter().collect())
}

pub async fn find_message(
    db: &DatabaseConnection,
    id: i64,
) -> Result<Option<chat_message::Model>, DbError> {
    Ok(chat_message::Entity::find_by_id(id).one(db).await?)
}

/// The users `user_id` has a conversation with (who are told of their presence changes).
pub async fn contacts(db: &DatabaseConnection, user_id: i64) -> Result<Vec<i64>, DbError> {
    use sea_orm::{Condition, QuerySelect};
    let pairs: Vec<(i64, i64)> = conversation::Entity::find()
        .select_only()
        .column(conversation::Column::User1Id)
        .column(conversation::Column::User2Id)
        .filter(
            Condition::any()
                .add(conversation::Column::User1Id.eq(user_id))
                .add(conversation::Column::User2Id.eq(user_id)),
        )
        .into_tuple()
        .all(db)
        .await?;
    Ok(pairs
        .into_iter()
        .map(|(a, b)| if a == user_id { b } else { a })
        .collect())
}
