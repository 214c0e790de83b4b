//! Cache-aside over Redis: key layout, generations, TTL with jitter, single-flight, the outer
//! timeout, and bypass on any Redis failure. Two calls make up its surface:
//! [`Cache::get_or_fill`] ("this query's page, filled by this closure on a miss") and
//! [`Cache::invalidate`] ("the container changed").
//!
//! # Key layout
//! All keys of one container share the hash tag `{<db>/<container>}`, so on a clustered Redis
//! they live in one slot.
//! - `cc:{db/container}:gen` — the container's **generation**, an integer with no TTL.
//! - `cc:{db/container}:<gen>:<sha256>` — one cached page, with a TTL. The hash covers the
//!   canonical query: text, parameters sorted by name, partition key, page size, continuation.
//!
//! # Why generations
//! Invalidation is one `INCR` (O(1), no `KEYS`/`SCAN`): entries of older generations become
//! unreachable and expire by TTL. A reader captures the generation *before* it reads Cosmos and
//! stores under that generation, so a read that raced with a write stores its (old) result under
//! a key nobody will look up again. When the generation key is lost (eviction, `FLUSHDB`,
//! failover), it is re-created with `SET NX` from a random 62-bit value, so it does not land on
//! a generation whose entries may still exist.
//!
//! # When Redis fails
//! Every Redis call is wrapped in an outer timeout (`REDIS_TIMEOUT_MS`). Any error or timeout
//! answers the read from Cosmos with `x-cache: bypass`. An invalidation that fails is retried in
//! the background until Redis accepts it; until then this instance bypasses the cache for reads.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::CacheOutcome;
use crate::config::{CacheSettings, RedisTarget};
use crate::error::AppError;
use crate::store::QuerySpec;

/// Prefix of every stored value: the format version. A value without it (an older format, or
/// garbage) is treated as a miss and overwritten.
const VALUE_FORMAT: &[u8] = b"v1:";

/// Reads the generation (creating it with `SET NX` if missing) and the entry under it, in one
/// round trip. KEYS[1] = generation key; ARGV[1] = initial generation if missing, ARGV[2] = entry
/// key prefix, ARGV[3] = query hash. Returns `{gen}` or `{gen, value}`.
const LOOKUP_SCRIPT: &str = r"
local g = redis.call('GET', KEYS[1])
if not g then
  redis.call('SET', KEYS[1], ARGV[1], 'NX')
  g = redis.call('GET', KEYS[1])
end
local v = redis.call('GET', ARGV[2] .. g .. ':' .. ARGV[3])
if v then return {g, v} end
return {g}
";

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
    /// Misses that waited for another request's identical Cosmos read instead of issuing one.
    pub single_flight_waits: AtomicU64,
    /// Redis errors and timeouts of any call.
    pub redis_errors: AtomicU64,
    /// Pages served but not stored because they exceeded `CACHE_MAX_VALUE_BYTES`.
    pub too_large: AtomicU64,
}

impl CacheStats {
    /// The counters as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "hits": n(&self.hits),
            "misses": n(&self.misses),
            "bypasses": n(&self.bypasses),
            "invalidations": n(&self.invalidations),
            "singleFlightWaits": n(&self.single_flight_waits),
            "redisErrors": n(&self.redis_errors),
            "tooLarge": n(&self.too_large),
        })
    }
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

type Flight = Shared<BoxFuture<'static, Result<Filled, AppError>>>;

struct Inner {
    conn: ConnectionManager,
    settings: CacheSettings,
    gen_key: String,
    entry_prefix: String,
    lookup: redis::Script,
    stats: CacheStats,
    /// True while an invalidation has not reached Redis.
    invalidation_pending: AtomicBool,
    /// Bumped on every failed invalidation, so the retry loop only clears the pending flag when
    /// no write failed to invalidate after its own successful attempt started.
    failed_invalidations: AtomicU64,
    retry_running: AtomicBool,
    flights: Mutex<HashMap<String, Flight>>,
}

/// The cache of one container. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl Cache {
    /// A cache for `database`/`container` over one lazily connected, auto-reconnecting
    /// `ConnectionManager` shared by all requests. Nothing is contacted until the first call.
    ///
    /// # Errors
    /// A message when the Redis client cannot be built from the target.
    pub fn new(
        target: &RedisTarget,
        settings: CacheSettings,
        database: &str,
        container: &str,
    ) -> Result<Self, String> {
        let client = redis::Client::open(target.info.clone())
            .map_err(|e| format!("invalid Redis settings: {}", redis_reason(&e)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.redis_timeout))
            .set_response_timeout(Some(settings.redis_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            format!(
                "cannot create the Redis connection manager: {}",
                redis_reason(&e)
            )
        })?;
        let tag = format!("{{{database}/{container}}}");
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                settings,
                gen_key: format!("cc:{tag}:gen"),
                entry_prefix: format!("cc:{tag}:"),
                lookup: redis::Script::new(LOOKUP_SCRIPT),
                stats: CacheStats::default(),
                invalidation_pending: AtomicBool::new(false),
                failed_invalidations: AtomicU64::new(0),
                retry_running: AtomicBool::new(false),
                flights: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Counters since start-up.
    pub fn stats(&self) -> &CacheStats {
        &self.inner.stats
    }

    /// Whether an invalidation is waiting for Redis (reads bypass the cache meanwhile).
    pub fn invalidation_pending(&self) -> bool {
        self.inner.invalidation_pending.load(Ordering::Acquire)
    }

    /// The Redis key of the generation counter (for tests and diagnostics).
    pub fn generation_key(&self) -> &str {
        &self.inner.gen_key
    }

    /// Serves `spec`'s page from Redis, or runs `fill` (the Cosmos read, producing the response
    /// body) and stores its result under the generation read *before* `fill` started.
    /// Concurrent identical misses on this instance share one `fill` (single-flight).
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
        let hash = query_hash(spec);
        let initial_generation = random_generation();
        let mut conn = inner.conn.clone();
        let mut invocation = inner.lookup.key(&inner.gen_key);
        invocation
            .arg(initial_generation)
            .arg(&inner.entry_prefix)
            .arg(&hash);
        let looked_up: Result<Vec<redis::Value>, String> = match tokio::time::timeout(
            inner.settings.redis_timeout,
            invocation.invoke_async(&mut conn),
        )
        .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!(
                "{} ({})",
                redis_reason(&e),
                e.code().unwrap_or("-")
            )),
            Err(_) => Err("timeout".to_string()),
        };
        let values = match looked_up {
            Ok(v) => v,
            Err(reason) => {
                inner.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    reason,
                    "Redis lookup failed; answering from Cosmos (bypass)"
                );
                return Self::bypass(inner, fill).await;
            }
        };
        let generation = match values.first() {
            Some(redis::Value::BulkString(g)) => String::from_utf8_lossy(g).into_owned(),
            Some(redis::Value::Int(g)) => g.to_string(),
            _ => {
                inner.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("Redis lookup returned no generation; bypass");
                return Self::bypass(inner, fill).await;
            }
        };
        if let Some(redis::Value::BulkString(stored)) = values.get(1) {
            if let Some(body) = stored.strip_prefix(VALUE_FORMAT) {
                inner.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Served {
                    body: Bytes::copy_from_slice(body),
                    outcome: CacheOutcome::Hit,
                    request_charge: None,
                });
            }
            tracing::warn!("cached value has an unknown format; treating it as a miss");
        }
        let key = format!("{}{}:{}", inner.entry_prefix, generation, hash);
        let (flight, leader) = {
            let mut flights = inner.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let this = self.clone();
                    let store_key = key.clone();
                    let f: Flight = async move {
                        let filled = fill().await?;
                        this.store(&store_key, &filled.body).await;
                        Ok(filled)
                    }
                    .boxed()
                    .shared();
                    flights.insert(key.clone(), f.clone());
                    (f, true)
                }
            }
        };
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
        let filled = flight.await?;
        inner.stats.misses.fetch_add(1, Ordering::Relaxed);
        Ok(Served {
            body: filled.body,
            outcome: CacheOutcome::Miss,
            request_charge: Some(filled.request_charge),
        })
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

    async fn store(&self, key: &str, body: &Bytes) {
        let inner = &self.inner;
        if body.len() > inner.settings.max_value_bytes {
            inner.stats.too_large.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                bytes = body.len(),
                "page larger than CACHE_MAX_VALUE_BYTES: not cached"
            );
            return;
        }
        let mut value = Vec::with_capacity(VALUE_FORMAT.len() + body.len());
        value.extend_from_slice(VALUE_FORMAT);
        value.extend_from_slice(body);
        let ttl_ms = jittered_ttl_ms(inner.settings.ttl, inner.settings.ttl_jitter_percent);
        let mut conn = inner.conn.clone();
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .to_owned();
        match tokio::time::timeout(
            inner.settings.redis_timeout,
            cmd.query_async::<()>(&mut conn),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                inner.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason = %redis_reason(&e), "Redis SET failed; page not cached");
            }
            Err(_) => {
                inner.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason = "timeout", "Redis SET failed; page not cached");
            }
        }
    }

    /// Invalidates every cached page of the container by bumping its generation. Call only after
    /// Cosmos acknowledged the write.
    pub async fn invalidate(&self) -> Invalidation {
        if self.try_bump().await {
            return Invalidation::Done;
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
            if self.try_bump().await
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
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// `SET gen <random> NX` then `INCR gen`, atomically (MULTI/EXEC), within the timeout.
    async fn try_bump(&self) -> bool {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let pipe = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&inner.gen_key)
            .arg(random_generation())
            .arg("NX")
            .ignore()
            .cmd("INCR")
            .arg(&inner.gen_key)
            .to_owned();
        match tokio::time::timeout(
            inner.settings.redis_timeout,
            pipe.query_async::<(i64,)>(&mut conn),
        )
        .await
        {
            Ok(Ok((generation,))) => {
                inner.stats.invalidations.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(generation, "cache invalidated");
                true
            }
            Ok(Err(e)) => {
                inner.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason = %redis_reason(&e), "cache invalidation failed");
                false
            }
            Err(_) => {
                inner.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason = "timeout", "cache invalidation failed");
                false
            }
        }
    }
}

/// A short reason for logs: the error kind and, for server errors, its code (never a
/// password: the redis crate's errors do not carry connection parameters).
fn redis_reason(e: &redis::RedisError) -> String {
    format!("{:?}", e.kind())
}

/// SHA-256 (hex) of the canonical form of a query page request. The canonical form is a JSON
/// array, so field boundaries are unambiguous (`{"a":"1b","c":"2"}` and `{"a":"1","bc":"2"}`
/// differ); parameters are sorted by name, so their order does not matter.
pub fn query_hash(spec: &QuerySpec) -> String {
    #[derive(Serialize)]
    struct Canonical<'a> {
        q: &'a str,
        p: Vec<(&'a str, &'a serde_json::Value)>,
        k: Option<serde_json::Value>,
        n: u32,
        c: Option<&'a str>,
    }
    let mut p: Vec<_> = spec
        .parameters
        .iter()
        .map(|(n, v)| (n.as_str(), v))
        .collect();
    p.sort_by(|a, b| a.0.cmp(b.0));
    let canonical = Canonical {
        q: &spec.text,
        p,
        k: spec.partition_key.as_ref().map(|k| k.to_json()),
        n: spec.max_item_count,
        c: spec.continuation.as_deref(),
    };
    // Serializing plain strings, numbers and JSON values cannot fail.
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh generation for a missing generation key: random in [2^32, 2^62), far from the
/// small integers an `INCR` on a missing key would produce and unlikely to meet an old one.
fn random_generation() -> u64 {
    (1u64 << 32) + rand::random::<u64>() % ((1u64 << 62) - (1u64 << 32))
}

/// `ttl` ± `jitter_percent` %, in milliseconds, at least 1.
fn jittered_ttl_ms(ttl: Duration, jitter_percent: u8) -> u64 {
    let base = ttl.as_millis() as f64;
    let spread = f64::from(jitter_percent) / 100.0;
    let unit = rand::random::<u32>() as f64 / u32::MAX as f64; // [0, 1]
    let factor = 1.0 + spread * (2.0 * unit - 1.0);
    (base * factor).round().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PkValue;
    use serde_json::Value;

    fn spec(params: &[(&str, &str)]) -> QuerySpec {
        QuerySpec {
            text: "SELECT * FROM c WHERE c.a = @a".into(),
            parameters: params
                .iter()
                .map(|(n, v)| (n.to_string(), Value::String(v.to_string())))
                .collect(),
            partition_key: None,
            max_item_count: 100,
            continuation: None,
        }
    }

    #[test]
    fn keys_are_canonical_and_collision_free() {
        let a = query_hash(&spec(&[("@a", "1b"), ("@c", "2")]));
        let b = query_hash(&spec(&[("@a", "1"), ("@bc", "2")]));
        assert_ne!(a, b);
        let swapped = query_hash(&spec(&[("@c", "2"), ("@a", "1b")]));
        assert_eq!(a, swapped);
        let mut asc = spec(&[]);
        asc.text = "SELECT * FROM c ORDER BY c.x ASC".into();
        let mut desc = asc.clone();
        desc.text = "SELECT * FROM c ORDER BY c.x DESC".into();
        assert_ne!(query_hash(&asc), query_hash(&desc));
        let mut paged = asc.clone();
        paged.continuation = Some("tok".into());
        assert_ne!(query_hash(&asc), query_hash(&paged));
        let mut smaller = asc.clone();
        smaller.max_item_count = 10;
        assert_ne!(query_hash(&asc), query_hash(&smaller));
        let mut scoped = asc.clone();
        scoped.partition_key = Some(PkValue::Str("Texas".into()));
        assert_ne!(query_hash(&asc), query_hash(&scoped));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn ttl_jitter_stays_within_bounds() {
        let ttl = Duration::from_secs(300);
        let samples: Vec<u64> = (0..2000).map(|_| jittered_ttl_ms(ttl, 10)).collect();
        assert!(samples.iter().all(|&ms| (270_000..=330_000).contains(&ms)));
        let min = samples.iter().min().copied().unwrap_or_default();
        let max = samples.iter().max().copied().unwrap_or_default();
        assert!(max - min > 30_000, "jitter spreads TTLs: {min}..{max}");
        assert_eq!(jittered_ttl_ms(ttl, 0), 300_000);
    }

    #[test]
    fn generations_start_far_from_small_integers() {
        for _ in 0..1000 {
            let g = random_generation();
            assert!(g >= 1 << 32 && g < 1 << 62);
        }
    }
}
