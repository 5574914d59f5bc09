//! Connection and channel pools.
//!
//! deadpool-lapin pools **connections** (a few TCP connections, multiplexed). On top of it,
//! [`ChannelManager`] pools **publishing channels** in confirm mode. A channel that errored is never
//! returned to the pool ([`discard`]); recycling drops channels the broker closed.

use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_lapin::Runtime;
use lapin::{Channel, ConnectionProperties, options::ConfirmSelectOptions};

use super::BrokerError;

pub type ChannelPool = managed::Pool<ChannelManager>;

/// Builds the connection pool (no connection is opened until first use).
pub fn connection_pool(url: &str, timeout: Duration) -> Result<deadpool_lapin::Pool, BrokerError> {
    let mut cfg = deadpool_lapin::Config {
        url: Some(url.to_owned()),
        ..Default::default()
    };
    let mut pool_cfg = deadpool_lapin::PoolConfig::new(4);
    pool_cfg.timeouts.wait = Some(timeout);
    pool_cfg.timeouts.create = Some(timeout);
    pool_cfg.timeouts.recycle = Some(timeout);
    cfg.pool = Some(pool_cfg);
    cfg.create_pool(ConnectionProperties::default, Runtime::Tokio1)
        .map_err(|e| BrokerError::Unavailable(format!("cannot build the connection pool: {e}")))
}

/// Creates confirm-mode channels on pooled connections.
pub struct ChannelManager {
    connections: deadpool_lapin::Pool,
}

impl managed::Manager for ChannelManager {
    type Type = Channel;
    type Error = BrokerError;

    async fn create(&self) -> Result<Channel, BrokerError> {
        let conn = self.connections.get().await.map_err(pool_error)?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| BrokerError::classify(e, "channel.open"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| BrokerError::classify(e, "confirm.select"))?;
        Ok(channel)
    }

    async fn recycle(&self, channel: &mut Channel, _: &Metrics) -> RecycleResult<BrokerError> {
        if channel.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("channel closed"))
        }
    }
}

/// Builds the publishing channel pool.
pub fn channel_pool(
    connections: deadpool_lapin::Pool,
    size: usize,
    timeout: Duration,
) -> Result<ChannelPool, BrokerError> {
    managed::Pool::builder(ChannelManager { connections })
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| BrokerError::Unavailable(format!("cannot build the channel pool: {e}")))
}

/// Removes a channel from its pool for good (it errored); dropping the last clone closes it.
pub fn discard(channel: managed::Object<ChannelManager>) {
    let _ = managed::Object::take(channel);
}

/// Maps a pool error (wait timeout, failed connect) to a broker error.
pub fn pool_error<E: std::fmt::Display + Into<BrokerError>>(
    err: managed::PoolError<E>,
) -> BrokerError {
    match err {
        managed::PoolError::Backend(e) => e.into(),
        managed::PoolError::Timeout(_) => {
            BrokerError::Unavailable("timed out waiting for a RabbitMQ connection".into())
        }
        other => BrokerError::Unavailable(other.to_string()),
    }
}

impl From<lapin::Error> for BrokerError {
    fn from(e: lapin::Error) -> Self {
        BrokerError::classify(e, "connection")
    }
}
