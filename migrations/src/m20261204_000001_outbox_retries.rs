//! The outbox relay's per-row state: when a row that failed is tried again (`next_attempt_at`, backoff
//! from its attempt count), when it was parked after failing too often (`parked_at`: the relay leaves
//! it alone until an operator runs `postbox outbox retry`), and why it last failed (`last_error`, for
//! `postbox outbox list` and `check-rabbitmq`). Rows written before keep nulls: due now, not parked.
//!
//! Also widens `routing_key` (the row's audience, `user.1 user.2 ...`) to text on PostgreSQL: a host
//! publish to hundreds of users does not fit 255 characters. SQLite does not enforce the length.

use sea_orm_migration::{prelude::*, schema::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [
            timestamp_with_time_zone_null(Outbox::NextAttemptAt),
            timestamp_with_time_zone_null(Outbox::ParkedAt),
            text_null(Outbox::LastError),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Outbox::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("ALTER TABLE outbox ALTER COLUMN routing_key TYPE text")
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Outbox::NextAttemptAt, Outbox::ParkedAt, Outbox::LastError] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Outbox::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    NextAttemptAt,
    ParkedAt,
    LastError,
}
