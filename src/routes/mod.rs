//! The functions' semantics (`invalidate` is the change-feed function; the other two are HTTP): validate input (a 4xx naming the field), build the query,
//! call the cache and the store, shape the JSON. Nothing here knows Redis or Cosmos types, nor
//! which wire mode delivered the request.

pub mod invalidate;
pub mod query;
pub mod query_memo;
mod query_spec;
mod update;

use crate::api::{ApiRequest, ApiResponse, Function};
use crate::error::AppError;
use crate::state::AppState;

/// Runs one request through its function and renders errors as responses.
pub async fn dispatch(state: &AppState, req: &ApiRequest) -> ApiResponse {
    let result = match req.function {
        Function::Query => query::handle(state, req).await,
        // A task of its own, awaited: when the caller goes away mid-write (the client or the
        // host's timeout closes the connection, and the server drops this future), the write
        // still runs to its invalidation, and shutdown waits for it (`AppState::writes`).
        // Dropped in place, a write Cosmos applied would have left the old pages cached.
        Function::Update => {
            let (task_state, req) = (state.clone(), req.clone());
            state
                .writes
                .spawn(async move { update::handle(&task_state, &req).await })
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "the update task failed");
                    Err(AppError::Internal)
                })
        }
    };
    result.unwrap_or_else(|e| e.into_api_response())
}

/// Whether `name` is a plain identifier `[A-Za-z_][A-Za-z0-9_]*` (safe to splice into SQL as
/// `c.<name>` or `@<name>`).
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses a request body as JSON. `expected` says what the function takes, for the message
/// about an empty body (the Functions host drops request bodies sent without Content-Length,
/// e.g. chunked; protocol §4.3).
///
/// # Errors
/// `BadRequest` on the field `body`: empty, or not valid JSON (serde's message, with its line
/// and column).
fn json_body(body: &[u8], expected: &str) -> Result<serde_json::Value, AppError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AppError::bad_request(
            "body",
            format!(
                "is empty: expected {expected} (the Functions host drops request bodies sent without Content-Length, e.g. chunked)"
            ),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| AppError::bad_request("body", format!("is not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::is_identifier;

    #[test]
    fn identifiers() {
        for ok in ["a", "_x", "state", "City2"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["", "2a", "a-b", "a b", "c.state", "é", "x;DROP"] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }
}
