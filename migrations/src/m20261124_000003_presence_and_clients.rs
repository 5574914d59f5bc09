//! Presence transitions (`users.is_online`, flipped atomically so one instance announces each change) and
//! per-client postboxes (`clients`: one row per tab or device that registered).

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261124_000001_users_and_tokens::Users;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(boolean(UsersPresence::IsOnline).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_users_online")
                    .table(Users::Table)
                    .col(UsersPresence::IsOnline)
                    .col(Users::OnlineUntil)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Clients::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Clients::Id))
                    .col(big_integer(Clients::UserId))
                    .col(string_len(Clients::ClientId, 64))
                    .col(timestamp_with_time_zone(Clients::CreatedAt))
                    .col(timestamp_with_time_zone(Clients::LastSeenAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_clients_user")
                            .from(Clients::Table, Clients::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_clients_user_client")
                    .table(Clients::Table)
                    .col(Clients::UserId)
                    .col(Clients::ClientId)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Clients::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(UsersPresence::IsOnline)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum UsersPresence {
    IsOnline,
}

#[derive(DeriveIden)]
enum Clients {
    Table,
    Id,
    UserId,
    ClientId,
    CreatedAt,
    LastSeenAt,
}
