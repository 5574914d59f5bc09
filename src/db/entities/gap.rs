use sea_orm::entity::prelude::*;

/// Events one postbox (queue) lost since its client last heard of it.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "gaps")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub queue: String,
    /// Events known lost (dead-lettered).
    pub lost: i64,
    /// Losses of unknown size (the queue was deleted with its events).
    pub unknown: i64,
    /// Creation time (seconds since the epoch) of the oldest lost event, when known.
    pub since: Option<f64>,
    /// Comma-separated causes: `maxlen`, `expired`, `queue_deleted`.
    pub reasons: String,
    /// The range of the user's sequence numbers lost, when the lost events carried them.
    pub seq_from: Option<i64>,
    pub seq_to: Option<i64>,
    /// Lost events that had no number (host events, copies for the user's devices): not fetchable.
    pub unnumbered: i64,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
