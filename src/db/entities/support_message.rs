use sea_orm::entity::prelude::*;

/// A message of a support chat. `id` is a UUIDv7; `created_at` is in whole milliseconds and strictly
/// increasing within a chat.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "support_messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub chat_id: i64,
    pub sender_id: i64,
    /// Written by an agent (through the agents' routes), not by the chat's user.
    pub is_from_admin: bool,
    #[sea_orm(column_type = "Text")]
    pub message: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
