//! `/api/support/...`: the support desk (seed 003's URLs and field names). Users read and write their
//! own chat under `chats/my-chat/`; agents (staff and admins) list every chat, read, reply and close
//! under `chats/` and `chats/{chat_id}/`. The rules live in [`crate::support`].

use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    http::{
        auth::AuthUser,
        chats::Id,
        docs::literal_schema,
        error::{ApiError, ErrorBody},
        extract::{Json, Query, query_time},
    },
    state::AppState,
    support::{Agent, StatusFilter, SupportChatView, SupportMessageView, SupportMessages},
    validate as text,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(my_chat))
        .routes(routes!(my_messages, my_send))
        .routes(routes!(list_chats))
        .routes(routes!(chat_messages, agent_send))
        .routes(routes!(close_chat))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct SinceParams {
    /// Only messages created after this RFC 3339 time (exclusive): pass the `created_at` of the last
    /// message you have. Without it: the newest 500 messages.
    #[param(schema_with = since_schema)]
    since: Option<String>,
}

/// `since` as a time (see [`query_time`]).
fn parse_since(since: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(s) = since else { return Ok(None) };
    query_time(s).map(Some).ok_or_else(|| {
        ApiError::field(
            "since",
            "must be an RFC 3339 time, e.g. 2025-10-14T23:30:00.000Z",
        )
    })
}

/// A support message to send.
#[derive(Debug, Deserialize)]
pub struct SupportBody {
    message: Option<String>,
}

literal_schema!(
    SupportBody,
    "SupportBody",
    serde_json::json!({
        "type": "object",
        "required": ["message"],
        "properties": {
            "message": {"type": "string", "maxLength": 10000, "pattern": text::NOT_BLANK_PATTERN,
                        "description": "The text; not blank, at most 10 000 characters (the configured limit), no control characters but tab, line feed and carriage return"}
        }
    })
);

impl SupportBody {
    fn text(self) -> Result<String, ApiError> {
        self.message
            .ok_or_else(|| ApiError::field("message", "this field is required"))
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListParams {
    /// Only chats with this status (default: all).
    #[param(schema_with = status_schema)]
    status: Option<String>,
}

fn since_schema() -> utoipa::openapi::schema::Schema {
    serde_json::from_value(serde_json::json!({"type": "string", "format": "date-time"}))
        .expect("a valid schema")
}

fn status_schema() -> utoipa::openapi::schema::Schema {
    serde_json::from_value(serde_json::json!({"type": "string", "enum": ["open", "closed"]}))
        .expect("a valid schema")
}

/// The caller's support chat (created on first access).
#[utoipa::path(
    get,
    path = "/chats/my-chat/",
    tag = "support",
    responses(
        (status = 200, description = "The chat", body = SupportChatView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn my_chat(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<axum::Json<SupportChatView>, ApiError> {
    Ok(axum::Json(state.support.my_chat(&user.0).await?))
}

/// Read the caller's support messages (seed 003's polling endpoint).
///
/// `?since=<RFC 3339>`: only messages created after it (exclusive), oldest first, at most 500
/// (`has_more` says when to ask again with the last `created_at`). Without `since`: the newest 500, in
/// chronological order. `created_at` has milliseconds and is unique within a chat, so echoing it back
/// never repeats or skips a message. New messages also arrive as `support_message` events through the
/// long poll.
#[utoipa::path(
    get,
    path = "/chats/my-chat/messages/",
    tag = "support",
    params(SinceParams),
    responses(
        (status = 200, description = "Messages, the chat's status and last update", body = SupportMessages),
        (status = 400, description = "Invalid `since`", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn my_messages(
    State(state): State<AppState>,
    user: AuthUser,
    Query(params): Query<SinceParams>,
) -> Result<axum::Json<SupportMessages>, ApiError> {
    let since = parse_since(params.since.as_deref())?;
    Ok(axum::Json(state.support.my_messages(&user.0, since).await?))
}

/// Write to the support agents.
///
/// Creates the caller's chat on first use; a closed chat is reopened (a `support_chat` event announces
/// it). The message goes as a `support_message` event to the caller's postbox and to every agent's.
#[utoipa::path(
    post,
    path = "/chats/my-chat/messages/",
    tag = "support",
    request_body = SupportBody,
    responses(
        (status = 201, description = "Stored and announced", body = SupportMessageView),
        (status = 400, description = "Bad JSON, missing, blank or too long message", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Too many messages per second; see Retry-After", body = ErrorBody),
        (status = 503, description = "Broker or database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn my_send(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<SupportBody>,
) -> Result<(StatusCode, axum::Json<SupportMessageView>), ApiError> {
    let view = state.support.send_as_user(&user.0, body.text()?).await?;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

/// List support chats (agents only), most recently updated first.
///
/// At most 500 chats; `?status=open` or `?status=closed` narrows the list.
#[utoipa::path(
    get,
    path = "/chats/",
    tag = "support",
    params(ListParams),
    responses(
        (status = 200, description = "Chats with their user, status, last message preview and last update", body = [SupportChatView]),
        (status = 400, description = "Invalid `status`", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "The caller is not staff or admin", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn list_chats(
    State(state): State<AppState>,
    user: AuthUser,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<Vec<SupportChatView>>, ApiError> {
    let agent = Agent::new(&user.0)?;
    let status = match params.status.as_deref() {
        None => None,
        Some("open") => Some(StatusFilter::Open),
        Some("closed") => Some(StatusFilter::Closed),
        Some(_) => return Err(ApiError::field("status", "must be `open` or `closed`")),
    };
    Ok(axum::Json(state.support.list_chats(&agent, status).await?))
}

/// Read a support chat's messages (agents only).
///
/// The same answer and `since` as `my-chat/messages/`. Users read their own chat there: this route
/// answers 403 to them, whichever chat is named.
#[utoipa::path(
    get,
    path = "/chats/{chat_id}/messages/",
    tag = "support",
    params(("chat_id" = i64, Path, description = "The support chat", minimum = 1, maximum = 999_999_999_999_999_i64), SinceParams),
    responses(
        (status = 200, description = "Messages, the chat's status and last update", body = SupportMessages),
        (status = 400, description = "Invalid chat id or `since`", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "The caller is not staff or admin", body = ErrorBody),
        (status = 404, description = "No such chat", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn chat_messages(
    State(state): State<AppState>,
    user: AuthUser,
    Path(chat_id): Path<String>,
    Query(params): Query<SinceParams>,
) -> Result<axum::Json<SupportMessages>, ApiError> {
    let agent = Agent::new(&user.0)?;
    let chat_id = Id::Text(chat_id).parse("chat_id")?;
    let since = parse_since(params.since.as_deref())?;
    Ok(axum::Json(
        state.support.chat_messages(&agent, chat_id, since).await?,
    ))
}

/// Reply in a support chat (agents only; `is_from_admin` is true).
///
/// A closed chat is reopened by the reply (a `support_chat` event announces it), as by a user's message.
/// The message goes as a `support_message` event to the chat's user and to every agent.
#[utoipa::path(
    post,
    path = "/chats/{chat_id}/messages/",
    tag = "support",
    params(("chat_id" = i64, Path, description = "The support chat", minimum = 1, maximum = 999_999_999_999_999_i64)),
    request_body = SupportBody,
    responses(
        (status = 201, description = "Stored and announced", body = SupportMessageView),
        (status = 400, description = "Invalid chat id; bad JSON, missing, blank or too long message", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "The caller is not staff or admin", body = ErrorBody),
        (status = 404, description = "No such chat", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Too many messages per second; see Retry-After", body = ErrorBody),
        (status = 503, description = "Broker or database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn agent_send(
    State(state): State<AppState>,
    user: AuthUser,
    Path(chat_id): Path<String>,
    Json(body): Json<SupportBody>,
) -> Result<(StatusCode, axum::Json<SupportMessageView>), ApiError> {
    let agent = Agent::new(&user.0)?;
    let chat_id = Id::Text(chat_id).parse("chat_id")?;
    let view = state
        .support
        .send_as_agent(&agent, chat_id, body.text()?)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(view)))
}

/// Close a support chat (agents only; idempotent).
///
/// The chat's user and every agent get a `support_chat` event (`chat_id`, `status`, `user_id`). Closing
/// a closed chat answers it unchanged and announces nothing. The user's next message reopens it.
#[utoipa::path(
    post,
    path = "/chats/{chat_id}/close/",
    tag = "support",
    params(("chat_id" = i64, Path, description = "The support chat", minimum = 1, maximum = 999_999_999_999_999_i64)),
    responses(
        (status = 200, description = "The chat, closed", body = SupportChatView),
        (status = 400, description = "Invalid chat id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "The caller is not staff or admin", body = ErrorBody),
        (status = 404, description = "No such chat", body = ErrorBody),
        (status = 503, description = "Broker or database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn close_chat(
    State(state): State<AppState>,
    user: AuthUser,
    Path(chat_id): Path<String>,
) -> Result<axum::Json<SupportChatView>, ApiError> {
    let agent = Agent::new(&user.0)?;
    let chat_id = Id::Text(chat_id).parse("chat_id")?;
    Ok(axum::Json(state.support.close(&agent, chat_id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_an_rfc3339_time_in_any_offset() {
        let utc = parse_since(Some("2025-10-14T23:30:00.123Z"))
            .unwrap()
            .unwrap();
        assert_eq!(crate::events::rfc3339(utc), "2025-10-14T23:30:00.123Z");
        let shifted = parse_since(Some("2025-10-15T01:30:00.123+02:00")).unwrap();
        assert_eq!(shifted, Some(utc));
        // An unencoded `+` arrives as a space.
        let spaced = parse_since(Some("2025-10-15T01:30:00.123 02:00")).unwrap();
        assert_eq!(spaced, Some(utc));
        assert_eq!(parse_since(None).unwrap(), None);
        for bad in [
            "",
            "yesterday",
            "2025-10-14",
            "1700000000",
            " 02:00",
            "2025-10-14T23:30:00",
        ] {
            assert!(parse_since(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
