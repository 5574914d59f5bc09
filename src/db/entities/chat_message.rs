use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "chat_messages")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub conversation_id: i64,
    pub sender_id: i64,
    pub receiver_id: i64,
    #[sea_orm(column_type = "Text")]
    pub message: String,
    pub attachment: Option<String>,
    pub attachment_type: Option<String>,
    /// Bytes of the attachment; null for messages stored before sizes were recorded.
    pub attachment_size: Option<i64>,
    pub created_at: DateTimeUtc,
    pub delivered_at: Option<DateTimeUtc>,
    pub read_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
