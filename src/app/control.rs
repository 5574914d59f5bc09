//! What this instance does with control messages and revocations: revoked tokens leave the token cache
//! and their waiting polls end; a changed user's cached tokens are forgotten.
//!
//! The control bus ([`crate::broker::control`]) tells every instance at once. A revocation whose message
//! was never sent (RabbitMQ down when the CLI ran) is found by [`sweep_revocations`], which reads recent
//! revocations from the database every 10 s; the cache's time limit bounds what else an instance cut off
//! from RabbitMQ can miss (user changes). The cache is emptied whenever the listener (re)connects.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{
    accounts::tokens::TokenCache,
    broker::control::{Control, Heard},
    delivery::waiting::Waiting,
};

/// The control listener's handler.
pub fn on_control(waiting: Waiting, tokens: TokenCache) -> impl FnMut(Heard) {
    move |heard| match heard {
        Heard::Connected => tokens.clear(),
        Heard::Message(Control::TokenRevoked { key_hashes }) => {
            let ended = revoke_here(&waiting, &tokens, &key_hashes);
            tracing::info!(tokens = key_hashes.len(), ended, "tokens revoked");
        }
        Heard::Message(Control::UserChanged { user_id }) => {
            tokens.forget_user(user_id);
            tracing::debug!(user_id, "user changed; cached tokens dropped");
        }
    }
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
