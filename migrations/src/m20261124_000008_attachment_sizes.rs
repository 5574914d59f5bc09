//! The stored size of each chat attachment (`chat_messages.attachment_size`, bytes), so a user's
//! attachment quota is one sum; and the indexes of the two queries on attachments: that sum per sender,
//! and the sweep's lookup of which files messages refer to. Both indexes are partial (`... IS NOT
//! NULL`), so messages without an attachment add nothing to them.
//!
//! Messages stored before this migration keep a null size (their files were never measured) and count
//! as 0 bytes towards the quota.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ChatMessages::Table)
                    .add_column(big_integer_null(ChatMessages::AttachmentSize))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_chat_messages_sender_attachment_size")
                    .table(ChatMessages::Table)
                    .col(ChatMessages::SenderId)
                    .col(ChatMessages::AttachmentSize)
                    .and_where(Expr::col(ChatMessages::AttachmentSize).is_not_null())
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_chat_messages_attachment")
                    .table(ChatMessages::Table)
                    .col(ChatMessages::Attachment)
                    .and_where(Expr::col(ChatMessages::Attachment).is_not_null())
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [
            "idx_chat_messages_attachment",
            "idx_chat_messages_sender_attachment_size",
        ] {
            manager
                .drop_index(
                    Index::drop()
                        .name(name)
                        .table(ChatMessages::Table)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(ChatMessages::Table)
                    .drop_column(ChatMessages::AttachmentSize)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum ChatMessages {
    Table,
    SenderId,
    Attachment,
    AttachmentSize,
}
