//! Database schema of Postbox, as sea-orm migrations that run unchanged on SQLite and PostgreSQL.
//!
//! Applied by `postbox migrate` and at the start of `postbox serve`. A migration, once released, is never
//! edited: a schema change is a new file here.

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_users_and_tokens;
mod m20261124_000002_chat;
mod m20261124_000003_presence_and_clients;
mod m20261124_000004_gaps;
mod m20261124_000005_notifications_and_services;
mod m20261124_000006_support;
mod m20261124_000007_token_revocations;
mod m20261124_000008_attachment_sizes;
mod m20261202_000001_undelivered_index;
mod m20261204_000001_outbox_retries;
mod m20261204_000002_sequences;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_users_and_tokens::Migration),
            Box::new(m20261124_000002_chat::Migration),
            Box::new(m20261124_000003_presence_and_clients::Migration),
            Box::new(m20261124_000004_gaps::Migration),
            Box::new(m20261124_000005_notifications_and_services::Migration),
            Box::new(m20261124_000006_support::Migration),
            Box::new(m20261124_000007_token_revocations::Migration),
            Box::new(m20261124_000008_attachment_sizes::Migration),
            Box::new(m20261202_000001_undelivered_index::Migration),
            Box::new(m20261204_000001_outbox_retries::Migration),
            Box::new(m20261204_000002_sequences::Migration),
        ]
    }
}
