//! The support desk, independent of HTTP: every user has one support chat with the agents (users with
//! the `staff` or `admin` role), the messages of both sides, closing and reopening, and the events each
//! change produces.
//!
//! Messages and status changes are committed together with their events through the outbox and
//! published after the commit, each to the chat owner's postbox (`user.<id>`) and once to the staff
//! group key (`group.staff`), whose binding fans it out to every agent's postbox. Agent-only actions take
//! an [`Agent`], which only [`Agent::new`] makes (403 for members), so they cannot be called unchecked.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde::Serialize;

pub use crate::events::data::SupportMessageView;
use crate::{
    accounts::tokens::Role,
    broker::{Broker, BrokerError},
    config::Config,
    db::{
        self, DbError,
        entities::{support_chat, support_message, user},
        support::{CLOSED, Events, OPEN},
    },
    delivery::outbox::Outbox,
    events::{Audience, Envelope, data, rfc3339},
    limits::{RateLimited, RateLimiter},
    validate::{self, Invalid},
};

/// Why a support desk operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(
        "only support agents (staff and admins) may do this; users read and write their own chat at /api/support/chats/my-chat/"
    )]
    NotAnAgent,
    #[error("support chat {0} does not exist")]
    NoSuchChat(i64),
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The support desk. Cheap to clone.
#[derive(Clone)]
pub struct Support {
    db: DatabaseConnection,
    broker: Broker,
    outbox: Outbox,
    /// Messages per sender (shared with chat: one budget for both).
    send_limit: RateLimiter,
    limits: Arc<SupportLimits>,
}

/// The support desk's slice of the configuration.
#[derive(Debug, Clone)]
pub struct SupportLimits {
    pub max_message_chars: usize,
    /// A member's messages in a row without an agent's answer.
    pub max_unanswered: u32,
}

impl SupportLimits {
    pub fn from_config(config: &Config) -> Self {
        SupportLimits {
            max_message_chars: config.max_message_chars,
            max_unanswered: config.support_max_unanswered,
        }
    }
}

impl Support {
    pub fn new(
        db: DatabaseConnection,
        broker: Broker,
        outbox: Outbox,
        send_limit: RateLimiter,
        limits: SupportLimits,
    ) -> Self {
        Support {
            db,
            broker,
            outbox,
            send_limit,
            limits: Arc::new(limits),
        }
    }
}

/// The most messages one read answers (newest ones without `since`, oldest ones after it).
pub const MAX_MESSAGES: u64 = 500;
/// The most chats the agents' list answers.
pub const MAX_CHATS: u64 = 500;

/// A support chat message, as the API and the `support_message` event show it, with its sender when
/// known.
pub fn message_view(
    m: &support_message::Model,
    sender: Option<&user::Model>,
) -> SupportMessageView {
    {
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
    /// The caller as an agent; refused for members.
    pub fn new(caller: &user::Model) -> Result<Agent, SupportError> {
        if Role::of(caller) >= Role::Staff {
            Ok(Agent(caller.clone()))
        } else {
            Err(SupportError::NotAnAgent)
        }
    }
}

impl Support {
    /// The caller's support chat, created on first access.
    pub async fn my_chat(&self, caller: &user::Model) -> Result<SupportChatView, SupportError> {
        let chat = db::support::chat_of_user(&self.db, caller.id).await?;
        Ok(SupportChatView::new(&chat, caller))
    }

    /// The caller's support messages (see [`SupportMessages`]); creates nothing.
    pub async fn my_messages(
        &self,
        caller: &user::Model,
        since: Option<DateTime<Utc>>,
    ) -> Result<SupportMessages, SupportError> {
        match db::support::find_chat_of_user(&self.db, caller.id).await? {
            Some(chat) => self.messages_of(&chat, since).await,
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
        &self,
        caller: &user::Model,
        text: String,
    ) -> Result<SupportMessageView, SupportError> {
        let text = validate::message_text(&text, self.limits.max_message_chars, None)?;
        self.send_limit.check(caller.id, "messages")?;
        self.broker.ensure_available().await?;
        let chat = db::support::chat_of_user(&self.db, caller.id).await?;
        // Every message reaches every agent's postbox: one member may not fill them all.
        let cap = self.limits.max_unanswered;
        if db::support::unanswered_at_least(&self.db, chat.id, u64::from(cap)).await? {
            return Err(RateLimited {
                detail: format!(
                    "you sent {cap} support messages without an answer; an agent will reply soon (POSTBOX_SUPPORT_MAX_UNANSWERED)"
                ),
                retry_after_secs: 30,
            }
            .into());
        }
        self.store(chat.id, caller, false, text).await
    }

    /// Every chat (or those with one status), most recently updated first, at most [`MAX_CHATS`].
    pub async fn list_chats(
        &self,
        _agent: &Agent,
        status: Option<StatusFilter>,
    ) -> Result<Vec<SupportChatView>, SupportError> {
        let status = status.map(|s| match s {
            StatusFilter::Open => OPEN,
            StatusFilter::Closed => CLOSED,
        });
        let chats = db::support::list_chats(&self.db, status, MAX_CHATS).await?;
        let owners = db::support::users(&self.db, chats.iter().map(|c| c.user_id)).await?;
        Ok(chats
            .iter()
            .filter_map(|c| Some(SupportChatView::new(c, owners.get(&c.user_id)?)))
            .collect())
    }

    /// The messages of any chat, for an agent.
    pub async fn chat_messages(
        &self,
        _agent: &Agent,
        chat_id: i64,
        since: Option<DateTime<Utc>>,
    ) -> Result<SupportMessages, SupportError> {
        let chat = self.find(chat_id).await?;
        self.messages_of(&chat, since).await
    }

    /// An agent's reply. A closed chat is reopened by it (as by a user's message).
    pub async fn send_as_agent(
        &self,
        agent: &Agent,
        chat_id: i64,
        text: String,
    ) -> Result<SupportMessageView, SupportError> {
        let text = validate::message_text(&text, self.limits.max_message_chars, None)?;
        self.find(chat_id).await?;
        self.send_limit.check(agent.0.id, "messages")?;
        self.broker.ensure_available().await?;
        self.store(chat_id, &agent.0, true, text).await
    }

    /// Closes a chat (idempotent: closing a closed chat changes nothing and announces nothing).
    pub async fn close(
        &self,
        agent: &Agent,
        chat_id: i64,
    ) -> Result<SupportChatView, SupportError> {
        let chat = self.find(chat_id).await?;
        let owner = db::users::find(&self.db, chat.user_id)
            .await?
            .ok_or_else(|| not_found(chat_id))?;
        if chat.status == CLOSED {
            return Ok(SupportChatView::new(&chat, &owner));
        }
        self.broker.ensure_available().await?;
        let (chat, pending) =
            db::support::close(&self.db, chat_id, agent.0.id, |chat| vec![chat_event(chat)])
                .await?
                .ok_or_else(|| not_found(chat_id))?;
        self.outbox.publish_in_order(&pending).await;
        Ok(SupportChatView::new(&chat, &owner))
    }

    async fn find(&self, chat_id: i64) -> Result<support_chat::Model, SupportError> {
        db::support::find_chat(&self.db, chat_id)
            .await?
            .ok_or_else(|| not_found(chat_id))
    }

    /// Stores a message with its `support_message` event (and a `support_chat` event first when it reopens
    /// the chat), then publishes them.
    async fn store(
        &self,
        chat_id: i64,
        sender: &user::Model,
        is_from_admin: bool,
        text: String,
    ) -> Result<SupportMessageView, SupportError> {
        let stored = db::support::store_message(
            &self.db,
            chat_id,
            sender.id,
            is_from_admin,
            text,
            |msg, chat, reopened| {
                let mut events: Events = Vec::new();
                if reopened {
                    events.push(chat_event(chat));
                }
                events.push((
                    audiences(chat),
                    Envelope::of(&message_view(msg, Some(sender))),
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
        self.outbox.publish_in_order(&stored.pending).await;
        Ok(message_view(&stored.message, Some(sender)))
    }

    /// Messages of a chat with their senders, and the chat's status. The chat is read before the messages,
    /// so `last_updated` is never newer than the messages answered.
    async fn messages_of(
        &self,
        chat: &support_chat::Model,
        since: Option<DateTime<Utc>>,
    ) -> Result<SupportMessages, SupportError> {
        let (rows, has_more) =
            db::support::messages(&self.db, chat.id, since, MAX_MESSAGES).await?;
        let senders = db::support::users(&self.db, rows.iter().map(|m| m.sender_id)).await?;
        Ok(SupportMessages {
            messages: rows
                .iter()
                .map(|m| message_view(m, senders.get(&m.sender_id)))
                .collect(),
            chat_status: chat.status.clone(),
            last_updated: Some(rfc3339(chat.updated_at)),
            has_more,
        })
    }
}

fn not_found(chat_id: i64) -> SupportError {
    SupportError::NoSuchChat(chat_id)
}

/// The owner's postboxes and, once, every agent's (through the staff group key).
fn audiences(chat: &support_chat::Model) -> Vec<Audience> {
    vec![Audience::Users(vec![chat.user_id]), Audience::Staff]
}

/// The `support_chat` event of a status change.
fn chat_event(chat: &support_chat::Model) -> (Vec<Audience>, Envelope) {
    let event = Envelope::of(&data::SupportChat {
        chat_id: chat.id,
        status: chat.status.clone(),
        user_id: chat.user_id,
        closed_by: chat.closed_by,
        last_updated: rfc3339(chat.updated_at),
    });
    (audiences(chat), event)
}

#[cfg(test)]
mod tests {
    use super::{Agent, SupportError, SupportLimits};
    use crate::{
        app::testing::{Parts, next_events},
        delivery::Ack,
    };

    #[tokio::test]
    async fn a_members_message_reaches_the_agents_and_the_unanswered_cap_holds_until_answered() {
        let parts = Parts::start().await;
        let support = parts.support(SupportLimits {
            max_message_chars: 1000,
            max_unanswered: 2,
        });
        let delivery = parts.delivery();
        let member = parts.user("member").await;
        let staff = parts.user_as("agent", "staff").await;
        let agent = Agent::new(&staff.user).unwrap();
        assert!(matches!(
            Agent::new(&member.user),
            Err(SupportError::NotAnAgent)
        ));
        let mut agents = delivery.open(&staff, None, Ack::OnHandOver).await.unwrap();

        support
            .send_as_user(&member.user, "help".into())
            .await
            .unwrap();
        let events = next_events(&mut agents, true).await;
        assert!(
            events.iter().any(|e| e.data["message"] == "help"),
            "the agent's postbox gets the member's message: {events:?}"
        );
        support
            .send_as_user(&member.user, "anyone?".into())
            .await
            .unwrap();
        let third = support.send_as_user(&member.user, "hello?".into()).await;
        assert!(
            matches!(third, Err(SupportError::RateLimited(_))),
            "{third:?}"
        );

        let chat = support.my_chat(&member.user).await.unwrap();
        let chats = support.list_chats(&agent, None).await.unwrap();
        assert_eq!(chats.iter().map(|c| c.id).collect::<Vec<_>>(), [chat.id]);
        support
            .send_as_agent(&agent, chat.id, "here".into())
            .await
            .unwrap();
        support
            .send_as_user(&member.user, "thanks".into())
            .await
            .expect("an answer lifts the cap");
        let messages = support.my_messages(&member.user, None).await.unwrap();
        assert_eq!(
            messages.messages.len(),
            4,
            "the refused message was not stored"
        );
    }
}
