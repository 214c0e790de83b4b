//! The cache's counters since start-up, and their JSON for `/_diagnostics` and the logs.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use super::Cache;
use super::guard::CircuitState;

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
    /// Change-feed batches that moved the generation (also counted in `invalidations`).
    pub feed_invalidations: AtomicU64,
    /// Change-feed batches made only of `update`'s own recorded writes (no bump).
    pub feed_own_writes: AtomicU64,
}

impl Cache {
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
            "feedInvalidations": n(&s.feed_invalidations),
            "feedOwnWrites": n(&s.feed_own_writes),
            "redisErrors": n(&r.errors),
            "circuit": match r.state() {
                CircuitState::Closed => "closed",
                CircuitState::Open => "open",
                CircuitState::HalfOpen => "half-open",
            },
            "circuitOpened": n(&r.opened),
            "circuitSkipped": n(&r.skipped),
            "invalidationPending": self.invalidation_pending(),
            "redisAuth": r.auth_kind(),
            "reauths": n(&r.reauths),
            "reauthFailures": n(&r.reauth_failures),
            "local": self.inner.near.as_ref().map(|(near, _)| {
                let l = near.stats();
                json!({
                    "hits": n(&l.hits),
                    "pushes": n(&l.pushes),
                    "trackingStarts": n(&l.tracking_starts),
                    "trackingLosses": n(&l.tracking_losses),
                    "live": near.live(),
                    "bytes": near.weight(),
                })
            }),
        })
    }
}
