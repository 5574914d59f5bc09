//! The AMQP message of an event, both ways: what Postbox writes into a postbox and reads back.
//!
//! The body is the event's `data` (JSON); its id, type and creation time travel in the message's
//! properties, so a consumer hands the data over without parsing it:
//!
//! | where | what |
//! | --- | --- |
//! | `message_id` | the event id (UUIDv7) |
//! | `type` | the event type (`message`, `typing`, …) |
//! | `content_type` | `application/json` |
//! | header `x-postbox-ts` (double) | creation time, seconds since the Unix epoch |
//! | headers `x-postbox-message`, `x-postbox-receiver` (long) | the chat message a `message` event hands to its receiver |
//! | header `x-postbox-expires-at` (long, ms) | an ephemeral event's expiry (typing, presence, delivered) |
//! | header `x-postbox-seq` (long) | the event's number in its user's sequence, when it has one |
//!
//! A message without `message_id` was written by an earlier version of Postbox, whose body is the whole
//! envelope (`{"id","event","data","timestamp"}`): it is read by parsing the body.

use std::borrow::Cow;

use lapin::{
    BasicProperties,
    message::Delivery,
    types::{AMQPValue, FieldTable, ShortString},
};

use crate::events::{DeliveryMark, Envelope};

/// Header carrying an ephemeral event's expiry (milliseconds since the Unix epoch).
pub const EXPIRES_AT_HEADER: &str = "x-postbox-expires-at";
/// Header carrying the event's creation time (seconds since the Unix epoch, a double).
const TIMESTAMP_HEADER: &str = "x-postbox-ts";
/// Headers carrying the chat message a `message` event hands to its receiver.
const MESSAGE_HEADER: &str = "x-postbox-message";
const RECEIVER_HEADER: &str = "x-postbox-receiver";
/// Header carrying the event's number in its user's sequence.
const SEQ_HEADER: &str = "x-postbox-seq";

/// The properties of an event's message: `delivery_mode` 2 (persistent: it survives a broker restart
/// in a durable queue) or 1 (in memory).
pub fn properties(event: &Envelope, delivery_mode: u8) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(TIMESTAMP_HEADER.into(), AMQPValue::Double(event.timestamp));
    if let Some(mark) = event.mark {
        headers.insert(
            MESSAGE_HEADER.into(),
            AMQPValue::LongLongInt(mark.message_id),
        );
        headers.insert(
            RECEIVER_HEADER.into(),
            AMQPValue::LongLongInt(mark.receiver_id),
        );
    }
    if let Some(seq) = event.seq {
        headers.insert(SEQ_HEADER.into(), AMQPValue::LongLongInt(seq));
    }
    BasicProperties::default()
        .with_delivery_mode(delivery_mode)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(event.id.as_str()))
        .with_type(ShortString::from(event.kind.as_str()))
        .with_headers(headers)
}

/// The same, expiring `expires_at` (milliseconds since the Unix epoch) and after `ttl_ms` in RabbitMQ.
pub fn ephemeral_properties(event: &Envelope, expires_at: i64, ttl_ms: u128) -> BasicProperties {
    let props = properties(event, 1);
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(EXPIRES_AT_HEADER.into(), AMQPValue::LongLongInt(expires_at));
    props
        .with_expiration(ShortString::from(ttl_ms.max(1).to_string()))
        .with_headers(headers)
}

/// An event as read from a postbox: borrowed from the delivery, or parsed from an earlier version's
/// body.
#[derive(Debug)]
pub struct Received<'a> {
    pub id: Cow<'a, str>,
    pub kind: Cow<'a, str>,
    pub timestamp: f64,
    /// The event's `data` as JSON.
    pub data: Cow<'a, [u8]>,
    pub mark: Option<DeliveryMark>,
    pub seq: Option<i64>,
}

impl<'a> Received<'a> {
    /// An event about to be published, read as if it came from a postbox.
    pub fn of(event: &'a Envelope) -> Self {
        Received {
            id: Cow::Borrowed(&event.id),
            kind: Cow::Borrowed(&event.kind),
            timestamp: event.timestamp,
            data: Cow::Borrowed(event.data.get().as_bytes()),
            mark: event.mark,
            seq: event.seq,
        }
    }

    /// Appends the event as clients get it to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        crate::events::write_envelope(
            out,
            &self.id,
            &self.kind,
            &self.data,
            self.timestamp,
            self.seq,
        );
    }

    /// The event as clients get it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_json(&mut out);
        out
    }
}

/// Reads the event of a delivery; `None` when it is not one of Postbox's.
pub fn read(d: &Delivery) -> Option<Received<'_>> {
    let props = &d.properties;
    let (Some(id), Some(kind)) = (props.message_id().as_ref(), props.kind().as_ref()) else {
        return read_legacy(&d.data);
    };
    let headers = props.headers().as_ref();
    let long = |name: &str| match headers?.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        _ => None,
    };
    let timestamp = match headers.and_then(|h| h.inner().get(TIMESTAMP_HEADER)) {
        Some(AMQPValue::Double(t)) => *t,
        _ => 0.0,
    };
    let mark = match (long(MESSAGE_HEADER), long(RECEIVER_HEADER)) {
        (Some(message_id), Some(receiver_id)) => Some(DeliveryMark {
            message_id,
            receiver_id,
        }),
        _ => None,
    };
    Some(Received {
        id: Cow::Borrowed(id.as_str()),
        kind: Cow::Borrowed(kind.as_str()),
        timestamp,
        data: Cow::Borrowed(&d.data),
        mark,
        seq: long(SEQ_HEADER),
    })
}

/// The event id of a delivery (read without touching the body, but for an earlier version's).
pub fn event_id(d: &Delivery) -> Option<String> {
    match d.properties.message_id().as_ref() {
        Some(id) => Some(id.to_string()),
        None => read_legacy(&d.data).map(|e| e.id.into_owned()),
    }
}

/// The expiry of an ephemeral event, when it has one.
pub fn expires_at(d: &Delivery) -> Option<i64> {
    match d
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(EXPIRES_AT_HEADER)?
    {
        AMQPValue::LongLongInt(t) => Some(*t),
        _ => None,
    }
}

/// Whether a dead-lettered message was an ephemeral event (those expire by design).
pub fn is_ephemeral(headers: Option<&FieldTable>) -> bool {
    headers.is_some_and(|h| h.inner().contains_key(EXPIRES_AT_HEADER))
}

/// The creation time of a dead-lettered event, when known.
pub fn timestamp_of(properties: &BasicProperties, body: &[u8]) -> Option<f64> {
    match properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(TIMESTAMP_HEADER))
    {
        Some(AMQPValue::Double(t)) => Some(*t),
        _ => read_legacy(body).map(|e| e.timestamp),
    }
}

/// The sequence number of a dead-lettered event, when it has one.
pub fn seq_of(properties: &BasicProperties) -> Option<i64> {
    match properties.headers().as_ref()?.inner().get(SEQ_HEADER)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        _ => None,
    }
}

/// An event written by an earlier version: the body is the whole envelope.
fn read_legacy(body: &[u8]) -> Option<Received<'static>> {
    let e = Envelope::from_json(body).ok()?;
    Some(Received {
        id: Cow::Owned(e.id),
        kind: Cow::Owned(e.kind),
        timestamp: e.timestamp,
        data: Cow::Owned(e.data.get().as_bytes().to_vec()),
        mark: e.mark,
        seq: e.seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{MessageView, data};

    fn delivery(props: BasicProperties, body: Vec<u8>) -> Delivery {
        let mut d = Delivery::mock(
            1,
            ShortString::from("postbox.events"),
            ShortString::from("user.1"),
            false,
            body,
        );
        d.properties = props;
        d
    }

    #[test]
    fn an_event_reads_back_from_its_properties_without_its_body_being_parsed() {
        let view = MessageView {
            id: 7,
            conversation_id: 3,
            sender_id: 1,
            sender_name: "Ann".into(),
            receiver_id: 2,
            message: "hi".into(),
            attachment: None,
            attachment_type: None,
            timestamp: "2026-12-02T00:00:00.000Z".into(),
            is_read: false,
            delivered_at: None,
            read_at: None,
        };
        let env = Envelope::of(&view);
        // A body that is not JSON at all: only the properties are read.
        let d = delivery(properties(&env, 2), b"not parsed".to_vec());
        let got = read(&d).unwrap();
        assert_eq!(
            (got.id.as_ref(), got.kind.as_ref()),
            (env.id.as_str(), "message")
        );
        assert_eq!(got.timestamp, env.timestamp);
        assert_eq!(got.data.as_ref(), b"not parsed");
        assert_eq!(
            got.mark,
            Some(DeliveryMark {
                message_id: 7,
                receiver_id: 2
            })
        );
        assert_eq!(event_id(&d).as_deref(), Some(env.id.as_str()));
    }

    #[test]
    fn an_earlier_versions_envelope_body_is_read_too() {
        let env = Envelope::of(&data::Typing {
            sender_id: 1,
            sender_name: "Ann".into(),
            receiver_id: 2,
            is_typing: true,
        });
        let d = delivery(BasicProperties::default(), env.to_json());
        let got = read(&d).unwrap();
        assert_eq!(got.to_json(), env.to_json());
        assert_eq!(event_id(&d), Some(env.id.clone()));
        let ephemeral = delivery(ephemeral_properties(&env, 42, 6000), Vec::new());
        assert_eq!(expires_at(&ephemeral), Some(42));
        assert!(read(&delivery(BasicProperties::default(), b"{}".to_vec())).is_none());
    }
}
