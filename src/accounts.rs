//! User provisioning, shared by `postbox create-user` and `POST /api/v1/admin/users/`.

use serde::Serialize;

use crate::{
    auth::{Role, TokenSecret},
    db::{self, users::NewUser},
    error::AppError,
    events::UserView,
};

/// A created user with its API token, shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedUser {
    #[serde(flatten)]
    pub user: UserView,
    /// The API token in clear; only its digest is stored.
    pub token: String,
}

/// Validates and creates a user with a first API token. A taken username is a 409.
pub async fn create_user(
    db: &sea_orm::DatabaseConnection,
    username: &str,
    display_name: Option<&str>,
    college_id: Option<i64>,
    role: Option<&str>,
) -> Result<CreatedUser, AppError> {
    if username.is_empty() || username.len() > 150 {
        return Err(AppError::field("username", "must be 1 to 150 characters"));
    }
    if !username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '+' | '-' | '_'))
    {
        return Err(AppError::field(
            "username",
            "may contain only ASCII letters, digits and @ . + - _",
        ));
    }
    if let Some(d) = display_name
        && (d.chars().count() > 150 || d.chars().any(char::is_control))
    {
        return Err(AppError::field(
            "display_name",
            "must be at most 150 characters, without control characters",
        ));
    }
    let display_name = display_name
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .unwrap_or(username);
    let role = match role {
        None => Role::Member,
        Some(r) => Role::parse(r)
            .ok_or_else(|| AppError::field("role", "must be one of member, staff, admin"))?,
    };
    if college_id.is_some_and(|c| !(0..=crate::http::docs::MAX_ID).contains(&c)) {
        return Err(AppError::field("college_id", "must be a positive integer"));
    }
    let secret = TokenSecret::generate();
    let user = db::users::create_with_token(
        db,
        NewUser {
            username: username.to_owned(),
            display_name: display_name.to_owned(),
            college_id,
            role: role.as_str().to_owned(),
        },
        secret.key_hash,
        secret.prefix,
    )
    .await
    .map_err(|e| match e {
        db::DbError::Conflict(_) => AppError::Conflict(format!("username {username:?} is taken")),
        other => other.into(),
    })?;
    Ok(CreatedUser {
        user: UserView::from(&user),
        token: secret.key,
    })
}
