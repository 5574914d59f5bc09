//! Recorded gaps per postbox queue (see `crate::delivery::gaps`).

use chrono::Utc;
use sea_orm::{ActiveModelTrait, DatabaseConnection, EntityTrait, Set};

use super::{DbError, entities::gap};

/// Adds a loss to a queue's gap: `lost` events of known count (0 when unknown), the creation time of
/// the oldest, its sequence number when it had one, and the cause.
pub async fn record(
    db: &DatabaseConnection,
    queue: &str,
    lost: i64,
    since: Option<f64>,
    seq: Option<i64>,
    reason: &str,
) -> Result<(), DbError> {
    let txn = super::begin_write(db).await?;
    let now = Utc::now();
    match gap::Entity::find_by_id(queue.to_owned()).one(&txn).await? {
        Some(g) => {
            let mut reasons: Vec<&str> = g.reasons.split(',').filter(|r| !r.is_empty()).collect();
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
            let joined = reasons.join(",");
            let mut active: gap::ActiveModel = g.clone().into();
            active.lost = Set(g.lost + lost);
            active.unknown = Set(g.unknown + i64::from(lost == 0));
            active.since = Set(match (g.since, since) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            });
            active.reasons = Set(joined);
            active.seq_from = Set(match (g.seq_from, seq) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            });
            active.seq_to = Set(match (g.seq_to, seq) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            });
            active.unnumbered = Set(g.unnumbered + if seq.is_none() { lost } else { 0 });
            active.updated_at = Set(now);
            active.update(&txn).await?;
        }
        None => {
            gap::ActiveModel {
                queue: Set(queue.to_owned()),
                lost: Set(lost),
                unknown: Set(i64::from(lost == 0)),
                since: Set(since),
                reasons: Set(reason.to_owned()),
                seq_from: Set(seq),
                seq_to: Set(seq),
                unnumbered: Set(if seq.is_none() { lost } else { 0 }),
                updated_at: Set(now),
            }
            .insert(&txn)
            .await?;
        }
    }
    txn.commit().await?;
    Ok(())
}

/// The gap recorded for a queue, if any.
pub async fn find(db: &DatabaseConnection, queue: &str) -> Result<Option<gap::Model>, DbError> {
    Ok(gap::Entity::find_by_id(queue.to_owned()).one(db).await?)
}

/// The gaps of these queues (one query).
pub async fn find_many(
    db: &DatabaseConnection,
    queues: Vec<String>,
) -> Result<Vec<gap::Model>, DbError> {
    use sea_orm::{ColumnTrait, QueryFilter};
    Ok(gap::Entity::find()
        .filter(gap::Column::Queue.is_in(queues))
        .all(db)
        .await?)
}

/// Forgets a gap once announced; only if it did not grow meanwhile (`updated_at` unchanged).
pub async fn clear(db: &DatabaseConnection, announced: &gap::Model) -> Result<(), DbError> {
    use sea_orm::{ColumnTrait, QueryFilter};
    gap::Entity::delete_many()
        .filter(gap::Column::Queue.eq(announced.queue.clone()))
        .filter(gap::Column::UpdatedAt.eq(announced.updated_at))
        .exec(db)
        .await?;
    Ok(())
}
