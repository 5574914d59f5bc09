//! Gaps: events a postbox lost (dropped by `x-max-length`, expired by TTL, deleted with the queue),
//! recorded from RabbitMQ's dead letters and announced to the client as a `resync` event.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Gaps::Table)
                    .if_not_exists()
                    .col(string_len(Gaps::Queue, 255).primary_key())
                    .col(big_integer(Gaps::Lost).default(0))
                    .col(big_integer(Gaps::Unknown).default(0))
                    .col(double_null(Gaps::Since))
                    .col(string_len(Gaps::Reasons, 255).default(""))
                    .col(timestamp_with_time_zone(Gaps::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Gaps::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Gaps {
    Table,
    Queue,
    Lost,
    Unknown,
    Since,
    Reasons,
    UpdatedAt,
}
