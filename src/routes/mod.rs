//! The functions' semantics (`invalidate` is the change-feed function; the other two are HTTP): validate input (a 4xx naming the field), build the query,
//! call the cache and the store, shape the JSON. Nothing here knows Redis or Cosmos types, nor
//! which wire mode delivered the request.

pub mod invalidate;
pub mod query;
mod query_spec;
pub mod update;

use crate::api::{ApiRequest, ApiResponse, Function};
use crate::state::AppState;

/// Runs one request through its function and renders errors as responses.
pub async fn dispatch(state: &AppState, req: &ApiRequest) -> ApiResponse {
    let result = match req.function {
        Function::Query => query::handle(state, req).await,
        Function::Update => update::handle(state, req).await,
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
