//! Stored notifications (to one user or to a whole college) with per-user read state, and service
//! tokens for host applications that publish events through the API.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261124_000001_users_and_tokens::Users;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Notifications::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Notifications::Id))
                    .col(big_integer_null(Notifications::UserId))
                    .col(big_integer_null(Notifications::CollegeId))
                    .col(string_len(Notifications::Title, 200))
                    .col(text(Notifications::Message))
                    .col(string_len(Notifications::NotificationType, 32))
                    .col(text_null(Notifications::Data))
                    .col(big_integer_null(Notifications::CreatedBy))
                    .col(timestamp_with_time_zone(Notifications::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_notifications_user")
                            .from(Notifications::Table, Notifications::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_notifications_user", Notifications::UserId),
            ("idx_notifications_college", Notifications::CollegeId),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Notifications::Table)
                        .col(col)
                        .col(Notifications::Id)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(NotificationReads::Table)
                    .if_not_exists()
                    .col(big_integer(NotificationReads::NotificationId))
                    .col(big_integer(NotificationReads::UserId))
                    .col(timestamp_with_time_zone(NotificationReads::ReadAt))
                    .primary_key(
                        Index::create()
                            .col(NotificationReads::NotificationId)
                            .col(NotificationReads::UserId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_notification_reads_notification")
                            .from(NotificationReads::Table, NotificationReads::NotificationId)
                            .to(Notifications::Table, Notifications::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_notification_reads_user")
                            .from(NotificationReads::Table, NotificationReads::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ServiceTokens::Table)
                    .if_not_exists()
                    .col(big_pk_auto(ServiceTokens::Id))
                    .col(string_len(ServiceTokens::Name, 100))
                    .col(string_len_uniq(ServiceTokens::KeyHash, 64))
                    .col(string_len(ServiceTokens::Prefix, 8))
                    .col(timestamp_with_time_zone(ServiceTokens::CreatedAt))
                    .col(timestamp_with_time_zone_null(ServiceTokens::RevokedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ServiceTokens::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(NotificationReads::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Notifications::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Notifications {
    Table,
    Id,
    UserId,
    CollegeId,
    Title,
    Message,
    NotificationType,
    Data,
    CreatedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum NotificationReads {
    Table,
    NotificationId,
    UserId,
    ReadAt,
}

#[derive(DeriveIden)]
enum ServiceTokens {
    Table,
    Id,
    Name,
    KeyHash,
    Prefix,
    CreatedAt,
    RevokedAt,
}
