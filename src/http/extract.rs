//! Extractors whose rejections use the JSON error shape (axum's own answer in plain text).

use axum::{
    extract::{
        FromRequest, FromRequestParts, Request,
        rejection::{JsonRejection, QueryRejection},
    },
    http::{StatusCode, header, request::Parts},
};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::http::error::ApiError;

/// `axum::Json` with JSON errors: 400 for bad JSON or fields, 413 too large, 415 wrong content type.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "expected a JSON body with `Content-Type: application/json`".into(),
        ),
        JsonRejection::JsonDataError(e) => {
            ApiError::BadRequest(format!("invalid field: {}", e.body_text()))
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::BadRequest(format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge("request body is too large".into())
        }
        other => ApiError::BadRequest(other.body_text()),
    }
}

/// Parses a JSON body read by hand (optional bodies), with the same errors as [`Json`].
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::BadRequest(format!("invalid field: {e}")),
        _ => ApiError::BadRequest(format!("malformed JSON: {e}")),
    })
}

/// Reads a body of at most `limit` bytes, whatever the route's body limit: 413 at once when the
/// request announces more (`Content-Length`), or as soon as more arrived; nothing beyond is read.
pub async fn read_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::PayloadTooLarge(format!("request body is larger than {limit} bytes"));
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = req.into_body().into_data_stream();
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::BadRequest(format!("could not read the request body: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}

/// `axum::extract::Query` with JSON errors (400).
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::BadRequest(
                format!("invalid query string: {}", e.body_text()),
            )),
            Err(other) => Err(ApiError::BadRequest(other.body_text())),
        }
    }
}

/// An RFC 3339 time from a query string. A `+` offset sent unencoded arrives as a space; it is read as
/// the `+` it was.
pub fn query_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
    parse(s)
        .or_else(|| {
            let i = s.len().checked_sub(6)?;
            (s.as_bytes()[i] == b' ' && s.is_char_boundary(i))
                .then(|| parse(&format!("{}+{}", &s[..i], &s[i + 1..])))
                .flatten()
        })
        .map(|t| t.with_timezone(&chrono::Utc))
}
