//! Users, API tokens and presence.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, ExprTrait,
    QueryFilter, Set, sea_query::Expr,
};

use super::{
    DbError,
    entities::{api_token, user},
};

/// What is needed to create a user.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub display_name: String,
    pub college_id: Option<i64>,
    pub role: String,
}

/// Creates a user and its first API token in one transaction. `key_hash` and `prefix` come from
/// [`crate::accounts::tokens::TokenSecret`]; the clear token never reaches this module.
pub async fn create_with_token(
    db: &DatabaseConnection,
    new: NewUser,
    key_hash: String,
    prefix: String,
) -> Result<user::Model, DbError> {
    let txn = super::begin_write(db).await?;
    let now = Utc::now();
    let user = user::ActiveModel {
        username: Set(new.username),
        display_name: Set(new.display_name),
        college_id: Set(new.college_id),
        role: Set(new.role),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    insert_token(&txn, user.id, key_hash, prefix, None).await?;
    txn.commit().await?;
    Ok(user)
}

/// Stores a new token digest for a user.
pub async fn insert_token<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
    key_hash: String,
    prefix: String,
    expires_at: Option<DateTime<Utc>>,
) -> Result<api_token::Model, DbError> {
    Ok(api_token::ActiveModel {
        user_id: Set(user_id),
        key_hash: Set(key_hash),
        prefix: Set(prefix),
        created_at: Set(Utc::now()),
        expires_at: Set(expires_at),
        revoked_at: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await?)
}

/// A token that is neither revoked nor expired, with its user.
#[derive(Debug, Clone)]
pub struct LiveToken {
    pub key_hash: String,
    pub user: user::Model,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The live (not revoked, not expired) tokens among these digests, with their users and expiry. One
/// statement (a join) for the lookups of many requests (see `crate::accounts::tokens::TokenLookups`).
pub async fn find_by_token_hashes(
    db: &DatabaseConnection,
    key_hashes: &[&str],
) -> Result<Vec<LiveToken>, DbError> {
    use sea_orm::sea_query::Condition;
    let found = api_token::Entity::find()
        .filter(api_token::Column::KeyHash.is_in(key_hashes.iter().copied()))
        .filter(api_token::Column::RevokedAt.is_null())
        .filter(
            Condition::any()
                .add(api_token::Column::ExpiresAt.is_null())
                .add(api_token::Column::ExpiresAt.gt(Utc::now())),
        )
        .find_also_related(user::Entity)
        .all(db)
        .await?;
    Ok(found
        .into_iter()
        .filter_map(|(token, user)| {
            user.map(|user| LiveToken {
                key_hash: token.key_hash,
                user,
                expires_at: token.expires_at,
            })
        })
        .collect())
}

pub async fn find(db: &DatabaseConnection, id: i64) -> Result<Option<user::Model>, DbError> {
    Ok(user::Entity::find_by_id(id).one(db).await?)
}

/// All user ids (for operator reports).
pub async fn all_ids(db: &DatabaseConnection) -> Result<Vec<i64>, DbError> {
    use sea_orm::{QueryOrder, QuerySelect};
    Ok(user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .order_by_asc(user::Column::Id)
        .into_tuple()
        .all(db)
        .await?)
}

/// Marks a user offline at once (the client said it disconnected).
pub async fn mark_offline(db: &DatabaseConnection, user_id: i64) -> Result<(), DbError> {
    user::Entity::update_many()
        .col_expr(
            user::Column::OnlineUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(user::Column::Id.eq(user_id))
        .exec(db)
        .await?;
    Ok(())
}

/// Users online at `now`, most recently seen first.
pub async fn online(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<user::Model>, DbError> {
    use sea_orm::{QueryOrder, QuerySelect};
    Ok(user::Entity::find()
        .filter(user::Column::OnlineUntil.gt(now))
        .order_by_desc(user::Column::LastSeenAt)
        .limit(limit)
        .all(db)
        .await?)
}

/// Records a poll of each of these users (seen now, online until `online_until`) in two statements for
/// all of them, and flips `is_online` to true where it was false. Returns the users this call made go
/// online: exactly one instance sees each such change, and announces it.
pub async fn mark_online(
    db: &DatabaseConnection,
    user_ids: &[i64],
    now: DateTime<Utc>,
    online_until: DateTime<Utc>,
) -> Result<Vec<i64>, DbError> {
    if user_ids.is_empty() {
        return Ok(Vec::new());
    }
    let flipped: Vec<i64> = user::Entity::update_many()
        .col_expr(user::Column::IsOnline, Expr::value(true))
        .col_expr(user::Column::LastSeenAt, Expr::value(now))
        .col_expr(user::Column::OnlineUntil, Expr::value(online_until))
        .filter(user::Column::Id.is_in(user_ids.iter().copied()))
        .filter(user::Column::IsOnline.eq(false))
        .exec_with_returning(db)
        .await?
        .into_iter()
        .map(|u| u.id)
        .collect();
    if flipped.len() < user_ids.len() {
        user::Entity::update_many()
            .col_expr(user::Column::LastSeenAt, Expr::value(now))
            .col_expr(user::Column::OnlineUntil, Expr::value(online_until))
            .filter(user::Column::Id.is_in(user_ids.iter().copied()))
            .filter(user::Column::IsOnline.eq(true))
            .exec(db)
            .await?;
    }
    Ok(flipped)
}

/// Marks a user offline at once (disconnect). `true` means this call flipped `is_online`: the user was
/// online and this instance announces the change.
pub async fn mark_offline_flip(db: &DatabaseConnection, user_id: i64) -> Result<bool, DbError> {
    let flipped = user::Entity::update_many()
        .col_expr(user::Column::IsOnline, Expr::value(false))
        .col_expr(
            user::Column::OnlineUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(user::Column::Id.eq(user_id))
        .filter(user::Column::IsOnline.eq(true))
        .exec(db)
        .await?
        .rows_affected
        == 1;
    if !flipped {
        mark_offline(db, user_id).await?;
    }
    Ok(flipped)
}

/// Users whose online window ran out without a disconnect, flipped to offline; returns those this call
/// flipped (each is announced once, by the instance that flipped it).
pub async fn expire_online(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
) -> Result<Vec<i64>, DbError> {
    use sea_orm::QuerySelect;
    let candidates: Vec<i64> = user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .filter(user::Column::IsOnline.eq(true))
        .filter(
            user::Column::OnlineUntil
                .lte(now)
                .or(user::Column::OnlineUntil.is_null()),
        )
        .limit(1000)
        .into_tuple()
        .all(db)
        .await?;
    let mut flipped = Vec::new();
    for id in candidates {
        let n = user::Entity::update_many()
            .col_expr(user::Column::IsOnline, Expr::value(false))
            .filter(user::Column::Id.eq(id))
            .filter(user::Column::IsOnline.eq(true))
            .filter(
                user::Column::OnlineUntil
                    .lte(now)
                    .or(user::Column::OnlineUntil.is_null()),
            )
            .exec(db)
            .await?
            .rows_affected;
        if n == 1 {
            flipped.push(id);
        }
    }
    Ok(flipped)
}

pub async fn find_by_username(
    db: &DatabaseConnection,
    username: &str,
) -> Result<Option<user::Model>, DbError> {
    Ok(user::Entity::find()
        .filter(user::Column::Username.eq(username))
        .one(db)
        .await?)
}

/// A user's tokens, newest first (digests and prefixes only: the clear keys are not stored).
pub async fn tokens(
    db: &DatabaseConnection,
    user_id: i64,
) -> Result<Vec<api_token::Model>, DbError> {
    use sea_orm::QueryOrder;
    Ok(api_token::Entity::find()
        .filter(api_token::Column::UserId.eq(user_id))
        .order_by_desc(api_token::Column::Id)
        .all(db)
        .await?)
}

/// Revokes tokens (one by id, or all of a user's) and returns the digests revoked now.
pub async fn revoke_tokens(
    db: &DatabaseConnection,
    user_id: i64,
    token_id: Option<i64>,
) -> Result<Vec<String>, DbError> {
    let mut query = api_token::Entity::find()
        .filter(api_token::Column::UserId.eq(user_id))
        .filter(api_token::Column::RevokedAt.is_null());
    if let Some(id) = token_id {
        query = query.filter(api_token::Column::Id.eq(id));
    }
    let live = query.all(db).await?;
    if live.is_empty() {
        return Ok(Vec::new());
    }
    api_token::Entity::update_many()
        .col_expr(api_token::Column::RevokedAt, Expr::value(Utc::now()))
        .filter(api_token::Column::Id.is_in(live.iter().map(|t| t.id)))
        .exec(db)
        .await?;
    Ok(live.into_iter().map(|t| t.key_hash).collect())
}

/// Digests of the tokens revoked at or after `since` (for instances that missed the revocation notice).
pub async fn revoked_since(
    db: &DatabaseConnection,
    since: DateTime<Utc>,
) -> Result<Vec<String>, DbError> {
    use sea_orm::QuerySelect;
    Ok(api_token::Entity::find()
        .select_only()
        .column(api_token::Column::KeyHash)
        .filter(api_token::Column::RevokedAt.gte(since))
        .into_tuple()
        .all(db)
        .await?)
}

/// What an admin may change about a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub display_name: Option<String>,
    /// `Some(None)` removes the user from their college.
    pub college_id: Option<Option<i64>>,
    pub role: Option<String>,
}

/// Applies `changes` to a user; returns the user before and after, or `None` when there is no such user.
pub async fn update(
    db: &DatabaseConnection,
    id: i64,
    changes: UserChanges,
) -> Result<Option<(user::Model, user::Model)>, DbError> {
    let txn = super::begin_write(db).await?;
    let Some(before) = user::Entity::find_by_id(id).one(&txn).await? else {
        return Ok(None);
    };
    let mut active: user::ActiveModel = before.clone().into();
    if let Some(d) = changes.display_name {
        active.display_name = Set(d);
    }
    if let Some(c) = changes.college_id {
        active.college_id = Set(c);
    }
    if let Some(r) = changes.role {
        active.role = Set(r);
    }
    let after = active.update(&txn).await?;
    txn.commit().await?;
    Ok(Some((before, after)))
}
