//! How a request says who it is: the token it carries, and the extractors that authenticate it
//! through [`crate::accounts::Accounts`].
//!
//! User tokens come as `Authorization: Token <key>` (or `Bearer <key>`) or `?token=<key>` (the seeds'
//! contract, for `EventSource` and `sendBeacon`, which cannot set headers). Service tokens come in the
//! `Authorization` header only: a URL ends up in proxy and access logs.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};

use crate::{
    accounts::tokens::Caller,
    db::entities::{service_token, user},
    http::error::ApiError,
    state::AppState,
};

/// The authenticated user of a request, read from the database (a revoked token is refused the
/// moment it was revoked).
#[derive(Debug, Clone)]
pub struct AuthUser(pub user::Model);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = request_key(parts)?;
        let caller = state.accounts.authenticate(&key, false).await?;
        Ok(AuthUser(caller.user))
    }
}

/// The user of a long poll or an event stream, authenticated through the token cache (a client polls
/// every few seconds: the token query would be most of an idle poll's cost).
///
/// Only for handlers that register in the waiting registry (`crate::delivery::waiting`) with the
/// caller's token digest before they hand out anything: a revocation that races with a cache hit is
/// caught there (the registry remembers recent revocations), so a revoked token never receives events.
#[derive(Debug, Clone)]
pub struct PollingUser(pub Caller);

impl FromRequestParts<AppState> for PollingUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = request_key(parts)?;
        Ok(PollingUser(state.accounts.authenticate(&key, true).await?))
    }
}

/// A host application calling the publish API with a service token (`postbox service-tokens create`).
#[derive(Debug, Clone)]
pub struct ServiceCaller(pub service_token::Model);

impl FromRequestParts<AppState> for ServiceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The header only: a URL ends up in proxy and access logs, and a service token reaches every
        // user. One sent in `?token=` is refused, even when it is valid.
        let key = header_token(parts).ok_or_else(|| {
            if query_token(parts).is_some() {
                ApiError::Unauthorized(
                    "service tokens are accepted only in the `Authorization: Bearer <service token>` header, never in the URL (it ends up in logs); consider revoking this one (`postbox service-tokens revoke`)"
                        .into(),
                )
            } else {
                ApiError::Unauthorized(
                    "a service token is required: send `Authorization: Bearer <service token>` (create one with `postbox service-tokens create`)"
                        .into(),
                )
            }
        })?;
        Ok(ServiceCaller(
            state.accounts.authenticate_service(&key).await?,
        ))
    }
}

/// The token a request carries, from the header or the query string.
pub fn token_from_parts(parts: &Parts) -> Option<String> {
    if parts.headers.contains_key(header::AUTHORIZATION) {
        return header_token(parts);
    }
    query_token(parts)
}

/// The token of the `Authorization: Token <key>` (or `Bearer <key>`) header.
fn header_token(parts: &Parts) -> Option<String> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, key) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer"))
        .then(|| key.trim().to_owned())
}

/// The token of the `?token=` query parameter.
fn query_token(parts: &Parts) -> Option<String> {
    parts.uri.query().and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "token").then(|| v.to_owned())
        })
    })
}

/// The key a request carries, checked for shape: 401 when it is missing or cannot be a token.
fn request_key(parts: &Parts) -> Result<String, ApiError> {
    let key = token_from_parts(parts).ok_or_else(|| {
        ApiError::Unauthorized(
            "authentication credentials were not provided: send `Authorization: Token <key>` or `?token=<key>`"
                .into(),
        )
    })?;
    if key.is_empty() || key.len() > 128 {
        return Err(ApiError::Unauthorized("invalid token".into()));
    }
    Ok(key)
}
