//! `/api/v1/admin/...`: provisioning for tooling; admin tokens only.

use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use serde::{Deserialize, Deserializer};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    accounts::{self, CreatedUser, UserRequest, tokens::Role},
    events::UserView,
    http::{
        auth::AuthUser,
        chats::{Id, Int},
        docs::{MAX_ID, literal_schema},
        error::{ApiError, ErrorBody},
        extract::Json,
    },
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_user))
        .routes(routes!(update_user))
}

/// A user to create.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    username: String,
    display_name: Option<String>,
    college_id: Option<Int>,
    role: Option<String>,
}

literal_schema!(
    CreateUser,
    "CreateUser",
    serde_json::json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["username"],
        "properties": {
            "username": {"type": "string", "pattern": "^[A-Za-z0-9@.+_-]{1,150}$",
                         "description": "Unique; ASCII letters, digits and `@ . + - _`"},
            "display_name": {"type": ["string", "null"], "maxLength": 150, "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$",
                             "description": "Shown to other users; defaults to the username"},
            "college_id": {"type": ["integer", "null"], "format": "int64", "minimum": 0, "maximum": MAX_ID,
                           "description": "The college (group) the user belongs to"},
            "role": {"type": ["string", "null"], "enum": ["member", "staff", "admin", null],
                     "description": "`member` (default), `staff` or `admin`"}
        }
    })
);

/// Create a user and its first API token (admin only).
///
/// The user's postbox (RabbitMQ queue) is created at once, so events sent before the user's first poll
/// wait there. If RabbitMQ is unavailable the user is created all the same, and the postbox with the
/// first poll or event.
#[utoipa::path(
    post,
    path = "/users/",
    tag = "admin",
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created; `token` is shown only now", body = CreatedUser),
        (status = 400, description = "Invalid field", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 409, description = "Username taken", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn create_user(
    State(state): State<AppState>,
    caller: AuthUser,
    Json(body): Json<CreateUser>,
) -> Result<(StatusCode, axum::Json<CreatedUser>), ApiError> {
    accounts::require(&caller.0, Role::Admin)?;
    let college_id = body
        .college_id
        .map(|c| {
            c.within(0..=MAX_ID)
                .ok_or_else(|| ApiError::field("college_id", "must be a positive integer"))
        })
        .transpose()?;
    let created = state
        .accounts
        .create_user(UserRequest {
            username: &body.username,
            display_name: body.display_name.as_deref(),
            college_id,
            role: body.role.as_deref(),
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// Changes to a user; absent fields stay as they are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    display_name: Option<String>,
    /// Absent: unchanged; `null`: no college; a number: that college.
    #[serde(default, deserialize_with = "present")]
    college_id: Option<Option<Int>>,
    role: Option<String>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

literal_schema!(
    UpdateUser,
    "UpdateUser",
    serde_json::json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "display_name": {"type": ["string", "null"], "maxLength": 150, "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$",
                             "description": "Shown to other users"},
            "college_id": {"type": ["integer", "null"], "format": "int64", "minimum": 0, "maximum": MAX_ID,
                           "description": "The user's college; `null` removes it. Moves the user's postboxes to the new college's broadcasts"},
            "role": {"type": ["string", "null"], "enum": ["member", "staff", "admin", null],
                     "description": "`member`, `staff` or `admin`"}
        }
    })
);

/// Change a user's display name, college or role (admin only).
///
/// A new college (or role) moves the user's postboxes: they are bound to the new college's broadcast
/// key and unbound from the old one at once, in RabbitMQ.
#[utoipa::path(
    patch,
    path = "/users/{id}/",
    tag = "admin",
    params(("id" = i64, Path, description = "The user", minimum = 1, maximum = 999_999_999_999_999_i64)),
    request_body = UpdateUser,
    responses(
        (status = 200, description = "The user as changed", body = UserView),
        (status = 400, description = "Invalid field", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "Database or broker unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn update_user(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    Json(body): Json<UpdateUser>,
) -> Result<axum::Json<UserView>, ApiError> {
    accounts::require(&caller.0, Role::Admin)?;
    let id = Id::Text(id).parse("id")?;
    let college_id = body
        .college_id
        .map(|c| {
            c.map(|c| {
                c.within(0..=MAX_ID)
                    .ok_or_else(|| ApiError::field("college_id", "must be a positive integer"))
            })
            .transpose()
        })
        .transpose()?;
    Ok(axum::Json(
        state
            .accounts
            .update_user(
                id,
                accounts::Changes {
                    display_name: body.display_name,
                    college_id,
                    role: body.role,
                },
            )
            .await?,
    ))
}
