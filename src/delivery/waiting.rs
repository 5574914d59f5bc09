//! Polls and streams waiting now, by the digest of the token they authenticated with, so a revoked
//! token ends them at once (in this process: the control bus and the revocation sweep call
//! [`Waiting::revoke`]) and an expiring one ends them at its expiry.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

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
