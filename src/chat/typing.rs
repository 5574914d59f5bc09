//! Typing signals: ephemeral (not stored, not persistent, expiring after the typing TTL, so a client
//! that polls later never sees stale typing), rate-limited per sender and throttled per receiver.

use super::{Chat, ChatError};
use crate::{
    db::entities::user,
    events::{Envelope, data::Typing},
    limits::throttle::Offer,
};

impl Chat {
    /// Publishes a `typing` event to the receiver: ephemeral (not stored, not persistent, expires after the
    /// configured typing TTL, so a client that polls later never sees stale typing).
    pub async fn typing(
        &self,
        caller: &user::Model,
        receiver_id: i64,
        is_typing: bool,
    ) -> Result<(), ChatError> {
        let me = caller;
        if receiver_id == me.id {
            return Err(ChatError::TypingToSelf);
        }
        if !self.accounts.user_exists(receiver_id).await? {
            return Err(ChatError::NoSuchUser(receiver_id));
        }
        self.typing_limit.check(me.id, "typing events")?;
        // One signal per sender, receiver and throttle period reaches the receiver's postbox: a flood of
        // them would fill it (RabbitMQ drops an expired event only at the head of a queue). What comes
        // meanwhile is answered at once and the latest state goes out when the period ends.
        let key = (me.id, receiver_id);
        let publish = {
            let (broker, ttl) = (self.broker.clone(), self.limits.typing_ttl);
            let (sender_id, sender_name) = (me.id, me.display_name.clone());
            move |is_typing: bool| async move {
                let event = Envelope::of(&Typing {
                    sender_id,
                    sender_name,
                    receiver_id,
                    is_typing,
                });
                broker.publish_ephemeral(receiver_id, &event, ttl).await
            }
        };
        match self
            .typing_signals
            .offer(key, is_typing, tokio::time::Instant::now())
        {
            Offer::Now(is_typing) => publish(is_typing).await?,
            Offer::Schedule(after) => {
                self.typing_signals
                    .schedule(key, after, move |is_typing| async move {
                        if let Err(e) = publish(is_typing).await {
                            tracing::debug!(error = %e, "a held typing signal was not published");
                        }
                    })
            }
            Offer::Held => {}
        }
        Ok(())
    }
}

/// How often one sender's typing signals may reach one receiver (see [`Chat::typing`]): a third of the
/// typing TTL, so a receiver of someone typing on gets refreshed twice before the signal expires.
pub fn typing_period(typing_ttl: std::time::Duration) -> std::time::Duration {
    typing_ttl / 3
}
