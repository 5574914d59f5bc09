//! An index on `api_tokens.revoked_at`: every instance asks for the tokens revoked in the last minute
//! every 10 s (the revocation sweep), which without it reads the whole table.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_api_tokens_revoked_at")
                    .table(ApiTokens::Table)
                    .col(ApiTokens::RevokedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_api_tokens_revoked_at")
                    .table(ApiTokens::Table)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    RevokedAt,
}
