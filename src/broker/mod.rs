//! Everything Postbox does with RabbitMQ: connections, channel pools, topology, publishing with
//! confirms, and the consumers behind the long poll.
//!
//! - [`Broker`] owns one deadpool-lapin connection pool, a pool of confirm-mode publishing channels
//!   ([`pool::ChannelManager`]), the per-process cache of declared postboxes, and the [`hub::Hub`] of
//!   consumers that long polls wait on.
//! - Nothing here knows HTTP or SQL. Every broker wait has a deadline ([`Broker::timeout`]), and every
//!   failure is a [`BrokerError`] the HTTP layer maps to 503 with a message naming what to do.

pub mod control;
pub mod dead_letters;
pub mod hub;
pub mod message;
pub mod pool;
mod publisher;
pub mod tls;
pub mod topology;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lapin::{Channel, ErrorKind, types::ShortString};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, redact_url},
    telemetry::names,
};
pub use topology::{
    Postbox, STAFF_ROUTING_KEY, Topology, college_routing_key, devices_routing_key,
    group_routing_keys, user_routing_key,
};

/// A broker failure, classified for the HTTP layer and for `check-rabbitmq`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached or the connection dropped.
    #[error("RabbitMQ unavailable: {0}")]
    Unavailable(String),
    /// The TLS connection could not be set up: a handshake that failed (certificate not trusted, wrong
    /// host name, not a TLS port, client certificate refused) or TLS files that cannot be used. Never
    /// answered by falling back to plain text.
    #[error("{0}")]
    Tls(String),
    /// The broker refused the credentials or the vhost.
    #[error("RabbitMQ refused access: {0}")]
    AccessRefused(String),
    /// A broker operation took longer than the backend timeout.
    #[error("RabbitMQ did not answer within {0:?}")]
    Timeout(Duration),
    /// The queue or exchange does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An existing queue carries other arguments than the configured ones (PRECONDITION_FAILED).
    #[error(
        "queue {queue} exists with other arguments than Postbox's ({detail}); delete it with \
         `rabbitmqctl delete_queue {queue}` (its events are lost) or set the matching POSTBOX_* limits"
    )]
    QueueArguments { queue: String, detail: String },
    /// The broker refused to take responsibility for a message (basic.nack).
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    /// A message could not be routed to any postbox even after redeclaring it.
    #[error("no postbox accepted the message for routing key {0}")]
    Unroutable(String),
    /// Any other protocol error.
    #[error("RabbitMQ error on {what}: {detail}")]
    Protocol { what: String, detail: String },
}

impl BrokerError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            BrokerError::Unavailable(_) => "unavailable",
            BrokerError::Tls(_) => "tls",
            BrokerError::AccessRefused(_) => "access_refused",
            BrokerError::Timeout(_) => "timeout",
            BrokerError::NotFound(_) => "not_found",
            BrokerError::QueueArguments { .. } => "queue_arguments",
            BrokerError::Nacked => "nacked",
            BrokerError::Unroutable(_) => "unroutable",
            BrokerError::Protocol { .. } => "protocol",
        }
    }

    /// Classifies a lapin error; `what` names the object involved (queue, exchange, operation).
    pub fn classify(err: lapin::Error, what: &str) -> Self {
        if let Some(message) = tls::failure_in(&err) {
            return BrokerError::Tls(message);
        }
        match err.kind() {
            ErrorKind::ProtocolError(amqp) => match amqp.get_id() {
                404 => BrokerError::NotFound(what.to_owned()),
                406 => BrokerError::QueueArguments {
                    queue: what.to_owned(),
                    detail: amqp.get_message().to_string(),
                },
                403 | 530 => BrokerError::AccessRefused(amqp.get_message().to_string()),
                320 | 541 => BrokerError::Unavailable(amqp.get_message().to_string()),
                _ => BrokerError::Protocol {
                    what: what.to_owned(),
                    detail: amqp.to_string(),
                },
            },
            ErrorKind::IOError(_)
            | ErrorKind::RuntimeShutdownError(_)
            | ErrorKind::MissingHeartbeatError
            | ErrorKind::InvalidConnectionState(_)
            | ErrorKind::InvalidChannelState(..)
            | ErrorKind::InvalidChannel(_)
            | ErrorKind::ChannelsLimitReached => BrokerError::Unavailable(err.to_string()),
            _ => BrokerError::Protocol {
                what: what.to_owned(),
                detail: err.to_string(),
            },
        }
    }
}

/// The process's handle on RabbitMQ. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    topology: Topology,
    connections: pool::ConnectionPool,
    publishers: pool::ChannelPool,
    /// Plain channels for declares, binds and deletes; the pool size bounds how many run at once.
    declarers: pool::ChannelPool,
    /// Postboxes this process declared, with when: the hot path publishes without declaring. An entry
    /// older than half of `x-expires` is declared again, which also keeps a postbox that receives events
    /// from expiring while it may still hold live ones.
    declared: Mutex<HashMap<i64, Instant>>,
    redeclare_after: Duration,
    /// AMQP delivery mode of broadcasts: 2 persistent, 1 transient (`POSTBOX_BROADCAST_DELIVERY`).
    broadcast_mode: u8,
    timeout: Duration,
    hub: hub::Hub,
    /// Set when an operation failed because RabbitMQ was unreachable; cleared by the next success.
    unhealthy: std::sync::atomic::AtomicBool,
}

impl Broker {
    /// Connects to RabbitMQ, declares the exchange and starts the consumer hub. Fails with an actionable
    /// message when the broker is unreachable or refuses the credentials.
    pub async fn connect(
        config: &Config,
        shutdown: CancellationToken,
    ) -> Result<Self, BrokerError> {
        let timeout = config.backend_timeout();
        let topology = Topology::from_config(config);
        let tls =
            tls::TlsSettings::from_config(config).map_err(|e| BrokerError::Tls(e.to_string()))?;
        let connections = pool::connection_pool(&config.amqp_url, &tls, timeout)?;
        let publishers =
            pool::channel_pool(connections.clone(), config.publish_channels, timeout, true)?;
        let declarers = pool::channel_pool(connections.clone(), DECLARE_CHANNELS, timeout, false)?;
        let broker = Broker {
            inner: Arc::new(Inner {
                hub: hub::Hub::new(
                    connections.clone(),
                    u16::try_from(config.queue_max_length.min(u32::from(u16::MAX)))
                        .unwrap_or(u16::MAX),
                    config.consumer_linger(),
                    timeout,
                    shutdown,
                ),
                topology,
                connections,
                publishers,
                declarers,
                declared: Mutex::new(HashMap::new()),
                redeclare_after: Duration::from_secs(config.queue_expires_secs / 2),
                broadcast_mode: match config.broadcast_delivery {
                    crate::config::BroadcastDelivery::Persistent => 2,
                    crate::config::BroadcastDelivery::Transient => 1,
                },
                timeout,
                unhealthy: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        let url = redact_url(&config.amqp_url);
        let channel = broker.disposable_channel().await.map_err(|e| match e {
            BrokerError::Unavailable(m) => BrokerError::Unavailable(format!(
                "cannot connect to RabbitMQ at {url} ({m}); start it (`rabbitmq-server -detached` or \
                 `systemctl start rabbitmq-server`) or set AMQP_URL"
            )),
            BrokerError::Timeout(d) => BrokerError::Unavailable(format!(
                "RabbitMQ at {url} did not answer within {d:?}; check that it is running and AMQP_URL"
            )),
            BrokerError::AccessRefused(m) => BrokerError::AccessRefused(format!(
                "{m}; check the user, password and vhost in AMQP_URL ({url})"
            )),
            other => other,
        })?;
        match broker.tls_session() {
            Some(session) => tracing::info!(
                url = %url,
                tls = %session,
                roots = %tls.roots(),
                client_certificate = tls.client_certificate(),
                "connected to RabbitMQ over TLS (rustls)"
            ),
            None => tracing::info!(url = %url, "connected to RabbitMQ (plain TCP, not encrypted)"),
        }
        broker
            .with_timeout(topology::declare_exchange(&channel, broker.topology()))
            .await?;
        broker
            .with_timeout(topology::declare_dead_letters(&channel, broker.topology()))
            .await?;
        close_quietly(channel).await;
        broker.inner.hub.start(broker.clone());
        Ok(broker)
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    pub fn hub(&self) -> &hub::Hub {
        &self.inner.hub
    }

    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Runs a broker future under the backend timeout, and tracks whether RabbitMQ is reachable.
    pub async fn with_timeout<T>(
        &self,
        fut: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let result = tokio::time::timeout(self.inner.timeout, fut)
            .await
            .unwrap_or(Err(BrokerError::Timeout(self.inner.timeout)));
        let down = matches!(
            result,
            Err(BrokerError::Unavailable(_) | BrokerError::Timeout(_) | BrokerError::Tls(_))
        );
        self.inner
            .unhealthy
            .store(down, std::sync::atomic::Ordering::Relaxed);
        result
    }

    /// For the dashboards: whether RabbitMQ answered the last operation, and the pooled AMQP
    /// connections (open, and idle in the pool).
    pub fn pool_state(&self) -> (bool, usize, usize) {
        let status = self.inner.connections.status();
        let reachable = !self
            .inner
            .unhealthy
            .load(std::sync::atomic::Ordering::Relaxed);
        (reachable, status.size, status.available)
    }

    /// Fails fast with [`BrokerError::Unavailable`] when RabbitMQ was unreachable at the last attempt
    /// and still is, so callers refuse work they could not announce instead of accepting it blindly.
    pub async fn ensure_available(&self) -> Result<(), BrokerError> {
        if self
            .inner
            .unhealthy
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.ping().await?;
        }
        Ok(())
    }

    /// A fresh channel for operations that may make the broker close it (declares, passive declares).
    pub async fn disposable_channel(&self) -> Result<Channel, BrokerError> {
        self.with_timeout(async {
            let conn = pool::get(&self.inner.connections, self.inner.timeout).await?;
            conn.create_channel()
                .await
                .map_err(|e| BrokerError::classify(e, "channel.open"))
        })
        .await
    }

    /// Runs an operation that may make the broker close its channel (declares, passive declares,
    /// deletes) on a pooled plain channel, within the backend timeout (waiting for a channel included).
    /// A channel the broker closed is dropped by the pool instead of being reused.
    async fn on_declare_channel<T>(
        &self,
        op: impl AsyncFnOnce(&Channel) -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        self.with_timeout(async {
            let channel = pool::get(&self.inner.declarers, self.inner.timeout).await?;
            let result = op(&channel).await;
            if !channel.status().connected() {
                pool::discard(channel);
            }
            result
        })
        .await
    }

    /// Declares a postbox (queue and binding) now, whatever the cache says, and returns the number of
    /// events it holds. The default per-user postbox is then cached for the publishing path.
    pub async fn declare_postbox(&self, postbox: &Postbox) -> Result<u32, BrokerError> {
        let ready = self
            .on_declare_channel(async |channel| {
                topology::declare_postbox(channel, self.topology(), postbox).await
            })
            .await?;
        if postbox.client_id.is_none() {
            self.inner
                .declared
                .lock()
                .expect("declared-queue cache lock")
                .insert(postbox.user_id, Instant::now());
        }
        Ok(ready)
    }

    /// Declares a user's default postbox now (and caches it).
    pub async fn declare_user_queue(&self, user_id: i64) -> Result<(), BrokerError> {
        self.declare_postbox(&Postbox::user(user_id))
            .await
            .map(|_| ())
    }

    /// Whether a queue exists now (passive declare on a disposable channel).
    pub async fn queue_exists(&self, queue: &str) -> Result<bool, BrokerError> {
        let found = self
            .on_declare_channel(async |channel| topology::passive_queue(channel, queue).await)
            .await?;
        Ok(found.is_some())
    }

    /// Deletes a queue (a client postbox evicted by the per-user cap). A missing queue is fine.
    pub async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let result = self
            .on_declare_channel(async |channel| {
                channel
                    .queue_delete(ShortString::from(queue.to_owned()), Default::default())
                    .await
                    .map(|_| ())
                    .map_err(|e| BrokerError::classify(e, queue))
            })
            .await;
        match result {
            Err(BrokerError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    /// Moves a user's postboxes from one set of group keys to another (a user changed college or role):
    /// binds the new keys first, then unbinds the old ones, so a broadcast in between reaches the user
    /// at least once. Postboxes that do not exist (expired, never polled) are skipped: their next
    /// declare binds the right keys.
    pub async fn rebind(
        &self,
        queues: &[String],
        old: &[String],
        new: &[String],
    ) -> Result<(), BrokerError> {
        for queue in queues {
            let result = self
                .on_declare_channel(async |channel| {
                    for key in new.iter().filter(|k| !old.contains(k)) {
                        topology::bind(channel, self.topology(), queue, key).await?;
                    }
                    for key in old.iter().filter(|k| !new.contains(k)) {
                        topology::unbind(channel, self.topology(), queue, key).await?;
                    }
                    Ok(())
                })
                .await;
            match result {
                Ok(()) | Err(BrokerError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Makes sure the user's postbox exists, declaring it only when this process has not done so lately.
    pub async fn ensure_user_queue(&self, user_id: i64) -> Result<(), BrokerError> {
        let fresh = self
            .inner
            .declared
            .lock()
            .expect("declared-queue cache lock")
            .get(&user_id)
            .is_some_and(|at| at.elapsed() < self.inner.redeclare_after);
        metrics::counter!(names::DECLARE_CACHE, "result" => if fresh { "hit" } else { "miss" })
            .increment(1);
        if fresh {
            return Ok(());
        }
        self.declare_user_queue(user_id).await
    }

    /// Forgets that a postbox was declared (it expired or was deleted behind our back).
    pub fn forget_user_queue(&self, user_id: i64) {
        self.inner
            .declared
            .lock()
            .expect("declared-queue cache lock")
            .remove(&user_id);
    }

    /// Checks that RabbitMQ answers: a fresh channel opened and closed.
    pub async fn ping(&self) -> Result<(), BrokerError> {
        let channel = self.disposable_channel().await?;
        close_quietly(channel).await;
        Ok(())
    }

    /// The parameters of the latest TLS handshake with RabbitMQ (`None`: plain TCP, or none yet).
    pub fn tls_session(&self) -> Option<tls::TlsSession> {
        self.inner.connections.manager().transport().last_session()
    }

    /// Stops the consumers (their unacknowledged events go back to their postboxes) and closes the
    /// connections.
    pub async fn close(&self) {
        self.inner.hub.close().await;
        self.inner.publishers.close();
        self.inner.declarers.close();
        self.inner.connections.close();
    }
}

/// Plain channels for declares: at most this many declares run at once per process.
const DECLARE_CHANNELS: usize = 16;

/// Closes a channel and ignores the outcome (the channel may already be closed by the broker).
pub async fn close_quietly(channel: Channel) {
    if channel.status().connected() {
        let _ = channel.close(200, ShortString::from("OK")).await;
    }
}
