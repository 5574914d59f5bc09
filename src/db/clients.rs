//! Registered clients (tabs, devices) and their per-user cap.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set,
    sea_query::Expr,
};

use super::{DbError, entities::client};

/// Inserts or refreshes a client; if the user then has more than `cap` clients, deletes the least
/// recently seen others. Returns whether the client existed before, and the evicted client ids.
pub async fn register(
    db: &DatabaseConnection,
    user_id: i64,
    client_id: &str,
    cap: usize,
) -> Result<(bool, Vec<String>), DbError> {
    let now = Utc::now();
    let txn = super::begin_write(db).await?;
    let updated = client::Entity::update_many()
        .col_expr(client::Column::LastSeenAt, Expr::value(now))
        .filter(client::Column::UserId.eq(user_id))
        .filter(client::Column::ClientId.eq(client_id))
        .exec(&txn)
        .await?
        .rows_affected;
    if updated == 0 {
        client::ActiveModel {
            user_id: Set(user_id),
            client_id: Set(client_id.to_owned()),
            created_at: Set(now),
            last_seen_at: Set(now),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
    }
    let all = client::Entity::find()
        .filter(client::Column::UserId.eq(user_id))
        .order_by_desc(client::Column::LastSeenAt)
        .order_by_desc(client::Column::Id)
        .all(&txn)
        .await?;
    let evicted: Vec<client::Model> = all
        .into_iter()
        .filter(|c| c.client_id != client_id)
        .skip(cap.saturating_sub(1))
        .collect();
    if !evicted.is_empty() {
        client::Entity::delete_many()
            .filter(client::Column::Id.is_in(evicted.iter().map(|c| c.id)))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok((
        updated > 0,
        evicted.into_iter().map(|c| c.client_id).collect(),
    ))
}

/// The client ids a user has registered.
pub async fn client_ids(db: &DatabaseConnection, user_id: i64) -> Result<Vec<String>, DbError> {
    use sea_orm::QuerySelect;
    Ok(client::Entity::find()
        .select_only()
        .column(client::Column::ClientId)
        .filter(client::Column::UserId.eq(user_id))
        .into_tuple()
        .all(db)
        .await?)
}
