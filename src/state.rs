//! The state every request handler shares.

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use crate::{
    broker::Broker, chat::attachments::AttachmentStore, config::Config, delivery::clients::Clients,
    delivery::outbox::Outbox, delivery::presence::Presence, limits::RateLimiter,
};

/// Database, broker and configuration, cloned into every handler (all fields are cheap handles).
#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub broker: Broker,
    pub config: Arc<Config>,
    pub outbox: Outbox,
    pub presence: Presence,
    /// Delivery marks (`delivered_at`, `delivered` notices) of many polls, written together.
    pub deliveries: crate::chat::Deliveries,
    pub clients: Clients,
    /// Typing events per sender.
    pub typing_limit: RateLimiter,
    /// Typing signals per sender and receiver that reach the receiver's postbox.
    pub typing_signals: crate::limits::throttle::Throttle<(i64, i64), bool>,
    /// Messages per sender.
    pub send_limit: RateLimiter,
    /// Long polls and event streams held now per user.
    pub poll_slots: crate::limits::PollSlots,
    /// Polls waiting now, by token digest, so a revoked token ends them at once.
    pub waiting: crate::delivery::waiting::Waiting,
    /// Tokens authenticated lately, so most polls skip the token query.
    pub tokens: crate::accounts::tokens::TokenCache,
    /// Token queries of many requests, run together.
    pub token_lookups: crate::accounts::tokens::TokenLookups,
    /// Gap queries of many first polls, run together.
    pub gap_lookups: crate::delivery::gaps::GapLookups,
    /// Chat messages, stored with group commit.
    pub messages: crate::chat::Messages,
    /// User ids known to exist (users are never deleted).
    pub users: crate::accounts::KnownUsers,
    pub attachments: Arc<dyn AttachmentStore>,
    /// Turns to hold an upload in memory (`POSTBOX_MAX_UPLOADS`).
    pub uploads: Arc<tokio::sync::Semaphore>,
}
