//! `/api/v1/communication/me/`: who the caller is, for clients that hold only a token.

use axum::extract::State;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    events::UserView,
    http::{
        auth::AuthUser,
        error::{ApiError, ErrorBody},
    },
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(me))
}

/// The caller's own user: id, username, display name, college and role.
#[utoipa::path(
    get,
    path = "/me/",
    tag = "chats",
    responses(
        (status = 200, description = "The caller", body = UserView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security(("token" = []), ("token_query" = []))
)]
async fn me(
    State(_state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<axum::Json<UserView>, ApiError> {
    Ok(axum::Json(UserView::from(&user)))
}
