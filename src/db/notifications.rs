//! Stored notifications and their per-user read state; service tokens of host applications.
//!
//! A notification addresses one user (`user_id`) or a whole college (`college_id`). A user sees the
//! notifications addressed to them and to their current college; reading one records a row in
//! `notification_reads`, so a college notification has its own read state for every member.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, sea_query::Query,
};

use crate::events::{self, Envelope};

use super::{
    DbError,
    entities::{notification, notification_read, service_token, user},
    outbox::{self, PendingEvent},
};

/// What is needed to store a notification.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub user_id: Option<i64>,
    pub college_id: Option<i64>,
    pub title: String,
    pub message: String,
    pub notification_type: String,
    pub data: Option<String>,
    pub created_by: Option<i64>,
}

/// Stores a notification and, in the same transaction, the event announcing it (see `crate::delivery::outbox`).
pub async fn create(
    db: &DatabaseConnection,
    new: NewNotification,
    event_for: impl FnOnce(&notification::Model) -> (Vec<events::Audience>, Envelope),
) -> Result<(notification::Model, Vec<PendingEvent>), DbError> {
    let txn = super::begin_write(db).await?;
    let stored = notification::ActiveModel {
        user_id: Set(new.user_id),
        college_id: Set(new.college_id),
        title: Set(new.title),
        message: Set(new.message),
        notification_type: Set(new.notification_type),
        data: Set(new.data),
        created_by: Set(new.created_by),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    let (audiences, event) = event_for(&stored);
    let pending = outbox::insert(&txn, audiences, event).await?;
    txn.commit().await?;
    Ok((stored, pending))
}

/// The notifications `user` may see: addressed to them or to their college.
fn visible_to(user: &user::Model) -> Condition {
    let mut cond = Condition::any().add(notification::Column::UserId.eq(user.id));
    if let Some(college) = user.college_id {
        cond = cond.add(notification::Column::CollegeId.eq(college));
    }
    cond
}

/// Ids of the notifications `user_id` has read (a subquery).
fn read_by(user_id: i64) -> sea_orm::sea_query::SelectStatement {
    Query::select()
        .column(notification_read::Column::NotificationId)
        .from(notification_read::Entity)
        .and_where(notification_read::Column::UserId.eq(user_id))
        .to_owned()
}

/// A page of the notifications `user` sees, newest first, each with when the user read it.
pub async fn list(
    db: &DatabaseConnection,
    user: &user::Model,
    unread_only: bool,
    before: Option<i64>,
    limit: u64,
) -> Result<Vec<(notification::Model, Option<chrono::DateTime<Utc>>)>, DbError> {
    let mut query = notification::Entity::find().filter(visible_to(user));
    if unread_only {
        query = query.filter(notification::Column::Id.not_in_subquery(read_by(user.id)));
    }
    if let Some(before) = before {
        query = query.filter(notification::Column::Id.lt(before));
    }
    let rows = query
        .order_by_desc(notification::Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    let ids: Vec<i64> = rows.iter().map(|n| n.id).collect();
    let reads = if ids.is_empty() {
        Vec::new()
    } else {
        notification_read::Entity::find()
            .filter(notification_read::Column::UserId.eq(user.id))
            .filter(notification_read::Column::NotificationId.is_in(ids))
            .all(db)
            .await?
    };
    Ok(rows
        .into_iter()
        .map(|n| {
            let read_at = reads
                .iter()
                .find(|r| r.notification_id == n.id)
                .map(|r| r.read_at);
            (n, read_at)
        })
        .collect())
}

/// How many notifications `user` has not read.
pub async fn unread_count(db: &DatabaseConnection, user: &user::Model) -> Result<u64, DbError> {
    Ok(notification::Entity::find()
        .filter(visible_to(user))
        .filter(notification::Column::Id.not_in_subquery(read_by(user.id)))
        .count(db)
        .await?)
}

/// Marks one notification read by `user` (idempotent: the first read time is kept). `None` when the
/// notification does not exist or is not addressed to the user.
pub async fn mark_read(
    db: &DatabaseConnection,
    user: &user::Model,
    id: i64,
) -> Result<Option<(notification::Model, chrono::DateTime<Utc>)>, DbError> {
    let Some(found) = notification::Entity::find_by_id(id)
        .filter(visible_to(user))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    insert_reads(db, user.id, &[id]).await?;
    let read = notification_read::Entity::find_by_id((id, user.id))
        .one(db)
        .await?
        .map(|r| r.read_at)
        .unwrap_or_else(Utc::now);
    Ok(Some((found, read)))
}

/// Marks every notification `user` sees as read; returns how many were unread.
pub async fn mark_all_read(db: &DatabaseConnection, user: &user::Model) -> Result<u64, DbError> {
    let ids: Vec<i64> = notification::Entity::find()
        .select_only()
        .column(notification::Column::Id)
        .filter(visible_to(user))
        .filter(notification::Column::Id.not_in_subquery(read_by(user.id)))
        .into_tuple()
        .all(db)
        .await?;
    for chunk in ids.chunks(500) {
        insert_reads(db, user.id, chunk).await?;
    }
    Ok(ids.len() as u64)
}

async fn insert_reads(db: &DatabaseConnection, user_id: i64, ids: &[i64]) -> Result<(), DbError> {
    let now = Utc::now();
    let rows = ids.iter().map(|&id| notification_read::ActiveModel {
        notification_id: Set(id),
        user_id: Set(user_id),
        read_at: Set(now),
    });
    notification_read::Entity::insert_many(rows)
        .on_conflict_do_nothing_on([
            notification_read::Column::NotificationId,
            notification_read::Column::UserId,
        ])
        .exec(db)
        .await?;
    Ok(())
}

/// Stores a new service token (its digest) for the host application `name`.
pub async fn create_service_token(
    db: &DatabaseConnection,
    name: &str,
    key_hash: String,
    prefix: String,
) -> Result<service_token::Model, DbError> {
    Ok(service_token::ActiveModel {
        name: Set(name.to_owned()),
        key_hash: Set(key_hash),
        prefix: Set(prefix),
        created_at: Set(Utc::now()),
        revoked_at: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await?)
}

/// The live (not revoked) service token with this digest.
pub async fn find_service_token(
    db: &DatabaseConnection,
    key_hash: &str,
) -> Result<Option<service_token::Model>, DbError> {
    Ok(service_token::Entity::find()
        .filter(service_token::Column::KeyHash.eq(key_hash))
        .filter(service_token::Column::RevokedAt.is_null())
        .one(db)
        .await?)
}

/// Every service token, oldest first.
pub async fn service_tokens(db: &DatabaseConnection) -> Result<Vec<service_token::Model>, DbError> {
    Ok(service_token::Entity::find()
        .order_by_asc(service_token::Column::Id)
        .all(db)
        .await?)
}

/// Revokes service tokens by id or by name; returns how many were live and are now revoked.
pub async fn revoke_service_tokens(
    db: &DatabaseConnection,
    id: Option<i64>,
    name: Option<&str>,
) -> Result<u64, DbError> {
    let mut update = service_token::Entity::update_many()
        .col_expr(
            service_token::Column::RevokedAt,
            sea_orm::sea_query::Expr::value(Utc::now()),
        )
        .filter(service_token::Column::RevokedAt.is_null());
    if let Some(id) = id {
        update = update.filter(service_token::Column::Id.eq(id));
    }
    if let Some(name) = name {
        update = update.filter(service_token::Column::Name.eq(name));
    }
    Ok(update.exec(db).await?.rows_affected)
}

/// Ids of the existing users among `ids`.
pub async fn existing_users(db: &DatabaseConnection, ids: &[i64]) -> Result<Vec<i64>, DbError> {
    Ok(user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .filter(user::Column::Id.is_in(ids.to_vec()))
        .into_tuple()
        .all(db)
        .await?)
}

/// How far `scope` reaches: its users, and their postboxes (each user's default postbox plus one per
/// registered client).
pub async fn reach(db: &DatabaseConnection, scope: Reach<'_>) -> Result<(u64, u64), DbError> {
    use super::entities::client;
    let users = match scope {
        Reach::Users(ids) => ids.len() as u64,
        Reach::College(college) => {
            user::Entity::find()
                .filter(user::Column::CollegeId.eq(college))
                .count(db)
                .await?
        }
    };
    let clients = client::Entity::find().filter(match scope {
        Reach::Users(ids) => client::Column::UserId.is_in(ids.to_vec()),
        Reach::College(college) => client::Column::UserId.in_subquery(
            Query::select()
                .column(user::Column::Id)
                .from(user::Entity)
                .and_where(user::Column::CollegeId.eq(college))
                .to_owned(),
        ),
    });
    Ok((users, users + clients.count(db).await?))
}

/// Who an event or notification is addressed to.
#[derive(Debug, Clone, Copy)]
pub enum Reach<'a> {
    Users(&'a [i64]),
    College(i64),
}
