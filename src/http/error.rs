//! The service's error type and its one mapping to HTTP.
//!
//! Every failure a request can meet ends here as an [`ApiError`], answered with one stable JSON shape:
//! `{"error": "<code>", "detail": "<what happened and what to do>", "status": <http status>}` (plus
//! `"fields"` for validation errors). `detail` keeps the key DRF clients already read. Internal causes are
//! logged with their chain and never sent to the client.

use std::collections::BTreeMap;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::{
    accounts::{AccountsError, NeedsRole},
    broker::BrokerError,
    chat::ChatError,
    db::DbError,
    delivery::DeliveryError,
    limits::RateLimited,
    notify::NotifyError,
    support::SupportError,
    validate::Invalid,
};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid input")]
    Validation(BTreeMap<&'static str, String>),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    /// A newer poll or stream of the same registered client took its postbox over (409 `superseded`).
    #[error("{0}")]
    Superseded(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{detail}")]
    RateLimited {
        detail: String,
        retry_after_secs: u64,
    },
    /// This instance has no room for the request now (503 with Retry-After); another may.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": "validation_error", "detail": "message: may not be blank", "status": 400, "fields": {"message": "may not be blank"}}))]
pub struct ErrorBody {
    /// Stable machine-readable code: `bad_request`, `validation_error`, `unauthorized`, `forbidden`,
    /// `not_found`, `method_not_allowed`, `conflict`, `superseded`, `payload_too_large`, `unsupported_media_type`,
    /// `rate_limited`, `server_busy`, `database_unavailable`, `broker_unavailable`, `broker_misconfigured`, `internal_error`.
    #[schema(value_type = String)]
    pub error: &'static str,
    /// What happened and what to do, for humans.
    pub detail: String,
    /// The HTTP status, repeated.
    pub status: u16,
    /// Per-field messages of a validation error.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub fields: Option<BTreeMap<&'static str, String>>,
}

impl ApiError {
    /// A validation error on one field.
    pub fn field(name: &'static str, msg: impl Into<String>) -> Self {
        ApiError::Validation(BTreeMap::from([(name, msg.into())]))
    }

    fn parts(&self) -> (StatusCode, &'static str, String) {
        use ApiError as E;
        match self {
            E::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone()),
            E::Validation(fields) => {
                let detail = fields
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                (StatusCode::BAD_REQUEST, "validation_error", detail)
            }
            E::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m.clone()),
            E::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone()),
            E::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone()),
            E::MethodNotAllowed(m) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", m.clone()),
            E::Conflict(m) => (StatusCode::CONFLICT, "conflict", m.clone()),
            E::Superseded(m) => (StatusCode::CONFLICT, "superseded", m.clone()),
            E::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", m.clone()),
            E::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                m.clone(),
            ),
            E::RateLimited { detail, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail.clone())
            }
            E::Busy(m) => (StatusCode::SERVICE_UNAVAILABLE, "server_busy", m.clone()),
            E::Db(DbError::Conflict(_)) => (
                StatusCode::CONFLICT,
                "conflict",
                "a record with the same unique value already exists".into(),
            ),
            E::Db(DbError::Unavailable(_)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is unavailable; retry shortly (operators: check DATABASE_URL and the database server)"
                    .into(),
            ),
            E::Broker(
                BrokerError::Unavailable(_) | BrokerError::Timeout(_) | BrokerError::Tls(_),
            ) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                "the message broker is unavailable; retry shortly (operators: run `postbox check-rabbitmq`)"
                    .into(),
            ),
            E::Broker(BrokerError::QueueArguments { queue, .. }) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_misconfigured",
                format!(
                    "postbox queue {queue} was declared with other arguments; operators: run `postbox check-rabbitmq`"
                ),
            ),
            E::Db(DbError::Other(_)) | E::Broker(_) | E::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal error; it has been logged".into(),
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, detail) = self.parts();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %self, "backend unavailable");
        } else if status.is_server_error() {
            tracing::error!(error = %self, cause = ?std::error::Error::source(&self), "request failed");
        }
        let retry_after = match &self {
            ApiError::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(2),
            _ => None,
        };
        let fields = match self {
            ApiError::Validation(fields) => Some(fields),
            _ => None,
        };
        let body = ErrorBody {
            error: code,
            detail,
            status: status.as_u16(),
            fields,
        };
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Token"));
        }
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

// ---------------------------------------------------------------------------------------------------
// The domain's errors, each mapped to its answer here and nowhere else.
// ---------------------------------------------------------------------------------------------------

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::field(e.field, e.reason)
    }
}

impl From<RateLimited> for ApiError {
    fn from(e: RateLimited) -> Self {
        ApiError::RateLimited {
            detail: e.detail,
            retry_after_secs: e.retry_after_secs,
        }
    }
}

impl From<NeedsRole> for ApiError {
    fn from(e: NeedsRole) -> Self {
        ApiError::Forbidden(e.to_string())
    }
}

impl From<AccountsError> for ApiError {
    fn from(e: AccountsError) -> Self {
        use AccountsError as E;
        match e {
            E::Invalid(e) => e.into(),
            E::UsernameTaken(_) => ApiError::Conflict(e.to_string()),
            E::NoSuchUser(_) => ApiError::NotFound(e.to_string()),
            E::Unauthenticated(m) => ApiError::Unauthorized(m),
            E::Forbidden(e) => e.into(),
            E::Busy => ApiError::Db(DbError::Unavailable(e.to_string())),
            E::Db(e) => e.into(),
            E::Broker(e) => e.into(),
        }
    }
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        use ChatError as E;
        match e {
            E::Invalid(e) => e.into(),
            E::ToSelf | E::TypingToSelf => ApiError::Forbidden(e.to_string()),
            E::NoSuchUser(_) | E::NoSuchConversation | E::NoSuchAttachment => {
                ApiError::NotFound(e.to_string())
            }
            E::NoConversationGiven => ApiError::BadRequest(e.to_string()),
            E::RateLimited(e) => e.into(),
            E::TooLarge(m) => ApiError::PayloadTooLarge(m),
            E::UnsupportedAttachment => ApiError::UnsupportedMediaType(e.to_string()),
            E::UploadsBusy => ApiError::Busy(e.to_string()),
            E::Storage(cause) => ApiError::Internal(format!("attachment storage: {cause}")),
            E::Db(e) => e.into(),
            E::Broker(e) => e.into(),
        }
    }
}

impl From<DeliveryError> for ApiError {
    fn from(e: DeliveryError) -> Self {
        use DeliveryError as E;
        match e {
            E::Invalid(e) => e.into(),
            E::TooMany(e) => e.into(),
            E::Ended(ended) => ApiError::Unauthorized(ended.detail().into()),
            E::Superseded => ApiError::Superseded(E::Superseded.to_string()),
            E::Db(e) => e.into(),
            E::Broker(e) => e.into(),
        }
    }
}

impl From<NotifyError> for ApiError {
    fn from(e: NotifyError) -> Self {
        use NotifyError as E;
        match e {
            E::Invalid(e) => e.into(),
            E::Forbidden(e) => e.into(),
            E::NoSuchUser(_) | E::NoSuchUsers(_) | E::NoSuchNotification(_) => {
                ApiError::NotFound(e.to_string())
            }
            E::NoAudience => ApiError::BadRequest(e.to_string()),
            E::TooLarge(m) => ApiError::PayloadTooLarge(m),
            E::Db(e) => e.into(),
            E::Broker(e) => e.into(),
        }
    }
}

impl From<SupportError> for ApiError {
    fn from(e: SupportError) -> Self {
        use SupportError as E;
        match e {
            E::Invalid(e) => e.into(),
            E::NotAnAgent => ApiError::Forbidden(e.to_string()),
            E::NoSuchChat(_) => ApiError::NotFound(e.to_string()),
            E::RateLimited(e) => e.into(),
            E::Db(e) => e.into(),
            E::Broker(e) => e.into(),
        }
    }
}
