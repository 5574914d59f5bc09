use sea_orm::entity::prelude::*;

/// A notification to one user (`user_id`) or to every member of a college (`college_id`).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "notifications")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: Option<i64>,
    pub college_id: Option<i64>,
    pub title: String,
    #[sea_orm(column_type = "Text")]
    pub message: String,
    pub notification_type: String,
    /// Extra JSON object from the sender, as text.
    #[sea_orm(column_type = "Text", nullable)]
    pub data: Option<String>,
    pub created_by: Option<i64>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
