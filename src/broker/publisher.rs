//! Publishing events with publisher confirms: to users' postboxes (one mandatory message each, so a
//! postbox that vanished while cached is noticed and declared again), to a group key (one message that
//! RabbitMQ's bindings fan out), and ephemeral events that expire.
//!
//! `Ok` from a persistent publish means RabbitMQ holds the event on disk in every addressed postbox
//! that exists. What goes into the message is [`super::message`]'s.

use std::time::Duration;

use lapin::{BasicProperties, Confirmation, options::BasicPublishOptions, types::ShortString};

use super::{
    Broker, BrokerError, STAFF_ROUTING_KEY, college_routing_key, devices_routing_key, message,
    pool, user_routing_key,
};
use crate::{
    events::{Audience, Envelope},
    telemetry::names,
};

impl Broker {
    /// Publishes an event to its audience and waits for RabbitMQ's confirms: every user's postbox (all
    /// at once, the confirms pipeline on the pooled channels), or the group's key, persistent or
    /// transient as `POSTBOX_BROADCAST_DELIVERY` says (a broadcast nobody is bound to reaches nobody,
    /// and is done). Fails if any publish failed.
    pub async fn publish_event(&self, to: &Audience, event: &Envelope) -> Result<(), BrokerError> {
        let body = event.data.get().as_bytes();
        match to {
            Audience::Users(users) => {
                let props = message::properties(event, 2);
                let results = futures_util::future::join_all(
                    users
                        .iter()
                        .map(|&id| self.publish_to_user(id, body, props.clone())),
                )
                .await;
                results.into_iter().collect()
            }
            Audience::Devices(id) => {
                // Persistent like any user event; unroutable when the user has no registered client.
                let props = message::properties(event, 2);
                match self
                    .publish_with(
                        &devices_routing_key(*id),
                        event.data.get().as_bytes(),
                        props,
                    )
                    .await
                {
                    Ok(()) | Err(BrokerError::Unroutable(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Audience::College(id) => self.publish_group(&college_routing_key(*id), event).await,
            Audience::Staff => self.publish_group(STAFF_ROUTING_KEY, event).await,
        }
    }

    /// One event to a group routing key (a college, the staff).
    async fn publish_group(&self, routing_key: &str, event: &Envelope) -> Result<(), BrokerError> {
        let props = message::properties(event, self.inner.broadcast_mode);
        match self
            .publish_with(routing_key, event.data.get().as_bytes(), props)
            .await
        {
            Ok(()) | Err(BrokerError::Unroutable(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One event to one user's postbox. The publish is `mandatory`: if the postbox vanished while cached
    /// (expired, deleted by an operator), RabbitMQ returns the message instead of dropping it; the
    /// postbox is then declared again and the event published once more.
    async fn publish_to_user(
        &self,
        user_id: i64,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        self.ensure_user_queue(user_id).await?;
        let key = user_routing_key(user_id);
        match self.publish_with(&key, body, props.clone()).await {
            Err(BrokerError::Unroutable(_)) => {
                tracing::warn!(
                    user_id,
                    "postbox was missing though cached; declaring it again"
                );
                self.forget_user_queue(user_id);
                self.declare_user_queue(user_id).await?;
                self.publish_with(&key, body, props).await
            }
            other => other,
        }
    }

    /// Publishes an ephemeral event (typing, delivery and presence notices) to a user: not persistent,
    /// and expiring after `ttl` both in RabbitMQ (`expiration`) and in Postbox's own buffers
    /// (`x-postbox-expires-at`), so a client that polls late never sees it. Unroutable is not an error.
    pub async fn publish_ephemeral(
        &self,
        user_id: i64,
        event: &Envelope,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.ensure_user_queue(user_id).await?;
        let expires_at = chrono::Utc::now().timestamp_millis() + ttl.as_millis() as i64;
        let props = message::ephemeral_properties(event, expires_at, ttl.as_millis());
        match self
            .publish_with(
                &user_routing_key(user_id),
                event.data.get().as_bytes(),
                props,
            )
            .await
        {
            Err(BrokerError::Unroutable(_)) => {
                self.forget_user_queue(user_id);
                Ok(())
            }
            other => other,
        }
    }

    async fn publish_with(
        &self,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let result = self
            .publish_confirmed(routing_key, payload, properties)
            .await;
        match &result {
            Ok(()) => metrics::counter!(names::EVENTS_PUBLISHED).increment(1),
            Err(e) => {
                metrics::counter!(names::PUBLISH_FAILURES, "reason" => e.reason()).increment(1)
            }
        }
        result
    }

    /// A mandatory publish to the exchange, and its confirm.
    async fn publish_confirmed(
        &self,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        self.with_timeout(async {
            let channel = pool::get(&self.inner.publishers, self.inner.timeout).await?;
            let published = channel
                .basic_publish(
                    ShortString::from(self.topology().exchange()),
                    ShortString::from(routing_key.to_owned()),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    payload,
                    properties,
                )
                .await;
            let confirm = match published {
                Ok(confirm) => confirm,
                Err(e) => {
                    pool::discard(channel);
                    return Err(BrokerError::classify(e, "basic.publish"));
                }
            };
            // The channel goes back to the pool now: other publishes pipeline on it while we wait.
            drop(channel);
            match confirm.await {
                Ok(Confirmation::Ack(None)) => Ok(()),
                Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_))) => {
                    Err(BrokerError::Unroutable(routing_key.to_owned()))
                }
                Ok(Confirmation::Nack(None)) => Err(BrokerError::Nacked),
                Ok(Confirmation::NotRequested) => Err(BrokerError::Protocol {
                    what: "basic.publish".into(),
                    detail: "publisher confirms are not enabled on the channel".into(),
                }),
                Err(e) => Err(BrokerError::classify(e, "publisher confirm")),
            }
        })
        .await
    }
}
