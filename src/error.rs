//! The one error type of the request path. Each variant knows its HTTP status; the JSON
//! body (`{"error":{"code":"...","message":"...","field":"..."}}`) says what the client can
//! act on and never carries internals, connection strings or keys.

use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::json;

use crate::api::ApiResponse;

/// Everything a request can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppError {
    /// 400: the client's input is invalid; `field` names the offending input
    /// (a query parameter, a JSON field such as `[2].id`, or `body`).
    #[error("{field}: {message}")]
    BadRequest {
        /// The offending input.
        field: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// 400: Cosmos DB rejected the query (syntax, unknown function...). The message is
    /// Cosmos's own, which describes the SQL and holds no secrets.
    #[error("query rejected by Cosmos DB: {0}")]
    BadQuery(String),
    /// 404: the document to delete does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 405: the function does not accept this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 503 with `Retry-After`: Cosmos DB kept throttling (429) past the retry budget.
    #[error("Cosmos DB is throttling requests")]
    Throttled {
        /// Seconds the client should wait, rounded up (at least 1).
        retry_after_secs: u64,
    },
    /// 503: Cosmos DB cannot be reached, or the database/container does not exist.
    #[error("{0}")]
    Unavailable(String),
    /// 500: anything else. The detail goes to the log only.
    #[error("internal error")]
    Internal,
}

impl AppError {
    /// Shorthand for [`AppError::BadRequest`].
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } | Self::BadQuery(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Throttled { .. } | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable code for the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::BadQuery(_) => "bad_query",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Throttled { .. } => "throttled",
            Self::Unavailable(_) => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// Renders the error as the response both wire modes send.
    pub fn into_response(self) -> ApiResponse {
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        if let Self::BadRequest { field, message } = &self {
            error["field"] = json!(field);
            error["message"] = json!(message);
        }
        let body = Bytes::from(json!({ "error": error }).to_string());
        let mut response = ApiResponse::json(self.status(), body);
        if let Self::Throttled { retry_after_secs } = self {
            response.retry_after_secs = Some(retry_after_secs);
        }
        response
    }
}
