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

/// One event, as a poll's answer carries it.
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
    /// The event's number in its user's sequence: every stored event a user receives (`message`,
    /// `read_receipt`, `notification`, `support_*`) has the next one, so a jump says what was missed
    /// (`GET poll/missed/?after=`). Ephemeral events and copies of the user's own actions carry none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
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
            seq: None,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an Event always serialises")
    }
}

/// Who an event is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Audience {
    /// These users' postboxes (the default one and every registered client's).
    Users(Vec<i64>),
    /// One user's registered clients only, not the default postbox: the copy of the user's own action
    /// (a message they sent, their read receipt) for their other devices. Clients that do not register
    /// (the seeds') know nothing of their own events and get none.
    Devices(i64),
    /// Every member of a college: one publish, which RabbitMQ's bindings fan out. A stored event for
    /// a college is expanded to its [`Audience::Members`] instead (each copy carries the member's
    /// sequence number).
    College(i64),
    /// Every staff member and admin (the support desk's agents): one publish, fanned out too; expanded
    /// like [`Audience::College`] when stored.
    Staff,
    /// The postboxes these users have now, none created: a stored broadcast, one copy per member,
    /// persistent or transient as `POSTBOX_BROADCAST_DELIVERY` says.
    Members(Vec<i64>),
}

/// A chat message to mark delivered once an event carrying it reaches its receiver's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryMark {
    pub message_id: i64,
    pub receiver_id: i64,
}

/// An event on its way to postboxes, as Postbox publishes it: its `data` serialised once, and what
/// travels beside it in the AMQP message's properties (id, type, time, the chat message it carries),
/// so a poll hands the data over without parsing it. [`Envelope::to_json`] is the [`Event`] a client
/// gets.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub id: String,
    pub kind: String,
    /// Seconds since the Unix epoch when the event was created.
    pub timestamp: f64,
    pub data: Box<serde_json::value::RawValue>,
    pub mark: Option<DeliveryMark>,
    /// The event's number in its user's sequence, once stored for one user.
    pub seq: Option<i64>,
}

impl Envelope {
    /// The event carrying one of Postbox's own payloads.
    pub fn of<T: EventData>(data: &T) -> Self {
        Envelope {
            id: uuid::Uuid::now_v7().to_string(),
            kind: T::KIND.to_owned(),
            timestamp: unix_now(),
            data: serde_json::value::to_raw_value(data).expect("event payloads always serialise"),
            mark: data.delivery_mark(),
            seq: None,
        }
    }

    /// An event of a host application's own type, with any JSON value as data.
    pub fn custom(kind: &str, data: &serde_json::Value) -> Self {
        Envelope {
            id: uuid::Uuid::now_v7().to_string(),
            kind: kind.to_owned(),
            timestamp: unix_now(),
            data: serde_json::value::to_raw_value(data).expect("JSON values always serialise"),
            mark: None,
            seq: None,
        }
    }

    /// The same event under one user's sequence number.
    pub fn with_seq(&self, seq: i64) -> Self {
        Envelope {
            seq: Some(seq),
            ..self.clone()
        }
    }

    /// The event as clients get it, `{"id","event","data","timestamp"}` (seed 001's envelope), and
    /// `"seq"` when it has one.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_envelope(
            &mut out,
            &self.id,
            &self.kind,
            self.data.get().as_bytes(),
            self.timestamp,
            self.seq,
        );
        out
    }

    /// An envelope read back from its JSON (an outbox row, an event published by an earlier version).
    pub fn from_json(json: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Stored {
            id: String,
            event: String,
            data: Box<serde_json::value::RawValue>,
            timestamp: f64,
            #[serde(default)]
            seq: Option<i64>,
        }
        #[derive(Deserialize)]
        struct Carried {
            id: Option<i64>,
            receiver_id: Option<i64>,
        }
        let e: Stored = serde_json::from_slice(json)?;
        let mark = if e.event == kind::MESSAGE {
            serde_json::from_str::<Carried>(e.data.get())
                .ok()
                .and_then(|c| {
                    Some(DeliveryMark {
                        message_id: c.id?,
                        receiver_id: c.receiver_id?,
                    })
                })
        } else {
            None
        };
        Ok(Envelope {
            id: e.id,
            kind: e.event,
            timestamp: e.timestamp,
            data: e.data,
            mark,
            seq: e.seq,
        })
    }
}

/// Appends `{"id":…,"event":…,"data":…,"timestamp":…}` (and `"seq":…` when given) to `out`, from its
/// parts, `data` taken as the JSON it is.
pub fn write_envelope(
    out: &mut Vec<u8>,
    id: &str,
    kind: &str,
    data: &[u8],
    timestamp: f64,
    seq: Option<i64>,
) {
    let text = |s: &str| serde_json::to_string(s).expect("strings serialise");
    out.reserve(data.len() + id.len() + kind.len() + 64);
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(text(id).as_bytes());
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(text(kind).as_bytes());
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    out.extend_from_slice(b",\"timestamp\":");
    out.extend_from_slice(
        serde_json::to_string(&timestamp)
            .expect("numbers serialise")
            .as_bytes(),
    );
    if let Some(seq) = seq {
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(seq.to_string().as_bytes());
    }
    out.push(b'}');
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
#[schema(example = json!({"id": 812, "conversation_id": 31, "sender_id": 7, "sender_name": "Alice", "receiver_id": 9, "message": "See you at six?", "attachment": null, "attachment_type": null, "timestamp": "2026-12-04T18:02:11.204Z", "is_read": false, "delivered_at": null, "read_at": null}))]
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

    #[test]
    fn an_envelope_is_the_event_clients_get_and_reads_back_whole() {
        let typing = data::Typing {
            sender_id: 1,
            sender_name: "Ann \"the\" typist".into(),
            receiver_id: 2,
            is_typing: true,
        };
        let env = Envelope::of(&typing);
        let as_event: Event = serde_json::from_slice(&env.to_json()).unwrap();
        assert_eq!(as_event.id, env.id);
        assert_eq!(as_event.event, "typing");
        assert_eq!(as_event.timestamp, env.timestamp);
        assert_eq!(as_event.data, serde_json::to_value(&typing).unwrap());
        // Seed 001's field order.
        let json = String::from_utf8(env.to_json()).unwrap();
        let at = |key: &str| json.find(&format!("\"{key}\":")).unwrap();
        assert!(at("id") < at("event") && at("event") < at("data") && at("data") < at("timestamp"));
        let back = Envelope::from_json(&env.to_json()).unwrap();
        assert_eq!(
            (back.id, back.kind, back.data.get()),
            (env.id, env.kind, env.data.get())
        );
        assert_eq!(back.mark, None);
    }
}
