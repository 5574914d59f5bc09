//! Who the users are and how they prove it: provisioning (`postbox create-user` and
//! `POST /api/v1/admin/users/`), changes, roles, and authentication with user and service tokens
//! ([`tokens`]).
//!
//! [`Accounts`] owns what it needs (the database, the broker for the users' postboxes and the control
//! bus, the token cache and grouped lookups); it knows nothing of HTTP.

pub mod tokens;

use std::time::Duration;

use sea_orm::DatabaseConnection;
use serde::Serialize;

use crate::{
    accounts::tokens::{Caller, Role, TokenCache, TokenLookups, TokenSecret},
    broker::{
        Broker, BrokerError, Postbox,
        control::{self, Control},
        group_routing_keys,
    },
    db::{
        self, DbError,
        entities::{service_token, user},
        users::NewUser,
    },
    events::{UserView, rfc3339},
    validate::{Invalid, MAX_ID},
};

/// Why an accounts operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("username {0:?} is taken")]
    UsernameTaken(String),
    #[error("user {0} does not exist")]
    NoSuchUser(i64),
    /// No valid token: the reason, for the client.
    #[error("{0}")]
    Unauthenticated(String),
    #[error(transparent)]
    Forbidden(#[from] NeedsRole),
    /// The token lookups waited longer than the backend timeout.
    #[error(
        "token lookups are queued beyond the backend timeout: the database is slow or unreachable; retry"
    )]
    Busy,
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// An action the caller's role does not allow.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("this action needs the {} role", .0.as_str())]
pub struct NeedsRole(pub Role);

/// The caller's role, when it is at least `role`.
pub fn require(user: &user::Model, role: Role) -> Result<Role, NeedsRole> {
    let has = Role::of(user);
    if has >= role {
        Ok(has)
    } else {
        Err(NeedsRole(role))
    }
}

/// The group routing keys a user's postboxes are bound to: the college's, and the staff group's for
/// staff and admins.
pub fn group_keys(college_id: Option<i64>, role: &str) -> Vec<String> {
    let staff = Role::parse(role).is_some_and(|r| r >= Role::Staff);
    group_routing_keys(college_id, staff)
}

/// The accounts service. Cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    db: DatabaseConnection,
    broker: Broker,
    tokens: TokenCache,
    lookups: TokenLookups,
    known: KnownUsers,
    backend_timeout: Duration,
}

impl Accounts {
    /// Starts the grouped token lookups; needs a Tokio runtime. Tokens are remembered for `auth_cache`
    /// on the polling path.
    pub fn new(
        db: DatabaseConnection,
        broker: Broker,
        auth_cache: Duration,
        backend_timeout: Duration,
    ) -> Self {
        Accounts {
            lookups: TokenLookups::new(db.clone()),
            tokens: TokenCache::new(auth_cache),
            known: KnownUsers::default(),
            db,
            broker,
            backend_timeout,
        }
    }

    /// The cache of tokens authenticated lately (revocations and user changes empty it).
    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    /// The user of a live token and the token's expiry. `cached`: a remembered token is answered from
    /// memory (long polls and streams, which also watch revocations in the waiting registry); other
    /// requests always read the database, so a revoked token is refused the moment it was revoked.
    pub async fn authenticate(&self, key: &str, cached: bool) -> Result<Caller, AccountsError> {
        let key_hash = tokens::hash_token(key);
        if cached && let Some((user, expires_at)) = self.tokens.get(&key_hash) {
            return Ok(Caller {
                user,
                key_hash,
                expires_at,
            });
        }
        let generation = self.tokens.generation();
        let found = tokio::time::timeout(self.backend_timeout, self.lookups.find(key_hash.clone()))
            .await
            .map_err(|_| AccountsError::Busy)??;
        match found {
            Some(token) => {
                self.tokens
                    .insert(token.key_hash, &token.user, token.expires_at, generation);
                Ok(Caller {
                    user: token.user,
                    key_hash,
                    expires_at: token.expires_at,
                })
            }
            None => Err(AccountsError::Unauthenticated("invalid token".into())),
        }
    }

    /// The host application of a live service token.
    pub async fn authenticate_service(
        &self,
        key: &str,
    ) -> Result<service_token::Model, AccountsError> {
        if !key.starts_with(tokens::SERVICE_TOKEN_PREFIX) || key.len() > 128 {
            return Err(AccountsError::Unauthenticated(
                "invalid service token (user tokens cannot publish)".into(),
            ));
        }
        db::notifications::find_service_token(&self.db, &tokens::hash_token(key))
            .await?
            .ok_or_else(|| {
                AccountsError::Unauthenticated("invalid or revoked service token".into())
            })
    }

    /// Whether user `id` exists (remembered: users are never deleted).
    pub async fn user_exists(&self, id: i64) -> Result<bool, DbError> {
        self.known.exists(&self.db, id).await
    }

    /// Creates a user with a first token (see [`create_user`]) and its postbox.
    pub async fn create_user(&self, new: UserRequest<'_>) -> Result<CreatedUser, AccountsError> {
        let created = create_user(&self.db, new).await?;
        create_postbox(&self.broker, &created.user).await;
        Ok(created)
    }

    /// Changes a user. When the college or the role changes, the user's postboxes move with it: they
    /// are bound to the new group keys and unbound from the old ones, so college broadcasts follow the
    /// user.
    pub async fn update_user(&self, id: i64, changes: Changes) -> Result<UserView, AccountsError> {
        let display_name = match changes.display_name {
            Some(d) => Some(
                checked_display_name(Some(&d))?
                    .ok_or_else(|| Invalid::new("display_name", "may not be blank"))?,
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
            &self.db,
            id,
            db::users::UserChanges {
                display_name,
                college_id: changes.college_id,
                role,
            },
        )
        .await?
        .ok_or(AccountsError::NoSuchUser(id))?;
        // Requests authenticated from now on see the change, here at once and in the other instances
        // as soon as they hear of it.
        self.tokens.forget_user(id);
        if let Err(e) = control::send(&self.broker, &Control::UserChanged { user_id: id }).await {
            tracing::warn!(error = %e, user_id = id, "could not tell other instances that a user changed; their token caches expire it");
        }
        let (old, new) = (
            group_keys(before.college_id, &before.role),
            group_keys(after.college_id, &after.role),
        );
        if old != new {
            let topology = self.broker.topology();
            let mut queues = vec![topology.user_queue(id)];
            for client in db::clients::client_ids(&self.db, id).await? {
                queues.push(topology.queue(&Postbox::client(id, &client)));
            }
            self.broker.rebind(&queues, &old, &new).await?;
            tracing::info!(
                user_id = id,
                ?old,
                ?new,
                "postboxes moved to new group keys"
            );
        }
        Ok(UserView::from(&after))
    }
}

/// User ids known to exist. Users are never deleted, so an id found once is known for good and the
/// hot paths (every send checks its receiver) skip the query. Bounded: past the cap it starts over.
#[derive(Clone, Default)]
struct KnownUsers {
    ids: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<i64>>>,
}

/// Ids remembered at most.
const KNOWN_USERS_MAX: usize = 1_000_000;

impl KnownUsers {
    /// Whether user `id` exists.
    async fn exists(&self, db: &DatabaseConnection, id: i64) -> Result<bool, DbError> {
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

/// A user to create: the username is required, the rest has defaults (display name: the username;
/// role: member; no college).
#[derive(Debug, Clone, Copy, Default)]
pub struct UserRequest<'a> {
    pub username: &'a str,
    pub display_name: Option<&'a str>,
    pub college_id: Option<i64>,
    pub role: Option<&'a str>,
}

/// Validates and creates a user with a first API token (without its postbox: `postbox create-user`
/// runs without a broker; its first poll or event declares it). A taken username is refused.
pub async fn create_user(
    db: &DatabaseConnection,
    new: UserRequest<'_>,
) -> Result<CreatedUser, AccountsError> {
    let username = new.username;
    if username.is_empty() || username.len() > 150 {
        return Err(Invalid::new("username", "must be 1 to 150 characters").into());
    }
    if !username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '+' | '-' | '_'))
    {
        return Err(Invalid::new(
            "username",
            "may contain only ASCII letters, digits and @ . + - _",
        )
        .into());
    }
    let display_name =
        checked_display_name(new.display_name)?.unwrap_or_else(|| username.to_owned());
    let role = new
        .role
        .map(checked_role)
        .transpose()?
        .unwrap_or(Role::Member);
    checked_college(new.college_id)?;
    let secret = TokenSecret::generate();
    let user = db::users::create_with_token(
        db,
        NewUser {
            username: username.to_owned(),
            display_name,
            college_id: new.college_id,
            role: role.as_str().to_owned(),
        },
        secret.key_hash,
        secret.prefix,
    )
    .await
    .map_err(|e| match e {
        DbError::Conflict(_) => AccountsError::UsernameTaken(username.to_owned()),
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
async fn create_postbox(broker: &Broker, user: &UserView) {
    let postbox = Postbox::user(user.id).with_groups(group_keys(user.college_id, &user.role));
    if let Err(e) = broker.declare_postbox(&postbox).await {
        tracing::warn!(
            user_id = user.id,
            error = %e,
            "could not create the new user's postbox; the first poll or event will"
        );
    }
}

fn checked_display_name(display_name: Option<&str>) -> Result<Option<String>, Invalid> {
    if let Some(d) = display_name
        && (d.chars().count() > 150 || d.chars().any(char::is_control))
    {
        return Err(Invalid::new(
            "display_name",
            "must be at most 150 characters, without control characters",
        ));
    }
    Ok(display_name
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned))
}

fn checked_role(role: &str) -> Result<Role, Invalid> {
    Role::parse(role).ok_or_else(|| Invalid::new("role", "must be one of member, staff, admin"))
}

fn checked_college(college_id: Option<i64>) -> Result<(), Invalid> {
    if college_id.is_some_and(|c| !(0..=MAX_ID).contains(&c)) {
        return Err(Invalid::new("college_id", "must be a positive integer"));
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

/// A user as other users see it.
impl From<&user::Model> for UserView {
    fn from(u: &user::Model) -> Self {
        Self {
            id: u.id,
            username: u.username.clone(),
            display_name: u.display_name.clone(),
            college_id: u.college_id,
            role: u.role.clone(),
            created_at: rfc3339(u.created_at),
            last_seen_at: u.last_seen_at.map(rfc3339),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{AccountsError, Changes, UserRequest};
    use crate::{app::testing::Parts, db};

    #[tokio::test]
    async fn users_are_created_once_and_their_tokens_follow_changes_and_revocations() {
        let parts = Parts::start().await;
        let accounts = &parts.accounts;
        let new = |username| UserRequest {
            username,
            ..UserRequest::default()
        };
        let created = accounts.create_user(new("dana")).await.unwrap();
        let taken = accounts.create_user(new("dana")).await;
        assert!(
            matches!(taken, Err(AccountsError::UsernameTaken(_))),
            "{taken:?}"
        );
        let bad = accounts.create_user(new("da na")).await;
        assert!(matches!(bad, Err(AccountsError::Invalid(_))), "{bad:?}");
        let wrong = accounts.authenticate("0123456789", false).await;
        assert!(
            matches!(wrong, Err(AccountsError::Unauthenticated(_))),
            "{wrong:?}"
        );

        // Remembered by a cached authentication; a change of the user is seen at once.
        let caller = accounts.authenticate(&created.token, true).await.unwrap();
        assert_eq!(caller.user.role, "member");
        let changes = Changes {
            display_name: None,
            college_id: None,
            role: Some("staff".into()),
        };
        accounts.update_user(caller.user.id, changes).await.unwrap();
        let again = accounts.authenticate(&created.token, true).await.unwrap();
        assert_eq!(again.user.role, "staff");

        // A revocation (as `postbox tokens revoke` and the control message do it) is seen at once.
        let hashes = db::users::revoke_tokens(&parts.db, caller.user.id, None)
            .await
            .unwrap();
        accounts.tokens().forget_tokens(&hashes);
        let revoked = accounts.authenticate(&created.token, true).await;
        assert!(
            matches!(revoked, Err(AccountsError::Unauthenticated(_))),
            "{revoked:?}"
        );
    }
}
