//! Every user's event sequence: each stored event a user receives gets the next number of their
//! sequence in the transaction that stores its data (`users.last_seq`), and is kept under it in
//! `user_events` for `GET poll/missed/?after=`, until [`sweep`] removes it after its retention.
//! Numbers only grow, by one per event, with no gaps: a client that sees 41 and then 44 knows it missed
//! two. Concurrent transactions for one user take turns on the user's row.

use chrono::Utc;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, ExprTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, sea_query::Expr,
};

use super::{
    DbError,
    entities::{user, user_event},
};
use crate::events::Envelope;

/// Rows per insert statement (SQLite's limit on bound parameters).
const ROWS_PER_STATEMENT: usize = 1_000;

/// Who a stored event's numbers go to.
pub enum Recipients<'a> {
    Users(&'a [i64]),
    College(i64),
    Staff,
}

/// Hands out the next number to each recipient and keeps `event` under it, inside the caller's
/// transaction. Returns `(user, the event under that user's number)`, in no particular order; a user
/// who does not exist gets none.
pub async fn assign<C: ConnectionTrait>(
    db: &C,
    recipients: Recipients<'_>,
    event: &Envelope,
) -> Result<Vec<(i64, Envelope)>, DbError> {
    let update = user::Entity::update_many().col_expr(
        user::Column::LastSeq,
        Expr::col(user::Column::LastSeq).add(1),
    );
    let update = match recipients {
        Recipients::Users([]) => return Ok(Vec::new()),
        Recipients::Users([one]) => update.filter(user::Column::Id.eq(*one)),
        Recipients::Users(many) => update.filter(user::Column::Id.is_in(many.iter().copied())),
        Recipients::College(id) => update.filter(user::Column::CollegeId.eq(id)),
        Recipients::Staff => update.filter(user::Column::Role.is_in(["staff", "admin"])),
    };
    let numbered: Vec<(i64, i64)> = update
        .exec_with_returning(db)
        .await?
        .into_iter()
        .map(|u| (u.id, u.last_seq))
        .collect();
    let now = Utc::now();
    let mut out = Vec::with_capacity(numbered.len());
    let mut rows = Vec::with_capacity(numbered.len().min(ROWS_PER_STATEMENT));
    for (user_id, seq) in numbered {
        let copy = event.with_seq(seq);
        rows.push(user_event::ActiveModel {
            user_id: Set(user_id),
            seq: Set(seq),
            payload: Set(String::from_utf8(copy.to_json()).expect("envelopes are JSON text")),
            created_at: Set(now),
        });
        out.push((user_id, copy));
        if rows.len() == ROWS_PER_STATEMENT {
            insert(db, std::mem::take(&mut rows)).await?;
        }
    }
    insert(db, rows).await?;
    Ok(out)
}

async fn insert<C: ConnectionTrait>(
    db: &C,
    rows: Vec<user_event::ActiveModel>,
) -> Result<(), DbError> {
    if !rows.is_empty() {
        user_event::Entity::insert_many(rows).exec(db).await?;
    }
    Ok(())
}

/// What a user's sequence keeps after a number.
#[derive(Debug, Clone, PartialEq)]
pub struct Missed {
    /// The envelopes (JSON, `seq` included) after the number asked for, oldest first.
    pub events: Vec<String>,
    /// The user's last number now.
    pub last_seq: i64,
    /// `false` when numbers right after the one asked for are no longer kept (the client must reload
    /// from the REST API).
    pub kept: bool,
    /// Whether `limit` cut the page (ask again after the last number returned).
    pub more: bool,
}

/// The events of `user_id`'s sequence after `after`, at most `limit`.
pub async fn after(
    db: &DatabaseConnection,
    user_id: i64,
    after: i64,
    limit: u64,
) -> Result<Missed, DbError> {
    let last_seq: i64 = user::Entity::find_by_id(user_id)
        .select_only()
        .column(user::Column::LastSeq)
        .into_tuple()
        .one(db)
        .await?
        .unwrap_or(0);
    let rows: Vec<(i64, String)> = user_event::Entity::find()
        .select_only()
        .column(user_event::Column::Seq)
        .column(user_event::Column::Payload)
        .filter(user_event::Column::UserId.eq(user_id))
        .filter(user_event::Column::Seq.gt(after))
        .order_by_asc(user_event::Column::Seq)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?;
    let first_kept = rows.first().map(|r| r.0);
    let kept = after >= last_seq || first_kept.is_some_and(|first| first <= after + 1);
    let reached = rows.last().map_or(Ord::max(after, 0), |r| r.0);
    Ok(Missed {
        kept,
        more: kept && reached < last_seq,
        last_seq,
        events: rows.into_iter().map(|r| r.1).collect(),
    })
}

/// Removes kept events older than `older_than`. Returns how many.
pub async fn sweep(db: &DatabaseConnection, older_than: chrono::Duration) -> Result<u64, DbError> {
    Ok(user_event::Entity::delete_many()
        .filter(user_event::Column::CreatedAt.lt(Utc::now() - older_than))
        .exec(db)
        .await?
        .rows_affected)
}
