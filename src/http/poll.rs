//! `/api/v1/communication/poll/...`: the long poll (seed 001's contract).
//!
//! `GET poll/events/` answers at once with what the caller's postbox holds, or waits (push, no sleep
//! loop) until the first event arrives or the deadline passes. The events are acknowledged to RabbitMQ
//! only after the whole response body was handed to the connection; a client that goes away before
//! that leaves them in its postbox for the next poll. With `?client_id=`, the client polls its own
//! postbox (registered on first use), so several tabs of one user each receive every event.

use axum::{
    body::Body,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    delivery::{Ack, Batch, DeliveryError, Session},
    events::{Event, unix_now},
    http::{
        auth::{AuthUser, PollingUser},
        error::{ApiError, ErrorBody},
        extract::{Query, parse_json},
    },
    state::AppState,
    telemetry::names,
};

/// The longest hold a client may ask for.
const MAX_HOLD_SECS: f64 = 60.0;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(events))
        .routes(routes!(register))
        .routes(routes!(missed))
        .routes(routes!(test))
        .routes(routes!(disconnect))
}

/// The long-poll answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"events": [{"id": "0193a1f2-7c1e-7b3a-9f00-5d2c4e8a1b01", "event": "message", "data": {"id": 812, "conversation_id": 31, "sender_id": 7, "sender_name": "Alice", "receiver_id": 9, "message": "See you at six?", "attachment": null, "attachment_type": null, "timestamp": "2026-12-04T18:02:11.204Z", "is_read": false, "delivered_at": null, "read_at": null}, "timestamp": 1796407331.204, "seq": 42}], "timestamp": 1796407331.31}))]
pub struct PollResponse {
    /// Events in postbox order (possibly none).
    pub events: Vec<Event>,
    /// Server time, seconds since the Unix epoch.
    pub timestamp: f64,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PollParams {
    /// Poll this client's own postbox (registered on first use) instead of the user's shared one.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    client_id: Option<String>,
    /// The id of the last event this client processed. Sending it (even empty, on the first poll)
    /// turns on acknowledgement by cursor: events up to it are removed from the postbox, later ones
    /// not confirmed yet come again with the same ids. Implied by `client_id`.
    #[param(max_length = 64)]
    last_event_id: Option<String>,
    /// How long to hold the poll when there is nothing to deliver, in seconds (0 to 60; default the
    /// server's deadline, 5.5 s). Idle clients that ask for a longer hold cost fewer requests.
    #[param(value_type = Option<f64>, minimum = 0, maximum = 60)]
    timeout: Option<String>,
    /// The user token, when not sent in the `Authorization` header.
    #[expect(
        dead_code,
        reason = "read by the authentication extractor; declared for the API document"
    )]
    token: Option<String>,
}

/// Wait for events.
///
/// Answers at once with what the postbox holds (up to 100 events), otherwise waits until the first event
/// arrives (pushed by RabbitMQ) or the deadline passes (5.5 s by default) and answers `[]`. Poll again
/// right after each answer. Events are removed from the postbox only once the answer was sent.
#[utoipa::path(
    get,
    path = "/poll/events/",
    tag = "poll",
    params(PollParams),
    responses(
        (status = 200, description = "Events (possibly none)", body = PollResponse),
        (status = 400, description = "Invalid client_id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token, or the token was revoked or expired while the poll waited", body = ErrorBody),
        (status = 409, description = "`superseded`: a newer poll or stream with the same client_id took its postbox over. A client that gets this for its current poll shares its client_id with another tab or device and should take a new one", body = ErrorBody),
        (status = 429, description = "The user holds too many long polls and event streams at once; see Retry-After", body = ErrorBody),
        (status = 503, description = "Broker or database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn events(
    State(state): State<AppState>,
    PollingUser(caller): PollingUser,
    Query(params): Query<PollParams>,
) -> Result<Response, ApiError> {
    // Validate everything before any side effect (registration, presence).
    let hold = match params.timeout.as_deref() {
        None => state.config.poll_timeout(),
        Some(t) => match t.parse::<f64>() {
            Ok(secs) if (0.0..=MAX_HOLD_SECS).contains(&secs) => {
                std::time::Duration::from_secs_f64(secs.min(state.config.max_hold_secs))
            }
            _ => {
                return Err(ApiError::field(
                    "timeout",
                    "must be a number of seconds from 0 to 60",
                ));
            }
        },
    };
    // Cursor mode for registered clients and for anyone sending a cursor; seed mode otherwise.
    let ack = if params.client_id.is_some() || params.last_event_id.is_some() {
        Ack::Cursor(params.last_event_id)
    } else {
        Ack::OnHandOver
    };
    let mut session = state
        .delivery
        .open(&caller, params.client_id.as_deref(), ack)
        .await?;
    let mut tracker = PollTracker::start();
    let batch = match session.next(tokio::time::Instant::now() + hold).await {
        Ok(batch) => batch,
        Err(DeliveryError::Ended(ended)) => {
            tracker.finish(ended.outcome());
            return Err(DeliveryError::Ended(ended).into());
        }
        Err(DeliveryError::Superseded) => {
            tracker.finish("superseded");
            return Err(DeliveryError::Superseded.into());
        }
        Err(e) => {
            tracker.finish("error");
            return Err(e.into());
        }
    };
    if batch.is_empty() {
        tracker.finish(if batch.attaching() {
            "attaching"
        } else {
            "timeout"
        });
    }
    Ok(poll_response(session, batch, tracker))
}

/// Counts a poll in flight until it finishes, and its outcome. A poll dropped before it finished (the
/// client went away while it waited or before the answer was written) counts as `disconnected`.
struct PollTracker {
    outcome: Option<&'static str>,
}

impl PollTracker {
    fn start() -> Self {
        metrics::gauge!(names::POLLS_IN_FLIGHT).increment(1.0);
        PollTracker { outcome: None }
    }

    fn finish(&mut self, outcome: &'static str) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
            metrics::gauge!(names::POLLS_IN_FLIGHT).decrement(1.0);
            metrics::counter!(names::POLL_OUTCOMES, "outcome" => outcome).increment(1);
        }
    }
}

impl Drop for PollTracker {
    fn drop(&mut self) {
        self.finish("disconnected");
    }
}

/// `{"events":[...],"timestamp":...}` built from the raw event bodies, acknowledging them once sent.
/// The session (the user's slot under the poll cap) is held until the answer was written.
fn poll_response(session: Session, batch: Batch, mut tracker: PollTracker) -> Response {
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(b"{\"events\":[");
    for (i, e) in batch.events().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        e.write_json(&mut body);
    }
    body.extend_from_slice(format!("],\"timestamp\":{}}}", unix_now()).as_bytes());
    let response_body = if batch.is_empty() {
        drop(session);
        Body::from(body)
    } else {
        // The second stream item runs after hyper wrote the first one: only then are the events acked
        // and the messages marked delivered. If the connection drops before, the stream (and the batch)
        // is dropped: the events stay queued.
        // No Content-Length on purpose: with one, hyper stops polling the body after the last byte and
        // the acknowledging item would never run (chunked encoding makes it poll to the end).
        let ack = stream::once(async move {
            batch.handed_over().await;
            tracker.finish("events");
            drop(session);
        })
        .filter_map(|()| async { None::<Result<Bytes, std::io::Error>> });
        Body::from_stream(stream::once(async move { Ok(Bytes::from(body)) }).chain(ack))
    };
    let mut resp = response_body.into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A client registration.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// Choose the id (for example one per browser tab, kept in sessionStorage); a random one otherwise.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    client_id: Option<String>,
}

/// A registered client.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"client_id": "tab-3f9c", "user_id": 9, "queue": "postbox.client.9.tab-3f9c"}))]
pub struct Registered {
    pub client_id: String,
    pub user_id: i64,
    /// The RabbitMQ queue behind this client's postbox (for operators).
    pub queue: String,
}

/// Register a client (tab or device) with its own postbox.
///
/// Afterwards poll with `?client_id=...`: this client then receives every event of the user, whatever
/// other clients do. Registering is optional (the first poll with a new `client_id` registers it) and
/// idempotent. A user has at most 10 clients by default; one more evicts the least recently seen.
#[utoipa::path(
    post,
    path = "/poll/register/",
    tag = "poll",
    request_body(content = Option<RegisterBody>, description = "Optional; `{}` or no body picks a random id"),
    responses(
        (status = 201, description = "Registered", body = Registered),
        (status = 400, description = "Invalid client_id or body", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 503, description = "Database or broker unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn register(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<Registered>), ApiError> {
    let body: RegisterBody = if body.is_empty() {
        RegisterBody::default()
    } else {
        parse_json::<Option<RegisterBody>>(&body)?.unwrap_or_default()
    };
    let (client_id, queue) = state.delivery.register(&user, body.client_id).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(Registered {
            queue,
            client_id,
            user_id: user.id,
        }),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct MissedParams {
    /// The last sequence number the client has (`seq` of an event); 0 for everything kept.
    #[param(minimum = 0)]
    after: i64,
    /// The most events to return (1 to 500; default 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u64>,
}

/// The stored events of the caller's sequence after a number.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"events": [{"id": "0193a1f2-7c1e-7b3a-9f00-5d2c4e8a1b01", "event": "message", "data": {"id": 812, "conversation_id": 31, "sender_id": 7, "sender_name": "Alice", "receiver_id": 9, "message": "See you at six?", "attachment": null, "attachment_type": null, "timestamp": "2026-12-04T18:02:11.204Z", "is_read": false, "delivered_at": null, "read_at": null}, "timestamp": 1796407331.204, "seq": 42}], "last_seq": 42, "kept": true, "more": false}))]
pub struct MissedResponse {
    /// The events after `after`, oldest first, as a poll carries them (each with its `seq`).
    #[schema(value_type = Vec<Event>)]
    pub events: Vec<Box<serde_json::value::RawValue>>,
    /// The caller's last sequence number now.
    pub last_seq: i64,
    /// `false` when events right after `after` are no longer kept (older than the retention,
    /// `POSTBOX_EVENT_RETENTION_SECS`): reload what you show from the REST API instead.
    pub kept: bool,
    /// `true` when `limit` cut the answer: ask again after the last `seq` returned.
    pub more: bool,
}

/// Events missed: fill a jump in the sequence.
///
/// Every stored event a user receives (`message`, `read_receipt`, `notification`, `support_*`) carries
/// the next number of the user's sequence as `seq`. A client that saw 41 and then 44, or a `resync`
/// with `seq_from: 42`, asks for `?after=41` and gets the events it lacks (the same ids as in the
/// postbox: dedupe by `id`). Events are kept for `POSTBOX_EVENT_RETENTION_SECS` (a day by default,
/// never less than a postbox keeps them); `kept: false` says the range is gone.
#[utoipa::path(
    get,
    path = "/poll/missed/",
    tag = "poll",
    params(MissedParams),
    responses(
        (status = 200, description = "The events after `after`", body = MissedResponse),
        (status = 400, description = "Invalid `after` or `limit`", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn missed(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(params): Query<MissedParams>,
) -> Result<axum::Json<MissedResponse>, ApiError> {
    let limit = params.limit.unwrap_or(crate::delivery::MISSED_PAGE);
    if !(1..=crate::delivery::MISSED_PAGE).contains(&limit) {
        return Err(ApiError::field("limit", "must be from 1 to 500"));
    }
    let found = state.delivery.missed(&user, params.after, limit).await?;
    let events = found
        .events
        .into_iter()
        .map(serde_json::value::RawValue::from_string)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::Internal(format!("a kept event is not JSON: {e}")))?;
    Ok(axum::Json(MissedResponse {
        events,
        last_seq: found.last_seq,
        kept: found.kept,
        more: found.more,
    }))
}

/// The seed's test answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestResponse {
    /// Always `ok`.
    pub status: String,
    pub message: String,
    pub timestamp: f64,
}

/// Check that long polling is reachable (no authentication).
#[utoipa::path(
    get,
    path = "/poll/test/",
    tag = "poll",
    responses((status = 200, description = "The service answers", body = TestResponse))
)]
async fn test() -> axum::Json<TestResponse> {
    axum::Json(TestResponse {
        status: "ok".into(),
        message: "Long polling is working".into(),
        timestamp: unix_now(),
    })
}

/// The disconnect answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DisconnectResponse {
    /// Always `disconnected`.
    pub status: String,
    pub user_id: i64,
}

/// Mark the caller offline now (on page unload), instead of after the online window.
#[utoipa::path(
    post,
    path = "/poll/disconnect/",
    tag = "poll",
    responses(
        (status = 200, description = "The caller is offline", body = DisconnectResponse),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn disconnect(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<axum::Json<DisconnectResponse>, ApiError> {
    state.delivery.disconnect(user.id).await?;
    Ok(axum::Json(DisconnectResponse {
        status: "disconnected".into(),
        user_id: user.id,
    }))
}
