//! What the broker examples share: the connection and a topic exchange of their own.

use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind, options::ExchangeDeclareOptions,
    types::FieldTable,
};

/// Connects to `AMQP_URL` (default: the local broker as guest) and declares a topic exchange named
/// `<prefix>-<pid>` on a new channel; returns the connection, that channel and the name.
pub async fn connect_with_exchange(prefix: &str) -> anyhow::Result<(Connection, Channel, String)> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let name = format!("{prefix}-{}", std::process::id());
    channel
        .exchange_declare(
            name.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((conn, channel, name))
}
