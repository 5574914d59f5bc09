//! Connection and channel pools.
//!
//! deadpool-lapin pools **connections** (a few TCP connections, multiplexed). On top of it,
//! [`ChannelManager`] pools channels: **publishing channels** in confirm mode, and plain channels for
//! declares (whose pool size also bounds how many declares run at once, so a herd of first polls after
//! a restart queues in Postbox instead of swamping RabbitMQ). A channel that errored is never returned
//! to the pool ([`discard`]); recycling drops channels the broker closed (a failed declare closes its
//! channel).

use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_lapin::Runtime;
use lapin::{Channel, ConnectionProperties, options::ConfirmSelectOptions};

use super::BrokerError;

pub type ChannelPool = managed::Pool<ChannelManager>;

/// The AMQP frame size Postbox proposes unless the URL sets `frame_max`. lapin keeps two buffers of 32
/// frames per connection; with RabbitMQ's default (128 KiB) that is 8 MiB a connection, with this 1 MiB.
/// Events are at most `POSTBOX_MAX_EVENT_BYTES` (16 KiB by default); a larger one spans several frames.
const FRAME_MAX: u32 = 16_384;

/// `url` with Postbox's `frame_max` added when it sets none.
fn with_frame_max(url: &str) -> String {
    if url.contains("frame_max=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}frame_max={FRAME_MAX}")
}

/// Builds the connection pool (no connection is opened until first use).
pub fn connection_pool(url: &str, timeout: Duration) -> Result<deadpool_lapin::Pool, BrokerError> {
    let mut cfg = deadpool_lapin::Config {
        url: Some(with_frame_max(url)),
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

/// Creates channels on pooled connections, in confirm mode or plain.
pub struct ChannelManager {
    connections: deadpool_lapin::Pool,
    confirms: bool,
    timeout: Duration,
}

impl managed::Manager for ChannelManager {
    type Type = Channel;
    type Error = BrokerError;

    async fn create(&self) -> Result<Channel, BrokerError> {
        let conn = get(&self.connections, self.timeout).await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| BrokerError::classify(e, "channel.open"))?;
        if self.confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| BrokerError::classify(e, "confirm.select"))?;
        }
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

/// Builds a channel pool: publishing channels (`confirms`) or plain ones for declares.
pub fn channel_pool(
    connections: deadpool_lapin::Pool,
    size: usize,
    timeout: Duration,
    confirms: bool,
) -> Result<ChannelPool, BrokerError> {
    managed::Pool::builder(ChannelManager {
        connections,
        confirms,
        timeout,
    })
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

/// Takes a connection or channel from a pool built with `timeout`. A pool that gave up after it (every
/// channel busy with RabbitMQ, or connecting took that long) is a [`BrokerError::Timeout`], like an
/// operation RabbitMQ did not answer in time; a failed connect is what it says.
pub async fn get<M>(
    pool: &managed::Pool<M>,
    timeout: Duration,
) -> Result<managed::Object<M>, BrokerError>
where
    M: managed::Manager,
    M::Error: std::fmt::Display + Into<BrokerError>,
{
    pool.get().await.map_err(|err| match err {
        managed::PoolError::Backend(e) => e.into(),
        managed::PoolError::Timeout(_) => BrokerError::Timeout(timeout),
        other => BrokerError::Unavailable(other.to_string()),
    })
}

impl From<lapin::Error> for BrokerError {
    fn from(e: lapin::Error) -> Self {
        BrokerError::classify(e, "connection")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_max_is_added_unless_set() {
        assert_eq!(
            with_frame_max("amqp://h/%2f"),
            "amqp://h/%2f?frame_max=16384"
        );
        assert_eq!(
            with_frame_max("amqp://h/%2f?heartbeat=10"),
            "amqp://h/%2f?heartbeat=10&frame_max=16384"
        );
        assert_eq!(
            with_frame_max("amqp://h/%2f?frame_max=8192"),
            "amqp://h/%2f?frame_max=8192"
        );
    }
}
