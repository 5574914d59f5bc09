//! One-to-one chat, independent of HTTP: sending (text and attachments), reading (conversations,
//! history, unread counts, who is online), read receipts and typing signals, and the events each
//! produces.
//!
//! Stored facts (messages, read receipts) and their events are committed together through the outbox
//! and published after the commit ([`crate::delivery::outbox`]). Typing signals are ephemeral: published
//! directly, best effort, with a short expiration. [`Chat`] owns the handles it needs; its answers are
//! [`ChatError`]s, which the HTTP layer maps.

pub mod attachments;
mod history;
pub mod messages;
mod receipts;
mod typing;

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use tokio::sync::Semaphore;

use self::{attachments::AttachmentStore, messages::Messages};
pub use self::{
    history::{
        ContactView, ConversationUnread, ConversationView, HistoryPage, MAX_PAGE, OnlineUsers,
        UnreadCounts, is_online,
    },
    receipts::{MarkRead, MarkReadResult},
    typing::typing_period,
};
use crate::{
    accounts::Accounts,
    broker::{Broker, BrokerError},
    config::Config,
    db::{
        DbError,
        entities::{chat_message, user},
    },
    delivery::outbox::Outbox,
    events::{MessageView, rfc3339},
    limits::{RateLimited, RateLimiter, throttle::Throttle},
    validate::Invalid,
};

/// Why a chat operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("you cannot send a message to yourself")]
    ToSelf,
    #[error("you cannot type to yourself")]
    TypingToSelf,
    #[error("user {0} does not exist")]
    NoSuchUser(i64),
    #[error("no such conversation for this user")]
    NoSuchConversation,
    #[error("no such attachment")]
    NoSuchAttachment,
    #[error("give `conversation_id`, `user_id` (the other participant) or `message_ids`")]
    NoConversationGiven,
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    /// An attachment beyond the size limit or the sender's quota.
    #[error("{0}")]
    TooLarge(String),
    #[error(
        "attachments must be images (JPEG, PNG, GIF, WebP, BMP), videos (MP4, WebM, MOV, MKV, AVI) \
         or documents (PDF, Office, OpenDocument, RTF, plain text)"
    )]
    UnsupportedAttachment,
    #[error("too many attachments are being uploaded to this server; retry shortly")]
    UploadsBusy,
    #[error("attachment storage failed: {0}")]
    Storage(#[source] std::io::Error),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Chat's slice of the configuration.
#[derive(Debug, Clone)]
pub struct ChatLimits {
    pub max_message_chars: usize,
    pub max_attachment_bytes: usize,
    /// Bytes of attachments one user may have sent in all (0: no quota).
    pub attachment_quota_bytes: u64,
    /// Messages one sender may have waiting, undelivered, for one receiver.
    pub max_undelivered: u32,
    /// How long an event can wait in a postbox.
    pub message_ttl: Duration,
    pub typing_ttl: Duration,
    /// How long an upload waits for its turn in memory.
    pub upload_wait: Duration,
}

impl ChatLimits {
    pub fn from_config(config: &Config) -> Self {
        ChatLimits {
            max_message_chars: config.max_message_chars,
            max_attachment_bytes: config.max_attachment_bytes,
            attachment_quota_bytes: config.attachment_quota_bytes,
            max_undelivered: config.max_undelivered,
            message_ttl: config.message_ttl(),
            typing_ttl: config.typing_ttl(),
            upload_wait: config.backend_timeout(),
        }
    }
}

/// The chat service. Cheap to clone.
#[derive(Clone)]
pub struct Chat {
    db: DatabaseConnection,
    broker: Broker,
    outbox: Outbox,
    accounts: Accounts,
    limits: Arc<ChatLimits>,
    /// Messages per sender (shared with the support desk: one budget for both).
    send_limit: RateLimiter,
    /// Typing calls per sender.
    typing_limit: RateLimiter,
    /// Typing signals per sender and receiver that reach the receiver's postbox.
    typing_signals: Throttle<(i64, i64), bool>,
    messages: Messages,
    attachments: Arc<dyn AttachmentStore>,
    /// Turns to hold an upload in memory.
    uploads: Arc<Semaphore>,
}

/// What [`Chat::new`] is built from.
pub struct ChatParts {
    pub db: DatabaseConnection,
    pub broker: Broker,
    pub outbox: Outbox,
    pub accounts: Accounts,
    pub limits: ChatLimits,
    pub send_limit: RateLimiter,
    pub typing_rate: u32,
    pub attachments: Arc<dyn AttachmentStore>,
    pub max_uploads: usize,
}

impl Chat {
    /// Starts the message writer; needs a Tokio runtime.
    pub fn new(parts: ChatParts) -> Self {
        Chat {
            messages: Messages::new(parts.db.clone(), parts.outbox.clone()),
            typing_signals: Throttle::new(typing_period(parts.limits.typing_ttl)),
            typing_limit: RateLimiter::new(parts.typing_rate),
            uploads: Arc::new(Semaphore::new(parts.max_uploads)),
            limits: Arc::new(parts.limits),
            db: parts.db,
            broker: parts.broker,
            outbox: parts.outbox,
            accounts: parts.accounts,
            send_limit: parts.send_limit,
            attachments: parts.attachments,
        }
    }

    /// Where attachment files live (for the sweep).
    pub fn attachment_store(&self) -> Arc<dyn AttachmentStore> {
        self.attachments.clone()
    }

    /// A turn to hold an upload in memory, taken before it is read.
    pub async fn upload_turn(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ChatError> {
        attachments::upload_turn(&self.uploads, self.limits.upload_wait)
            .await
            .ok_or(ChatError::UploadsBusy)
    }

    /// The largest attachment accepted, in bytes.
    pub fn max_attachment_bytes(&self) -> usize {
        self.limits.max_attachment_bytes
    }
}

/// A chat message as the API and the `message` event show it, written by `sender`.
pub fn message_view(msg: &chat_message::Model, sender: &user::Model) -> MessageView {
    MessageView {
        id: msg.id,
        conversation_id: msg.conversation_id,
        sender_id: msg.sender_id,
        sender_name: sender.display_name.clone(),
        receiver_id: msg.receiver_id,
        message: msg.message.clone(),
        // Clients download through the API (participants only); the storage key stays private.
        attachment: msg
            .attachment
            .as_ref()
            .map(|_| format!("/api/v1/communication/chats/attachments/{}/", msg.id)),
        attachment_type: msg.attachment_type.clone(),
        timestamp: rfc3339(msg.created_at),
        is_read: msg.read_at.is_some(),
        delivered_at: msg.delivered_at.map(rfc3339),
        read_at: msg.read_at.map(rfc3339),
    }
}
