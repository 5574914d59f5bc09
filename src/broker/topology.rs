//! Every name and argument of Postbox's RabbitMQ topology, in one place.
//!
//! - One durable **topic exchange** `<prefix>.events`. Routing keys: `user.<id>` for one user's events,
//!   and group keys for broadcasts: `college.<id>` (every member of a college) and `group.staff` (staff
//!   and admins, e.g. the support desk's agents). A broadcast is one publish; RabbitMQ's bindings fan it
//!   out into every member's postbox.
//! - One durable **classic queue per user**, `<prefix>.user.<id>` (readable in the management UI), bound
//!   to the exchange with `user.<id>`: the default postbox, for clients that do not register.
//! - One more queue per **registered client** (tab, device), `<prefix>.client.<user id>.<client id>`,
//!   bound with the same keys, so every client of a user receives every event, and also with
//!   `devices.<user id>`: the copies of a user's own actions (the messages they sent, their read
//!   receipts) for their other devices. Only registered clients get those: a seed-style client polling
//!   the default postbox cannot tell its own events from others' and would show its own message as a
//!   new one from someone else.
//!
//! Nothing here touches the network except [`declare_exchange`], [`Broker::declare_user_queue`](super::Broker::declare_user_queue) and
//! [`passive_queue`], which take the channel to use from the caller.

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use super::BrokerError;
use crate::config::Config;

/// The postbox limits, as RabbitMQ queue arguments.
#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
    /// `x-max-length`: the postbox keeps at most this many ready events.
    pub max_length: i64,
    /// `x-max-length-bytes`: the postbox keeps at most this many bytes of event bodies.
    pub max_length_bytes: i64,
    /// `x-message-ttl` in milliseconds: an event older than this is dropped from the head.
    pub message_ttl_ms: i64,
    /// `x-expires` in milliseconds: a postbox unused this long (no consumer, no declare) is deleted.
    pub expires_ms: i64,
}

impl Topology {
    pub fn from_config(config: &Config) -> Self {
        Self {
            prefix: config.broker_prefix.clone(),
            max_length: i64::from(config.queue_max_length),
            max_length_bytes: config.queue_max_bytes as i64,
            message_ttl_ms: config.message_ttl_secs as i64 * 1000,
            expires_ms: config.queue_expires_secs as i64 * 1000,
        }
    }

    pub fn exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    pub fn user_queue(&self, user_id: i64) -> String {
        format!("{}.user.{user_id}", self.prefix)
    }

    /// The queue behind a postbox.
    pub fn queue(&self, postbox: &Postbox) -> String {
        match &postbox.client_id {
            None => self.user_queue(postbox.user_id),
            Some(client) => format!("{}.client.{}.{client}", self.prefix, postbox.user_id),
        }
    }

    /// Where postboxes dead-letter what they drop (`maxlen`) or expire (`expired`): a fanout exchange…
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.deadletter", self.prefix)
    }

    /// …into one queue, read by every Postbox instance to record gaps (`crate::delivery::gaps`).
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.deadletters", self.prefix)
    }

    /// The prefix every Postbox queue name starts with (for listings and policies).
    pub fn queue_prefix(&self) -> String {
        format!("{}.user.", self.prefix)
    }

    /// The arguments every postbox queue is declared with. Strings must be `LongString` (a `ShortString`
    /// value makes RabbitMQ reset the connection) and numbers `LongLongInt` (not a timestamp type).
    pub fn queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        // Keep only the newest `max_length` ready events...
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(self.max_length),
        );
        // ...and only so many bytes of them...
        args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(self.max_length_bytes),
        );
        // ...dropping the oldest one when a new one arrives on a full postbox (instead of refusing it).
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString(LongString::from("drop-head")),
        );
        // Events expire after the TTL whether or not anybody polls.
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(self.message_ttl_ms),
        );
        // A postbox nobody uses is deleted with its bindings; the publisher redeclares it on demand.
        args.insert("x-expires".into(), AMQPValue::LongLongInt(self.expires_ms));
        // What the postbox drops or expires is dead-lettered, so the loss is recorded and announced to
        // the client (`resync`) instead of being silent.
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(self.dead_letter_exchange())),
        );
        args
    }

    /// The arguments as `(name, value)` strings, for reports and comparisons.
    pub fn expected_arguments(&self) -> Vec<(&'static str, String)> {
        vec![
            ("x-dead-letter-exchange", self.dead_letter_exchange()),
            ("x-expires", self.expires_ms.to_string()),
            ("x-max-length", self.max_length.to_string()),
            ("x-max-length-bytes", self.max_length_bytes.to_string()),
            ("x-message-ttl", self.message_ttl_ms.to_string()),
            ("x-overflow", "drop-head".to_owned()),
        ]
    }
}

/// A postbox: a user's default queue, or the queue of one of the user's registered clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postbox {
    pub user_id: i64,
    /// `None` for the default per-user postbox. Validated by the caller: `[A-Za-z0-9_-]{1,64}`.
    pub client_id: Option<String>,
    /// Group routing keys bound when the postbox is declared (see [`group_routing_keys`]). Empty when
    /// the caller does not know the user's groups (a publish redeclaring a vanished postbox): the
    /// user's next poll binds them again.
    pub groups: Vec<String>,
}

impl Postbox {
    pub fn user(user_id: i64) -> Self {
        Postbox {
            user_id,
            client_id: None,
            groups: Vec::new(),
        }
    }

    pub fn client(user_id: i64, client_id: &str) -> Self {
        Postbox {
            user_id,
            client_id: Some(client_id.to_owned()),
            groups: Vec::new(),
        }
    }

    /// The same postbox, bound to these group routing keys as well.
    pub fn with_groups(mut self, groups: Vec<String>) -> Self {
        self.groups = groups;
        self
    }
}

/// Routing key of one user's events.
pub fn user_routing_key(user_id: i64) -> String {
    format!("user.{user_id}")
}

/// The user a [`user_routing_key`] names.
pub fn user_of_routing_key(key: &str) -> Option<i64> {
    key.strip_prefix("user.")?.parse().ok()
}

/// Routing key of the copies of a user's own actions for their registered clients (not the default
/// postbox).
pub fn devices_routing_key(user_id: i64) -> String {
    format!("devices.{user_id}")
}

/// Routing key of a college's broadcasts.
pub fn college_routing_key(college_id: i64) -> String {
    format!("college.{college_id}")
}

/// Routing key of events for every staff member and admin.
pub const STAFF_ROUTING_KEY: &str = "group.staff";

/// The group routing keys a user's postboxes are bound to: the college's, and the staff group's for
/// staff and admins.
pub fn group_routing_keys(college_id: Option<i64>, is_staff: bool) -> Vec<String> {
    let mut keys: Vec<String> = college_id.map(college_routing_key).into_iter().collect();
    if is_staff {
        keys.push(STAFF_ROUTING_KEY.to_owned());
    }
    keys
}

/// Declares the topic exchange (idempotent). Durable: it survives a broker restart.
pub async fn declare_exchange(channel: &Channel, topology: &Topology) -> Result<(), BrokerError> {
    channel
        .exchange_declare(
            ShortString::from(topology.exchange()),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| BrokerError::classify(e, &topology.exchange()))
}

/// Declares the dead-letter exchange and queue (idempotent). The queue is bounded and has no
/// dead-letter exchange of its own, so nothing loops.
pub async fn declare_dead_letters(
    channel: &Channel,
    topology: &Topology,
) -> Result<(), BrokerError> {
    let exchange = topology.dead_letter_exchange();
    let queue = topology.dead_letter_queue();
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
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(100_000));
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(86_400_000));
    channel
        .queue_declare(
            ShortString::from(queue.clone()),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(|e| BrokerError::classify(e, &queue))?;
    channel
        .queue_bind(
            ShortString::from(queue.clone()),
            ShortString::from(exchange),
            ShortString::from(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| BrokerError::classify(e, &queue))
}

/// Declares a postbox with the configured arguments and binds it to its user's routing key and its
/// group keys.
///
/// Returns the number of ready events it holds. A queue that already exists with other arguments fails
/// with [`BrokerError::QueueArguments`] and the channel is closed by the broker, so callers use a
/// disposable channel for this.
pub async fn declare_postbox(
    channel: &Channel,
    topology: &Topology,
    postbox: &Postbox,
) -> Result<u32, BrokerError> {
    let queue = topology.queue(postbox);
    let user_id = postbox.user_id;
    let declared = channel
        .queue_declare(
            ShortString::from(queue.clone()),
            QueueDeclareOptions {
                // Survives a broker restart (with persistent messages, so do the events).
                durable: true,
                ..Default::default()
            },
            topology.queue_arguments(),
        )
        .await
        .map_err(|e| BrokerError::classify(e, &queue))?;
    bind(channel, topology, &queue, &user_routing_key(user_id)).await?;
    if postbox.client_id.is_some() {
        bind(channel, topology, &queue, &devices_routing_key(user_id)).await?;
    }
    for key in &postbox.groups {
        bind(channel, topology, &queue, key).await?;
    }
    Ok(declared.message_count())
}

/// Binds a queue to the events exchange with a routing key (idempotent).
pub async fn bind(
    channel: &Channel,
    topology: &Topology,
    queue: &str,
    routing_key: &str,
) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            ShortString::from(queue.to_owned()),
            ShortString::from(topology.exchange()),
            ShortString::from(routing_key.to_owned()),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| BrokerError::classify(e, queue))
}

/// Removes a binding (idempotent in RabbitMQ: a missing binding is fine).
pub async fn unbind(
    channel: &Channel,
    topology: &Topology,
    queue: &str,
    routing_key: &str,
) -> Result<(), BrokerError> {
    channel
        .queue_unbind(
            ShortString::from(queue.to_owned()),
            ShortString::from(topology.exchange()),
            ShortString::from(routing_key.to_owned()),
            FieldTable::default(),
        )
        .await
        .map_err(|e| BrokerError::classify(e, queue))
}

/// Ready-message and consumer counts of an existing queue, or `None` when it does not exist. A missing
/// queue closes the channel, so callers use a disposable channel for this.
pub async fn passive_queue(
    channel: &Channel,
    queue: &str,
) -> Result<Option<(u32, u32)>, BrokerError> {
    match channel
        .queue_declare(
            ShortString::from(queue.to_owned()),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
    {
        Ok(q) => Ok(Some((q.message_count(), q.consumer_count()))),
        Err(e) => match BrokerError::classify(e, queue) {
            BrokerError::NotFound(_) => Ok(None),
            other => Err(other),
        },
    }
}
