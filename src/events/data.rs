//! The `data` of each of Postbox's own event types, one struct each: what the seeds' frontends read
//! (their field names are the contract) and what Postbox added. An event is built from one of these
//! with [`super::Event::of`], so its type name and shape cannot drift apart.

use serde::{Deserialize, Serialize};

use super::{DeliveryMark, MessageView, kind};

/// A payload of one of Postbox's event types.
pub trait EventData: Serialize {
    /// The event's type name (`event` of the envelope).
    const KIND: &'static str;

    /// The chat message this event hands to its receiver, if any (marked delivered when it does).
    fn delivery_mark(&self) -> Option<DeliveryMark> {
        None
    }
}

/// `message`: the chat message, as the REST API shows it.
impl EventData for MessageView {
    const KIND: &'static str = kind::MESSAGE;

    fn delivery_mark(&self) -> Option<DeliveryMark> {
        Some(DeliveryMark {
            message_id: self.id,
            receiver_id: self.receiver_id,
        })
    }
}

/// `typing`: someone is typing to the receiver (or stopped).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Typing {
    pub sender_id: i64,
    pub sender_name: String,
    pub receiver_id: i64,
    pub is_typing: bool,
}

impl EventData for Typing {
    const KIND: &'static str = kind::TYPING;
}

/// `read_receipt`: the reader read these messages of a conversation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ReadReceipt {
    pub conversation_id: i64,
    pub message_ids: Vec<i64>,
    /// The last of them (seed 002's field).
    pub message_id: Option<i64>,
    pub reader_id: i64,
    pub reader_name: String,
    pub read_at: String,
}

impl EventData for ReadReceipt {
    const KIND: &'static str = kind::READ_RECEIPT;
}

/// `delivered`: a client of the receiver got these messages of the sender (✓✓).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Delivered {
    pub conversation_id: i64,
    pub message_ids: Vec<i64>,
    pub receiver_id: i64,
    pub delivered_at: String,
}

impl EventData for Delivered {
    const KIND: &'static str = kind::DELIVERED;
}

/// `presence`: a contact came online or went offline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Presence {
    pub user_id: i64,
    pub username: String,
    pub name: String,
    pub online: bool,
    pub last_seen_at: Option<String>,
}

impl EventData for Presence {
    const KIND: &'static str = kind::PRESENCE;
}

/// `resync`: events of this postbox were lost; reload what you show from the REST API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Resync {
    /// Comma-separated causes: `maxlen` (the postbox was full), `expired`, `queue_deleted`.
    pub reason: String,
    /// Events known lost.
    pub lost: i64,
    /// Some loss of unknown size (the postbox was deleted with its events).
    pub lost_unknown: bool,
    /// Creation time (seconds since the epoch) of the oldest lost event, when known.
    pub since: Option<f64>,
    /// The lowest and highest sequence numbers lost, when the lost events carried them: fetch them
    /// from `GET poll/missed/?after=<seq_from - 1>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_from: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_to: Option<i64>,
    /// How many of the lost events had no number (events of host applications, copies of the user's
    /// own actions): those cannot be fetched, so reload what they showed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_unnumbered: Option<i64>,
}

impl EventData for Resync {
    const KIND: &'static str = kind::RESYNC;
}

/// `notification`: a notification to the user or their college (seed 001's fields and Postbox's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Notification {
    pub id: i64,
    pub title: String,
    pub message: String,
    pub notification_type: String,
    /// The creation time (RFC 3339), seed 001's field.
    pub timestamp: String,
    pub created_at: String,
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
    pub user_id: Option<i64>,
    pub college_id: Option<i64>,
}

impl EventData for Notification {
    const KIND: &'static str = kind::NOTIFICATION;
}

/// A support chat message, as the API and the `support_message` event show it (seed 003's fields, plus
/// `chat_id` and `sender_id`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
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

impl EventData for SupportMessageView {
    const KIND: &'static str = kind::SUPPORT_MESSAGE;
}

/// `support_chat`: a support chat was closed or reopened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SupportChat {
    pub chat_id: i64,
    /// `open` or `closed`.
    pub status: String,
    pub user_id: i64,
    pub closed_by: Option<i64>,
    pub last_updated: String,
}

impl EventData for SupportChat {
    const KIND: &'static str = kind::SUPPORT_CHAT;
}
