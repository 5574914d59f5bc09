use sea_orm::entity::prelude::*;

/// A user's one support chat with the agents (staff and admins).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "support_chats")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub user_id: i64,
    /// `open` or `closed`.
    pub status: String,
    /// The first characters of the last message (empty before the first one).
    pub last_message_preview: String,
    pub created_at: DateTimeUtc,
    /// The last message or status change.
    pub updated_at: DateTimeUtc,
    pub closed_at: Option<DateTimeUtc>,
    pub closed_by: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
