//! Connection and channel pools.
//!
//! [`ConnectionManager`] pools **connections** (a few TCP or TLS connections, multiplexed), each opened
//! through the [`Transport`] the URL asks for (deadpool-lapin's manager cannot pass a TLS
//! configuration, so Postbox has its own). On top of it, [`ChannelManager`] pools channels: **publishing channels** in confirm mode, and plain channels for
//! declares (whose pool size also bounds how many declares run at once, so a herd of first polls after
//! a restart queues in Postbox instead of swamping RabbitMQ). A channel that errored is never returned
//! to the pool ([`discard`]); recycling drops channels the broker closed (a failed declare closes its
//! channel).

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use amq_protocol::uri::AMQPUri;
use deadpool::{
    Runtime,
    managed::{self, Metrics, RecycleError, RecycleResult},
};
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind, options::ConfirmSelectOptions};

use super::{
    BrokerError,
    tls::{self, TlsSettings, Transport},
};
use crate::config::redact_url;

pub type ConnectionPool = managed::Pool<ConnectionManager>;
pub type ChannelPool = managed::Pool<ChannelManager>;

/// Connections in the pool: a few, multiplexed (RabbitMQ copes badly with many, see BROKER-NOTES).
const CONNECTIONS: usize = 4;

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

/// Opens AMQP connections to one URL through its [`Transport`] (TLS for `amqps://`, never plain).
pub struct ConnectionManager {
    uri: AMQPUri,
    transport: Transport,
}

impl ConnectionManager {
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.uri.authority.host, self.uri.authority.port)
    }
}

impl managed::Manager for ConnectionManager {
    type Type = Connection;
    type Error = BrokerError;

    async fn create(&self) -> Result<Connection, BrokerError> {
        let transport = self.transport.clone();
        let handshake_done = Arc::new(AtomicBool::new(false));
        let done = handshake_done.clone();
        // lapin calls this for the first connect and for every reconnect of the connection.
        let connect = async move |uri: AMQPUri, runtime| {
            let stream = transport
                .connect(&uri, &runtime)
                .await
                .map_err(lapin::Error::from)?;
            done.store(true, Ordering::Relaxed);
            Ok(stream)
        };
        // Boxed, as deadpool-lapin does: lapin's connect future is large, and polled inline at the
        // bottom of a request's future (a publish that needs a new connection) it overflowed a 2 MiB
        // thread stack in debug builds.
        Box::pin(Connection::connector(
            self.uri.clone(),
            async_rs::Runtime::tokio_current(),
            connect,
            ConnectionProperties::default(),
        ))
        .await
        .map_err(|e| {
            // A TLS connection dropped before AMQP began: a refusal of the TLS session, not an outage.
            if self.transport.is_tls()
                && handshake_done.load(Ordering::Relaxed)
                && let ErrorKind::IOError(io) = e.kind()
                && let Some(message) = tls::dropped_after_handshake(&self.addr(), io)
            {
                return BrokerError::Tls(message);
            }
            BrokerError::classify(e, "connection")
        })
    }

    async fn recycle(&self, conn: &mut Connection, _: &Metrics) -> RecycleResult<BrokerError> {
        if conn.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("connection closed"))
        }
    }
}

/// Builds the connection pool (no connection is opened until first use). `tls` comes from
/// [`TlsSettings::from_config`]; the rustls configuration (trust store included) is built here, once.
pub fn connection_pool(
    url: &str,
    tls: &TlsSettings,
    timeout: Duration,
) -> Result<ConnectionPool, BrokerError> {
    let uri = AMQPUri::from_str(&with_frame_max(url)).map_err(|e| {
        BrokerError::Unavailable(format!(
            "AMQP_URL {} is not a valid AMQP URL: {e}",
            redact_url(url)
        ))
    })?;
    let transport = Transport::new(&uri, tls).map_err(|e| BrokerError::Tls(e.to_string()))?;
    managed::Pool::builder(ConnectionManager { uri, transport })
        .max_size(CONNECTIONS)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| BrokerError::Unavailable(format!("cannot build the connection pool: {e}")))
}

/// Creates channels on pooled connections, in confirm mode or plain.
pub struct ChannelManager {
    connections: ConnectionPool,
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
    connections: ConnectionPool,
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
