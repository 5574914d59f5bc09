//! The control bus between Postbox processes, over RabbitMQ: a durable fanout exchange
//! `<prefix>.control`; every serving instance binds its own exclusive, auto-deleted queue to it.
//!
//! - `token_revoked` (sent by `postbox tokens revoke`): every instance ends the polls waiting with one of
//!   the revoked tokens (401) and drops the tokens from its token cache.
//! - `user_changed` (sent when an admin changes a user's role, college or name): every instance drops
//!   that user's cached tokens, so the next request sees the change.
//!
//! This module carries the messages; what an instance does with them is the listener's handler
//! (`crate::app`). While disconnected the listener may miss messages: the handler hears
//! [`Heard::Connected`] each time it (re)connects.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    BasicProperties, ExchangeKind,
    options::{
        BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{FieldTable, ShortString},
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Broker, BrokerError};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// These token digests were revoked: end the polls waiting with them.
    TokenRevoked { key_hashes: Vec<String> },
    /// This user's role, college or name changed: forget their cached tokens.
    UserChanged { user_id: i64 },
}

/// What the listener hears.
#[derive(Debug)]
pub enum Heard {
    /// Listening (again): whatever was sent meanwhile is unknown.
    Connected,
    Message(Control),
}

async fn declare_exchange(
    channel: &lapin::Channel,
    broker: &Broker,
) -> Result<String, BrokerError> {
    let exchange = format!("{}.control", broker.topology().prefix);
    channel
        .exchange_declare(
            ShortString::from(exchange.clone()),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| BrokerError::classify(e, &exchange))?;
    Ok(exchange)
}

/// Sends a control message to every running instance.
pub async fn send(broker: &Broker, message: &Control) -> Result<(), BrokerError> {
    let channel = broker.disposable_channel().await?;
    let result = broker
        .with_timeout(async {
            let exchange = declare_exchange(&channel, broker).await?;
            channel
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(""),
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(message).expect("control messages serialise"),
                    BasicProperties::default(),
                )
                .await
                .map_err(|e| BrokerError::classify(e, "control publish"))?
                .await
                .map(|_| ())
                .map_err(|e| BrokerError::classify(e, "control publish"))
        })
        .await;
    super::close_quietly(channel).await;
    result
}

/// Receives control messages until `shutdown`, reconnecting after broker failures.
pub async fn run(broker: Broker, mut on: impl FnMut(Heard), shutdown: CancellationToken) {
    loop {
        let result = tokio::select! {
            r = listen(&broker, &mut on) => r,
            _ = shutdown.cancelled() => break,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "control listener stopped; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}

async fn listen(broker: &Broker, on: &mut impl FnMut(Heard)) -> Result<(), BrokerError> {
    let channel = broker.disposable_channel().await?;
    let exchange = declare_exchange(&channel, broker).await?;
    // Named under the prefix (not server-named `amq.gen-*`), so the recommended permissions
    // (`^<prefix>\..*`) cover it; exclusive and auto-deleted with this instance's connection.
    let name = format!(
        "{}.control.{}",
        broker.topology().prefix,
        uuid::Uuid::new_v4().simple()
    );
    let queue = channel
        .queue_declare(
            ShortString::from(name),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| BrokerError::classify(e, "control queue"))?;
    channel
        .queue_bind(
            queue.name().clone(),
            ShortString::from(exchange),
            ShortString::from(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| BrokerError::classify(e, "control queue"))?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            ShortString::from(""),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| BrokerError::classify(e, "control consume"))?;
    on(Heard::Connected);
    while let Some(next) = consumer.next().await {
        let delivery = next.map_err(|e| BrokerError::classify(e, "control consume"))?;
        match serde_json::from_slice::<Control>(&delivery.data) {
            Ok(message) => on(Heard::Message(message)),
            Err(e) => tracing::warn!(error = %e, "unknown control message"),
        }
    }
    Err(BrokerError::Unavailable(
        "control consumer cancelled".into(),
    ))
}
