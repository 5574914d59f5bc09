//! `/api/v1/communication/notifications/...` (stored notifications) and `/api/v1/publish/` (the host
//! applications' publish API). The logic lives in [`crate::notify`] and [`crate::notify::publish`].

use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    http::{
        auth::{AuthUser, ServiceCaller},
        chats::{Id, Int},
        docs::{MAX_ID, id_schema, literal_schema},
        error::{ApiError, ErrorBody},
        extract::{Json, Query},
    },
    notify::{
        self, Created, Draft, MarkedAll, NotificationPage, NotificationView, Target,
        publish::{self, Published},
    },
    state::AppState,
    validate as text,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(mark_read))
        .routes(routes!(mark_all_read))
}

/// The publish API, nested at `/api/v1`.
pub fn publish_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(publish_event))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListParams {
    /// `true`: only unread notifications.
    #[param(value_type = Option<bool>)]
    unread: Option<String>,
    /// Older than this notification id (the next page).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 999_999_999_999_999_i64)]
    before: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
}

/// List the caller's notifications (to them and to their college), newest first, with read state.
#[utoipa::path(
    get,
    path = "/notifications/",
    tag = "notifications",
    params(ListParams),
    responses(
        (status = 200, description = "A page of notifications and the unread count", body = NotificationPage),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<NotificationPage>, ApiError> {
    let unread = match params.unread.as_deref() {
        None | Some("false" | "0" | "") => false,
        Some("true" | "1") => true,
        Some(_) => return Err(ApiError::field("unread", "must be true or false")),
    };
    let before = params
        .before
        .map(|b| Id::Text(b).parse("before"))
        .transpose()?;
    let limit = match params.limit.as_deref() {
        None => 50,
        Some(l) => match l.trim().parse::<u64>() {
            Ok(n) if (1..=notify::MAX_PAGE).contains(&n) => n,
            _ => return Err(ApiError::field("limit", "must be an integer from 1 to 200")),
        },
    };
    Ok(axum::Json(
        state.notify.list(&user, unread, before, limit).await?,
    ))
}

/// A notification to create, for one user or a whole college.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    user_id: Option<Id>,
    college_id: Option<Int>,
    title: String,
    message: Option<String>,
    notification_type: Option<String>,
    data: Option<serde_json::Value>,
}

fn notification_fields() -> serde_json::Value {
    serde_json::json!({
        "title": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": text::NOT_BLANK_PATTERN,
                  "description": "Not blank, at most 200 characters, no control characters but tab, line feed and carriage return"},
        "message": {"type": ["string", "null"], "maxLength": 10000, "pattern": text::PATTERN,
                    "description": "The text (may be empty); no control characters but tab, line feed and carriage return"},
        "notification_type": {"type": ["string", "null"], "pattern": "^[a-z][a-z0-9_.-]{0,31}$",
                              "description": "A category for clients (`notice` by default)"},
        "data": {"type": ["object", "null"], "description": "Extra JSON for clients (at most POSTBOX_MAX_EVENT_BYTES as JSON)"}
    })
}

literal_schema!(
    CreateBody,
    "CreateNotification",
    serde_json::json!({"allOf": [{
        "type": "object",
        "additionalProperties": false,
        "required": ["title"],
        "properties": {
            "user_id": {"oneOf": [id_schema(), {"type": "null"}], "description": "One user (who must exist)"},
            "college_id": {"type": ["integer", "null"], "format": "int64", "minimum": 0, "maximum": MAX_ID,
                           "description": "Every member of a college"},
            "title": notification_fields()["title"],
            "message": notification_fields()["message"],
            "notification_type": notification_fields()["notification_type"],
            "data": notification_fields()["data"]
        },
        "description": "Exactly one of `user_id` and `college_id`"
    }, {"anyOf": [
        {"type": "object", "required": ["user_id"],
         "properties": {"user_id": id_schema(), "college_id": {"type": "null"}}},
        {"type": "object", "required": ["college_id"],
         "properties": {"college_id": {"type": "integer"}, "user_id": {"type": "null"}}}
    ]}]})
);

/// Create a notification for a user or a college (staff and admins).
///
/// Stored, then announced as a `notification` event: to a college it is one publish, routed by RabbitMQ
/// into every member's postbox. The answer says how many users and postboxes it reached.
#[utoipa::path(
    post,
    path = "/notifications/",
    tag = "notifications",
    request_body = CreateBody,
    responses(
        (status = 201, description = "Created and announced", body = Created),
        (status = 400, description = "Invalid field, or not exactly one target", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Members cannot create notifications", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 413, description = "Body or `data` too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "Broker or database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn create(
    State(state): State<AppState>,
    caller: AuthUser,
    Json(body): Json<CreateBody>,
) -> Result<(StatusCode, axum::Json<Created>), ApiError> {
    crate::accounts::require(&caller.0, crate::accounts::tokens::Role::Staff)?;
    let target = match (body.user_id, body.college_id) {
        (Some(user), None) => Target::User(user.parse("user_id")?),
        (None, Some(college)) => Target::College(
            college
                .within(0..=MAX_ID)
                .ok_or_else(|| ApiError::field("college_id", "must be a positive integer"))?,
        ),
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of `user_id` and `college_id`".into(),
            ));
        }
    };
    let created = state
        .notify
        .create_as(
            &caller.0,
            Draft {
                target,
                title: body.title,
                message: body.message.unwrap_or_default(),
                notification_type: body.notification_type,
                data: body.data,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// Mark one notification read (idempotent: the first read time stays).
#[utoipa::path(
    post,
    path = "/notifications/{id}/read/",
    operation_id = "mark_notification_read",
    tag = "notifications",
    params(("id" = i64, Path, description = "The notification", minimum = 1, maximum = 999_999_999_999_999_i64)),
    responses(
        (status = 200, description = "Read", body = NotificationView),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such notification for the caller", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn mark_read(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> Result<axum::Json<NotificationView>, ApiError> {
    let id = Id::Text(id).parse("id")?;
    Ok(axum::Json(state.notify.mark_read(&user, id).await?))
}

/// Mark every notification of the caller read.
#[utoipa::path(
    post,
    path = "/notifications/read-all/",
    tag = "notifications",
    responses(
        (status = 200, description = "How many were marked", body = MarkedAll),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn mark_all_read(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<axum::Json<MarkedAll>, ApiError> {
    Ok(axum::Json(state.notify.mark_all_read(&user).await?))
}

/// An event from a host application.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    event: String,
    data: serde_json::Value,
    users: Option<Vec<Int>>,
    college_id: Option<Int>,
}

literal_schema!(
    PublishBody,
    "PublishEvent",
    serde_json::json!({"allOf": [{
        "type": "object",
        "additionalProperties": false,
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "pattern": "^[a-z][a-z0-9_.-]{0,63}$",
                      "not": {"enum": publish::RESERVED},
                      "description": "The event type clients receive (`notification` is stored as a notification; Postbox's own types are refused)"},
            "data": {"type": "object", "description": "The payload, a JSON object (at most POSTBOX_MAX_EVENT_BYTES as JSON)"},
            "users": {"type": ["array", "null"], "minItems": 1, "maxItems": publish::MAX_USERS,
                      "items": {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID},
                      "description": "Users to deliver to (all must exist)"},
            "college_id": {"type": ["integer", "null"], "format": "int64", "minimum": 0, "maximum": MAX_ID,
                           "description": "Deliver to every member of this college (one publish)"}
        },
        "description": "Exactly one of `users` and `college_id`"
    }, {"anyOf": [
        {"type": "object", "required": ["users"],
         "properties": {"users": {"type": "array"}, "college_id": {"type": "null"}}},
        {"type": "object", "required": ["college_id"],
         "properties": {"college_id": {"type": "integer"}, "users": {"type": "null"}}}
    ]}]})
);

/// Publish an event from a host application (service token).
///
/// Server to server: authenticate with a service token (`postbox service-tokens create --name erp`),
/// never a user's token. The event goes to each listed user's postboxes, or with one publish to every
/// member of a college. The answer comes after RabbitMQ confirmed the publish.
#[utoipa::path(
    post,
    path = "/publish/",
    tag = "publish",
    request_body = PublishBody,
    responses(
        (status = 200, description = "Published; how many users and postboxes it reached", body = Published),
        (status = 400, description = "Invalid event name, payload, or audience", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked service token", body = ErrorBody),
        (status = 404, description = "Some users do not exist (named); nothing was published", body = ErrorBody),
        (status = 413, description = "Body or `data` too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "Broker or database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []))
)]
async fn publish_event(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Json(body): Json<PublishBody>,
) -> Result<axum::Json<Published>, ApiError> {
    let users = body
        .users
        .map(|users| {
            users
                .into_iter()
                .map(|u| {
                    u.within(1..=MAX_ID)
                        .ok_or_else(|| ApiError::field("users", "ids must be positive integers"))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let college_id = body
        .college_id
        .map(|c| {
            c.within(0..=MAX_ID)
                .ok_or_else(|| ApiError::field("college_id", "must be a positive integer"))
        })
        .transpose()?;
    Ok(axum::Json(
        state
            .notify
            .publish(
                &caller.0,
                publish::Request {
                    event: body.event,
                    data: body.data,
                    users,
                    college_id,
                },
            )
            .await?,
    ))
}
