//! The state every request handler shares: handles to the services, nothing else.

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use crate::{
    accounts::Accounts, broker::Broker, chat::Chat, config::Config, delivery::Delivery,
    notify::Notify, support::Support,
};

/// The services and the configuration, cloned into every handler (all fields are cheap handles).
#[derive(Clone)]
pub struct AppState {
    /// The HTTP layer's settings (body limits, poll holds, stream heartbeats).
    pub config: Arc<Config>,
    pub accounts: Accounts,
    pub chat: Chat,
    pub delivery: Delivery,
    pub notify: Notify,
    pub support: Support,
    /// For readiness checks.
    pub db: DatabaseConnection,
    /// For readiness checks.
    pub broker: Broker,
}
