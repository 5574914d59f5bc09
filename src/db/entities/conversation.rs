use sea_orm::entity::prelude::*;

/// One row per pair of users; `user1_id < user2_id` always, so the pair has a single row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "conversations")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user1_id: i64,
    pub user2_id: i64,
    pub last_message_id: Option<i64>,
    pub last_message_by: Option<i64>,
    pub last_message_preview: String,
    pub last_message_at: Option<DateTimeUtc>,
    pub user1_unread: i64,
    pub user2_unread: i64,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
