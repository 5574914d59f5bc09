//! Publishing events with publisher confirms: to users' postboxes (one mandatory message each, so a
//! postbox that vanished while cached is noticed and declared again), to a group key (one message that
//! RabbitMQ's bindings fan out), and ephemeral events that expire.
//!
//! `Ok` from a persistent publish means RabbitMQ holds the event on disk in every addressed postbox
//! that exists. What goes into the message is [`super::message`]'s.
//!
//! Only postbox publishes are mandatory: a group or devices key that nobody is bound to is routinely
//! unroutable, and that is fine. lapin hands a returned message to whichever confirm of the channel
//! completes next (confirms pipeline on the pooled channels, and RabbitMQ acknowledges several at
//! once), so a publish never assumes a returned message is its own: one that is not is published again
//! for its own postbox by whoever received it.

use std::time::Duration;

use lapin::{BasicProperties, Confirmation, options::BasicPublishOptions, types::ShortString};

use super::{
    Broker, BrokerError, STAFF_ROUTING_KEY, college_routing_key, devices_routing_key, message,
    pool, topology::user_of_routing_key, user_routing_key,
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
                self.publish_with(&devices_routing_key(*id), body, props, false)
                    .await
            }
            Audience::Members(users) => {
                // Only the postboxes that exist, as a broadcast's bindings would reach.
                let props = message::properties(event, self.inner.broadcast_mode);
                let results = futures_util::future::join_all(users.iter().map(|&id| {
                    let props = props.clone();
                    async move {
                        self.publish_with(&user_routing_key(id), body, props, false)
                            .await
                    }
                }))
                .await;
                results.into_iter().collect()
            }
            Audience::College(id) => self.publish_group(&college_routing_key(*id), event).await,
            Audience::Staff => self.publish_group(STAFF_ROUTING_KEY, event).await,
        }
    }

    /// One event to a group routing key (a college, the staff).
    async fn publish_group(&self, routing_key: &str, event: &Envelope) -> Result<(), BrokerError> {
        let props = message::properties(event, self.inner.broadcast_mode);
        self.publish_with(routing_key, event.data.get().as_bytes(), props, false)
            .await
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
        match self.publish_with(&key, body, props.clone(), true).await {
            Err(BrokerError::Unroutable(_)) => {
                tracing::warn!(
                    user_id,
                    "postbox was missing though cached; declaring it again"
                );
                self.forget_user_queue(user_id);
                self.declare_user_queue(user_id).await?;
                self.publish_with(&key, body, props, true).await
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
                true,
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
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let result = self
            .publish_confirmed(routing_key, payload, properties, mandatory)
            .await;
        match &result {
            Ok(()) => metrics::counter!(names::EVENTS_PUBLISHED).increment(1),
            Err(e) => {
                metrics::counter!(names::PUBLISH_FAILURES, "reason" => e.reason()).increment(1)
            }
        }
        result
    }

    /// A publish to the exchange, and its confirm. `Unroutable` only if a `mandatory` publish came
    /// back itself; a returned message that is another publish's goes on to [`Self::republish`].
    async fn publish_confirmed(
        &self,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let message_id = properties.message_id().clone();
        let confirmation = self
            .with_timeout(async {
                let channel = pool::get(&self.inner.publishers, self.inner.timeout).await?;
                let published = channel
                    .basic_publish(
                        ShortString::from(self.topology().exchange()),
                        ShortString::from(routing_key.to_owned()),
                        BasicPublishOptions {
                            mandatory,
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
                confirm
                    .await
                    .map_err(|e| BrokerError::classify(e, "publisher confirm"))
            })
            .await?;
        let (acked, returned) = match confirmation {
            Confirmation::Ack(returned) => (true, returned),
            Confirmation::Nack(returned) => (false, returned),
            Confirmation::NotRequested => {
                return Err(BrokerError::Protocol {
                    what: "basic.publish".into(),
                    detail: "publisher confirms are not enabled on the channel".into(),
                });
            }
        };
        match returned {
            Some(m)
                if m.delivery.routing_key.as_str() == routing_key
                    && *m.delivery.properties.message_id() == message_id =>
            {
                return Err(BrokerError::Unroutable(routing_key.to_owned()));
            }
            Some(other) => Box::pin(self.republish(other)).await,
            None => {}
        }
        if acked {
            Ok(())
        } else {
            Err(BrokerError::Nacked)
        }
    }

    /// Publishes again, for its own postbox, a returned message that came with another publish's
    /// confirm: its publisher took the confirm it received for routed. A postbox key's postbox is
    /// declared first (it was missing); any other key was not mandatory, and its return is dropped.
    async fn republish(&self, m: lapin::message::BasicReturnMessage) {
        let key = m.delivery.routing_key.as_str();
        let Some(user_id) = user_of_routing_key(key) else {
            return;
        };
        self.forget_user_queue(user_id);
        if message::is_ephemeral(m.delivery.properties.headers().as_ref()) {
            // Nobody polls that postbox: an ephemeral event for it is done (as its own publish does).
            return;
        }
        tracing::warn!(
            user_id,
            "a returned event came with another publish's confirm; publishing it again"
        );
        // Forgotten above: the postbox is declared again before the publish.
        let result = self
            .publish_to_user(user_id, &m.delivery.data, m.delivery.properties)
            .await;
        if let Err(e) = result {
            metrics::counter!(names::EVENTS_DROPPED, "reason" => "unroutable").increment(1);
            tracing::error!(user_id, error = %e, "a returned event could not be published again; it is lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::options::QueueDeclareOptions;

    use super::*;
    use crate::{app::testing::Parts, events::data::Resync};

    fn event() -> Envelope {
        Envelope::of(&Resync {
            reason: "test".into(),
            lost: 0,
            lost_unknown: false,
            since: None,
            seq_from: None,
            seq_to: None,
            lost_unnumbered: None,
        })
    }

    async fn depth(parts: &Parts, queue: &str) -> u32 {
        let channel = parts.broker.disposable_channel().await.unwrap();
        let q = channel
            .queue_declare(
                ShortString::from(queue.to_owned()),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        let _ = channel.close(200, "done".into()).await;
        q.message_count()
    }

    /// lapin hands a returned message to whichever confirm of its channel completes first, so a
    /// routinely unroutable publish (a user with no registered client, a group nobody is in) that
    /// shares a channel with postbox publishes must not make one of those look returned: it would be
    /// published twice.
    #[tokio::test]
    async fn unroutable_broadcasts_beside_postbox_publishes_duplicate_nothing() {
        let parts = Parts::start().await;
        let alice = parts.user("alice").await;
        let bob = parts.user("bob").await;
        let n = 150;
        let mut publishes = Vec::new();
        for i in 0..n {
            let broker = parts.broker.clone();
            let (alice, bob) = (alice.user.id, bob.user.id);
            publishes.push(tokio::spawn(async move {
                let to = match i % 3 {
                    0 => Audience::Users(vec![bob]),
                    1 => Audience::Devices(alice),
                    _ => Audience::College(987_654),
                };
                broker.publish_event(&to, &event()).await
            }));
        }
        for p in publishes {
            p.await.unwrap().unwrap();
        }
        let queue = parts.broker.topology().user_queue(bob.user.id);
        assert_eq!(depth(&parts, &queue).await, n / 3);
    }

    /// A postbox that vanished while cached returns its event, and the return may come with another
    /// postbox's confirm: the event still reaches its own postbox, and nothing is doubled.
    #[tokio::test]
    async fn an_event_returned_with_another_publishs_confirm_reaches_its_own_postbox() {
        let parts = Parts::start().await;
        let bob = parts.user("bob").await.user.id;
        let mut vanished = Vec::new();
        for i in 0..5 {
            let id = parts.user(&format!("carol{i}")).await.user.id;
            parts
                .broker
                .publish_event(&Audience::Users(vec![id]), &event())
                .await
                .unwrap();
            let channel = parts.broker.disposable_channel().await.unwrap();
            channel
                .queue_delete(
                    ShortString::from(parts.broker.topology().user_queue(id)),
                    Default::default(),
                )
                .await
                .unwrap();
            vanished.push(id);
        }
        let mut publishes = Vec::new();
        for i in 0..100 {
            let broker = parts.broker.clone();
            let to = match vanished.get(i / 20).filter(|_| i % 20 == 10) {
                Some(&carol) => carol,
                None => bob,
            };
            publishes.push(tokio::spawn(async move {
                broker
                    .publish_event(&Audience::Users(vec![to]), &event())
                    .await
            }));
        }
        for p in publishes {
            p.await.unwrap().unwrap();
        }
        let topology = parts.broker.topology();
        assert_eq!(depth(&parts, &topology.user_queue(bob)).await, 95);
        for carol in vanished {
            assert_eq!(depth(&parts, &topology.user_queue(carol)).await, 1);
        }
    }
}
