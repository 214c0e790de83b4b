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
    /// Cosmos DB refused a write for a reason the client can act on: 409 (conflict, e.g. a
    /// unique key), 412 (precondition) or 413 (document over 2 MB). `field` names the document.
    #[error("{message}")]
    Rejected {
        /// The status Cosmos answered.
        status: StatusCode,
        /// The document at fault (`body`, or `[i]` in an array).
        field: String,
        /// Cosmos's message.
        message: String,
    },
    /// 413: the request body is larger than the handler accepts.
    #[error("the request body is larger than {limit_bytes} bytes")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit_bytes: usize,
    },
    /// A write request that failed part-way: `written` of `total` documents were acknowledged by
    /// Cosmos before `cause`. The status and code are the cause's. Upserts are idempotent, so
    /// the client can send the whole request again.
    #[error(
        "{cause} ({written} of {total} documents were acknowledged before the failure; sending \
         the whole request again is safe: an upsert replaces the document)"
    )]
    PartialWrite {
        /// Why the write stopped.
        cause: Box<AppError>,
        /// Documents Cosmos acknowledged.
        written: usize,
        /// Documents in the request.
        total: usize,
    },
    /// 405: the function does not accept this method; `allow` lists the ones it does (the
    /// `Allow` header a 405 must carry, RFC 9110 §15.5.6), e.g. `"GET, POST"`.
    #[error("method not allowed: use {allow}")]
    MethodNotAllowed {
        /// The methods the path accepts, comma-separated.
        allow: &'static str,
    },
    /// 503 with `Retry-After`: Cosmos DB kept throttling (429) past the retry budget.
    #[error("Cosmos DB is throttling requests")]
    Throttled {
        /// Seconds the client should wait, rounded up (at least 1).
        retry_after_secs: u64,
    },
    /// 502: Cosmos DB answered, but with something the handler cannot use: a 5xx of its own,
    /// or a document the SDK cannot decode. Retrying does not help until that is fixed.
    #[error("{0}")]
    BadGateway(String),
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
            Self::Rejected { status, .. } => *status,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::PartialWrite { cause, .. } => cause.status(),
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
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
            Self::Rejected { .. } => "rejected",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::PartialWrite { cause, .. } => cause.code(),
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Throttled { .. } => "throttled",
            Self::BadGateway(_) => "bad_gateway",
            Self::Unavailable(_) => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The JSON field the client should look at, if any.
    fn field(&self) -> Option<&str> {
        match self {
            Self::BadRequest { field, .. } | Self::Rejected { field, .. } => Some(field),
            Self::PayloadTooLarge { .. } => Some("body"),
            Self::PartialWrite { cause, .. } => cause.field(),
            _ => None,
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Throttled { retry_after_secs } => Some(*retry_after_secs),
            Self::PartialWrite { cause, .. } => cause.retry_after_secs(),
            _ => None,
        }
    }

    /// Renders the error as the response both wire modes send:
    /// `{"error":{"code","message","field"?,"written"?,"total"?}}`.
    pub fn into_api_response(self) -> ApiResponse {
        let message = match &self {
            Self::BadRequest { message, .. } => message.clone(),
            other => other.to_string(),
        };
        let mut error = json!({ "code": self.code(), "message": message });
        if let Some(field) = self.field() {
            error["field"] = json!(field);
        }
        if let Self::PartialWrite { written, total, .. } = &self {
            error["written"] = json!(written);
            error["total"] = json!(total);
        }
        let body = Bytes::from(json!({ "error": error }).to_string());
        let mut response = ApiResponse::json(self.status(), body);
        response.retry_after_secs = self.retry_after_secs();
        if let Self::MethodNotAllowed { allow } = self {
            response.allow = Some(allow);
        }
        response
    }
}

/// The one place where a store error gets its HTTP meaning.
impl From<crate::store::StoreError> for AppError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError as S;
        match e {
            S::Input { field, message } => Self::BadRequest { field, message },
            S::Query(message) => Self::BadQuery(message),
            S::NotFound(message) => Self::NotFound(message),
            S::Refused { status, message } => Self::Rejected {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                field: "body".into(),
                message: format!("Cosmos DB refused the document: {message}"),
            },
            S::Throttled { retry_after_secs } => Self::Throttled { retry_after_secs },
            S::Unavailable(message) | S::CredentialsRefused { message, .. } => {
                Self::Unavailable(message)
            }
            S::BadGateway(message) => Self::BadGateway(message),
            S::Internal => Self::Internal,
        }
    }
}
