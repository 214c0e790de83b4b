//! # cosmos-cache-handler
//!
//! An Azure Functions **custom handler** that puts a Redis cache in front of Azure Cosmos DB.
//! The Functions host starts the `handler` binary and forwards two HTTP functions to it:
//!
//! - `query` — **cache-aside** read: look in Redis, on a miss run the parameterized Cosmos SQL
//!   query, store the page with a TTL, return it (`x-cache: hit|miss|bypass`; `hit-local` from
//!   the optional in-process near cache, [`cache`]'s `near.rs`).
//! - `update` — upsert or delete in Cosmos, then **invalidate** the container's cached queries
//!   (flush-on-write) by bumping a generation number, only after Cosmos acknowledged the write.
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
//!    [`store::QuerySpec`] (or a 400 naming the field);
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
    check_route_prefix(&prefix)?;
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
            || "password (REDIS_CONNECTION_STRING)".to_string(),
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
    tracing::info!("shut down");
    Ok(())
}

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

/// The app setting that overrides `extensions.http.routePrefix`: the host reads app settings
/// named `AzureFunctionsJobHost__<section>__<key>` over `host.json` (names matched
/// case-insensitively, `:` also separating segments), as for `enableForwardingHttpRequest`
/// (protocol §1, §2.1).
pub const ROUTE_PREFIX_SETTING: &str = "AzureFunctionsJobHost__extensions__http__routePrefix";

/// The route prefix the host serves the functions under: the [`ROUTE_PREFIX_SETTING`] app
/// setting when set, else `extensions.http.routePrefix` from `host.json` in `app_root` (keys
/// matched case-insensitively, as the host's configuration does), else `api` (protocol §2.1).
pub fn route_prefix(app_root: &std::path::Path) -> String {
    route_prefix_with(app_root, std::env::vars_os())
}

/// [`route_prefix`] with the environment given (tests).
fn route_prefix_with(
    app_root: &std::path::Path,
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> String {
    let setting = vars
        .into_iter()
        .filter_map(|(name, value)| {
            let name = name.to_str()?.replace(':', "__");
            name.eq_ignore_ascii_case(ROUTE_PREFIX_SETTING)
                .then(|| value.into_string().ok())
                .flatten()
        })
        .last();
    let get_ci = |v: &serde_json::Value, key: &str| {
        v.as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    setting
        .or_else(|| {
            let text = std::fs::read_to_string(app_root.join("host.json")).ok()?;
            let host: serde_json::Value = serde_json::from_str(&text).ok()?;
            let http = get_ci(&get_ci(&host, "extensions")?, "http")?;
            get_ci(&http, "routePrefix")?.as_str().map(str::to_string)
        })
        .unwrap_or_else(|| "api".to_string())
}

/// Refuses a route prefix the router cannot serve: a segment starting with `:` or `*`, or a
/// `{`/`}` anywhere (axum's path syntax, which would panic at start-up), or a space (the host
/// forwards it percent-encoded, so no request could match).
///
/// # Errors
/// [`StartupError::RoutePrefix`] naming the character.
fn check_route_prefix(prefix: &str) -> Result<(), StartupError> {
    let bad = prefix
        .split('/')
        .find_map(|segment| match segment.chars().next() {
            Some(c @ (':' | '*')) => Some(c),
            _ => segment
                .chars()
                .find(|c| matches!(c, '{' | '}') || c.is_whitespace()),
        });
    match bad {
        Some(c) => Err(StartupError::RoutePrefix(format!(
            "extensions.http.routePrefix (host.json or {ROUTE_PREFIX_SETTING}) '{prefix}': \
             '{c}' cannot be served; use letters, digits, '-', '_', '.' and '/'"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn app_root_with(host_json: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "route-prefix-{}-{}",
            std::process::id(),
            host_json.len()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("host.json"), host_json).expect("host.json");
        dir
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn the_app_setting_overrides_host_json_and_keys_match_in_any_case() {
        let root = app_root_with(r#"{"Extensions":{"HTTP":{"RoutePrefix":"v2"}}}"#);
        assert_eq!(route_prefix_with(&root, vars(&[])), "v2");
        let set = |name: &str| route_prefix_with(&root, vars(&[("PATH", "/bin"), (name, "v1")]));
        assert_eq!(
            set("AzureFunctionsJobHost__extensions__http__routePrefix"),
            "v1"
        );
        assert_eq!(
            set("AZUREFUNCTIONSJOBHOST__EXTENSIONS__HTTP__ROUTEPREFIX"),
            "v1"
        );
        assert_eq!(
            set("AzureFunctionsJobHost:extensions:http:routePrefix"),
            "v1"
        );
        assert_eq!(set("AzureFunctionsJobHost__extensions__http__other"), "v2");
        // An empty setting is an empty prefix (payload mode only), not the default.
        let empty = vars(&[(ROUTE_PREFIX_SETTING, "")]);
        assert_eq!(route_prefix_with(&root, empty), "");
        let none = app_root_with(r#"{"extensions":{"http":{"routePrefix":null}},"version":"2.0"}"#);
        assert_eq!(route_prefix_with(&none, vars(&[])), "api");
        assert_eq!(
            route_prefix_with(std::path::Path::new("/nonexistent"), vars(&[])),
            "api"
        );
    }

    #[tokio::test]
    async fn prefixes_the_router_cannot_serve_are_refused_at_start_up() {
        for good in ["api", "", "v1/api", "my-app_1.0"] {
            assert!(check_route_prefix(good).is_ok(), "{good}");
        }
        for (bad, c) in [("*", '*'), ("api/:x", ':'), ("a{b}", '{'), ("a b", ' ')] {
            let e = check_route_prefix(bad).expect_err(bad).to_string();
            assert!(e.contains(&format!("'{c}'")), "{bad}: {e}");
            assert!(e.contains(ROUTE_PREFIX_SETTING), "{bad}: {e}");
        }
        // And every accepted one builds a router (axum panics on what the check refuses).
        for good in ["api", "v1/api", "my-app_1.0", "query", "invalidate"] {
            let settings = config::Settings::from_lookup(|name| {
                match name {
                    "REDIS_CONNECTION_STRING" => Some("redis://127.0.0.1:1"),
                    "COSMOS_ENDPOINT" => Some("http://127.0.0.1:1/"),
                    "COSMOS_KEY" => Some("a2V5"),
                    "COSMOS_DATABASE" => Some("d"),
                    "COSMOS_CONTAINER" => Some("c"),
                    _ => None,
                }
                .map(str::to_string)
            })
            .expect("settings");
            let _ = router(build_state(&settings).expect("state"), good);
        }
    }
}
