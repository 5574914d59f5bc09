//! Control messages between Postbox processes, over RabbitMQ: a durable fanout exchange
//! `<prefix>.control`; every serving instance binds its own exclusive, auto-deleted queue to it.
//!
//! - `token_revoked` (sent by `postbox tokens revoke`) ends at once, with 401, every poll waiting with one
//!   of the revoked tokens, in every instance, and drops the tokens from every instance's token cache.
//! - `user_changed` (sent when an admin changes a user's role, college or name) drops that user's
//!   tokens from every instance's token cache, so the next request sees the change.
//!
//! While the listener is disconnected it may miss messages, so it empties the token cache each time it
//! (re)connects. A revocation whose message was never sent (RabbitMQ down when the CLI ran) is found by
//! [`sweep_revocations`], which reads recent revocations from the database every 10 s; the cache's time
//! limit bounds what else an instance cut off from RabbitMQ can miss (user changes).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

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

use crate::{
    auth::TokenCache,
    broker::{Broker, BrokerError},
};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// These token digests were revoked: end the polls waiting with them.
    TokenRevoked { key_hashes: Vec<String> },
    /// This user's role, college or name changed: forget their cached tokens.
    UserChanged { user_id: i64 },
}

/// The polls waiting with one token: (registration id, what ends them).
type Waiters = Vec<(u64, CancellationToken)>;

/// Polls waiting now, by the digest of the token they authenticated with.
#[derive(Clone, Default)]
pub struct Waiting {
    inner: Arc<Mutex<WaitingInner>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Default)]
struct WaitingInner {
    polls: HashMap<String, Waiters>,
    /// Digests revoked lately, with when: a poll authenticated from the token cache an instant before
    /// the revocation arrived registers after it, and must end at once all the same.
    recent: HashMap<String, Instant>,
}

/// How long a revocation is remembered for polls registering late (far longer than the race it covers).
const RECENT_REVOCATIONS: Duration = Duration::from_secs(60);

/// Removes a waiting poll from the registry when dropped; tells the poll when it must end early.
pub struct WaitingGuard {
    waiting: Waiting,
    key_hash: String,
    id: u64,
    revoked: CancellationToken,
    /// The token's expiry: a poll or stream still open then ends too.
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Why a poll or stream ends before its time: its token stopped being valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Revoked,
    Expired,
}

impl Ended {
    /// The label of the poll's outcome metric.
    pub fn outcome(self) -> &'static str {
        match self {
            Ended::Revoked => "revoked",
            Ended::Expired => "expired",
        }
    }

    /// What the client is told (401).
    pub fn detail(self) -> &'static str {
        match self {
            Ended::Revoked => "the token was revoked",
            Ended::Expired => "the token expired; authenticate again",
        }
    }
}

impl WaitingGuard {
    /// Resolves when the token is revoked or reaches its expiry, whichever comes first.
    pub async fn ended(&self) -> Ended {
        let expiry = async {
            match self.expires_at {
                Some(at) => {
                    let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
                    tokio::time::sleep(left).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = self.revoked.cancelled() => Ended::Revoked,
            () = expiry => Ended::Expired,
        }
    }

    /// Whether the token is revoked or expired now.
    pub fn over(&self) -> Option<Ended> {
        if self.revoked.is_cancelled() {
            Some(Ended::Revoked)
        } else if self.expires_at.is_some_and(|at| at <= chrono::Utc::now()) {
            Some(Ended::Expired)
        } else {
            None
        }
    }
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        let mut inner = self.waiting.inner.lock().expect("waiting lock");
        if let Some(list) = inner.polls.get_mut(&self.key_hash) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                inner.polls.remove(&self.key_hash);
            }
        }
    }
}

impl Waiting {
    /// Registers a poll waiting with this token, which expires at `expires_at`; the guard's
    /// [`WaitingGuard::ended`] resolves if the token is revoked (at once if it was revoked lately) or
    /// when it expires.
    pub fn register(
        &self,
        key_hash: &str,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> WaitingGuard {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let revoked = CancellationToken::new();
        {
            let mut inner = self.inner.lock().expect("waiting lock");
            if inner
                .recent
                .get(key_hash)
                .is_some_and(|at| at.elapsed() < RECENT_REVOCATIONS)
            {
                revoked.cancel();
            }
            inner
                .polls
                .entry(key_hash.to_owned())
                .or_default()
                .push((id, revoked.clone()));
        }
        WaitingGuard {
            waiting: self.clone(),
            key_hash: key_hash.to_owned(),
            id,
            revoked,
            expires_at,
        }
    }

    /// Ends the polls waiting with these tokens, and those registering with them for a while.
    pub fn revoke(&self, key_hashes: &[String]) -> usize {
        let mut inner = self.inner.lock().expect("waiting lock");
        inner
            .recent
            .retain(|_, at| at.elapsed() < RECENT_REVOCATIONS);
        let now = Instant::now();
        let mut ended = 0;
        for hash in key_hashes {
            inner.recent.insert(hash.clone(), now);
            for (_, token) in inner.polls.get(hash).into_iter().flatten() {
                token.cancel();
                ended += 1;
            }
        }
        ended
    }
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
    crate::broker::close_quietly(channel).await;
    result
}

/// Receives control messages until `shutdown`, reconnecting after broker failures.
pub async fn run(
    broker: Broker,
    waiting: Waiting,
    tokens: TokenCache,
    shutdown: CancellationToken,
) {
    loop {
        let result = tokio::select! {
            r = listen(&broker, &waiting, &tokens) => r,
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

async fn listen(
    broker: &Broker,
    waiting: &Waiting,
    tokens: &TokenCache,
) -> Result<(), BrokerError> {
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
    // Listening from here on; whatever was sent while we were not is unknown.
    tokens.clear();
    while let Some(next) = consumer.next().await {
        let delivery = next.map_err(|e| BrokerError::classify(e, "control consume"))?;
        match serde_json::from_slice::<Control>(&delivery.data) {
            Ok(Control::TokenRevoked { key_hashes }) => {
                let ended = revoke_here(waiting, tokens, &key_hashes);
                tracing::info!(tokens = key_hashes.len(), ended, "tokens revoked");
            }
            Ok(Control::UserChanged { user_id }) => {
                tokens.forget_user(user_id);
                tracing::debug!(user_id, "user changed; cached tokens dropped");
            }
            Err(e) => tracing::warn!(error = %e, "unknown control message"),
        }
    }
    Err(BrokerError::Unavailable(
        "control consumer cancelled".into(),
    ))
}

/// Applies revocations in this process: the tokens leave the cache and their polls end (also those
/// registering shortly after). Returns how many waiting polls ended.
fn revoke_here(waiting: &Waiting, tokens: &TokenCache, key_hashes: &[String]) -> usize {
    tokens.forget_tokens(key_hashes);
    waiting.revoke(key_hashes)
}

/// How often the database is asked for revocations whose control message may not have arrived here.
pub const REVOCATION_SWEEP: Duration = Duration::from_secs(10);

/// How far each sweep looks back before the previous one: the clocks of instances and of the CLI that
/// wrote `revoked_at` may differ a little, and a lookup racing a revocation may cache the token again.
const SWEEP_OVERLAP: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Every [`REVOCATION_SWEEP`], forgets the tokens revoked lately and ends their polls, until `shutdown`.
/// The control message does this at once; the sweep bounds the delay when the message was never sent
/// (RabbitMQ down when `postbox tokens revoke` ran) or never reached this instance.
pub async fn sweep_revocations(
    db: sea_orm::DatabaseConnection,
    waiting: Waiting,
    tokens: TokenCache,
    shutdown: CancellationToken,
) {
    let mut since = chrono::Utc::now() - SWEEP_OVERLAP;
    let mut tick = tokio::time::interval(REVOCATION_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let started = chrono::Utc::now();
        match crate::db::users::revoked_since(&db, since).await {
            Ok(hashes) => {
                if !hashes.is_empty() {
                    revoke_here(&waiting, &tokens, &hashes);
                }
                since = started - SWEEP_OVERLAP;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read revoked tokens; retrying"),
        }
    }
    tracing::debug!("revocation sweep stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_ends_waiting_polls_and_those_registering_late() {
        let waiting = Waiting::default();
        let early = waiting.register("a", None);
        let other = waiting.register("b", None);
        assert_eq!(waiting.revoke(&["a".into()]), 1);
        assert_eq!(early.over(), Some(Ended::Revoked));
        assert_eq!(other.over(), None);
        // A poll that authenticated before the revocation arrived but registers after it.
        let late = waiting.register("a", None);
        assert_eq!(late.over(), Some(Ended::Revoked));
        drop((early, late));
        assert_eq!(waiting.register("b", None).over(), None);
    }

    #[tokio::test]
    async fn a_poll_ends_when_its_token_expires() {
        let waiting = Waiting::default();
        let soon = chrono::Utc::now() + chrono::TimeDelta::milliseconds(200);
        let guard = waiting.register("a", Some(soon));
        assert_eq!(guard.over(), None);
        let ended = tokio::time::timeout(Duration::from_secs(5), guard.ended()).await;
        assert_eq!(ended, Ok(Ended::Expired));
        assert!(chrono::Utc::now() >= soon, "not before the expiry");
        assert_eq!(guard.over(), Some(Ended::Expired));
        // A revocation wins over a later expiry.
        let later = chrono::Utc::now() + chrono::TimeDelta::seconds(60);
        let guard = waiting.register("b", Some(later));
        waiting.revoke(&["b".into()]);
        assert_eq!(guard.ended().await, Ended::Revoked);
    }
}
