//! The transactional outbox table: an event written in the same transaction as the data it
//! announces, deleted once RabbitMQ confirmed it, republished by the relay when it is left behind
//! (`crate::delivery::outbox`).
//!
//! A row holds the event's envelope as JSON and its audience as text, this module's own format
//! (`user.1 user.2` for users, `devices.1` for a user's registered clients, `member.4` for a member's
//! copy of a broadcast, `college.5`, `group.staff`),
//! which older rows share.

use std::sync::Arc;

use chrono::Utc;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, ExprTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, sea_query::Expr,
};

use super::{
    DbError,
    entities::outbox,
    sequence::{self, Recipients},
};
use crate::events::{Audience, Envelope};

/// An event to publish once the transaction that stored its data has committed.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    pub outbox_id: i64,
    pub audience: Audience,
    pub event: Arc<Envelope>,
}

/// A row left behind, read back for the relay.
#[derive(Debug, Clone)]
pub struct StaleRow {
    pub id: i64,
    /// `None` when the row's audience cannot be read.
    pub audience: Option<Audience>,
    /// The audience as stored (to keep a row's order behind an earlier row of the same audience).
    pub routing_key: String,
    /// The envelope's JSON.
    pub payload: String,
    /// Failed attempts so far.
    pub attempts: i32,
    /// Not to be tried before this time (a failed row's backoff); `None`: now.
    pub next_attempt_at: Option<chrono::DateTime<Utc>>,
}

/// A row the relay gave up on, as `postbox outbox list` and `check-rabbitmq` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParkedRow {
    pub id: i64,
    /// The audience as stored (`user.1 user.2`, `devices.3`, `college.5`, `group.staff`).
    pub audience: String,
    /// The event's id and type, read from the stored envelope when it can be.
    pub event_id: Option<String>,
    pub event: Option<String>,
    pub attempts: i32,
    pub created_at: String,
    pub parked_at: Option<String>,
    pub last_error: Option<String>,
}

/// Adds `event` to the outbox inside the caller's transaction. Users get it under the next number of
/// their sequence (`super::sequence`), one row each; a college or the staff group is expanded to its
/// members now, each with their own number, published to the postboxes they have
/// ([`Audience::Members`]); a user's devices share one row, without a number.
pub async fn insert<C: ConnectionTrait>(
    db: &C,
    audiences: Vec<Audience>,
    event: Envelope,
) -> Result<Vec<PendingEvent>, DbError> {
    let mut copies: Vec<(Audience, Envelope)> = Vec::new();
    for audience in audiences {
        let (recipients, members) = match &audience {
            Audience::Users(ids) => (Recipients::Users(ids), false),
            Audience::Members(ids) => (Recipients::Users(ids), true),
            Audience::College(id) => (Recipients::College(*id), true),
            Audience::Staff => (Recipients::Staff, true),
            Audience::Devices(_) => {
                copies.push((audience, event.clone()));
                continue;
            }
        };
        let numbered = sequence::assign(db, recipients, &event).await?;
        if let Audience::Users(ids) = &audience {
            // A user without a row has no sequence: the event still goes to their postbox.
            for id in ids {
                if !numbered.iter().any(|(user_id, _)| user_id == id) {
                    copies.push((Audience::Users(vec![*id]), event.clone()));
                }
            }
        }
        for (user_id, copy) in numbered {
            let to = match members {
                true => Audience::Members(vec![user_id]),
                false => Audience::Users(vec![user_id]),
            };
            copies.push((to, copy));
        }
    }
    let now = Utc::now();
    let mut pending = Vec::with_capacity(copies.len());
    for chunk in copies.chunks(ROWS_PER_STATEMENT) {
        let rows =
            chunk.iter().map(|(audience, event)| outbox::ActiveModel {
                routing_key: Set(audience_text(audience)),
                payload: Set(
                    String::from_utf8(event.to_json()).expect("event envelopes are JSON text")
                ),
                created_at: Set(now),
                attempts: Set(0),
                next_attempt_at: Set(None),
                parked_at: Set(None),
                last_error: Set(None),
                ..Default::default()
            });
        let mut inserted = outbox::Entity::insert_many(rows)
            .exec_with_returning(db)
            .await?;
        // Each copy takes the row of its audience (the returned order is not promised; rows of one
        // audience, if any share one, in id order).
        inserted.sort_by_key(|r| r.id);
        let mut taken = vec![false; inserted.len()];
        for (audience, event) in chunk {
            let key = audience_text(audience);
            let Some(i) =
                (0..inserted.len()).find(|&i| !taken[i] && inserted[i].routing_key == key)
            else {
                return Err(DbError::Other(sea_orm::DbErr::RecordNotInserted));
            };
            taken[i] = true;
            pending.push(PendingEvent {
                outbox_id: inserted[i].id,
                audience: audience.clone(),
                event: Arc::new(event.clone()),
            });
        }
    }
    Ok(pending)
}

/// Rows per insert statement (SQLite's limit on bound parameters).
const ROWS_PER_STATEMENT: usize = 500;

/// Removes outbox rows whose events RabbitMQ confirmed.
pub async fn delete(db: &DatabaseConnection, ids: &[i64]) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    outbox::Entity::delete_many()
        .filter(outbox::Column::Id.is_in(ids.iter().copied()))
        .exec(db)
        .await?;
    Ok(())
}

/// Outbox rows older than `min_age` (their inline publish failed or the process died before it), not
/// parked, oldest first; rows still in their backoff are included (they hold back the later rows of
/// their audience).
pub async fn stale(
    db: &DatabaseConnection,
    min_age: chrono::Duration,
    limit: u64,
) -> Result<Vec<StaleRow>, DbError> {
    let rows = outbox::Entity::find()
        .filter(outbox::Column::CreatedAt.lt(Utc::now() - min_age))
        .filter(outbox::Column::ParkedAt.is_null())
        .order_by_asc(outbox::Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| StaleRow {
            id: r.id,
            audience: parse_audience(&r.routing_key),
            routing_key: r.routing_key,
            payload: r.payload,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
        })
        .collect())
}

/// Records a failed attempt of a row: its count, why, and when to try again; or, with `park`, that the
/// relay gives up on it.
pub async fn failed(
    db: &DatabaseConnection,
    id: i64,
    error: &str,
    next_attempt_at: chrono::DateTime<Utc>,
    park: bool,
) -> Result<(), DbError> {
    outbox::Entity::update_many()
        .col_expr(
            outbox::Column::Attempts,
            Expr::col(outbox::Column::Attempts).add(1),
        )
        .col_expr(outbox::Column::LastError, Expr::value(error.to_owned()))
        .col_expr(outbox::Column::NextAttemptAt, Expr::value(next_attempt_at))
        .col_expr(outbox::Column::ParkedAt, Expr::value(park.then(Utc::now)))
        .filter(outbox::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Narrows a row to the part of its audience that did not confirm (the rest has the event).
pub async fn narrow(db: &DatabaseConnection, id: i64, audience: &Audience) -> Result<(), DbError> {
    outbox::Entity::update_many()
        .col_expr(
            outbox::Column::RoutingKey,
            Expr::value(audience_text(audience)),
        )
        .filter(outbox::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Parked rows, oldest first, at most `limit`.
pub async fn parked(db: &DatabaseConnection, limit: u64) -> Result<Vec<ParkedRow>, DbError> {
    let rows = outbox::Entity::find()
        .filter(outbox::Column::ParkedAt.is_not_null())
        .order_by_asc(outbox::Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let envelope = Envelope::from_json(r.payload.as_bytes()).ok();
            ParkedRow {
                id: r.id,
                audience: r.routing_key,
                event_id: envelope.as_ref().map(|e| e.id.clone()),
                event: envelope.map(|e| e.kind),
                attempts: r.attempts,
                created_at: crate::events::rfc3339(r.created_at),
                parked_at: r.parked_at.map(crate::events::rfc3339),
                last_error: r.last_error,
            }
        })
        .collect())
}

/// The outbox's state for the dashboards: rows waiting (not parked), the oldest one's creation time,
/// and rows parked.
pub async fn backlog(
    db: &DatabaseConnection,
) -> Result<(u64, Option<chrono::DateTime<Utc>>, u64), DbError> {
    let waiting = outbox::Entity::find().filter(outbox::Column::ParkedAt.is_null());
    let count = waiting.clone().count(db).await?;
    let oldest: Option<chrono::DateTime<Utc>> = waiting
        .select_only()
        .column(outbox::Column::CreatedAt)
        .order_by_asc(outbox::Column::Id)
        .limit(1)
        .into_tuple()
        .one(db)
        .await?;
    Ok((count, oldest, parked_count(db).await?))
}

/// How many rows are parked.
pub async fn parked_count(db: &DatabaseConnection) -> Result<u64, DbError> {
    Ok(outbox::Entity::find()
        .filter(outbox::Column::ParkedAt.is_not_null())
        .count(db)
        .await?)
}

/// Gives parked rows (all, or those with these ids) back to the relay, as new: due now, attempts
/// counted from zero. Returns how many.
pub async fn unpark(db: &DatabaseConnection, ids: Option<&[i64]>) -> Result<u64, DbError> {
    let mut update = outbox::Entity::update_many()
        .col_expr(
            outbox::Column::ParkedAt,
            Expr::value(None::<chrono::DateTime<Utc>>),
        )
        .col_expr(
            outbox::Column::NextAttemptAt,
            Expr::value(None::<chrono::DateTime<Utc>>),
        )
        .col_expr(outbox::Column::Attempts, Expr::value(0))
        .filter(outbox::Column::ParkedAt.is_not_null());
    if let Some(ids) = ids {
        update = update.filter(outbox::Column::Id.is_in(ids.iter().copied()));
    }
    Ok(update.exec(db).await?.rows_affected)
}

/// An audience as a row stores it.
fn audience_text(audience: &Audience) -> String {
    match audience {
        Audience::Users(ids) => ids
            .iter()
            .map(|id| format!("user.{id}"))
            .collect::<Vec<_>>()
            .join(" "),
        Audience::Devices(id) => format!("devices.{id}"),
        Audience::Members(ids) => ids
            .iter()
            .map(|id| format!("member.{id}"))
            .collect::<Vec<_>>()
            .join(" "),
        Audience::College(id) => format!("college.{id}"),
        Audience::Staff => "group.staff".to_owned(),
    }
}

/// An audience read back from a row.
fn parse_audience(text: &str) -> Option<Audience> {
    if text == "group.staff" {
        return Some(Audience::Staff);
    }
    if let Some(id) = text.strip_prefix("college.") {
        return id.parse().ok().map(Audience::College);
    }
    if let Some(id) = text.strip_prefix("devices.") {
        return id.parse().ok().map(Audience::Devices);
    }
    if text.starts_with("member.") {
        let members = text
            .split(' ')
            .map(|key| key.strip_prefix("member.")?.parse().ok())
            .collect::<Option<Vec<i64>>>()?;
        return Some(Audience::Members(members));
    }
    let users = text
        .split(' ')
        .map(|key| key.strip_prefix("user.")?.parse().ok())
        .collect::<Option<Vec<i64>>>()?;
    (!users.is_empty()).then_some(Audience::Users(users))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_read_back_as_written() {
        for a in [
            Audience::Users(vec![1]),
            Audience::Users(vec![3, 1_000_000_000_000]),
            Audience::College(0),
            Audience::College(42),
            Audience::Devices(7),
            Audience::Staff,
        ] {
            assert_eq!(parse_audience(&audience_text(&a)), Some(a.clone()), "{a:?}");
        }
        // The rows earlier versions wrote.
        assert_eq!(
            parse_audience("user.4 user.5"),
            Some(Audience::Users(vec![4, 5]))
        );
        for bad in [
            "",
            "user.",
            "user.x",
            "college.",
            "devices.",
            "devices.1 user.2",
            "group.other",
            "user.1 college.2",
        ] {
            assert_eq!(parse_audience(bad), None, "{bad:?}");
        }
    }
}
