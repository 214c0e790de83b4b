//! More handler instances in the test's own process, sharing one [`Stack`]'s Redis and
//! database: the fleet a multi-instance test needs (each instance has its own connections,
//! near cache and single flight, as separate Function App instances do), without a host
//! emulator or a process per instance. Requests go through axum's `oneshot` on the instance's
//! router, in forwarding mode's routes (`/api/<function>`).

use axum::body::Body;
use axum::http::Request;

use crate::stack::{Reply, Stack};

impl Stack {
    /// A handler instance built in this process from the stack's settings, with `overrides`
    /// on top (the last value of a setting wins): e.g. L1 on, or Redis reached through a
    /// chaos proxy with `REDIS_CONNECTION_STRING`. Needs a Tokio runtime (the cache starts
    /// its background tasks there).
    ///
    /// # Panics
    /// When the settings are invalid or the state cannot be built (the test cannot go on).
    pub fn instance(&self, overrides: &[(&str, &str)]) -> axum::Router {
        let mut env = self.handler_env();
        env.extend(
            overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let settings = cosmos_cache_handler::config::Settings::from_lookup(|name| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
        .expect("valid instance settings");
        let state = cosmos_cache_handler::build_state(&settings).expect("instance state");
        cosmos_cache_handler::router(state, "api")
    }
}

/// `GET /api/<path_and_query>` on an in-process instance.
///
/// # Panics
/// When the request cannot be built (a malformed path).
pub async fn get(app: &axum::Router, path_and_query: &str) -> Reply {
    let request = Request::get(format!("/api/{path_and_query}"))
        .body(Body::empty())
        .expect("GET request");
    Reply::from_router(app, request).await
}

/// `POST /api/<path>` with a JSON text body on an in-process instance.
///
/// # Panics
/// When the request cannot be built (a malformed path).
pub async fn post(app: &axum::Router, path: &str, body: &str) -> Reply {
    let request = Request::post(format!("/api/{path}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("POST request");
    Reply::from_router(app, request).await
}
