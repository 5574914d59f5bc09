//! Who is calling: API tokens (generation, hashing) and the extractor that authenticates a request.
//!
//! A token is 40 random hex characters, shown once when created; the database keeps its SHA-256 digest.
//! Requests carry it as `Authorization: Token <key>` (or `Bearer <key>`) or `?token=<key>` (the seeds'
//! contract, for `EventSource` and `sendBeacon`, which cannot set headers). Tokens are never logged.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::{db, db::entities::user, error::AppError, state::AppState};

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

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub struct AuthUser(pub user::Model);

impl AuthUser {
    pub fn role(&self) -> Role {
        Role::parse(&self.0.role).unwrap_or(Role::Member)
    }

    pub fn require(&self, role: Role) -> Result<(), AppError> {
        if self.role() >= role {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "this action needs the {} role",
                role.as_str()
            )))
        }
    }
}

/// The token a request carries, from the header or the query string.
pub fn token_from_parts(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?.trim();
        let (scheme, key) = value.split_once(' ')?;
        return (scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer"))
            .then(|| key.trim().to_owned());
    }
    parts.uri.query().and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "token").then(|| v.to_owned())
        })
    })
}

/// The digest of the token a request carries (no database access), for the revocation registry.
#[derive(Debug, Clone)]
pub struct TokenHash(pub String);

impl<S: Send + Sync> FromRequestParts<S> for TokenHash {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        token_from_parts(parts)
            .map(|key| TokenHash(hash_token(&key)))
            .ok_or_else(|| {
                AppError::Unauthorized("authentication credentials were not provided".into())
            })
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let key = token_from_parts(parts).ok_or_else(|| {
            AppError::Unauthorized(
                "authentication credentials were not provided: send `Authorization: Token <key>` or `?token=<key>`"
                    .into(),
            )
        })?;
        if key.is_empty() || key.len() > 128 {
            return Err(AppError::Unauthorized("invalid token".into()));
        }
        match db::users::find_by_token_hash(&state.db, &hash_token(&key)).await? {
            Some(user) => Ok(AuthUser(user)),
            None => Err(AppError::Unauthorized("invalid token".into())),
        }
    }
}

/// A host application calling the publish API with a service token (`postbox service-tokens create`).
#[derive(Debug, Clone)]
pub struct ServiceCaller(pub crate::db::entities::service_token::Model);

/// Prefix of service tokens, so a leaked one is recognisable and never mistaken for a user's token.
pub const SERVICE_TOKEN_PREFIX: &str = "pbs_";

impl ServiceCaller {
    /// A new service token: `pbs_` and 40 random hex characters; the database keeps its digest.
    pub fn generate() -> TokenSecret {
        TokenSecret::generate_with_prefix(SERVICE_TOKEN_PREFIX)
    }
}

impl FromRequestParts<AppState> for ServiceCaller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let key = token_from_parts(parts).ok_or_else(|| {
            AppError::Unauthorized(
                "a service token is required: send `Authorization: Bearer <service token>` (create one with `postbox service-tokens create`)"
                    .into(),
            )
        })?;
        if !key.starts_with(SERVICE_TOKEN_PREFIX) || key.len() > 128 {
            return Err(AppError::Unauthorized(
                "invalid service token (user tokens cannot publish)".into(),
            ));
        }
        match db::notifications::find_service_token(&state.db, &hash_token(&key)).await? {
            Some(token) => Ok(ServiceCaller(token)),
            None => Err(AppError::Unauthorized(
                "invalid or revoked service token".into(),
            )),
        }
    }
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

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Staff && Role::Staff > Role::Member);
        assert_eq!(Role::parse("staff"), Some(Role::Staff));
        assert_eq!(Role::parse("root"), None);
    }
}
