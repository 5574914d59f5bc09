//! The support desk: one support chat per user with the agents (staff and admins), and its messages.
//!
//! `support_messages.id` is a UUIDv7 (text, time-ordered). `created_at` is stored in whole milliseconds
//! and strictly increasing within a chat (see `db::support`), so `created_at > since` with a millisecond
//! `since` echoed back by a client neither repeats nor skips a message.

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
                    .table(SupportChats::Table)
                    .if_not_exists()
                    .col(big_pk_auto(SupportChats::Id))
                    .col(big_integer(SupportChats::UserId))
                    .col(string_len(SupportChats::Status, 16).default("open"))
                    // The first characters of the last message, for the agents' list.
                    .col(string_len(SupportChats::LastMessagePreview, 255).default(""))
                    .col(timestamp_with_time_zone(SupportChats::CreatedAt))
                    .col(timestamp_with_time_zone(SupportChats::UpdatedAt))
                    .col(timestamp_with_time_zone_null(SupportChats::ClosedAt))
                    .col(big_integer_null(SupportChats::ClosedBy))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_support_chats_user")
                            .from(SupportChats::Table, SupportChats::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_support_chats_closed_by")
                            .from(SupportChats::Table, SupportChats::ClosedBy)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_support_chats_user")
                    .table(SupportChats::Table)
                    .col(SupportChats::UserId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_support_chats_status_updated")
                    .table(SupportChats::Table)
                    .col(SupportChats::Status)
                    .col(SupportChats::UpdatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SupportMessages::Table)
                    .if_not_exists()
                    .col(string_len(SupportMessages::Id, 36).primary_key())
                    .col(big_integer(SupportMessages::ChatId))
                    .col(big_integer(SupportMessages::SenderId))
                    .col(boolean(SupportMessages::IsFromAdmin))
                    .col(text(SupportMessages::Message))
                    .col(timestamp_with_time_zone(SupportMessages::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_support_messages_chat")
                            .from(SupportMessages::Table, SupportMessages::ChatId)
                            .to(SupportChats::Table, SupportChats::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_support_messages_sender")
                            .from(SupportMessages::Table, SupportMessages::SenderId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_support_messages_chat_created")
                    .table(SupportMessages::Table)
                    .col(SupportMessages::ChatId)
                    .col(SupportMessages::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SupportMessages::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(SupportChats::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum SupportChats {
    Table,
    Id,
    UserId,
    Status,
    LastMessagePreview,
    CreatedAt,
    UpdatedAt,
    ClosedAt,
    ClosedBy,
}

#[derive(DeriveIden)]
enum SupportMessages {
    Table,
    Id,
    ChatId,
    SenderId,
    IsFromAdmin,
    Message,
    CreatedAt,
}
