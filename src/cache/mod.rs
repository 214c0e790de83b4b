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
//!   generation, no TTL ([`failover`]: a promoted replica that missed bumps moves it).
//! - `cc:{scope}:<gen>:<sha256>` — one cached page, with a TTL (± jitter). The hash covers the
//!   canonical query: text, parameters sorted by name, partition key, page size, continuation
//!   ([`keys::query_hash`]).
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
//! bumps keeps a generation key, but not the primary's identity: see [`failover`].
//!
//! # When Redis fails
//! Every Redis call goes through [`guard::GuardedRedis`]: an outer timeout (`REDIS_TIMEOUT_MS`)
//! and a circuit breaker. Any error, timeout or open circuit answers the read from Cosmos with
//! `x-cache: bypass`. An invalidation that fails is retried in the background until Redis
//! accepts it; until then this instance bypasses the cache for reads.

pub mod failover;
pub mod guard;
pub mod keys;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use serde_json::json;

use crate::api::CacheOutcome;
use crate::config::{CacheSettings, RedisTarget};
use crate::error::AppError;
use crate::store::QuerySpec;
use guard::{CircuitState, Failure, GuardedRedis};

/// Reads the generation (creating it with `SET NX` if missing) and the entry under it and, on a
/// miss, tries to take the page's fill lease — all in one round trip. Runs after
/// [`failover::SERVER_CHECK`]: when this server did not confirm the generation (a promoted
/// replica that may lack acknowledged bumps), the generation moves to ARGV[1] first.
/// KEYS[1] = generation key, KEYS[2] = server key; ARGV[1] = initial generation if missing or
/// moved, ARGV[2] = entry key prefix, ARGV[3] = query hash, ARGV[4] = lease in ms (0 = no
/// lease), ARGV[5] = lease token. Returns `{gen, value}` on a hit, `{gen, '', lease, moved}` on a
/// miss with lease 1 = taken, 0 = held by another, 2 = no lease, and moved 1 when an existing
/// generation was just moved (0 when there was none to move: a new or emptied Redis). (Every
/// key touched carries the container's hash tag: one cluster slot.)
const LOOKUP_SCRIPT: &str = r"
local g = redis.call('GET', KEYS[1])
local m = 0
if moved then
  if g then m = 1 end
  g = ARGV[1]
  redis.call('SET', KEYS[1], g)
  redis.call('SET', KEYS[2], server)
elseif not g then
  redis.call('SET', KEYS[1], ARGV[1], 'NX')
  g = redis.call('GET', KEYS[1])
end
local key = ARGV[2] .. g .. ':' .. ARGV[3]
local v = redis.call('GET', key)
if v then return {g, v} end
if tonumber(ARGV[4]) == 0 then return {g, '', 2, m} end
if redis.call('SET', key .. ':lease', ARGV[5], 'NX', 'PX', ARGV[4]) then return {g, '', 1, m} end
return {g, '', 0, m}
";

/// Stores a page and releases our lease in one round trip. KEYS[1] = entry key, KEYS[2] = lease
/// key; ARGV[1] = value ('' = store nothing), ARGV[2] = TTL in ms, ARGV[3] = our lease token
/// ('' = none held).
const STORE_SCRIPT: &str = r"
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
";

/// Bumps the generation KEYS[1], first creating it from ARGV[1] when missing; atomic. (A script,
/// not MULTI/EXEC: the cluster client does not run transactions.) Runs after
/// [`failover::SERVER_CHECK`] (KEYS[2] = server key): on a server that did not confirm the
/// generation, it restarts from ARGV[1] instead of incrementing a value that may have missed
/// acknowledged bumps (pages stored under the next integer by readers of the old primary must
/// stay unreachable). When Redis refuses the bump (out of memory with `noeviction`, or a
/// generation that is not a number), the generation key is deleted instead — `DEL` is allowed
/// when out of memory — so every instance's next lookup re-creates it from a fresh random value
/// (or, while still out of memory, bypasses): the old entries are unreachable either way.
/// Returns `{new generation or -1 after a delete, moved (1 when an existing generation moved)}`.
const BUMP_SCRIPT: &str = r"
local m = 0
if moved then
  m = redis.call('EXISTS', KEYS[1])
  redis.pcall('SET', KEYS[1], ARGV[1])
  redis.pcall('SET', KEYS[2], server)
else
  redis.pcall('SET', KEYS[1], ARGV[1], 'NX')
end
local g = redis.pcall('INCR', KEYS[1])
if type(g) == 'table' and g.err then
  redis.call('DEL', KEYS[1])
  return {-1, m}
end
return {g, m}
";

/// A lease waiter's look: the page KEYS[1] and the lease KEYS[2]'s token ('' for none).
const PEEK_SCRIPT: &str = r"
return {redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or ''}
";

/// Longest pause between two tries of a pending invalidation.
const RETRY_MAX_DELAY: Duration = Duration::from_millis(250);

/// How often a lease waiter looks for the leaseholder's result.
const LEASE_POLL: Duration = Duration::from_millis(10);

/// Counters since start-up, for logs and the diagnostics response.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Reads answered from Redis.
    pub hits: AtomicU64,
    /// Reads answered from Cosmos with the result stored (or attempted) in Redis.
    pub misses: AtomicU64,
    /// Reads answered from Cosmos without Redis (Redis failed, or an invalidation is pending).
    pub bypasses: AtomicU64,
    /// Generation bumps Redis acknowledged.
    pub invalidations: AtomicU64,
    /// Misses that waited for another request's identical Cosmos read on this instance.
    pub single_flight_waits: AtomicU64,
    /// Misses that waited for another instance's fill lease.
    pub lease_waits: AtomicU64,
    /// Pages served but not stored because they exceeded `CACHE_MAX_VALUE_BYTES`.
    pub too_large: AtomicU64,
    /// Times this instance found the Redis server changed under the generation (a failover
    /// to a replica, a restart, an evicted server key) and moved the generation.
    pub server_changes: AtomicU64,
}

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

/// This request's part in the fleet-wide fill lease of a missed page.
enum Lease {
    /// The lookup took it (the token proves it when releasing).
    Taken(String),
    /// Another instance holds it: wait for its fill.
    HeldElsewhere,
    /// Leases are off (`CACHE_FILL_LEASE_MS=0`), or not known.
    Off,
}

/// How waiting for another fill ended.
enum Waited {
    /// The page appeared.
    Filled(Bytes),
    /// The lease is this instance's (a follower took it): fill, and release with this token.
    Ours(String),
    /// No page and no lease (the holder failed), an error, or the lease period ran out.
    GaveUp,
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
    #[cfg(feature = "test-hooks")]
    before_store: Mutex<Option<BeforeStoreHook>>,
}

/// The cache of one container. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl Cache {
    /// A cache for the container `scope` (`<account>/<db>/<container>`, see
    /// [`crate::config::CosmosSettings::scope`]) over one lazily connected, auto-reconnecting
    /// `ConnectionManager` shared by all requests. Nothing is contacted until the first call.
    ///
    /// # Errors
    /// A message when the Redis client cannot be built.
    pub fn new(target: &RedisTarget, settings: CacheSettings, scope: &str) -> Result<Self, String> {
        let redis = GuardedRedis::new(target.info.clone(), target.cluster, settings.redis_timeout)?;
        let tag = format!("{{{scope}}}");
        Ok(Self {
            inner: Arc::new(Inner {
                redis,
                settings,
                gen_key: format!("cc:{tag}:gen"),
                server_key: failover::server_key(&tag),
                entry_prefix: format!("cc:{tag}:"),
                lookup: redis::Script::new(&format!("{}{LOOKUP_SCRIPT}", failover::SERVER_CHECK)),
                bump: redis::Script::new(&format!("{}{BUMP_SCRIPT}", failover::SERVER_CHECK)),
                peek: redis::Script::new(PEEK_SCRIPT),
                store: redis::Script::new(STORE_SCRIPT),
                stats: CacheStats::default(),
                invalidation_pending: AtomicBool::new(false),
                failed_invalidations: AtomicU64::new(0),
                retry_running: AtomicBool::new(false),
                flights: Mutex::new(HashMap::new()),
                instance_id: keys::random_generation(),
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

    /// Counters since start-up, with the circuit state, as JSON.
    pub fn stats_json(&self) -> serde_json::Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.inner.stats;
        let r = &self.inner.redis;
        json!({
            "hits": n(&s.hits),
            "misses": n(&s.misses),
            "bypasses": n(&s.bypasses),
            "invalidations": n(&s.invalidations),
            "singleFlightWaits": n(&s.single_flight_waits),
            "leaseWaits": n(&s.lease_waits),
            "tooLarge": n(&s.too_large),
            "serverChanges": n(&s.server_changes),
            "redisErrors": n(&r.errors),
            "circuit": match r.state() {
                CircuitState::Closed => "closed",
                CircuitState::Open => "open",
                CircuitState::HalfOpen => "half-open",
            },
            "circuitOpened": n(&r.opened),
            "circuitSkipped": n(&r.skipped),
            "invalidationPending": self.invalidation_pending(),
        })
    }

    /// Whether an invalidation is waiting for Redis (reads bypass the cache meanwhile).
    pub fn invalidation_pending(&self) -> bool {
        self.inner.invalidation_pending.load(Ordering::Acquire)
    }

    /// Serves `spec`'s page from Redis, or runs `fill` (the Cosmos read, producing the response
    /// body) and stores its result under the generation read *before* `fill` started.
    /// Concurrent identical misses on this instance share one `fill` (single-flight), and
    /// instances sharing the Redis take a fill lease so that one of them reads Cosmos.
    ///
    /// # Errors
    /// Whatever `fill` returns; Redis failures are never errors (they bypass).
    pub async fn get_or_fill<F, Fut>(&self, spec: &QuerySpec, fill: F) -> Result<Served, AppError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Filled, AppError>> + Send + 'static,
    {
        let inner = &self.inner;
        if self.invalidation_pending() {
            return Self::bypass(inner, fill).await;
        }
        let hash = keys::query_hash(spec);
        let lease_ms = inner.settings.fill_lease.as_millis() as u64;
        // The token names this instance, so that a flight which waits for a lease taken by one of
        // its own followers (their lookups raced) knows the lease is its own.
        let token = format!("{}:{}", inner.instance_id, keys::random_generation());
        let looked_up = inner
            .redis
            .run(|mut conn| {
                let mut invocation = inner.lookup.key(&inner.gen_key);
                invocation
                    .key(&inner.server_key)
                    .arg(keys::random_generation())
                    .arg(&inner.entry_prefix)
                    .arg(&hash)
                    .arg(lease_ms)
                    .arg(&token);
                async move {
                    invocation
                        .invoke_async::<Vec<redis::Value>>(&mut conn)
                        .await
                }
            })
            .await;
        let values = match looked_up {
            Ok(v) => v,
            Err(failure) => {
                if failure != Failure::Open {
                    tracing::warn!(reason = %failure, "Redis lookup failed; answering from Cosmos (bypass)");
                }
                return Self::bypass(inner, fill).await;
            }
        };
        let mut values = values.into_iter();
        let generation = match values.next() {
            Some(redis::Value::BulkString(g)) => String::from_utf8_lossy(&g).into_owned(),
            _ => {
                tracing::warn!("Redis lookup returned no generation; bypass");
                return Self::bypass(inner, fill).await;
            }
        };
        let stored = values.next();
        let lease = match values.next() {
            Some(redis::Value::Int(1)) => Lease::Taken(token),
            Some(redis::Value::Int(0)) => Lease::HeldElsewhere,
            _ => Lease::Off,
        };
        if let Some(redis::Value::Int(1)) = values.next() {
            Self::server_changed(inner);
        }
        if let Some(redis::Value::BulkString(stored)) = stored
            && !stored.is_empty()
        {
            if keys::decode(&stored).is_some() {
                inner.stats.hits.fetch_add(1, Ordering::Relaxed);
                // Serve the stored bytes as they are: no copy, no re-serialization.
                return Ok(Served {
                    body: Bytes::from(stored).slice(keys::VALUE_FORMAT.len()..),
                    outcome: CacheOutcome::Hit,
                    request_charge: None,
                });
            }
            tracing::warn!("cached value has an unknown format; treating it as a miss");
        }
        let key = format!("{}{}:{}", inner.entry_prefix, generation, hash);
        let mut lease = lease;
        let (flight, leader) = {
            let mut flights = inner.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let this = self.clone();
                    let fill_key = key.clone();
                    let lease = std::mem::replace(&mut lease, Lease::Off);
                    let f: Flight =
                        async move { this.fill_with_lease(&fill_key, lease, fill).await }
                            .boxed()
                            .shared();
                    flights.insert(key.clone(), f.clone());
                    (f, true)
                }
            }
        };
        // A follower that took the lease (its lookup ran before the leader's, but the leader
        // registered the flight first) leaves it in place: the leader sees the lease carries
        // this instance's id, fills, and releases it.
        if leader {
            // Drive the flight to completion and forget it even if this request is cancelled,
            // so later identical misses neither wait on an abandoned flight nor leak it.
            let this = self.clone();
            let driven = flight.clone();
            let flight_key = key.clone();
            tokio::spawn(async move {
                let _ = driven.await;
                this.inner
                    .flights
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&flight_key);
            });
        } else {
            inner
                .stats
                .single_flight_waits
                .fetch_add(1, Ordering::Relaxed);
        }
        let (filled, from_redis) = flight.await?;
        if from_redis {
            inner.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Served {
                body: filled.body,
                outcome: CacheOutcome::Hit,
                request_charge: None,
            });
        }
        inner.stats.misses.fetch_add(1, Ordering::Relaxed);
        Ok(Served {
            body: filled.body,
            outcome: CacheOutcome::Miss,
            request_charge: Some(filled.request_charge),
        })
    }

    /// The leader's side of a miss: with the fleet-wide fill lease (taken by the lookup), read
    /// Cosmos and store; without it, wait for whoever holds it. Returns the page and whether it
    /// came from Redis.
    async fn fill_with_lease<F, Fut>(
        &self,
        key: &str,
        lease: Lease,
        fill: F,
    ) -> Result<(Filled, bool), AppError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Filled, AppError>>,
    {
        let inner = &self.inner;
        let held_elsewhere = matches!(lease, Lease::HeldElsewhere);
        let mut token = match lease {
            Lease::Taken(token) => Some(token),
            Lease::HeldElsewhere | Lease::Off => None,
        };
        if held_elsewhere {
            inner.stats.lease_waits.fetch_add(1, Ordering::Relaxed);
            match self.wait_for_fill(key, inner.settings.fill_lease).await {
                Waited::Filled(body) => {
                    return Ok((
                        Filled {
                            body,
                            request_charge: 0.0,
                        },
                        true,
                    ));
                }
                Waited::Ours(ours) => token = Some(ours),
                Waited::GaveUp => {}
            }
        }
        match fill().await {
            Ok(filled) => {
                self.store_and_release(key, Some(&filled.body), token.as_deref())
                    .await;
                Ok((filled, false))
            }
            Err(e) => {
                if token.is_some() {
                    self.store_and_release(key, None, token.as_deref()).await;
                }
                Err(e)
            }
        }
    }

    /// Polls until the page appears (another instance filled it), the lease turns out to be
    /// this instance's own (fill it), or the lease is gone without a page or `budget` passes
    /// (fill without a lease).
    async fn wait_for_fill(&self, key: &str, budget: Duration) -> Waited {
        let lease_key = format!("{key}:lease");
        let own = format!("{}:", self.inner.instance_id);
        let deadline = Instant::now() + budget;
        while Instant::now() < deadline {
            let got = self
                .inner
                .redis
                .run(|mut conn| {
                    let mut invocation = self.inner.peek.key(key);
                    invocation.key(&lease_key);
                    async move {
                        invocation
                            .invoke_async::<(Vec<u8>, String)>(&mut conn)
                            .await
                    }
                })
                .await;
            match got {
                Ok((value, _)) if keys::decode(&value).is_some() => {
                    return Waited::Filled(Bytes::from(value).slice(keys::VALUE_FORMAT.len()..));
                }
                Ok((_, lease)) if lease.starts_with(&own) => return Waited::Ours(lease),
                Ok((_, lease)) if lease.is_empty() => return Waited::GaveUp,
                Ok(_) => {}
                Err(_) => return Waited::GaveUp,
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
        Waited::GaveUp
    }

    async fn bypass<F, Fut>(inner: &Inner, fill: F) -> Result<Served, AppError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Filled, AppError>>,
    {
        let filled = fill().await?;
        inner.stats.bypasses.fetch_add(1, Ordering::Relaxed);
        Ok(Served {
            body: filled.body,
            outcome: CacheOutcome::Bypass,
            request_charge: Some(filled.request_charge),
        })
    }

    /// Stores `body` under `key` (unless absent or over the size cap) and releases the lease
    /// `token` names, in one round trip.
    async fn store_and_release(&self, key: &str, body: Option<&Bytes>, token: Option<&str>) {
        let inner = &self.inner;
        #[cfg(feature = "test-hooks")]
        if body.is_some() {
            let hook = inner
                .before_store
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(hook) = hook {
                hook().await;
            }
        }
        let value = match body {
            Some(body) if body.len() > inner.settings.max_value_bytes => {
                inner.stats.too_large.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    bytes = body.len(),
                    "page larger than CACHE_MAX_VALUE_BYTES: not cached"
                );
                Vec::new()
            }
            Some(body) => keys::encode(body),
            None => Vec::new(),
        };
        if value.is_empty() && token.is_none() {
            return;
        }
        let ttl_ms = keys::jittered_ttl_ms(inner.settings.ttl, inner.settings.ttl_jitter_percent);
        let lease_key = format!("{key}:lease");
        let stored = inner
            .redis
            .run(|mut conn| {
                let mut invocation = inner.store.key(key);
                invocation
                    .key(&lease_key)
                    .arg(value)
                    .arg(ttl_ms)
                    .arg(token.unwrap_or(""));
                async move { invocation.invoke_async::<i64>(&mut conn).await }
            })
            .await;
        if let Err(failure) = stored {
            tracing::warn!(reason = %failure, "Redis store failed; page not cached");
        }
    }

    /// Invalidates every cached page of the container by bumping its generation. Call only after
    /// Cosmos acknowledged the write.
    pub async fn invalidate(&self) -> Invalidation {
        match self.try_bump().await {
            Ok(()) => return Invalidation::Done,
            // A failover (or an idle close) drops the connection under in-flight commands with
            // an I/O error, and the connection reconnects on the next command: one immediate
            // retry turns most of those into `done` instead of a pending invalidation, during
            // which other instances may serve the previous page. Not after a timeout (a black
            // hole would cost the timeout twice) nor with the breaker open.
            Err(Failure::Error(_)) if self.inner.redis.state() != CircuitState::Open => {
                if self.try_bump().await.is_ok() {
                    return Invalidation::Done;
                }
            }
            Err(_) => {}
        }
        let inner = &self.inner;
        inner.failed_invalidations.fetch_add(1, Ordering::AcqRel);
        inner.invalidation_pending.store(true, Ordering::Release);
        if !inner.retry_running.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move { this.retry_invalidation().await });
        }
        Invalidation::Pending
    }

    async fn retry_invalidation(self) {
        let inner = &self.inner;
        let mut delay = Duration::from_millis(50);
        loop {
            let failures_before = inner.failed_invalidations.load(Ordering::Acquire);
            tokio::time::sleep(delay).await;
            if self.try_bump().await.is_ok()
                && inner.failed_invalidations.load(Ordering::Acquire) == failures_before
            {
                inner.invalidation_pending.store(false, Ordering::Release);
                inner.retry_running.store(false, Ordering::Release);
                tracing::info!("pending cache invalidation reached Redis");
                // A failure may have raced with the two stores above; if so, go on.
                if inner.failed_invalidations.load(Ordering::Acquire) == failures_before
                    || inner.retry_running.swap(true, Ordering::AcqRel)
                {
                    return;
                }
                inner.invalidation_pending.store(true, Ordering::Release);
            }
            // Capped low: while the breaker is open a try costs nothing (it fails fast), and
            // after a failover the pending window is what other instances may serve stale.
            delay = (delay * 2).min(RETRY_MAX_DELAY);
        }
    }

    /// A script found a generation this server had not confirmed and moved it
    /// ([`failover`]).
    fn server_changed(inner: &Inner) {
        inner.stats.server_changes.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "Redis server changed since the generation was confirmed (failover, restart or \
             eviction): generation moved, earlier cached pages unreachable"
        );
    }

    /// `SET gen <random> NX` then `INCR gen`, atomically ([`BUMP_SCRIPT`]).
    async fn try_bump(&self) -> Result<(), Failure> {
        let inner = &self.inner;
        let bumped = inner
            .redis
            .run(|mut conn| {
                let mut invocation = inner.bump.key(&inner.gen_key);
                invocation
                    .key(&inner.server_key)
                    .arg(keys::random_generation());
                async move { invocation.invoke_async::<(i64, i64)>(&mut conn).await }
            })
            .await;
        match bumped {
            Ok((generation, moved)) => {
                if moved == 1 {
                    Self::server_changed(inner);
                }
                inner.stats.invalidations.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(generation, "cache invalidated");
                Ok(())
            }
            Err(failure) => {
                tracing::warn!(reason = %failure, "cache invalidation failed");
                Err(failure)
            }
        }
    }
}
