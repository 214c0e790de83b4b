//! The state every request shares. Cheap to clone.

use std::sync::Arc;

use crate::cache::Cache;
use crate::continuation::TokenBinder;
use crate::identity::TokenSource;
use crate::routes::query_memo::QueryMemo;
use crate::store::Store;

/// Shared by all invocations: one Redis connection (inside [`Cache`]) and one Cosmos client
/// (inside the [`Store`]).
#[derive(Clone)]
pub struct AppState {
    /// The Redis cache of the configured container.
    pub cache: Cache,
    /// The configured Cosmos container.
    pub store: Arc<dyn Store>,
    /// Seals the continuation tokens handed out, and checks the ones that come back.
    pub tokens: TokenBinder,
    /// The Entra ID token sources in use (Redis, Cosmos), for diagnostics; empty with keys.
    /// Shared, not copied: the state is cloned on every request.
    pub identity: Arc<[TokenSource]>,
    /// The `update` writes in flight, each a task of its own: shutdown waits for them, so a
    /// write whose caller went away still reaches its invalidation before the process exits.
    pub writes: tokio_util::task::TaskTracker,
    /// What the `GET` query strings seen so far resolved to (spec and cache key), so that a
    /// hit does not work it out again.
    pub queries: QueryMemo,
}
