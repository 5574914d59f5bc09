//! Tokens and roles: generation and hashing of user and service tokens, the cache of tokens
//! authenticated lately, and the grouped token lookups.
//!
//! A token is 40 random hex characters, shown once when created; the database keeps its SHA-256 digest.
//! Tokens are never logged. How a request carries one is the HTTP layer's business (`http::auth`).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use moka::sync::Cache;
use rand::Rng;
use sha2::{Digest, Sha256};

use sea_orm::DatabaseConnection;

use crate::db::{self, batch::Lookups, entities::user, users::LiveToken};

/// Roles, from least to most privileged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member,
    Staff,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "member" => Some(Role::Member),
            "staff" => Some(Role::Staff),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// A user's role (an unknown one counts as member).
    pub fn of(user: &user::Model) -> Role {
        Role::parse(&user.role).unwrap_or(Role::Member)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Staff => "staff",
            Role::Admin => "admin",
        }
    }
}

/// A freshly generated token: the clear key for the caller, the digest and prefix for the database.
pub struct TokenSecret {
    pub key: String,
    pub key_hash: String,
    pub prefix: String,
}

impl TokenSecret {
    /// A user token: 40 random hex characters.
    pub fn generate() -> Self {
        Self::generate_with_prefix("")
    }

    /// `prefix` followed by 40 random hex characters.
    pub fn generate_with_prefix(prefix: &str) -> Self {
        let bytes: [u8; 20] = rand::rng().random();
        let key = format!("{prefix}{}", hex::encode(bytes));
        TokenSecret {
            key_hash: hash_token(&key),
            prefix: key[..8].to_owned(),
            key,
        }
    }
}

/// SHA-256 of a token, hex-encoded. Tokens are random and long, so a fast digest is enough.
pub fn hash_token(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// An authenticated user and the token they authenticated with.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: user::Model,
    /// The token's digest, for the waiting registry (a revocation ends the polls waiting with it).
    pub key_hash: String,
    /// When the token expires: a poll or stream still open then ends, as on a revocation.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Token lookups of many requests answered by one query ([`Lookups`]): a revoked token is still
/// refused at once (each request reads the database after it arrived), a burst of sends costs one
/// statement, and a herd of thousands of clients polling again after a restart waits as small queued
/// items (a database future is ~17 KB; heaptrack showed such a herd set the idle server's peak memory).
/// Cheap to clone.
#[derive(Clone)]
pub struct TokenLookups {
    lookups: Lookups<String, LiveToken>,
}

impl TokenLookups {
    /// Starts the task that runs the queries; needs a Tokio runtime.
    pub fn new(db: DatabaseConnection) -> Self {
        let lookups = Lookups::spawn("token", move |digests: Vec<String>| {
            let db = db.clone();
            async move {
                let digests: Vec<&str> = digests.iter().map(String::as_str).collect();
                let live = db::users::find_by_token_hashes(&db, &digests).await?;
                Ok(live.into_iter().map(|t| (t.key_hash.clone(), t)).collect())
            }
        });
        TokenLookups { lookups }
    }

    /// The live token with this digest, and its user.
    pub async fn find(&self, key_hash: String) -> Result<Option<LiveToken>, db::DbError> {
        self.lookups.find(key_hash).await
    }
}

/// Tokens authenticated lately, with their user, so most polls skip the token query (the HTTP layer's `PollingUser`).
/// Only live tokens are remembered (an unknown token always asks the database), each for at most the
/// configured time and never past the token's own expiry.
///
/// A bounded cache (moka: at most `TOKEN_CACHE_MAX` entries, the least useful evicted first, each
/// dropped `ttl` after it was remembered). Revoking a token or changing a user forgets the entries at
/// once: in this process directly, in the others through the control message (`crate::broker::control`).
/// A lookup that raced with such a change is not remembered: the generation moved on while it ran, and
/// the generation's lock makes "check it, then insert" one step against "move it, then forget".
#[derive(Clone)]
pub struct TokenCache {
    entries: Cache<String, Remembered>,
    generation: Arc<Mutex<u64>>,
    ttl: Duration,
}

#[derive(Clone)]
struct Remembered {
    user: user::Model,
    /// The token's own expiry, checked on every hit.
    expires_at: Option<DateTime<Utc>>,
}

/// Entries kept at most.
const TOKEN_CACHE_MAX: u64 = 200_000;

impl TokenCache {
    /// A cache remembering tokens for `ttl` (zero: never).
    pub fn new(ttl: Duration) -> Self {
        TokenCache {
            entries: Cache::builder()
                .max_capacity(TOKEN_CACHE_MAX)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .support_invalidation_closures()
                .build(),
            generation: Arc::new(Mutex::new(0)),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.generation.lock().expect("token cache lock")
    }

    /// The user of a remembered, still live token, and the token's expiry.
    pub fn get(&self, key_hash: &str) -> Option<(user::Model, Option<DateTime<Utc>>)> {
        let entry = self.entries.get(key_hash)?;
        if entry.expires_at.is_none_or(|t| t > Utc::now()) {
            return Some((entry.user, entry.expires_at));
        }
        self.entries.invalidate(key_hash);
        None
    }

    /// Where the cache stands; pass it to [`TokenCache::insert`] after the lookup.
    pub fn generation(&self) -> u64 {
        *self.lock()
    }

    /// Remembers a token found live by a lookup that started at `generation`.
    pub fn insert(
        &self,
        key_hash: String,
        user: &user::Model,
        expires_at: Option<DateTime<Utc>>,
        generation: u64,
    ) {
        if self.ttl.is_zero() {
            return;
        }
        let current = self.lock();
        if *current != generation {
            return;
        }
        let remembered = Remembered {
            user: user.clone(),
            expires_at,
        };
        self.entries.insert(key_hash, remembered);
    }

    /// Forgets these tokens (revoked).
    pub fn forget_tokens(&self, key_hashes: &[String]) {
        let mut generation = self.lock();
        *generation += 1;
        for hash in key_hashes {
            self.entries.invalidate(hash);
        }
    }

    /// Forgets every token of a user (the user changed: role, college, name).
    pub fn forget_user(&self, user_id: i64) {
        let mut generation = self.lock();
        *generation += 1;
        // Only fails when invalidation closures were not enabled at build time (they are).
        let _ = self
            .entries
            .invalidate_entries_if(move |_, e| e.user.id == user_id);
    }

    /// Forgets everything (the control listener reconnected: it may have missed messages).
    pub fn clear(&self) {
        let mut generation = self.lock();
        *generation += 1;
        self.entries.invalidate_all();
    }
}

/// Prefix of service tokens, so a leaked one is recognisable and never mistaken for a user's token.
pub const SERVICE_TOKEN_PREFIX: &str = "pbs_";

/// A new service token: `pbs_` and 40 random hex characters; the database keeps its digest.
pub fn generate_service_token() -> TokenSecret {
    TokenSecret::generate_with_prefix(SERVICE_TOKEN_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = TokenSecret::generate();
        let b = TokenSecret::generate();
        assert_eq!(a.key.len(), 40);
        assert_ne!(a.key, b.key);
        assert_eq!(a.key_hash, hash_token(&a.key));
        assert_ne!(a.key_hash, a.key);
        assert!(a.key.starts_with(&a.prefix));
    }

    fn user(id: i64) -> user::Model {
        user::Model {
            id,
            username: format!("u{id}"),
            display_name: format!("U{id}"),
            college_id: None,
            role: "member".into(),
            created_at: Utc::now(),
            last_seen_at: None,
            online_until: None,
            is_online: false,
            last_seq: 0,
        }
    }

    #[test]
    fn the_token_cache_remembers_live_tokens_and_forgets_on_change() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let g = cache.generation();
        cache.insert("a".into(), &user(1), None, g);
        cache.insert("b".into(), &user(1), None, g);
        cache.insert("c".into(), &user(2), None, g);
        assert_eq!(cache.get("a").map(|(u, _)| u.id), Some(1));
        cache.forget_tokens(&["a".into()]);
        assert!(cache.get("a").is_none());
        assert!(cache.get("b").is_some());
        cache.forget_user(1);
        assert!(cache.get("b").is_none());
        assert_eq!(cache.get("c").map(|(u, _)| u.id), Some(2));
        cache.clear();
        assert!(cache.get("c").is_none());
    }

    #[test]
    fn the_token_cache_skips_raced_lookups_expired_tokens_and_a_zero_ttl() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let before = cache.generation();
        cache.forget_tokens(&["a".into()]); // a revocation while the lookup ran
        cache.insert("a".into(), &user(1), None, before);
        assert!(cache.get("a").is_none(), "a raced lookup is not remembered");
        let past = Utc::now() - chrono::Duration::seconds(1);
        cache.insert("e".into(), &user(1), Some(past), cache.generation());
        assert!(cache.get("e").is_none(), "an expired token is never served");
        let short = TokenCache::new(Duration::from_millis(50));
        short.insert("s".into(), &user(1), None, short.generation());
        assert!(short.get("s").is_some());
        std::thread::sleep(Duration::from_millis(120));
        assert!(short.get("s").is_none(), "remembered for the ttl only");
        let off = TokenCache::new(Duration::ZERO);
        off.insert("a".into(), &user(1), None, off.generation());
        assert!(off.get("a").is_none());
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Staff && Role::Staff > Role::Member);
        assert_eq!(Role::parse("staff"), Some(Role::Staff));
        assert_eq!(Role::parse("root"), None);
    }
}
