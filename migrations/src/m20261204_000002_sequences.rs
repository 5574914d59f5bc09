//! A sequence per user that clients can check: `users.last_seq` is the last number handed out,
//! `user_events` keeps every stored event a user received under its number (the envelope as JSON),
//! for `GET poll/missed/?after=` until a sweep removes rows past their retention. `gaps` learns the
//! range of numbers a postbox lost (`seq_from`..=`seq_to`), so a `resync` says what to fetch, and how
//! many lost events had no number (`unnumbered`: those cannot be fetched).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(big_integer(Users::LastSeq).default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(UserEvents::Table)
                    .if_not_exists()
                    .col(big_integer(UserEvents::UserId))
                    .col(big_integer(UserEvents::Seq))
                    .col(text(UserEvents::Payload))
                    .col(timestamp_with_time_zone(UserEvents::CreatedAt))
                    .primary_key(Index::create().col(UserEvents::UserId).col(UserEvents::Seq))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_user_events_created_at")
                    .table(UserEvents::Table)
                    .col(UserEvents::CreatedAt)
                    .to_owned(),
            )
            .await?;
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [
            big_integer_null(Gaps::SeqFrom),
            big_integer_null(Gaps::SeqTo),
            big_integer(Gaps::Unnumbered).default(0).to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Gaps::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Gaps::SeqFrom, Gaps::SeqTo, Gaps::Unnumbered] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Gaps::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(UserEvents::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(Users::LastSeq)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    LastSeq,
}

#[derive(DeriveIden)]
enum UserEvents {
    Table,
    UserId,
    Seq,
    Payload,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Gaps {
    Table,
    SeqFrom,
    SeqTo,
    Unnumbered,
}
