//! `/api/v1/communication/chats/...`: the chat API (seed 002's URLs and field names).

use axum::{
    body::Body,
    extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    chat::{
        self, ConversationView, HistoryPage, MarkRead, MarkReadResult, OnlineUsers, UnreadCounts,
        attachments::Upload,
    },
    db::chat::Cursor,
    events::MessageView,
    http::{
        auth::AuthUser,
        docs::{MAX_ID, id_schema, literal_schema, nullable},
        error::{ApiError, ErrorBody},
        extract::{Json, Query, parse_json, query_time, read_body},
    },
    state::AppState,
    validate as text,
};

pub fn router(max_attachment_bytes: usize) -> OpenApiRouter<AppState> {
    // Sends may carry an attachment: this route alone accepts bodies up to the attachment limit (JSON
    // sends are still held to the general body limit in the handler).
    let send = OpenApiRouter::new()
        .routes(routes!(send))
        .layer(DefaultBodyLimit::max(max_attachment_bytes + 64 * 1024));
    OpenApiRouter::new()
        .merge(send)
        .routes(routes!(attachment))
        .routes(routes!(conversations))
        .routes(routes!(history))
        .routes(routes!(mark_read))
        .routes(routes!(typing))
        .routes(routes!(unread_count))
        .routes(routes!(online_users))
}

/// A positive id as JSON number or numeric string (DRF clients send either); see [`id_schema`].
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Number(i64),
    /// JSON Schema counts `303.0` as an integer; so do we.
    Float(f64),
    Text(String),
}

/// A JSON integer, also written with a zero fraction (`303.0`), as JSON Schema allows.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Int {
    Exact(i64),
    Float(f64),
}

impl Int {
    /// The value when it is an integer within `range`.
    pub fn within(self, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        let v = match self {
            Int::Exact(n) => n,
            Int::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => f as i64,
            Int::Float(_) => return None,
        };
        range.contains(&v).then_some(v)
    }
}

impl Id {
    /// The id, if it is one the document allows: 1 to [`MAX_ID`], a numeric string without sign,
    /// spaces or leading zeros.
    pub fn parse(self, field: &'static str) -> Result<i64, ApiError> {
        let id = match self {
            Id::Number(n) => n,
            Id::Float(f) => Int::Float(f).within(1..=MAX_ID).unwrap_or(0),
            Id::Text(s) => {
                let digits =
                    s.len() <= 15 && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
                if !digits {
                    return Err(ApiError::field(field, "must be a positive integer id"));
                }
                s.parse().unwrap_or(0)
            }
        };
        if !(1..=MAX_ID).contains(&id) {
            return Err(ApiError::field(field, "must be a positive integer id"));
        }
        Ok(id)
    }
}

/// A message to send as JSON.
#[derive(Debug, Deserialize)]
pub struct SendBody {
    receiver: Option<Id>,
    #[serde(default)]
    message: String,
}

literal_schema!(
    SendBody,
    "SendBody",
    serde_json::json!({
        "type": "object",
        "required": ["receiver", "message"],
        "properties": {
            "receiver": id_schema(),
            "message": {"type": "string", "maxLength": 10000, "pattern": text::NOT_BLANK_PATTERN,
                        "description": "The text; not blank, at most 10 000 characters, no control characters but tab, line feed and carriage return"}
        }
    })
);

/// A message with an attachment, as `multipart/form-data` (described by its literal schema).
pub struct SendForm;

literal_schema!(
    SendForm,
    "SendForm",
    serde_json::json!({"allOf": [
        {
            "type": "object",
            "additionalProperties": false,
            "required": ["receiver"],
            "properties": {
                "receiver": {"type": "string", "pattern": "^[1-9][0-9]{0,14}$", "description": "The receiver's user id"},
                "message": {"type": "string", "maxLength": 10000, "pattern": text::PATTERN,
                            "description": "The text; may be blank when there is an attachment; no control characters but tab, line feed and carriage return"},
                "attachment": {"type": "string", "format": "binary",
                               "description": "An image, video or document (type detected from the content; others are refused with 415)"}
            }
        },
        {"anyOf": [
            {"type": "object", "required": ["attachment"]},
            {"type": "object", "required": ["message"], "properties": {"message": {"type": "string", "pattern": "\\S"}}}
        ]}
    ]})
);

/// Send a message, with an optional attachment.
///
/// JSON (`{"receiver", "message"}`) or `multipart/form-data` (`receiver`, `message`, `attachment`).
/// Stores the message and publishes a `message` event to the receiver's postbox and to the sender's (so
/// the sender's other devices see it), after the commit, with publisher confirms. While RabbitMQ is
/// unreachable the send is refused with 503 and nothing is stored. A refused send stores no
/// attachment; each user's attachments count against a quota (`POSTBOX_ATTACHMENT_QUOTA_BYTES`).
#[utoipa::path(
    post,
    path = "/chats/",
    tag = "chats",
    request_body(content(
        (SendBody = "application/json"),
        (SendForm = "multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Stored and announced", body = MessageView),
        (status = 400, description = "Bad JSON or form, missing receiver, blank or too long message, control characters in it", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Sending to yourself", body = ErrorBody),
        (status = 404, description = "No such receiver", body = ErrorBody),
        (status = 413, description = "Body or attachment too large, or the sender's attachment quota exceeded", body = ErrorBody),
        (status = 415, description = "Neither JSON nor a form, or an attachment type that is not accepted", body = ErrorBody),
        (status = 429, description = "Too many messages per second; see Retry-After", body = ErrorBody),
        (status = 503, description = "Broker or database unavailable, or too many uploads in progress; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn send(
    State(state): State<AppState>,
    user: AuthUser,
    req: Request,
) -> Result<(StatusCode, axum::Json<MessageView>), ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (receiver, text, upload) = if content_type.starts_with("multipart/form-data") {
        // The form is read into memory (nothing is written before the send is accepted); a turn
        // bounds how many are held at once.
        let turn = state.chat.upload_turn().await?;
        let form = Multipart::from_request(req, &state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid form: {}", e.body_text())))?;
        let (receiver, text, file) = read_form(&state, form).await?;
        (receiver, text, file.map(|f| Upload::new(f, turn)))
    } else {
        let mime = content_type.split(';').next().unwrap_or_default().trim();
        if !(mime == "application/json" || mime.ends_with("+json")) {
            return Err(ApiError::UnsupportedMediaType(
                "send JSON (`Content-Type: application/json`) or a multipart/form-data form".into(),
            ));
        }
        // This route admits bodies up to the attachment limit (for forms): JSON stops at the body limit.
        let bytes = read_body(req, state.config.max_body_bytes).await?;
        let body: SendBody = parse_json(&bytes)?;
        let receiver = body
            .receiver
            .ok_or_else(|| ApiError::field("receiver", "this field is required"))?
            .parse("receiver")?;
        (receiver, body.message, None)
    };
    let view = state.chat.send(&user.0, receiver, text, upload).await?;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

/// Reads `receiver`, `message` and `attachment` from a form, into memory: the attachment up to the
/// attachment limit, the other fields up to the body limit (413 as soon as one is beyond).
async fn read_form(
    state: &AppState,
    mut form: Multipart,
) -> Result<(i64, String, Option<Bytes>), ApiError> {
    let (mut receiver, mut text, mut file) = (None, String::new(), None);
    let invalid = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("request body is too large".into())
        } else {
            ApiError::BadRequest(format!("invalid form: {}", e.body_text()))
        }
    };
    while let Some(mut field) = form.next_field().await.map_err(invalid)? {
        let name = field.name().unwrap_or_default().to_owned();
        let limit = match name.as_str() {
            "receiver" | "message" => state.config.max_body_bytes,
            "attachment" if file.is_some() => {
                return Err(ApiError::BadRequest(
                    "a message carries one attachment".into(),
                ));
            }
            "attachment" => state.config.max_attachment_bytes,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown form field {other:?}: expected receiver, message, attachment"
                )));
            }
        };
        let mut bytes = BytesMut::new();
        while let Some(chunk) = field.chunk().await.map_err(invalid)? {
            if bytes.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge(match name.as_str() {
                    "attachment" => format!("the attachment is larger than {limit} bytes"),
                    _ => format!("form field `{name}` is larger than {limit} bytes"),
                }));
            }
            bytes.extend_from_slice(&chunk);
        }
        let bytes = bytes.freeze();
        let text_of = |b: &Bytes| {
            String::from_utf8(b.to_vec())
                .map_err(|_| ApiError::field("message", "must be UTF-8 text"))
        };
        match name.as_str() {
            "receiver" => receiver = Some(Id::Text(text_of(&bytes)?).parse("receiver")?),
            "message" => text = text_of(&bytes)?,
            _ => file = Some(bytes),
        }
    }
    let receiver = receiver.ok_or_else(|| ApiError::field("receiver", "this field is required"))?;
    Ok((receiver, text, file))
}

/// Download a message's attachment (its sender and receiver only).
#[utoipa::path(
    get,
    path = "/chats/attachments/{message_id}/",
    tag = "chats",
    params(("message_id" = i64, Path, description = "The message carrying the attachment", minimum = 1, maximum = 999_999_999_999_999_i64)),
    responses(
        (status = 200, description = "The file, streamed with its `Content-Length` and its detected content type", content(
            (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/png"), (Vec<u8> = "image/gif"), (Vec<u8> = "image/webp"),
            (Vec<u8> = "image/bmp"), (Vec<u8> = "video/mp4"), (Vec<u8> = "video/webm"), (Vec<u8> = "video/quicktime"),
            (Vec<u8> = "video/x-matroska"), (Vec<u8> = "video/x-msvideo"), (Vec<u8> = "application/pdf"),
            (Vec<u8> = "application/msword"),
            (Vec<u8> = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
            (Vec<u8> = "application/vnd.ms-excel"),
            (Vec<u8> = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
            (Vec<u8> = "application/vnd.ms-powerpoint"),
            (Vec<u8> = "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
            (Vec<u8> = "application/vnd.oasis.opendocument.text"),
            (Vec<u8> = "application/vnd.oasis.opendocument.spreadsheet"),
            (Vec<u8> = "application/vnd.oasis.opendocument.presentation"),
            (Vec<u8> = "application/rtf"), (String = "text/plain"),
        )),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such attachment for the caller", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn attachment(
    State(state): State<AppState>,
    user: AuthUser,
    Path(message_id): Path<String>,
) -> Result<Response, ApiError> {
    let message_id = Id::Text(message_id).parse("message_id")?;
    let (file_type, download) = state.chat.open_attachment(&user.0, message_id).await?;
    let disposition = if file_type.kind == "document" {
        format!(
            "attachment; filename=\"message-{message_id}.{}\"",
            file_type.ext
        )
    } else {
        "inline".to_owned()
    };
    // Streamed from the file, never read whole into memory.
    Ok((
        [
            (header::CONTENT_TYPE, file_type.mime.to_owned()),
            (header::CONTENT_LENGTH, download.len.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (header::CACHE_CONTROL, "private, max-age=86400".to_owned()),
        ],
        Body::from_stream(download.body),
    )
        .into_response())
}

/// List the caller's conversations, most recent activity first.
#[utoipa::path(
    get,
    path = "/chats/conversations/",
    tag = "chats",
    responses(
        (status = 200, description = "Conversations with the other user, last message and unread count", body = [ConversationView]),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn conversations(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<axum::Json<Vec<ConversationView>>, ApiError> {
    Ok(axum::Json(state.chat.conversations(&user.0).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryParams {
    /// Older than this message id (the previous page when scrolling up).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 999_999_999_999_999_i64)]
    before: Option<String>,
    /// Newer than this message id, or than this RFC 3339 time (catch-up, as seed 003's `since`).
    #[param(schema_with = since_schema)]
    since: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
}

fn since_schema() -> utoipa::openapi::schema::Schema {
    serde_json::from_value(serde_json::json!({
        "oneOf": [
            {"type": "integer", "format": "int64", "minimum": 0, "maximum": MAX_ID},
            {"type": "string", "format": "date-time"}
        ]
    }))
    .expect("a valid schema")
}

/// Read the history with another user, one page at a time.
///
/// Without a cursor: the newest page. `before=<id>`: the page before it (infinite scroll). `since=<id or
/// time>`: what came after it, oldest first (catch-up). Both: what lies between, oldest first. Messages are in chronological order within a
/// page; paging by id keeps pages stable while new messages arrive.
#[utoipa::path(
    get,
    path = "/chats/conversation/{user_id}/",
    tag = "chats",
    params(("user_id" = i64, Path, description = "The other participant", minimum = 1, maximum = 999_999_999_999_999_i64), HistoryParams),
    responses(
        (status = 200, description = "A page of messages", body = HistoryPage),
        (status = 400, description = "Invalid cursor or limit", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn history(
    State(state): State<AppState>,
    user: AuthUser,
    Path(other): Path<String>,
    Query(params): Query<HistoryParams>,
) -> Result<axum::Json<HistoryPage>, ApiError> {
    let other = Id::Text(other).parse("user_id")?;
    let limit = match params.limit.as_deref() {
        None => 50,
        Some(l) => match l.trim().parse::<u64>() {
            Ok(n) if (1..=chat::MAX_PAGE).contains(&n) => n,
            _ => return Err(ApiError::field("limit", "must be an integer from 1 to 200")),
        },
    };
    let cursor = match (params.before.as_deref(), params.since.as_deref()) {
        (Some(b), Some(s)) => {
            let before = Id::Text(b.to_owned()).parse("before")?;
            match parse_since(s)? {
                Cursor::SinceId(id) => Cursor::Between {
                    since_id: Some(id),
                    since_time: None,
                    before,
                },
                Cursor::SinceTime(t) => Cursor::Between {
                    since_id: None,
                    since_time: Some(t),
                    before,
                },
                other => other,
            }
        }
        (Some(b), None) => Cursor::Before(Id::Text(b.to_owned()).parse("before")?),
        (None, Some(s)) => parse_since(s)?,
        (None, None) => Cursor::Latest,
    };
    Ok(axum::Json(
        state.chat.history(&user.0, other, cursor, limit).await?,
    ))
}

/// `since` is a message id or an RFC 3339 time.
fn parse_since(s: &str) -> Result<Cursor, ApiError> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<i64>() {
            Ok(id) if id <= MAX_ID => Ok(Cursor::SinceId(id)),
            _ => Err(ApiError::field("since", "is too large")),
        };
    }
    query_time(s)
        .map(Cursor::SinceTime)
        .ok_or_else(|| ApiError::field("since", "must be a message id or an RFC 3339 time"))
}

/// What to mark read: a conversation (by id or by the other user, or given by message ids), optionally
/// narrowed to some messages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkReadBody {
    conversation_id: Option<Id>,
    user_id: Option<Id>,
    message_ids: Option<Vec<Int>>,
    up_to: Option<Int>,
}

literal_schema!(
    MarkReadBody,
    "MarkReadBody",
    serde_json::json!({"allOf": [{
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "conversation_id": nullable(id_schema()),
            "user_id": nullable(id_schema()),
            "message_ids": {"type": ["array", "null"], "maxItems": 1000,
                            "items": {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID},
                            "description": "Only these messages (else every unread message of the conversation)"},
            "up_to": {"type": ["integer", "null"], "format": "int64", "minimum": 1, "maximum": MAX_ID,
                      "description": "Only messages up to this id"}
        },
        "description": "The conversation by `conversation_id`, by the other participant's `user_id`, or by `message_ids`"
    }, {"anyOf": [
        {"type": "object", "required": ["conversation_id"], "properties": {"conversation_id": id_schema()}},
        {"type": "object", "required": ["user_id"], "properties": {"user_id": id_schema()}},
        {"type": "object", "required": ["message_ids"],
         "properties": {"message_ids": {"type": "array", "items": {"type": "integer"}, "minItems": 1}}}
    ]}]})
);

/// Mark messages read and tell their sender (`read_receipt` event).
///
/// Marks the caller's unread messages of a conversation read (all of them, or `message_ids`, or those up
/// to `up_to`), lowers the unread count, and sends a `read_receipt` event (`message_ids`, `reader_id`,
/// `read_at`) to the sender and to the caller's other devices.
#[utoipa::path(
    post,
    path = "/chats/mark-read/",
    tag = "chats",
    request_body = MarkReadBody,
    responses(
        (status = 200, description = "Marked", body = MarkReadResult),
        (status = 400, description = "Nothing identifies the conversation, or a bad field", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such conversation for the caller", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "Broker or database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn mark_read(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<MarkReadBody>,
) -> Result<axum::Json<MarkReadResult>, ApiError> {
    let message_ids = match body.message_ids {
        Some(ids) if ids.len() > 1000 => {
            return Err(ApiError::field("message_ids", "at most 1000 ids"));
        }
        Some(ids) => Some(
            ids.into_iter()
                .map(|i| i.within(1..=MAX_ID))
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(|| ApiError::field("message_ids", "ids are positive integers"))?,
        ),
        None => None,
    };
    let up_to = body
        .up_to
        .map(|i| {
            i.within(1..=MAX_ID)
                .ok_or_else(|| ApiError::field("up_to", "must be a positive integer id"))
        })
        .transpose()?;
    let req = MarkRead {
        conversation_id: body
            .conversation_id
            .map(|i| i.parse("conversation_id"))
            .transpose()?,
        user_id: body.user_id.map(|i| i.parse("user_id")).transpose()?,
        message_ids,
        up_to,
    };
    Ok(axum::Json(state.chat.mark_read(&user.0, req).await?))
}

/// A typing signal.
#[derive(Debug, Deserialize)]
pub struct TypingBody {
    receiver: Option<Id>,
    #[serde(default = "yes")]
    is_typing: bool,
}

literal_schema!(
    TypingBody,
    "TypingBody",
    serde_json::json!({
        "type": "object",
        "required": ["receiver"],
        "properties": {
            "receiver": id_schema(),
            "is_typing": {"type": "boolean", "default": true, "description": "`false` when the user stopped typing"}
        }
    })
);

fn yes() -> bool {
    true
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TypingResult {
    /// Always `ok`.
    pub status: String,
}

/// Tell someone you are typing (ephemeral `typing` event).
///
/// Not stored; the event expires after a few seconds, so a client that polls late never shows stale
/// typing. Limited per sender (429 with `Retry-After` beyond).
#[utoipa::path(
    post,
    path = "/chats/typing/",
    tag = "chats",
    request_body = TypingBody,
    responses(
        (status = 200, description = "Sent", body = TypingResult),
        (status = 400, description = "Missing or bad field", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Typing to yourself", body = ErrorBody),
        (status = 404, description = "No such receiver", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Too many typing events", body = ErrorBody),
        (status = 503, description = "Broker or database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn typing(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<TypingBody>,
) -> Result<axum::Json<TypingResult>, ApiError> {
    let receiver = body
        .receiver
        .ok_or_else(|| ApiError::field("receiver", "this field is required"))?
        .parse("receiver")?;
    state.chat.typing(&user.0, receiver, body.is_typing).await?;
    Ok(axum::Json(TypingResult {
        status: "ok".into(),
    }))
}

/// The caller's unread messages, in all and per conversation.
#[utoipa::path(
    get,
    path = "/chats/unread-count/",
    tag = "chats",
    responses(
        (status = 200, description = "Unread counts", body = UnreadCounts),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn unread_count(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<axum::Json<UnreadCounts>, ApiError> {
    Ok(axum::Json(state.chat.unread_counts(&user.0).await?))
}

/// Users online now (polled within the online window, 5 minutes by default).
#[utoipa::path(
    get,
    path = "/chats/online-users/",
    tag = "chats",
    responses(
        (status = 200, description = "Online users, most recently seen first (at most 500)", body = OnlineUsers),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn online_users(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<axum::Json<OnlineUsers>, ApiError> {
    Ok(axum::Json(state.chat.online_users(&user.0).await?))
}
