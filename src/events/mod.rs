//! The wire types clients see: the event envelope of the long poll and the JSON of chat objects.
//!
//! Shapes follow the seeds' contract (seed 001): a poll answers `{"events":[{"id","event","data",
//! "timestamp"}],"timestamp"}`, and a chat message is `{"id","sender_id","sender_name","receiver_id",
//! "message","attachment","attachment_type","timestamp","is_read","conversation_id"}`. Adding fields is
//! fine; renaming or removing one breaks existing frontends. Every event's `data` is a typed struct of
//! [`data`], built there and nowhere else. This module does no I/O and knows no storage.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

pub mod data;

pub use data::EventData;

/// Event type names, as the seeds spell them.
pub mod kind {
    pub const MESSAGE: &str = "message";
    pub const TYPING: &str = "typing";
    pub const READ_RECEIPT: &str = "read_receipt";
    pub const NOTIFICATION: &str = "notification";
    pub const PRESENCE: &str = "presence";
    /// Postbox's addition: the receiver's client got these messages (✓✓).
    pub const DELIVERED: &str = "delivered";
    /// Postbox's addition: events were lost (see `crate::delivery::gaps`); reload state from the REST API.
    pub const RESYNC: &str = "resync";
    /// A support desk message (seed 003): to the chat's user and to every agent.
    pub const SUPPORT_MESSAGE: &str = "support_message";
    /// A support chat was closed or reopened: to the chat's user and to every agent.
    pub const SUPPORT_CHAT: &str = "support_chat";
}

/// One event in a postbox. The whole envelope is the AMQP message body, so a poll can hand the bytes over
/// without re-encoding them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Event {
    /// Unique, time-ordered id (UUIDv7): clients dedupe by it.
    pub id: String,
    /// Event type: `message`, `typing`, `read_receipt`, `notification`, `presence`, ...
    pub event: String,
    /// The event's payload; its shape depends on `event` (a `message` carries a `MessageView`).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// Seconds since the Unix epoch when the event was created.
    pub timestamp: f64,
}

impl Event {
    /// The event carrying one of Postbox's own payloads.
    pub fn of<T: EventData>(data: &T) -> Self {
        Self::new(
            T::KIND,
            serde_json::to_value(data).expect("event payloads always serialise"),
        )
    }

    /// An event of any type (host applications publish their own, with any JSON object as data).
    pub fn new(event: &str, data: serde_json::Value) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            event: event.to_owned(),
            data,
            timestamp: unix_now(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an Event always serialises")
    }
}

/// Seconds since the Unix epoch, with sub-second precision (the seeds' `timestamp`).
pub fn unix_now() -> f64 {
    let now = Utc::now();
    now.timestamp() as f64 + f64::from(now.timestamp_subsec_micros()) / 1e6
}

/// RFC 3339 with milliseconds and `Z`, as the seeds print times.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A chat message as the API and the `message` event show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct MessageView {
    pub id: i64,
    pub conversation_id: i64,
    pub sender_id: i64,
    pub sender_name: String,
    pub receiver_id: i64,
    pub message: String,
    pub attachment: Option<String>,
    pub attachment_type: Option<String>,
    pub timestamp: String,
    pub is_read: bool,
    pub delivered_at: Option<String>,
    pub read_at: Option<String>,
}

/// A user as other users see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct UserView {
    pub id: i64,
    pub username: String,
    pub display_name: String,
    pub college_id: Option<i64>,
    pub role: String,
    pub created_at: String,
    pub last_seen_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_envelope_has_the_seed_fields() {
        let e = Event::new(
            kind::TYPING,
            serde_json::json!({"sender_id": 1, "is_typing": true}),
        );
        let v: serde_json::Value = serde_json::from_slice(&e.to_bytes()).unwrap();
        assert_eq!(v["event"], "typing");
        assert_eq!(v["data"]["sender_id"], 1);
        assert!(v["timestamp"].as_f64().unwrap() > 1.7e9);
        assert_eq!(v["id"].as_str().unwrap().len(), 36);
        assert_ne!(Event::new("x", serde_json::Value::Null).id, e.id);
    }
}
