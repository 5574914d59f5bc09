//! `/api/v1/admin/...`: provisioning for tooling; admin tokens only.

use axum::{extract::State, http::StatusCode};
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    accounts::{self, CreatedUser},
    auth::{AuthUser, Role},
    error::{AppError, ErrorBody},
    http::{
        chats::Int,
        docs::{MAX_ID, literal_schema},
        extract::Json,
    },
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_user))
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
) -> Result<(StatusCode, axum::Json<CreatedUser>), AppError> {
    caller.require(Role::Admin)?;
    let created = accounts::create_user(
        &state.db,
        &body.username,
        body.display_name.as_deref(),
        body.college_id
            .map(|c| {
                c.within(0..=MAX_ID)
                    .ok_or_else(|| AppError::field("college_id", "must be a positive integer"))
            })
            .transpose()?,
        body.role.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}
