//! User provisioning, shared by `postbox create-user` and `POST /api/v1/admin/users/`.

pub mod tokens;

use serde::Serialize;

use crate::{
    accounts::tokens::{Role, TokenSecret},
    db::{self, users::NewUser},
    error::AppError,
    events::UserView,
};

/// User ids known to exist. Users are never deleted, so an id found once is known for good and the
/// hot paths (every send checks its receiver) skip the query. Bounded: past the cap it starts over.
#[derive(Clone, Default)]
pub struct KnownUsers {
    ids: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<i64>>>,
}

/// Ids remembered at most.
const KNOWN_USERS_MAX: usize = 1_000_000;

impl KnownUsers {
    /// Whether user `id` exists.
    pub async fn exists(
        &self,
        db: &sea_orm::DatabaseConnection,
        id: i64,
    ) -> Result<bool, AppError> {
        if self.ids.lock().expect("known users lock").contains(&id) {
            return Ok(true);
        }
        let found = db::users::find(db, id).await?.is_some();
        if found {
            let mut ids = self.ids.lock().expect("known users lock");
            if ids.len() >= KNOWN_USERS_MAX {
                ids.clear();
            }
            ids.insert(id);
        }
        Ok(found)
    }
}

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
    let display_name = checked_display_name(display_name)?.unwrap_or_else(|| username.to_owned());
    let role = role.map(checked_role).transpose()?.unwrap_or(Role::Member);
    checked_college(college_id)?;
    let secret = TokenSecret::generate();
    let user = db::users::create_with_token(
        db,
        NewUser {
            username: username.to_owned(),
            display_name,
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

/// Creates a new user's postbox (queue and bindings) now, so it exists from the user's creation on
/// (events sent before the first poll wait in it; operators see it) and the user's first poll finds it
/// ready. Creating a durable queue is the slowest broker step of a first poll (RabbitMQ creates about
/// 1 000 a second here, and re-declares an existing one over ten times faster), so a herd of first
/// polls (a launch, every client of a fresh deployment) no longer queues behind queue creation.
/// Best effort: when RabbitMQ is unavailable the user exists all the same, and the first poll or the
/// first event declares the postbox.
pub async fn create_postbox(broker: &crate::broker::Broker, user: &UserView) {
    let postbox = crate::broker::Postbox::user(user.id).with_groups(
        crate::delivery::clients::group_keys(user.college_id, &user.role),
    );
    if let Err(e) = broker.declare_postbox(&postbox).await {
        tracing::warn!(
            user_id = user.id,
            error = %e,
            "could not create the new user's postbox; the first poll or event will"
        );
    }
}

fn checked_display_name(display_name: Option<&str>) -> Result<Option<String>, AppError> {
    if let Some(d) = display_name
        && (d.chars().count() > 150 || d.chars().any(char::is_control))
    {
        return Err(AppError::field(
            "display_name",
            "must be at most 150 characters, without control characters",
        ));
    }
    Ok(display_name
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned))
}

fn checked_role(role: &str) -> Result<Role, AppError> {
    Role::parse(role).ok_or_else(|| AppError::field("role", "must be one of member, staff, admin"))
}

fn checked_college(college_id: Option<i64>) -> Result<(), AppError> {
    if college_id.is_some_and(|c| !(0..=crate::http::docs::MAX_ID).contains(&c)) {
        return Err(AppError::field("college_id", "must be a positive integer"));
    }
    Ok(())
}

/// What an admin changes about a user; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub display_name: Option<String>,
    /// `Some(None)` takes the user out of their college.
    pub college_id: Option<Option<i64>>,
    pub role: Option<String>,
}

/// Changes a user. When the college or the role changes, the user's postboxes move with it: they are
/// bound to the new group keys and unbound from the old ones, so college broadcasts follow the user.
pub async fn update_user(
    state: &crate::state::AppState,
    id: i64,
    changes: Changes,
) -> Result<UserView, AppError> {
    let display_name = match changes.display_name {
        Some(d) => Some(
            checked_display_name(Some(&d))?
                .ok_or_else(|| AppError::field("display_name", "may not be blank"))?,
        ),
        None => None,
    };
    let role = changes
        .role
        .as_deref()
        .map(checked_role)
        .transpose()?
        .map(|r| r.as_str().to_owned());
    if let Some(college) = changes.college_id {
        checked_college(college)?;
    }
    let (before, after) = db::users::update(
        &state.db,
        id,
        db::users::UserChanges {
            display_name,
            college_id: changes.college_id,
            role,
        },
    )
    .await?
    .ok_or_else(|| AppError::NotFound(format!("user {id} does not exist")))?;
    // Requests authenticated from now on see the change, here at once and in the other instances as
    // soon as they hear of it.
    state.tokens.forget_user(id);
    if let Err(e) = crate::broker::control::send(
        &state.broker,
        &crate::broker::control::Control::UserChanged { user_id: id },
    )
    .await
    {
        tracing::warn!(error = %e, user_id = id, "could not tell other instances that a user changed; their token caches expire it");
    }
    let (old, new) = (
        crate::delivery::clients::groups_of(&before),
        crate::delivery::clients::groups_of(&after),
    );
    if old != new {
        let topology = state.broker.topology();
        let mut queues = vec![topology.user_queue(id)];
        for client in db::clients::client_ids(&state.db, id).await? {
            queues.push(topology.queue(&crate::broker::Postbox::client(id, &client)));
        }
        state.broker.rebind(&queues, &old, &new).await?;
        tracing::info!(
            user_id = id,
            ?old,
            ?new,
            "postboxes moved to new group keys"
        );
    }
    Ok(UserView::from(&after))
}
