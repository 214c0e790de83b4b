//! # cosmos-cache-handler
//!
//! An Azure Functions **custom handler** that puts a Redis cache in front of Azure Cosmos DB.
//! The Functions host starts the `handler` binary and forwards two HTTP functions to it:
//!
//! - `query` — **cache-aside** read: look in Redis, on a miss run the parameterized Cosmos SQL
//!   query, store the page with a TTL, return it (`x-cache: hit|miss|bypass`; `hit-local` from
//!   the optional in-process near cache, [`cache`]'s `near.rs`).
//! - `update` — upsert or delete in Cosmos, then **invalidate** the container's cached queries
//!   (flush-on-write) by bumping a generation number, only after Cosmos answered: after a
//!   failed write too, unless the SDK's record proves no attempt changed anything
//!   (`store/applied.rs`).
//!
//! and a third function on the container's change feed (a `cosmosDBTrigger`, payload mode):
//!
//! - `invalidate` — bumps the generation once per batch of changes, so writes made outside
//!   `update` invalidate too; batches made only of `update`'s own writes are recognised by
//!   their `_etag` and skipped ([`routes::invalidate`], `cache/change_feed.rs`).
//!
//! ## Layout (the data path reads left to right)
//! ```text
//! Functions host ─► protocol ─► routes ─┬─► cache ──► Redis     (a hit ends here)
//!                   (2 wire    (query,   └─► store ──► Cosmos DB (the miss fill, the writes)
//!                   adapters)   update)
//! ```
//! The routes call the cache with the store read as its fill closure, so the cache never calls
//! Cosmos itself; it knows a query only as the [`store::QuerySpec`] its key is made from. Both
//! wire modes meet in [`api`]'s one request/response type; [`error`] maps [`store::StoreError`]
//! onto HTTP in one place.
//! - [`config`]: settings read once from environment variables; connection-string parsing;
//!   secrets that cannot be printed.
//! - [`protocol`]: the invocation-payload and forwarding adapters, both onto [`api`]'s one
//!   request/response type, plus the readiness probe. [`protocol::router`] builds the app.
//! - [`routes`]: HTTP semantics of the two functions. No Redis or Cosmos types.
//! - [`cache`]: every Redis concern (keys, generations, TTL, single-flight, timeouts, bypass).
//! - [`store`]: every Cosmos concern, behind the [`store::Store`] trait; its failures are
//!   [`store::StoreError`]s, which know nothing of HTTP.
//! - [`continuation`]: continuation tokens bound to the query that produced them.
//! - [`error`]: the HTTP edge's error enum (each variant knows its status) and the one mapping
//!   from [`store::StoreError`] onto it.
//! - [`seed`]: the data loader behind `handler seed`.
//! - [`telemetry`]: the log lines (JSON in Azure, INFO to stdout in batches, WARN/ERROR to
//!   stderr), shaped for how the host records them.
//! - [`identity`]: Microsoft Entra ID tokens (managed identity, Azure CLI) for keyless Cosmos DB
//!   and Redis, refreshed in the background by a loop that never gives up.
//!
//! ## Following one `GET /api/query?state=Texas` (a hit, forwarding mode)
//! 1. `protocol/mod.rs`: [`router`] matches `/api/query` (a static route; other spellings of a
//!    function's name reach the `/api/{function}` route behind it, of the prefix the fallback);
//! 2. `protocol/forwarding.rs`: the request becomes an [`api::ApiRequest`], the answer an
//!    HTTP response (`protocol/payload.rs` is the same step for invocation payloads);
//! 3. `routes/mod.rs`: `dispatch` picks the function;
//! 4. `routes/query.rs` with `routes/query_spec.rs`: the query string becomes a
//!    [`store::QuerySpec`] (or a 400 naming the field) and its cache key, once per spelling
//!    per instance (`routes/query_memo.rs` keeps what each `GET` query string resolved to);
//! 5. `cache/lookup.rs`: L1, then one Redis round trip; a hit ends here, a miss goes on to
//!    the single flight and the store's `store/cosmos.rs`.
//!
//! ## Guarantees
//! After `update` answers 200, no `query` that starts later returns data older than that write
//! from this cache (the generation moved; see [`cache`]), across Redis failovers too (a promoted
//! replica that may have missed the bump moves the generation first; see `cache/failover.rs`).
//! When Redis is slow or down, requests are answered from Cosmos with `x-cache: bypass`; Redis
//! never takes the API down.

#![warn(missing_docs)]

pub mod api;
pub mod cache;
pub mod config;
pub mod continuation;
pub mod error;
pub mod identity;
pub mod protocol;
pub mod routes;
pub mod seed;
pub mod state;
pub mod store;
pub mod telemetry;

use std::sync::Arc;

pub use config::route_prefix;
pub use protocol::router;
pub use state::AppState;

use config::{CosmosAuth, Settings};

/// Builds the shared state from settings. Connects to nothing: Redis connects lazily and Cosmos
/// on first use, so the host's readiness probe is answered at once. With Entra ID settings the
/// token refresh loops start here (their first token request runs at once), which needs a
/// Tokio runtime.
///
/// # Errors
/// [`StartupError`] when a client or a credential cannot be built from the settings.
pub fn build_state(settings: &Settings) -> Result<AppState, StartupError> {
    let scope = settings.cosmos.scope();
    let mut sources = Vec::new();
    let entra = match &settings.redis.identity {
        Some(id) => {
            let source = identity::start_source("redis", identity::REDIS_SCOPE, &id.credential)
                .map_err(StartupError::Identity)?;
            sources.push(source.clone());
            Some(cache::EntraCredentials {
                source,
                user: id.principal_id.clone(),
            })
        }
        None => None,
    };
    let cache = cache::Cache::new(&settings.redis, settings.cache.clone(), &scope, entra)?;
    let cosmos_source = match &settings.cosmos.auth {
        CosmosAuth::Identity(kind) => {
            let source = identity::start_source("cosmos", identity::COSMOS_SCOPE, kind)
                .map_err(StartupError::Identity)?;
            sources.push(source.clone());
            Some(source)
        }
        CosmosAuth::Key(_) => None,
    };
    let store = store::CosmosStore::with_token_source(
        settings.cosmos.clone(),
        settings.cosmos_throttle_budget,
        cosmos_source,
    );
    Ok(AppState {
        cache,
        store: Arc::new(store),
        tokens: continuation::TokenBinder::new(scope),
        identity: sources.into(),
        writes: tokio_util::task::TaskTracker::new(),
        queries: routes::query_memo::QueryMemo::default(),
    })
}

/// Why the handler cannot start, or stopped serving, with valid settings.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartupError {
    /// The Redis client cannot be built.
    #[error("Redis: {0}")]
    Redis(#[from] cache::CacheBuildError),
    /// The listener failed (an I/O error accepting connections).
    #[error("server: {0}")]
    Serve(String),
    /// An Entra ID credential cannot be built (no managed identity here, no runtime).
    #[error("Microsoft Entra ID: {0}")]
    Identity(String),
    /// The route prefix holds characters the router cannot serve.
    #[error("{0}")]
    RoutePrefix(String),
}

/// Serves the handler on `listener` until `shutdown` completes, then drains in-flight requests
/// and returns. What `handler serve` does after reading the settings and binding
/// `127.0.0.1:FUNCTIONS_CUSTOMHANDLER_PORT`; tests call it in-process on a port-0 listener.
///
/// `app_root` is the folder with `host.json` (the host sets `FUNCTIONS_APP_ROOT_PATH`), read
/// for `extensions.http.routePrefix`. Starts two background tasks: the cache counters logged
/// once a minute when they changed, and a first contact with Cosmos (its failure is logged;
/// requests retry).
///
/// # Errors
/// [`StartupError`] when the clients cannot be built or the server fails.
pub async fn run(
    listener: tokio::net::TcpListener,
    settings: &Settings,
    app_root: &std::path::Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    install_crypto_provider();
    let prefix = route_prefix(app_root);
    config::check_route_prefix(&prefix).map_err(StartupError::RoutePrefix)?;
    let state = build_state(settings)?;
    let app = router(state.clone(), &prefix);
    tokio::spawn(log_counters(state.cache.clone()));
    let store = state.store.clone();
    tokio::spawn(async move {
        if let Err(e) = store.partition_key_path().await {
            tracing::warn!(error = %e, "Cosmos DB not ready at start-up; will retry per request");
        }
    });
    tracing::info!(
        addr = %listener.local_addr().map_err(|e| StartupError::Serve(e.to_string()))?,
        route_prefix = %prefix,
        redis = %settings.redis.display_addr,
        redis_tls = settings.redis.tls,
        redis_cluster = settings.redis.cluster,
        redis_auth = %settings.redis.identity.as_ref().map_or_else(
            || format!("{} (REDIS_CONNECTION_STRING)", settings.redis.auth_kind()),
            |id| format!("Microsoft Entra ID, {}", id.credential.describe())
        ),
        cosmos_auth = %match &settings.cosmos.auth {
            CosmosAuth::Key(_) => "account key".to_string(),
            CosmosAuth::Identity(kind) => format!("Microsoft Entra ID, {}", kind.describe()),
        },
        database = %settings.cosmos.database,
        container = %settings.cosmos.container,
        "custom handler listening"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| StartupError::Serve(e.to_string()))?;
    // Connections are drained; writes whose caller went away may still be running. Each is
    // bounded by the Cosmos SDK's timeouts and the Redis timeout; the cap is for a stuck one.
    state.writes.close();
    if tokio::time::timeout(WRITES_DRAIN, state.writes.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = state.writes.len(),
            "shut down with writes still in flight: their invalidation may be lost"
        );
    }
    tracing::info!("shut down");
    Ok(())
}

/// Longest shutdown waits for `update` writes whose caller went away: past the SDK's 6 s
/// request timeout with a retry, within the host's grace before it kills the process.
const WRITES_DRAIN: std::time::Duration = std::time::Duration::from_secs(15);

/// Logs the cache counters once a minute when they changed (a cheap heartbeat in the
/// Functions log stream).
async fn log_counters(cache: cache::Cache) {
    let mut last = cache.stats_json();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = cache.stats_json();
        if now != last {
            tracing::info!(counters = %now, "cache counters");
            last = now;
        }
    }
}

/// Installs rustls' crypto provider for `rediss://` (the redis crate panics on the first TLS
/// connect otherwise). Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
