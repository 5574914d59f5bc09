//! A partial index on the chat messages no client of their receiver was handed yet, by receiver, sender
//! and time: every send checks how many of its sender's messages still wait in the receiver's postbox
//! (`POSTBOX_MAX_UNDELIVERED`), which then reads at most that many index entries. Delivered messages,
//! nearly all of them, are not in it. SQLite and PostgreSQL both take `CREATE INDEX … WHERE`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS idx_chat_messages_undelivered \
                 ON chat_messages (receiver_id, sender_id, created_at) \
                 WHERE delivered_at IS NULL",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS idx_chat_messages_undelivered")
            .await
            .map(|_| ())
    }
}
