//! One-to-one chat: conversations (one row per pair of users, `user1_id < user2_id`) and their messages.

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
                    .table(Conversations::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Conversations::Id))
                    .col(big_integer(Conversations::User1Id))
                    .col(big_integer(Conversations::User2Id))
                    .col(big_integer_null(Conversations::LastMessageId))
                    .col(big_integer_null(Conversations::LastMessageBy))
                    .col(string_len(Conversations::LastMessagePreview, 255).default(""))
                    .col(timestamp_with_time_zone_null(Conversations::LastMessageAt))
                    .col(big_integer(Conversations::User1Unread).default(0))
                    .col(big_integer(Conversations::User2Unread).default(0))
                    .col(timestamp_with_time_zone(Conversations::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_conversations_user1")
                            .from(Conversations::Table, Conversations::User1Id)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_conversations_user2")
                            .from(Conversations::Table, Conversations::User2Id)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_conversations_pair")
                    .table(Conversations::Table)
                    .col(Conversations::User1Id)
                    .col(Conversations::User2Id)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_conversations_user2")
                    .table(Conversations::Table)
                    .col(Conversations::User2Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ChatMessages::Table)
                    .if_not_exists()
                    .col(big_pk_auto(ChatMessages::Id))
                    .col(big_integer(ChatMessages::ConversationId))
                    .col(big_integer(ChatMessages::SenderId))
                    .col(big_integer(ChatMessages::ReceiverId))
                    .col(text(ChatMessages::Message))
                    .col(string_len_null(ChatMessages::Attachment, 255))
                    .col(string_len_null(ChatMessages::AttachmentType, 16))
                    .col(timestamp_with_time_zone(ChatMessages::CreatedAt))
                    .col(timestamp_with_time_zone_null(ChatMessages::DeliveredAt))
                    .col(timestamp_with_time_zone_null(ChatMessages::ReadAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_chat_messages_conversation")
                            .from(ChatMessages::Table, ChatMessages::ConversationId)
                            .to(Conversations::Table, Conversations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_chat_messages_sender")
                            .from(ChatMessages::Table, ChatMessages::SenderId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_chat_messages_receiver")
                            .from(ChatMessages::Table, ChatMessages::ReceiverId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_chat_messages_conversation_id")
                    .table(ChatMessages::Table)
                    .col(ChatMessages::ConversationId)
                    .col(ChatMessages::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_chat_messages_receiver_unread")
                    .table(ChatMessages::Table)
                    .col(ChatMessages::ReceiverId)
                    .col(ChatMessages::ReadAt)
                    .to_owned(),
            )
            .await?;
        // The transactional outbox: an event is written in the same transaction as the data it announces,
        // and deleted once RabbitMQ confirmed it, so a broker failure after commit never loses it.
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Outbox::Id))
                    .col(string_len(Outbox::RoutingKey, 255))
                    .col(text(Outbox::Payload))
                    .col(timestamp_with_time_zone(Outbox::CreatedAt))
                    .col(integer(Outbox::Attempts).default(0))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Outbox::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ChatMessages::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Conversations::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Conversations {
    Table,
    Id,
    User1Id,
    User2Id,
    LastMessageId,
    LastMessageBy,
    LastMessagePreview,
    LastMessageAt,
    User1Unread,
    User2Unread,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ChatMessages {
    Table,
    Id,
    ConversationId,
    SenderId,
    ReceiverId,
    Message,
    Attachment,
    AttachmentType,
    CreatedAt,
    DeliveredAt,
    ReadAt,
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    RoutingKey,
    Payload,
    CreatedAt,
    Attempts,
}
