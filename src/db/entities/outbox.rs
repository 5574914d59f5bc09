use sea_orm::entity::prelude::*;

/// An event waiting for RabbitMQ's confirm; see `crate::db::outbox` and `crate::delivery::outbox`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub routing_key: String,
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    pub created_at: DateTimeUtc,
    pub attempts: i32,
    /// When the relay tries a failed row again (null: now).
    pub next_attempt_at: Option<DateTimeUtc>,
    /// When the relay gave up on the row (null: not parked).
    pub parked_at: Option<DateTimeUtc>,
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
