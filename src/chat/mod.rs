//! Chat domain logic, independent of HTTP: validation, storage and the events each chat action produces.
//!
//! Stored facts (messages, read receipts) and their events are committed together through the outbox and
//! published after the commit. Ephemeral signals (typing, delivery and presence notices) are published
//! directly, best effort, with a short per-message expiration.

pub mod attachments;
pub mod text;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde::Serialize;
use serde_json::json;

use self::attachments::{Download, FileType, Upload};
use crate::{
    accounts::tokens::AuthUser,
    broker::{Broker, user_routing_key},
    db::{
        self, DbError,
        batch::Batcher,
        chat::{
            ConversationIds, Cursor, NewAttachment, NewMessage, PendingEvent, ReadSelection,
            StoredMessage,
        },
        entities::{chat_message, conversation, user},
    },
    delivery::outbox::Outbox,
    error::AppError,
    events::{Event, MessageView, kind, rfc3339},
    limits::throttle::Offer,
    state::AppState,
};

/// The largest history page.
pub const MAX_PAGE: u64 = 200;

/// Sends a message from the caller to `receiver_id`, with an optional attachment still in memory:
/// validates everything (text, attachment size and type, receiver, rate, quota, broker), then stores
/// the attachment's file, then the message and its events in one transaction, then publishes the
/// events to the receiver's postbox and to the sender's own (so the sender's other devices see it too).
///
/// The answer is the stored message. A refused send writes nothing, and a send whose message cannot
/// be stored removes its file again. (A file can still outlive its send when the request goes away
/// between the two writes, or the process dies: the sweep, [`attachments::sweep`], removes it.) While
/// RabbitMQ is known to be unreachable the send is refused with 503 before anything is stored. If the
/// publish fails after the commit (the broker died in between), the events stay in the outbox and the
/// relay delivers them: the message is never lost and never announced without being stored.
pub async fn send_message(
    state: &AppState,
    sender: &AuthUser,
    receiver_id: i64,
    text: String,
    upload: Option<Upload>,
) -> Result<MessageView, AppError> {
    let sender = &sender.0;
    let text = checked_text(state, &text, Some(upload.is_some()))?;
    let upload = upload.map(|u| checked_upload(state, u)).transpose()?;
    if receiver_id == sender.id {
        return Err(AppError::Forbidden(
            "you cannot send a message to yourself".into(),
        ));
    }
    if !state.users.exists(&state.db, receiver_id).await? {
        return Err(AppError::NotFound(format!(
            "user {receiver_id} does not exist"
        )));
    }
    state.send_limit.check(sender.id, "messages")?;
    check_undelivered(state, sender.id, receiver_id).await?;
    if let Some((upload, _)) = &upload {
        check_quota(state, sender.id, upload.bytes.len()).await?;
    }
    // While RabbitMQ is known to be down, refuse (503) rather than store a message nobody is told of.
    state.broker.ensure_available().await?;
    let attachment = match upload {
        Some((upload, file_type)) => {
            let size = upload.bytes.len() as i64;
            let key = state
                .attachments
                .put(upload.bytes, file_type)
                .await
                .map_err(|e| AppError::Internal(format!("cannot store an attachment: {e}")))?;
            Some(NewAttachment {
                key,
                kind: file_type.kind.to_owned(),
                size,
            })
        }
        None => None,
    };
    let key = attachment.as_ref().map(|a| a.key.clone());
    let author = sender.clone();
    let stored = state
        .messages
        .store(NewMessage {
            sender_id: sender.id,
            receiver_id,
            text,
            attachment,
            event_for: Box::new(move |msg| {
                let event = Event::new(kind::MESSAGE, to_value(&MessageView::new(msg, &author)));
                (
                    vec![
                        user_routing_key(msg.receiver_id),
                        user_routing_key(msg.sender_id),
                    ],
                    event.to_bytes(),
                )
            }),
        })
        .await;
    let (msg, pending) = match stored {
        Ok(stored) => stored,
        Err(e) => {
            if let Some(key) = key
                && let Err(remove) = state.attachments.remove(&key).await
            {
                tracing::warn!(error = %remove, "cannot remove the attachment of a send that failed; the sweep will");
            }
            return Err(e.into());
        }
    };
    publish_committed(&state.outbox, &pending).await;
    Ok(MessageView::new(&msg, sender))
}

/// Refuses (429) a message when its sender already has `max_undelivered` messages waiting for this
/// receiver that none of the receiver's clients was handed yet: they sit in the receiver's postbox,
/// and more would push out what else it holds (the postbox keeps its newest 100 events). Messages
/// older than the message TTL have left the postbox and no longer count.
async fn check_undelivered(
    state: &AppState,
    sender_id: i64,
    receiver_id: i64,
) -> Result<(), AppError> {
    let cap = state.config.max_undelivered;
    let ttl =
        chrono::Duration::from_std(state.config.message_ttl()).unwrap_or(chrono::Duration::MAX);
    let since = Utc::now()
        .checked_sub_signed(ttl)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    if db::chat::undelivered_at_least(&state.db, sender_id, receiver_id, since, u64::from(cap))
        .await?
    {
        return Err(AppError::RateLimited {
            detail: format!(
                "user {receiver_id} has not received your last {cap} messages yet; send more once they are delivered (POSTBOX_MAX_UNDELIVERED)"
            ),
            retry_after_secs: 10,
        });
    }
    Ok(())
}

/// An upload's type, judged by its content (415 for types not accepted), after its size (413).
fn checked_upload(state: &AppState, upload: Upload) -> Result<(Upload, FileType), AppError> {
    let max = state.config.max_attachment_bytes;
    if upload.bytes.len() > max {
        return Err(AppError::PayloadTooLarge(format!(
            "the attachment is larger than {max} bytes"
        )));
    }
    let file_type = attachments::detect(&upload.bytes).ok_or_else(|| {
        AppError::UnsupportedMediaType(
            "attachments must be images (JPEG, PNG, GIF, WebP, BMP), videos (MP4, WebM, MOV, MKV, AVI) \
             or documents (PDF, Office, OpenDocument, RTF, plain text)"
                .into(),
        )
    })?;
    Ok((upload, file_type))
}

/// Refuses (413) an attachment of `size` bytes that would take the sender beyond their attachment
/// quota. Two sends of one user racing past the check may both be stored: the quota can be overrun by
/// the uploads in flight at that moment (at most `POSTBOX_MAX_UPLOADS` per instance).
async fn check_quota(state: &AppState, sender_id: i64, size: usize) -> Result<(), AppError> {
    let quota = state.config.attachment_quota_bytes;
    if quota == 0 {
        return Ok(());
    }
    let used = db::chat::attachment_bytes(&state.db, sender_id).await?;
    let used = u64::try_from(used).unwrap_or(0);
    if used.saturating_add(size as u64) > quota {
        return Err(AppError::PayloadTooLarge(format!(
            "attachment quota of {quota} bytes exceeded: you have stored {used} bytes of attachments, and this one has {size}"
        )));
    }
    Ok(())
}

/// An attachment the caller may read (they sent or received its message): its type and its bytes.
/// Anyone else's, or a message without one, is not found (its existence is not confirmed either).
pub async fn open_attachment(
    state: &AppState,
    caller: &AuthUser,
    message_id: i64,
) -> Result<(FileType, Download), AppError> {
    let not_found = || AppError::NotFound("no such attachment".into());
    let msg = db::chat::find_message(&state.db, message_id)
        .await?
        .filter(|m| m.sender_id == caller.0.id || m.receiver_id == caller.0.id)
        .ok_or_else(not_found)?;
    let key = msg.attachment.ok_or_else(not_found)?;
    let file_type = attachments::type_of_key(&key).ok_or_else(not_found)?;
    let download = state
        .attachments
        .open(&key)
        .await
        .map_err(|e| AppError::Internal(format!("cannot read an attachment: {e}")))?
        .ok_or_else(not_found)?;
    Ok((file_type, download))
}

/// Stores chat messages with group commit: the messages of every send waiting while one transaction
/// commits are written together in the next one (SQLite has one writer anyway; a transaction's begin
/// and commit, and on PostgreSQL its WAL flush, are then paid once per group instead of once per
/// message). A group that fails is retried one message at a time, so one bad message fails only its
/// own send (unless the database is unavailable: then all fail at once, with 503). Cheap to clone.
#[derive(Clone)]
pub struct Messages {
    writes: Batcher<(NewMessage, StoredReply)>,
}

/// Where the writer tells a send how its message was stored.
type StoredReply = tokio::sync::oneshot::Sender<Result<StoredMessage, DbError>>;

impl Messages {
    /// Starts the writer; needs a Tokio runtime. `outbox` publishes the events of a message whose
    /// request went away while it was being stored.
    pub fn new(db: DatabaseConnection, outbox: Outbox) -> Self {
        let conversations = ConversationIds::default();
        let writes = Batcher::spawn(std::time::Duration::ZERO, move |group: Vec<_>| {
            let (db, conversations, outbox) = (db.clone(), conversations.clone(), outbox.clone());
            async move {
                let (messages, replies): (Vec<NewMessage>, Vec<StoredReply>) =
                    group.into_iter().unzip();
                let results: Vec<Result<StoredMessage, DbError>> = match db::chat::store_messages(
                    &db,
                    &conversations,
                    &messages,
                )
                .await
                {
                    Ok(stored) => stored.into_iter().map(Ok).collect(),
                    Err(e) if messages.len() == 1 => vec![Err(e)],
                    // The database is unreachable or busy: one by one would only wait as many
                    // times as long for the same answer.
                    Err(e @ DbError::Unavailable(_)) => {
                        messages.iter().map(|_| Err(e.shared())).collect()
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, messages = messages.len(), "group commit failed; storing its messages one by one");
                        let mut results = Vec::with_capacity(messages.len());
                        for m in &messages {
                            let one = std::slice::from_ref(m);
                            results.push(
                                db::chat::store_messages(&db, &conversations, one)
                                    .await
                                    .map(|mut stored| stored.remove(0)),
                            );
                        }
                        results
                    }
                };
                for (reply, result) in replies.into_iter().zip(results) {
                    if let Err(Ok((_, pending))) = reply.send(result) {
                        // The request is gone but its message is stored: announce it now rather
                        // than leave it to the relay.
                        let outbox = outbox.clone();
                        tokio::spawn(async move { publish_committed(&outbox, &pending).await });
                    }
                }
            }
        });
        Messages { writes }
    }

    /// Stores a message and its event (see [`db::chat::store_messages`]); the events are to be
    /// published by the caller.
    pub async fn store(&self, message: NewMessage) -> Result<StoredMessage, DbError> {
        self.writes.ask(|reply| (message, reply)).await?
    }
}

/// A message text as stored: trimmed. The length counts what the client sent (400 beyond the configured
/// limit); control characters are refused ([`text::check`]); blank means whitespace only, as the API
/// document's `\S` pattern sees it, and is refused unless the message carries an attachment
/// (`Some(true)`); `None` where attachments are not offered.
pub(crate) fn checked_text(
    state: &AppState,
    text: &str,
    attachment: Option<bool>,
) -> Result<String, AppError> {
    let max = state.config.max_message_chars;
    if text.chars().count() > max {
        return Err(AppError::field(
            "message",
            format!("is longer than {max} characters"),
        ));
    }
    text::check("message", text)?;
    if text::is_blank(text) && attachment != Some(true) {
        return Err(AppError::field(
            "message",
            match attachment {
                Some(_) => "may not be blank (unless an attachment is sent)",
                None => "may not be blank",
            },
        ));
    }
    Ok(text.trim().to_owned())
}

/// Publishes committed outbox events now; failures are left to the outbox relay.
pub(crate) async fn publish_committed(outbox: &Outbox, pending: &[PendingEvent]) {
    let results = futures_util::future::join_all(pending.iter().map(|p| outbox.publish(p))).await;
    for (p, r) in pending.iter().zip(results) {
        if let Err(e) = r {
            tracing::warn!(error = %e, outbox_id = p.outbox_id, "publish failed after commit; the outbox relay will retry");
        }
    }
}

fn to_value<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("wire types always serialise")
}

/// A conversation as the caller's list shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConversationView {
    pub id: i64,
    /// The other participant.
    pub other_user: ContactView,
    /// The first characters of the last message (empty for an attachment without text).
    pub last_message: String,
    pub last_message_id: Option<i64>,
    pub last_message_at: Option<String>,
    pub last_message_by: Option<i64>,
    /// Messages the caller has not read yet.
    pub unread_count: i64,
    pub created_at: String,
}

/// Another user with presence.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ContactView {
    pub id: i64,
    pub username: String,
    /// Display name (seed field name: `sender_name` in messages).
    pub name: String,
    /// Polled within the online window and did not disconnect.
    pub online: bool,
    pub last_seen_at: Option<String>,
}

impl ContactView {
    pub fn new(u: &user::Model, now: DateTime<Utc>) -> Self {
        ContactView {
            id: u.id,
            username: u.username.clone(),
            name: u.display_name.clone(),
            online: is_online(u, now),
            last_seen_at: u.last_seen_at.map(rfc3339),
        }
    }
}

/// Online means: polled within the online window (shared through the database by every instance) and
/// not disconnected since.
pub fn is_online(u: &user::Model, now: DateTime<Utc>) -> bool {
    u.online_until.is_some_and(|t| t > now)
}

/// The caller's conversations, most recent activity first.
pub async fn conversations(
    state: &AppState,
    caller: &AuthUser,
) -> Result<Vec<ConversationView>, AppError> {
    let now = Utc::now();
    let rows = db::chat::list_conversations(&state.db, caller.0.id, 1000).await?;
    Ok(rows
        .into_iter()
        .map(|(c, other)| ConversationView {
            id: c.id,
            other_user: ContactView::new(&other, now),
            unread_count: db::chat::unread_for(&c, caller.0.id),
            last_message: c.last_message_preview,
            last_message_id: c.last_message_id,
            last_message_at: c.last_message_at.map(rfc3339),
            last_message_by: c.last_message_by,
            created_at: rfc3339(c.created_at),
        })
        .collect())
}

/// One page of the caller's conversation with another user.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HistoryPage {
    /// Chronological order (oldest first) within the page.
    pub messages: Vec<MessageView>,
    /// More messages lie beyond this page: older ones when paging back (`before` or no cursor), newer
    /// ones when catching up (`since`).
    pub has_more: bool,
    /// The conversation's id, `null` when the two users never exchanged a message.
    pub conversation_id: Option<i64>,
    /// Pass as `before` to get the previous (older) page.
    pub next_before: Option<i64>,
    /// Pass as `since` to catch up from the end of this page.
    pub next_since: Option<i64>,
    /// Server time of this answer.
    pub last_updated: String,
}

/// A history page between the caller and `other_id`.
pub async fn history(
    state: &AppState,
    caller: &AuthUser,
    other_id: i64,
    cursor: Cursor,
    limit: u64,
) -> Result<HistoryPage, AppError> {
    let other = db::users::find(&state.db, other_id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("user {other_id} does not exist")))?;
    let now = Utc::now();
    let Some(conv) = db::chat::find_conversation(&state.db, caller.0.id, other_id).await? else {
        return Ok(HistoryPage {
            messages: Vec::new(),
            has_more: false,
            conversation_id: None,
            next_before: None,
            next_since: None,
            last_updated: rfc3339(now),
        });
    };
    let (rows, has_more) = db::chat::history(&state.db, conv.id, cursor, limit).await?;
    let me = &caller.0;
    let messages: Vec<MessageView> = rows
        .iter()
        .map(|m| MessageView::new(m, if m.sender_id == me.id { me } else { &other }))
        .collect();
    Ok(HistoryPage {
        next_before: messages.first().map(|m| m.id),
        next_since: messages.last().map(|m| m.id).or(match cursor {
            Cursor::SinceId(id) => Some(id),
            _ => None,
        }),
        messages,
        has_more,
        conversation_id: Some(conv.id),
        last_updated: rfc3339(now),
    })
}

/// What `mark-read` identifies.
#[derive(Debug, Clone, Default)]
pub struct MarkRead {
    pub conversation_id: Option<i64>,
    pub user_id: Option<i64>,
    pub message_ids: Option<Vec<i64>>,
    pub up_to: Option<i64>,
}

/// The answer of `mark-read`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MarkReadResult {
    /// Always `ok`.
    pub status: String,
    pub conversation_id: i64,
    /// Number of messages marked read now.
    pub marked: usize,
    pub message_ids: Vec<i64>,
    pub read_at: Option<String>,
    /// The caller's unread count in the conversation afterwards.
    pub unread_count: i64,
}

/// Marks messages the caller received read and sends a `read_receipt` event to the sender (and to the
/// caller's own postbox, so the caller's other devices clear their badges).
pub async fn mark_read(
    state: &AppState,
    caller: &AuthUser,
    req: MarkRead,
) -> Result<MarkReadResult, AppError> {
    let me = &caller.0;
    let conv = resolve_conversation(state, me.id, &req).await?;
    let other_id = db::chat::other_party(&conv, me.id);
    let read_at = Utc::now();
    let selection = ReadSelection {
        message_ids: req.message_ids.clone(),
        up_to: req.up_to,
    };
    let (marked, pending) =
        db::chat::mark_read(&state.db, me.id, &conv, selection, read_at, |marked| {
            let ids: Vec<i64> = marked.iter().map(|m| m.id).collect();
            let event = Event::new(
                kind::READ_RECEIPT,
                json!({
                    "conversation_id": conv.id,
                    "message_ids": ids,
                    "message_id": ids.last(),
                    "reader_id": me.id,
                    "reader_name": me.display_name,
                    "read_at": rfc3339(read_at),
                }),
            );
            (
                vec![user_routing_key(other_id), user_routing_key(me.id)],
                event.to_bytes(),
            )
        })
        .await?;
    publish_committed(&state.outbox, &pending).await;
    let unread = db::chat::find_conversation_by_id(&state.db, conv.id)
        .await?
        .map(|c| db::chat::unread_for(&c, me.id))
        .unwrap_or_default();
    Ok(MarkReadResult {
        status: "ok".into(),
        conversation_id: conv.id,
        marked: marked.len(),
        read_at: (!marked.is_empty()).then(|| rfc3339(read_at)),
        message_ids: marked.iter().map(|m| m.id).collect(),
        unread_count: unread,
    })
}

/// Finds the conversation a `mark-read` names, checking the caller takes part in it. Another user's
/// conversation is answered as not found, so its existence does not leak.
async fn resolve_conversation(
    state: &AppState,
    me: i64,
    req: &MarkRead,
) -> Result<conversation::Model, AppError> {
    let not_found = || AppError::NotFound("no such conversation for this user".into());
    let conv = if let Some(id) = req.conversation_id {
        db::chat::find_conversation_by_id(&state.db, id).await?
    } else if let Some(other) = req.user_id {
        db::chat::find_conversation(&state.db, me, other).await?
    } else if let Some(first) = req.message_ids.as_ref().and_then(|ids| ids.first()) {
        match db::chat::find_message(&state.db, *first).await? {
            Some(m) => db::chat::find_conversation_by_id(&state.db, m.conversation_id).await?,
            None => None,
        }
    } else {
        return Err(AppError::BadRequest(
            "give `conversation_id`, `user_id` (the other participant) or `message_ids`".into(),
        ));
    };
    conv.filter(|c| c.user1_id == me || c.user2_id == me)
        .ok_or_else(not_found)
}

/// Publishes a `typing` event to the receiver: ephemeral (not stored, not persistent, expires after the
/// configured typing TTL, so a client that polls later never sees stale typing).
pub async fn typing(
    state: &AppState,
    caller: &AuthUser,
    receiver_id: i64,
    is_typing: bool,
) -> Result<(), AppError> {
    let me = &caller.0;
    if receiver_id == me.id {
        return Err(AppError::Forbidden("you cannot type to yourself".into()));
    }
    if !state.users.exists(&state.db, receiver_id).await? {
        return Err(AppError::NotFound(format!(
            "user {receiver_id} does not exist"
        )));
    }
    // One signal per sender, receiver and throttle period reaches the receiver's postbox: a flood of
    // them would fill it (RabbitMQ drops an expired event only at the head of a queue). What comes
    // meanwhile is answered at once and the latest state goes out when the period ends.
    let key = (me.id, receiver_id);
    let publish = {
        let (broker, ttl) = (state.broker.clone(), state.config.typing_ttl());
        let (sender_id, sender_name) = (me.id, me.display_name.clone());
        move |is_typing: bool| async move {
            let event = Event::new(
                kind::TYPING,
                json!({
                    "sender_id": sender_id,
                    "sender_name": sender_name,
                    "receiver_id": receiver_id,
                    "is_typing": is_typing,
                }),
            );
            broker
                .publish_ephemeral(receiver_id, &event.to_bytes(), ttl)
                .await
        }
    };
    match state
        .typing_signals
        .offer(key, is_typing, tokio::time::Instant::now())
    {
        Offer::Now(is_typing) => publish(is_typing).await?,
        Offer::Schedule(after) => {
            state
                .typing_signals
                .schedule(key, after, move |is_typing| async move {
                    if let Err(e) = publish(is_typing).await {
                        tracing::debug!(error = %e, "a held typing signal was not published");
                    }
                })
        }
        Offer::Held => {}
    }
    Ok(())
}

/// How often one sender's typing signals may reach one receiver (see [`typing`]): a third of the
/// typing TTL, so a receiver of someone typing on gets refreshed twice before the signal expires.
pub fn typing_period(typing_ttl: std::time::Duration) -> std::time::Duration {
    typing_ttl / 3
}

/// Unread counts of the caller.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UnreadCounts {
    /// All unread messages.
    pub unread_count: i64,
    /// Per conversation with unread messages.
    pub conversations: Vec<ConversationUnread>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConversationUnread {
    pub conversation_id: i64,
    /// The other participant.
    pub user_id: i64,
    pub unread_count: i64,
}

pub async fn unread_counts(state: &AppState, caller: &AuthUser) -> Result<UnreadCounts, AppError> {
    let me = caller.0.id;
    let rows = db::chat::list_conversations(&state.db, me, 10_000).await?;
    let conversations: Vec<ConversationUnread> = rows
        .iter()
        .map(|(c, _)| ConversationUnread {
            conversation_id: c.id,
            user_id: db::chat::other_party(c, me),
            unread_count: db::chat::unread_for(c, me),
        })
        .filter(|c| c.unread_count > 0)
        .collect();
    Ok(UnreadCounts {
        unread_count: conversations.iter().map(|c| c.unread_count).sum(),
        conversations,
    })
}

/// Users online now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OnlineUsers {
    pub count: usize,
    pub users: Vec<ContactView>,
    /// Their ids, for quick lookups.
    pub online_user_ids: Vec<i64>,
}

pub async fn online_users(state: &AppState, caller: &AuthUser) -> Result<OnlineUsers, AppError> {
    let now = Utc::now();
    let users: Vec<ContactView> = db::users::online(&state.db, now, 500)
        .await?
        .iter()
        .filter(|u| u.id != caller.0.id)
        .map(|u| ContactView::new(u, now))
        .collect();
    Ok(OnlineUsers {
        count: users.len(),
        online_user_ids: users.iter().map(|u| u.id).collect(),
        users,
    })
}

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
            let event = Event::new(
                kind::DELIVERED,
                json!({
                    "conversation_id": conversation_id,
                    "message_ids": ids,
                    "receiver_id": receiver_id,
                    "delivered_at": rfc3339(now),
                }),
            );
            let broker = broker.clone();
            async move {
                if let Err(e) = broker
                    .publish_ephemeral(sender_id, &event.to_bytes(), ttl)
                    .await
                {
                    tracing::warn!(error = %e, sender_id, "could not publish a delivery notice");
                }
            }
        });
    futures_util::future::join_all(notices).await;
}
