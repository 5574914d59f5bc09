//! Extractors whose rejections use the JSON error shape (axum's own answer in plain text).

use axum::{
    extract::{
        FromRequest, FromRequestParts, Request,
        rejection::{JsonRejection, QueryRejection},
    },
    http::{StatusCode, request::Parts},
};
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// `axum::Json` with JSON errors: 400 for bad JSON or fields, 413 too large, 415 wrong content type.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => AppError::UnsupportedMediaType(
            "expected a JSON body with `Content-Type: application/json`".into(),
        ),
        JsonRejection::JsonDataError(e) => {
            AppError::BadRequest(format!("invalid field: {}", e.body_text()))
        }
        JsonRejection::JsonSyntaxError(e) => {
            AppError::BadRequest(format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            AppError::PayloadTooLarge("request body is too large".into())
        }
        other => AppError::BadRequest(other.body_text()),
    }
}

/// Parses a JSON body read by hand (optional bodies), with the same errors as [`Json`].
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => AppError::BadRequest(format!("invalid field: {e}")),
        _ => AppError::BadRequest(format!("malformed JSON: {e}")),
    })
}

/// `axum::extract::Query` with JSON errors (400).
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(AppError::BadRequest(
                format!("invalid query string: {}", e.body_text()),
            )),
            Err(other) => Err(AppError::BadRequest(other.body_text())),
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
