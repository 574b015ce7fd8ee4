//! One error type for Baton's own HTTP surface (ingress, health, admin), with
//! one table from error to status, stable snake_case code and retry advice.
//! The Graph-compatible API answers in Meta's shape instead (see `wire::graph`).
//! `Display` is safe for clients; causes are logged, never sent.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no managed app {0} is configured here")]
    UnknownApp(String),
    #[error("{0}")]
    BadSignature(&'static str),
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("content type {0:?} is not accepted: send application/json")]
    UnsupportedMediaType(String),
    #[error("the event log is busy; retry shortly")]
    Busy,
    #[error("the event log cannot accept writes: {0}")]
    Unavailable(String),
    #[error("verify token or mode does not match")]
    VerifyRefused,
    #[error("the body could not be read: {0}")]
    BadBody(String),
    #[error("a valid bearer token is required (an app on this page, or the admin token)")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the request body did not arrive within {0} ms")]
    BodyTimeout(u64),
    #[error("Baton is stopping; retry shortly")]
    Stopping,
    /// A node that does not own the shard could not route the request.
    #[error("{0}; retry shortly")]
    NoOwner(String),
    /// Another shard's owner refused its part of the request (4xx): as
    /// permanent as if this node had refused it.
    #[error("shard {shard} refused its part: {message}")]
    OtherShard {
        shard: i32,
        status: StatusCode,
        message: String,
    },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooManyItems(String),
    #[error("too many requests from app {app}; retry after a second")]
    RateLimited { app: String },
    #[error("webhooks are not accepted from {0}")]
    SourceNotAllowed(String),
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
}

impl ApiError {
    /// The table: status and stable code for each error.
    fn table(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::UnknownApp(_) => (StatusCode::NOT_FOUND, "unknown_app"),
            ApiError::BadSignature(_) => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "log_unavailable"),
            ApiError::VerifyRefused => (StatusCode::FORBIDDEN, "verify_refused"),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_body"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "stopping"),
            ApiError::NoOwner(_) => (StatusCode::SERVICE_UNAVAILABLE, "owner_unavailable"),
            ApiError::OtherShard { status, .. } => (*status, "refused_by_other_shard"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::TooManyItems(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_items"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::SourceNotAllowed(_) => (StatusCode::FORBIDDEN, "source_not_allowed"),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
        }
    }

    pub fn code(&self) -> &'static str {
        self.table().1
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.table().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code) = self.table();
        let mut res = HttpResponse::build(status);
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            res.insert_header(("Retry-After", "1"));
        }
        res.json(json!({ "error": code, "message": self.to_string() }))
    }
}

/// An error with its causes, `a: b: c`, for logs and Baton's own messages.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl From<crate::body::BodyError> for ApiError {
    fn from(e: crate::body::BodyError) -> Self {
        match e {
            crate::body::BodyError::TooLarge { limit } => ApiError::TooLarge { limit },
            crate::body::BodyError::Timeout { ms } => ApiError::BodyTimeout(ms),
            crate::body::BodyError::Broken(e) => ApiError::BadBody(e),
        }
    }
}
