//! The support desk, independent of HTTP: every user has one support chat with the agents (users with
//! the `staff` or `admin` role), the messages of both sides, closing and reopening, and the events each
//! change produces.
//!
//! Messages and status changes are committed together with their events through the outbox and
//! published after the commit, each to the chat owner's postbox (`user.<id>`) and once to the staff
//! group key (`group.staff`), whose binding fans it out to every agent's postbox. Agent-only actions take
//! an [`Agent`], which only [`Agent::new`] makes (403 for members), so they cannot be called unchecked.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::{
    accounts::tokens::{AuthUser, Role},
    broker::{STAFF_ROUTING_KEY, user_routing_key},
    db::{
        self,
        chat::PendingEvent,
        entities::{support_chat, support_message, user},
        support::{CLOSED, Events, OPEN},
    },
    error::AppError,
    events::{Event, kind, rfc3339},
    state::AppState,
};

/// The most messages one read answers (newest ones without `since`, oldest ones after it).
pub const MAX_MESSAGES: u64 = 500;
/// The most chats the agents' list answers.
pub const MAX_CHATS: u64 = 500;

/// A support chat message, as the API and the `support_message` event show it (seed 003's fields, plus
/// `chat_id` and `sender_id`).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct SupportMessageView {
    /// UUIDv7.
    pub id: String,
    pub chat_id: i64,
    pub sender_id: i64,
    pub message: String,
    /// Written by an agent.
    pub is_from_admin: bool,
    /// RFC 3339 with milliseconds; unique and increasing within a chat, so it can be passed back as
    /// `since`.
    pub created_at: String,
    /// The sender's username (Postbox users have no e-mail address; the field keeps seed 003's name).
    pub user_email: String,
    /// The sender's display name.
    pub sender_name: String,
    /// Always `null`: the support desk carries no attachments.
    pub attachment_url: Option<String>,
}

impl SupportMessageView {
    pub fn new(m: &support_message::Model, sender: Option<&user::Model>) -> Self {
        SupportMessageView {
            id: m.id.clone(),
            chat_id: m.chat_id,
            sender_id: m.sender_id,
            message: m.message.clone(),
            is_from_admin: m.is_from_admin,
            created_at: rfc3339(m.created_at),
            user_email: sender.map(|u| u.username.clone()).unwrap_or_default(),
            sender_name: sender.map(|u| u.display_name.clone()).unwrap_or_default(),
            attachment_url: None,
        }
    }
}

/// The user a support chat belongs to.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct SupportUserView {
    pub id: i64,
    pub username: String,
    pub display_name: String,
}

/// A support chat.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct SupportChatView {
    pub id: i64,
    /// The user the chat belongs to.
    pub user_id: i64,
    pub user: SupportUserView,
    /// `open` or `closed`.
    pub status: String,
    /// The first characters of the last message (empty before the first one).
    pub last_message: String,
    pub created_at: String,
    /// The last message or status change.
    pub last_updated: String,
    /// When an agent closed the chat (`null` while open).
    pub closed_at: Option<String>,
    /// The agent who closed it (`null` while open).
    pub closed_by: Option<i64>,
}

impl SupportChatView {
    fn new(c: &support_chat::Model, owner: &user::Model) -> Self {
        SupportChatView {
            id: c.id,
            user_id: c.user_id,
            user: SupportUserView {
                id: owner.id,
                username: owner.username.clone(),
                display_name: owner.display_name.clone(),
            },
            status: c.status.clone(),
            last_message: c.last_message_preview.clone(),
            created_at: rfc3339(c.created_at),
            last_updated: rfc3339(c.updated_at),
            closed_at: c.closed_at.map(rfc3339),
            closed_by: c.closed_by,
        }
    }
}

/// Messages of a support chat (seed 003's polling answer).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct SupportMessages {
    /// Chronological order.
    pub messages: Vec<SupportMessageView>,
    /// `open` or `closed` (`open` for a user who has no chat yet).
    pub chat_status: String,
    /// The chat's last message or status change; `null` when the user has no chat yet.
    pub last_updated: Option<String>,
    /// More messages lie beyond these: newer ones after `since` (ask again with the last `created_at`),
    /// older ones without it.
    pub has_more: bool,
}

/// Which chats the agents' list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Open,
    Closed,
}

/// A support agent: a user with the `staff` or `admin` role.
#[derive(Debug, Clone)]
pub struct Agent(user::Model);

impl Agent {
    /// The caller as an agent; 403 for members.
    pub fn new(caller: &AuthUser) -> Result<Agent, AppError> {
        if caller.role() >= Role::Staff {
            Ok(Agent(caller.0.clone()))
        } else {
            Err(AppError::Forbidden(
                "only support agents (staff and admins) may do this; users read and write their own chat at /api/support/chats/my-chat/"
                    .into(),
            ))
        }
    }
}

/// The caller's support chat, created on first access.
pub async fn my_chat(state: &AppState, caller: &AuthUser) -> Result<SupportChatView, AppError> {
    let chat = db::support::chat_of_user(&state.db, caller.0.id).await?;
    Ok(SupportChatView::new(&chat, &caller.0))
}

/// The caller's support messages (see [`SupportMessages`]); creates nothing.
pub async fn my_messages(
    state: &AppState,
    caller: &AuthUser,
    since: Option<DateTime<Utc>>,
) -> Result<SupportMessages, AppError> {
    match db::support::find_chat_of_user(&state.db, caller.0.id).await? {
        Some(chat) => messages_of(state, &chat, since).await,
        None => Ok(SupportMessages {
            messages: Vec::new(),
            chat_status: OPEN.to_owned(),
            last_updated: None,
            has_more: false,
        }),
    }
}

/// A message from the caller to the agents: creates the chat on first use and reopens it when closed.
pub async fn send_as_user(
    state: &AppState,
    caller: &AuthUser,
    text: String,
) -> Result<SupportMessageView, AppError> {
    let text = crate::chat::checked_text(state, &text, None)?;
    state.send_limit.check(caller.0.id, "messages")?;
    state.broker.ensure_available().await?;
    let chat = db::support::chat_of_user(&state.db, caller.0.id).await?;
    // Every message reaches every agent's postbox: one member may not fill them all.
    let cap = state.config.support_max_unanswered;
    if db::support::unanswered_at_least(&state.db, chat.id, u64::from(cap)).await? {
        return Err(AppError::RateLimited {
            detail: format!(
                "you sent {cap} support messages without an answer; an agent will reply soon (POSTBOX_SUPPORT_MAX_UNANSWERED)"
            ),
            retry_after_secs: 30,
        });
    }
    store(state, chat.id, &caller.0, false, text).await
}

/// Every chat (or those with one status), most recently updated first, at most [`MAX_CHATS`].
pub async fn list_chats(
    state: &AppState,
    _agent: &Agent,
    status: Option<StatusFilter>,
) -> Result<Vec<SupportChatView>, AppError> {
    let status = status.map(|s| match s {
        StatusFilter::Open => OPEN,
        StatusFilter::Closed => CLOSED,
    });
    let chats = db::support::list_chats(&state.db, status, MAX_CHATS).await?;
    let owners = db::support::users(&state.db, chats.iter().map(|c| c.user_id)).await?;
    Ok(chats
        .iter()
        .filter_map(|c| Some(SupportChatView::new(c, owners.get(&c.user_id)?)))
        .collect())
}

/// The messages of any chat, for an agent.
pub async fn chat_messages(
    state: &AppState,
    _agent: &Agent,
    chat_id: i64,
    since: Option<DateTime<Utc>>,
) -> Result<SupportMessages, AppError> {
    let chat = find(state, chat_id).await?;
    messages_of(state, &chat, since).await
}

/// An agent's reply. A closed chat is reopened by it (as by a user's message).
pub async fn send_as_agent(
    state: &AppState,
    agent: &Agent,
    chat_id: i64,
    text: String,
) -> Result<SupportMessageView, AppError> {
    let text = crate::chat::checked_text(state, &text, None)?;
    find(state, chat_id).await?;
    state.send_limit.check(agent.0.id, "messages")?;
    state.broker.ensure_available().await?;
    store(state, chat_id, &agent.0, true, text).await
}

/// Closes a chat (idempotent: closing a closed chat changes nothing and announces nothing).
pub async fn close(
    state: &AppState,
    agent: &Agent,
    chat_id: i64,
) -> Result<SupportChatView, AppError> {
    let chat = find(state, chat_id).await?;
    let owner = db::users::find(&state.db, chat.user_id)
        .await?
        .ok_or_else(|| not_found(chat_id))?;
    if chat.status == CLOSED {
        return Ok(SupportChatView::new(&chat, &owner));
    }
    state.broker.ensure_available().await?;
    let (chat, pending) = db::support::close(&state.db, chat_id, agent.0.id, |chat| {
        vec![chat_event(chat)]
    })
    .await?
    .ok_or_else(|| not_found(chat_id))?;
    publish_committed(state, &pending).await;
    Ok(SupportChatView::new(&chat, &owner))
}

fn not_found(chat_id: i64) -> AppError {
    AppError::NotFound(format!("support chat {chat_id} does not exist"))
}

async fn find(state: &AppState, chat_id: i64) -> Result<support_chat::Model, AppError> {
    db::support::find_chat(&state.db, chat_id)
        .await?
        .ok_or_else(|| not_found(chat_id))
}

/// Stores a message with its `support_message` event (and a `support_chat` event first when it reopens
/// the chat), then publishes them.
async fn store(
    state: &AppState,
    chat_id: i64,
    sender: &user::Model,
    is_from_admin: bool,
    text: String,
) -> Result<SupportMessageView, AppError> {
    let stored = db::support::store_message(
        &state.db,
        chat_id,
        sender.id,
        is_from_admin,
        text,
        |msg, chat, reopened| {
            let mut events: Events = Vec::new();
            if reopened {
                events.push(chat_event(chat));
            }
            let view = SupportMessageView::new(msg, Some(sender));
            let data = serde_json::to_value(&view).expect("wire types always serialise");
            events.push((
                routing_keys(chat),
                Event::new(kind::SUPPORT_MESSAGE, data).to_bytes(),
            ));
            events
        },
    )
    .await?
    .ok_or_else(|| not_found(chat_id))?;
    if stored.reopened {
        tracing::info!(
            chat_id,
            by = sender.id,
            "support chat reopened by a message"
        );
    }
    publish_committed(state, &stored.pending).await;
    Ok(SupportMessageView::new(&stored.message, Some(sender)))
}

/// The owner's postbox and, once, every agent's (through the staff group key).
fn routing_keys(chat: &support_chat::Model) -> Vec<String> {
    vec![user_routing_key(chat.user_id), STAFF_ROUTING_KEY.to_owned()]
}

/// The `support_chat` event of a status change.
fn chat_event(chat: &support_chat::Model) -> (Vec<String>, Vec<u8>) {
    let event = Event::new(
        kind::SUPPORT_CHAT,
        json!({
            "chat_id": chat.id,
            "status": chat.status,
            "user_id": chat.user_id,
            "closed_by": chat.closed_by,
            "last_updated": rfc3339(chat.updated_at),
        }),
    );
    (routing_keys(chat), event.to_bytes())
}

/// Publishes committed outbox events now, in order per routing key (a reopening `support_chat` before
/// the message); failures are left to the outbox relay.
async fn publish_committed(state: &AppState, pending: &[PendingEvent]) {
    let mut by_key: HashMap<&str, Vec<&PendingEvent>> = HashMap::new();
    for p in pending {
        by_key.entry(p.routing_key.as_str()).or_default().push(p);
    }
    futures_util::future::join_all(by_key.into_values().map(|events| async move {
        for p in events {
            if let Err(e) = state.outbox.publish(p).await {
                tracing::warn!(error = %e, outbox_id = p.outbox_id, "publish failed after commit; the outbox relay will retry");
                // Later events of this key stay in order behind it: the relay publishes them by id.
                break;
            }
        }
    }))
    .await;
}

/// Messages of a chat with their senders, and the chat's status. The chat is read before the messages,
/// so `last_updated` is never newer than the messages answered.
async fn messages_of(
    state: &AppState,
    chat: &support_chat::Model,
    since: Option<DateTime<Utc>>,
) -> Result<SupportMessages, AppError> {
    let (rows, has_more) = db::support::messages(&state.db, chat.id, since, MAX_MESSAGES).await?;
    let senders = db::support::users(&state.db, rows.iter().map(|m| m.sender_id)).await?;
    Ok(SupportMessages {
        messages: rows
            .iter()
            .map(|m| SupportMessageView::new(m, senders.get(&m.sender_id)))
            .collect(),
        chat_status: chat.status.clone(),
        last_updated: Some(rfc3339(chat.updated_at)),
        has_more,
    })
}
