//! Cache-aside over Redis: key layout, generations, TTL with jitter, single-flight, fill
//! leases, the outer timeout, the circuit breaker and bypass on any Redis failure. Two calls
//! make up its surface: [`Cache::get_or_fill`] ("this query's page, filled by this closure on a
//! miss") and [`Cache::invalidate`] ("the container changed").
//!
//! # Key layout
//! All keys of one container share the hash tag `{<account>/<db>/<container>}` (the scope,
//! [`crate::config::CosmosSettings::scope`], e.g. `{myacct.documents.azure.com/db/us_cities}`),
//! so on a clustered Redis they live in one slot, and two Cosmos accounts whose database and
//! container names are the same (production and staging) never share an entry, even in one
//! Redis database (cf. stefanprodan/AspNetCoreRateLimit#288).
//! - `cc:{scope}:gen` — the container's **generation**, an integer with no TTL.
//! - `cc:{scope}:server` — the replication id of the Redis server that last confirmed the
//!   generation, no TTL (`failover.rs`: a promoted replica that missed bumps moves it).
//! - `cc:{scope}:own` — versions (`_etag`s) that `update` wrote and invalidated in the last
//!   minute, a sorted set scored by Redis time in ms with an expiry (`change_feed.rs`): the
//!   change-feed function skips batches made only of them.
//! - `cc:{scope}:<gen>:<sha256>` — one cached page, with a TTL (± jitter). The hash covers the
//!   canonical query: text, parameters sorted by name, partition key, page size, continuation
//!   (`keys::query_hash`).
//! - `cc:{scope}:<gen>:<sha256>:lease` — a short fill lease (`SET NX PX`), so that of
//!   several handler instances missing the same page at once, one reads Cosmos and the others
//!   wait for its result.
//!
//! # Why generations
//! Invalidation is one `INCR` (O(1), no `KEYS`/`SCAN`): entries of older generations become
//! unreachable and expire by TTL. A reader captures the generation *before* it reads Cosmos and
//! stores under that generation, so a read that raced with a write stores its (old) result under
//! a key nobody will look up again. When the generation key is lost (eviction, `FLUSHDB`,
//! failover), it is re-created with `SET NX` from a random 62-bit value, so it does not land on
//! a generation whose entries may still exist. A failover to a replica that missed acknowledged
//! bumps keeps a generation key, but not the primary's identity: see `failover.rs`.
//!
//! # When Redis fails
//! Every Redis call goes through `guard.rs`'s `GuardedRedis`: an outer timeout (`REDIS_TIMEOUT_MS`)
//! and a circuit breaker. Any error, timeout or open circuit answers the read from Cosmos with
//! `x-cache: bypass`. A write's invalidation goes past an open breaker (at most one call per
//! 100 ms). One that fails is retried in the background until Redis accepts it; until then
//! this instance bypasses the cache for reads.

//!
//! # Layout
//! - this file: [`Cache`], its shared state and the types of its surface;
//! - `lookup.rs`: the read path's one round trip and its typed reply, hit or bypass;
//! - `single_flight.rs`: identical misses on one instance share one fill;
//! - `lease.rs`: the fleet-wide fill lease, and storing a page;
//! - `invalidation.rs`: the generation bump and its retries;
//! - `change_feed.rs`: the change-feed function's bump, which skips `update`'s own writes;
//! - `failover.rs`: the server identity that makes a failover move the generation;
//! - `scripts.rs` + `scripts/*.lua`: the Lua scripts; `keys.rs`: key and value formats;
//!   `guard.rs`: timeout and circuit breaker; `redis_error.rs`: what a Redis error says;
//!   `stats.rs`: the counters;
//! - `near.rs`: the optional in-process near cache (L1), kept correct by Redis's
//!   server-assisted invalidation of the generation key.

mod change_feed;
mod connection;
mod entra;
mod failover;
mod guard;
mod invalidation;
pub(crate) mod keys;
mod lease;
mod lookup;
mod near;
mod redis_error;
mod scripts;
mod single_flight;
mod stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};

use crate::api::CacheOutcome;
use crate::config::{CacheSettings, RedisTarget};
use crate::error::AppError;
pub use change_feed::{FeedInvalidation, FeedInvalidationFailed, OWN_WRITES_WINDOW};
pub use entra::EntraCredentials;
use guard::GuardedRedis;
pub use keys::{QueryHash, query_hash};
pub use stats::CacheStats;

/// A filled page: the response body and what Cosmos charged for it (RU).
#[derive(Debug, Clone)]
pub struct Filled {
    /// The JSON response body.
    pub body: Bytes,
    /// Request units Cosmos charged.
    pub request_charge: f64,
}

/// A served page.
#[derive(Debug, Clone)]
pub struct Served {
    /// The JSON response body (identical for hit and miss).
    pub body: Bytes,
    /// Where it came from.
    pub outcome: CacheOutcome,
    /// Request units, when this request caused or joined a Cosmos read.
    pub request_charge: Option<f64>,
    /// The body's escaped form kept by the near cache (invocation-payload answers).
    pub escaped: Option<crate::api::EscapedBody>,
}

/// Outcome of [`Cache::invalidate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// Redis acknowledged the generation bump.
    Done,
    /// Redis did not answer; the bump is retried in the background and this instance bypasses
    /// the cache for reads until it succeeds.
    Pending,
}

/// Result of one flight: the page, and whether it came from Redis (another instance's fill).
type Flight = Shared<BoxFuture<'static, Result<(Filled, bool), AppError>>>;

/// Test seam (feature `test-hooks`): awaited after Cosmos answered a miss and before the page
/// is stored, so a test can interleave a write deterministically.
#[cfg(feature = "test-hooks")]
pub type BeforeStoreHook = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

struct Inner {
    redis: Arc<GuardedRedis>,
    settings: CacheSettings,
    gen_key: String,
    /// [`failover::server_key`]: which server confirmed the generation.
    server_key: String,
    entry_prefix: String,
    lookup: redis::Script,
    bump: redis::Script,
    /// [`scripts::RECORD`] + bump: `update`'s invalidation that records its versions.
    record_bump: redis::Script,
    /// [`scripts::FEED_CHECK`] + bump: the change-feed function's invalidation.
    feed_bump: redis::Script,
    /// [`change_feed::own_writes_key`]: versions `update` wrote recently.
    own_writes_key: String,
    peek: redis::Script,
    store: redis::Script,
    stats: CacheStats,
    /// True while an invalidation has not reached Redis.
    invalidation_pending: AtomicBool,
    /// Bumped on every failed invalidation, so the retry loop only clears the pending flag when
    /// no write failed to invalidate after its own successful attempt started.
    failed_invalidations: AtomicU64,
    retry_running: AtomicBool,
    flights: Mutex<HashMap<String, Flight>>,
    /// Random id of this instance, the prefix of its lease tokens.
    instance_id: u64,
    /// The near cache (L1) and the RESP3 client of its tracking connection, when on.
    near: Option<(near::NearCache, redis::Client)>,
    #[cfg(feature = "test-hooks")]
    before_store: Mutex<Option<BeforeStoreHook>>,
}

/// The Redis client could not be built from the settings; the text names the problem, never
/// the password.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CacheBuildError(String);

/// The cache of one container. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl Cache {
    /// A cache for the container `scope` (`<account>/<db>/<container>`, see
    /// [`crate::config::CosmosSettings::scope`]) over one lazily connected, auto-reconnecting
    /// `ConnectionManager` shared by all requests. Nothing is contacted until the first call,
    /// except, with the near cache on and a Tokio runtime running, its tracking connection,
    /// opened in the background. `entra` (for a `target` with an identity) supplies the
    /// connections' tokens and keeps re-authenticating them; it needs a Tokio runtime.
    ///
    /// # Errors
    /// [`CacheBuildError`] when the Redis client cannot be built from the settings.
    pub fn new(
        target: &RedisTarget,
        settings: CacheSettings,
        scope: &str,
        entra: Option<EntraCredentials>,
    ) -> Result<Self, CacheBuildError> {
        let entra_on = entra.is_some();
        let redis =
            GuardedRedis::new(target, settings.redis_timeout, entra).map_err(CacheBuildError)?;
        let tag = format!("{{{scope}}}");
        let gen_key = format!("cc:{tag}:gen");
        let near = Self::near_cache(target, &settings, entra_on)?;
        if let (Some((near, client)), Ok(_)) = (&near, tokio::runtime::Handle::try_current()) {
            // Tracking starts now, in the background (readiness does not wait for Redis): L1
            // can serve from the first hit on, and a Redis that cannot track says so in the
            // start-up log. Outside a runtime it starts with the first lookup instead.
            near.ensure_tracking(client, &gen_key);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                redis,
                settings,
                gen_key,
                server_key: failover::server_key(&tag),
                entry_prefix: format!("cc:{tag}:"),
                lookup: redis::Script::new(&format!(
                    "{}{}",
                    failover::SERVER_CHECK,
                    scripts::LOOKUP
                )),
                bump: redis::Script::new(&format!("{}{}", failover::SERVER_CHECK, scripts::BUMP)),
                record_bump: redis::Script::new(&format!(
                    "{}{}{}",
                    failover::SERVER_CHECK,
                    scripts::RECORD,
                    scripts::BUMP
                )),
                feed_bump: redis::Script::new(&format!(
                    "{}{}{}",
                    failover::SERVER_CHECK,
                    scripts::FEED_CHECK,
                    scripts::BUMP
                )),
                own_writes_key: change_feed::own_writes_key(&tag),
                peek: redis::Script::new(scripts::PEEK),
                store: redis::Script::new(scripts::STORE),
                stats: CacheStats::default(),
                invalidation_pending: AtomicBool::new(false),
                failed_invalidations: AtomicU64::new(0),
                retry_running: AtomicBool::new(false),
                flights: Mutex::new(HashMap::new()),
                instance_id: keys::random_generation(),
                near,
                #[cfg(feature = "test-hooks")]
                before_store: Mutex::new(None),
            }),
        })
    }

    /// Installs (or removes) the before-store test hook.
    #[cfg(feature = "test-hooks")]
    pub fn set_before_store_hook(&self, hook: Option<BeforeStoreHook>) {
        *self
            .inner
            .before_store
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = hook;
    }

    /// The near cache when `CACHE_LOCAL_MAX_BYTES` > 0 (and Redis is not reached with Entra ID
    /// tokens), with the client of its tracking connection (RESP3, for invalidation pushes; in a
    /// cluster, the seed node, from which the tracking task follows `MOVED` to the slot's owner).
    fn near_cache(
        target: &RedisTarget,
        settings: &CacheSettings,
        entra: bool,
    ) -> Result<Option<(near::NearCache, redis::Client)>, CacheBuildError> {
        if settings.local_max_bytes == 0 {
            return Ok(None);
        }
        if entra {
            tracing::warn!(
                "near cache off: CACHE_LOCAL_MAX_BYTES is set but its tracking connection does \
                 not authenticate with Microsoft Entra ID tokens yet"
            );
            return Ok(None);
        }
        let redis_settings = target
            .info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let info = target.info.clone().set_redis_settings(redis_settings);
        let client = redis::Client::open(info)
            .map_err(|e| CacheBuildError(format!("invalid Redis settings: {:?}", e.kind())))?;
        // A page this instance filled lives in Redis for the TTL ± the jitter: L1 keeps it for
        // the shortest of those, so it never outlives its Redis entry.
        let shortest = settings.ttl * (100 - u32::from(settings.ttl_jitter_percent)) / 100;
        let near = near::NearCache::new(settings.local_max_bytes, shortest);
        Ok(Some((near, client)))
    }

    /// Whether an invalidation is waiting for Redis (reads bypass the cache meanwhile).
    pub fn invalidation_pending(&self) -> bool {
        self.inner.invalidation_pending.load(Ordering::Acquire)
    }
}
