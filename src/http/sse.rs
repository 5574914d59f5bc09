//! `/api/v1/communication/sse/...`: Server-Sent Events over the same postboxes and event ids as the
//! long poll (seed 002's `/sse/events/`).
//!
//! The stream starts with a `connected` record, then sends each event as `id:` + `event:` + `data:` (the
//! event's `data` as JSON), and a `heartbeat` record when nothing happened for the heartbeat interval.
//! Delivery follows the cursor rule of the long poll: what the stream writes is parked in flight, not
//! acknowledged (a write reaching the connection says nothing of the client reading it), until the
//! client reconnects with `Last-Event-ID` (or `?last_event_id=`): that confirms up to that id, and the
//! rest is sent again with the same ids. So the stream ends by itself once half the postbox's window is
//! in flight, with a last `reconnect` record (the browser then reconnects with `Last-Event-ID`, after
//! the `retry:` the stream announced first), and after `POSTBOX_SSE_MAX_DURATION`. A newer stream or poll of the same registered client
//! takes its postbox over: the older stream ends.

use std::time::Duration;

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    delivery::{Ack, Batch, DeliveryError, Session},
    events::unix_now,
    http::{
        auth::PollingUser,
        docs::literal_schema,
        error::{ApiError, ErrorBody},
        extract::Query,
    },
    state::AppState,
    telemetry::names,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(events))
        .routes(routes!(test))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct SseParams {
    /// Stream this client's own postbox (registered on first use) instead of the user's shared one.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    client_id: Option<String>,
    /// Resume after this event id (what the `Last-Event-ID` header carries on automatic reconnects).
    #[param(max_length = 64)]
    last_event_id: Option<String>,
}

/// One record of the stream, as the API document describes it.
pub struct SseEvent;

literal_schema!(
    SseEvent,
    "SseEvent",
    serde_json::json!({
        "type": "object",
        "description": "One Server-Sent Events record: `event` is the type (`connected`, `heartbeat`, `message`, \
    `typing`, ...), `data` the JSON of the event's data, `id` the event id (absent on `connected`, `heartbeat` \
    and `reconnect`). `reconnect` is the last record of a stream that ends so that the client reconnects with \
    `Last-Event-ID`, which confirms what it received (events stay in flight until then)",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json"},
            "id": {"type": "string"}
        }
    })
);

/// The reconnection delay the stream asks browsers for (`retry:`, milliseconds): a stream that ended to
/// have its events confirmed is resumed at once.
const RECONNECT_MS: u32 = 500;

/// One SSE record.
fn record(id: Option<&str>, event: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 64);
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    // JSON never contains a raw newline, so one `data:` line is enough.
    out.push_str("data: ");
    out.push_str(data);
    out.push_str("\n\n");
    Bytes::from(out)
}

/// The first record: the reconnection delay, then `connected`.
fn connected_record(retry_ms: u32, data: &str) -> Bytes {
    let mut out = format!("retry: {retry_ms}\n").into_bytes();
    out.extend_from_slice(&record(None, "connected", data));
    Bytes::from(out)
}

/// The SSE records of a batch of events: the data as it came from the postbox, unparsed.
fn records(batch: &Batch) -> Bytes {
    let mut out = Vec::new();
    for e in batch.events() {
        // Postbox writes compact JSON: one `data:` line holds it.
        out.extend_from_slice(&record(
            Some(&e.id),
            &e.kind,
            &String::from_utf8_lossy(&e.data),
        ));
    }
    Bytes::from(out)
}

/// Stream events (Server-Sent Events).
///
/// `connected` first, then every event as an SSE record (`id`, `event`, `data`), and `heartbeat` records
/// when idle. Resume with `Last-Event-ID` (automatic in browsers) or `?last_event_id=`: nothing is lost,
/// unconfirmed events come again with the same ids. The stream ends after a while (5 minutes by
/// default); reconnect. It also ends when the token is revoked or expires (the reconnect gets 401). Authenticate with `?token=` (EventSource cannot set headers) or the header.
#[utoipa::path(
    get,
    path = "/sse/events/",
    operation_id = "sse_events",
    tag = "poll",
    params(SseParams, ("Last-Event-ID" = Option<String>, Header, description = "The last event id received")),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "Invalid client_id or last_event_id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 429, description = "The user holds too many long polls and event streams at once; see Retry-After", body = ErrorBody),
        (status = 503, description = "Broker or database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn events(
    State(state): State<AppState>,
    PollingUser(caller): PollingUser,
    headers: HeaderMap,
    Query(params): Query<SseParams>,
) -> Result<Response, ApiError> {
    if params.last_event_id.as_ref().is_some_and(|c| c.len() > 64) {
        return Err(ApiError::field(
            "last_event_id",
            "is longer than 64 characters",
        ));
    }
    let header_cursor = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let cursor = header_cursor
        .or(params.last_event_id)
        .filter(|c| !c.is_empty());
    let session = state
        .delivery
        .open(&caller, params.client_id.as_deref(), Ack::Cursor(cursor))
        .await?;
    let connected = connected_record(
        RECONNECT_MS,
        &serde_json::to_string(&Connected {
            user_id: caller.user.id,
            client_id: params.client_id,
            heartbeat: state.config.sse_heartbeat_secs,
            timestamp: unix_now(),
        })
        .expect("records serialise"),
    );
    let stream_state = Stream {
        ends_at: tokio::time::Instant::now() + state.config.sse_max_duration(),
        heartbeat: Duration::from_secs_f64(state.config.sse_heartbeat_secs),
        session,
        written: None,
        first: Some(connected),
        ending: false,
        _open: OpenStream::new(),
    };
    let body = Body::from_stream(stream::unfold(stream_state, next_record));
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// The `connected` record's data.
#[derive(Serialize)]
struct Connected {
    user_id: i64,
    client_id: Option<String>,
    /// Seconds between heartbeats.
    heartbeat: f64,
    timestamp: f64,
}

/// The `heartbeat` record's data.
#[derive(Serialize)]
struct Heartbeat {
    timestamp: f64,
}

struct Stream {
    session: Session,
    /// The batch written last: handed over when the stream asks for the next record (it reached the
    /// connection then).
    written: Option<Batch>,
    first: Option<Bytes>,
    heartbeat: Duration,
    ends_at: tokio::time::Instant,
    /// The `reconnect` record was sent: the stream ends.
    ending: bool,
    _open: OpenStream,
}

/// Counts an open stream in `postbox_sse_streams_open` while it lives.
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        metrics::gauge!(names::SSE_STREAMS_OPEN).increment(1.0);
        OpenStream
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!(names::SSE_STREAMS_OPEN).decrement(1.0);
    }
}

/// The stream's last record, `reconnect` with why (`confirm`: the client's reconnect confirms what it
/// got; `superseded`: a newer stream or poll of the client took its postbox over); the stream ends.
fn goodbye(mut s: Stream, reason: &'static str) -> (Result<Bytes, std::io::Error>, Stream) {
    s.ending = true;
    let data = serde_json::json!({ "reason": reason }).to_string();
    (Ok(record(None, "reconnect", &data)), s)
}

/// Produces the stream's next record; `None` ends it.
async fn next_record(mut s: Stream) -> Option<(Result<Bytes, std::io::Error>, Stream)> {
    if let Some(first) = s.first.take() {
        return Some((Ok(first), s));
    }
    if s.ending {
        return None;
    }
    // hyper asked for more: what was written before reached the connection. When the postbox holds
    // enough in flight, the stream says so and ends: the client's reconnect with `Last-Event-ID`
    // confirms it.
    if let Some(batch) = s.written.take()
        && batch.handed_over().await
    {
        return Some(goodbye(s, "confirm"));
    }
    let now = tokio::time::Instant::now();
    if now >= s.ends_at || s.session.closing() || s.session.ended().is_some() {
        return None;
    }
    let deadline = (now + s.heartbeat).min(s.ends_at);
    match s.session.next(deadline).await {
        Ok(batch) if batch.is_empty() => {
            let beat = record(
                None,
                "heartbeat",
                &serde_json::to_string(&Heartbeat {
                    timestamp: unix_now(),
                })
                .expect("records serialise"),
            );
            Some((Ok(beat), s))
        }
        Ok(batch) => {
            let bytes = records(&batch);
            s.written = Some(batch);
            Some((Ok(bytes), s))
        }
        // A newer stream or poll of this client took the postbox over: say so (a client sharing its
        // client_id with another tab takes a new one), and end.
        Err(DeliveryError::Superseded) => Some(goodbye(s, "superseded")),
        // A revoked or expired token ends the stream (a reconnect then gets 401).
        Err(DeliveryError::Ended(_)) => None,
        Err(e) => {
            tracing::warn!(error = %e, "SSE stream ends: the broker is unavailable");
            None
        }
    }
}

/// Check that the event stream works (no authentication): `connected`, three `test` events, end.
#[utoipa::path(
    get,
    path = "/sse/test/",
    operation_id = "sse_test",
    tag = "poll",
    responses((status = 200, description = "A short test stream", content_type = "text/event-stream", body = SseEvent))
)]
async fn test() -> Response {
    let records = stream::unfold(0u32, |n| async move {
        match n {
            0 => Some((
                Ok::<_, std::io::Error>(record(None, "connected", r#"{"status":"ok"}"#)),
                1,
            )),
            1..=3 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let data = json!({"n": n, "message": "SSE is working", "timestamp": unix_now()})
                    .to_string();
                Some((Ok(record(Some(&n.to_string()), "test", &data)), n + 1))
            }
            _ => None,
        }
    });
    let mut resp = Body::from_stream(records).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
