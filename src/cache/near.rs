//! The near cache (L1): hot pages kept in this process and served without a Redis round trip,
//! for as long as Redis itself says the container's generation has not moved.
//!
//! # Why it stays correct
//! Multi-level caches usually invalidate their in-memory level through pub/sub messages, which
//! can be lost, so a node may serve a stale page until the entry's TTL. Here the instance
//! learns of every change to the generation key from Redis's **server-assisted client-side
//! caching**: a dedicated RESP3 connection runs `CLIENT TRACKING ON BCAST PREFIX
//! cc:{scope}:gen`, and Redis pushes an `invalidate` message on it whenever that key is written
//! (by any client, this instance included; <https://redis.io/docs/latest/develop/reference/client-side-caching/>).
//!
//! - Every event that may make an entry stale bumps an **epoch**: an invalidation push, this
//!   instance's own generation bump (before and after Redis acknowledges it, so a read that
//!   raced with the bump cannot re-insert the old page), losing the tracking connection, a
//!   failover detected by the lookup. An entry is served only under the epoch it was filled in.
//! - A reader captures the epoch *before* its Redis lookup; its page enters L1 only if the
//!   epoch is unchanged when it arrives. A bump that lands after the lookup pushes an
//!   invalidation, which changes the epoch, so the page is dropped.
//! - **Liveness**: a lost push would leave L1 stale, so the tracking connection is pinged every
//!   [`HEARTBEAT_INTERVAL`]. Redis answers a `PING` after every push it queued before it, on the
//!   same connection, and the push handler runs inside the connection's read loop, before the
//!   `PONG` is delivered. So once a `PING` sent at `s` is answered, every invalidation of a
//!   write acknowledged before `s` has been applied. L1 is served only while the last answered
//!   `PING` was sent less than [`HEARTBEAT_BOUND`] ago: a black-holed connection stops L1
//!   within that bound, and the staleness a read on another instance can see is at most that.
//!
//! Why not the redis crate's own client-side cache (feature `cache-aio`): it caches the replies
//! of read commands such as `GET`, while a hit here is one Lua script (generation, server
//! identity, page) that it does not cache; and it has no liveness rule for a connection that
//! goes silent. This module uses the crate's RESP3 push support (`set_push_sender`) directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::{PushInfo, PushKind};
use tokio::sync::Notify;

use crate::api::EscapedBody;

mod target;
mod tracking;

/// How often the tracking connection is pinged.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// L1 is served only while the last answered `PING` was sent less than this long ago. Also the
/// bound on how stale a page served from L1 can be when the tracking connection goes silent.
pub(crate) const HEARTBEAT_BOUND: Duration = Duration::from_millis(250);
/// Bytes counted per entry on top of its key and body (the entry and index bookkeeping).
const ENTRY_OVERHEAD_BYTES: u64 = 96;

/// One page in L1.
#[derive(Clone)]
struct Entry {
    body: Bytes,
    /// The body's JSON-string form for invocation-payload answers, escaped on first use.
    escaped: EscapedBody,
    /// Its length, reserved in the entry's weight from the start.
    escaped_len: u64,
    /// The epoch the page was read under; served only while it is still current.
    epoch: u64,
    /// Entries live no longer than the Redis entry they were read from (its remaining TTL when
    /// read from Redis, the configured TTL when filled here), nor than the configured TTL.
    expires: Instant,
}

/// Weight of an entry in bytes, for the byte bound: key, body, the body's escaped form and a
/// fixed overhead. The escaped form (the JSON string an invocation-payload answer copies into
/// `Outputs.res.body`) is made on the first payload-mode hit, after the entry was weighed, so
/// its exact length is reserved at insert ([`crate::api::escaped_len`]): the bound holds in both
/// wire modes, at the price of forwarded-only L1s holding about half the pages they could.
#[derive(Clone)]
struct ByteWeight;

impl quick_cache::Weighter<String, Entry> for ByteWeight {
    fn weight(&self, key: &String, entry: &Entry) -> u64 {
        key.len() as u64 + entry.body.len() as u64 + entry.escaped_len + ENTRY_OVERHEAD_BYTES
    }
}

/// Counters of the near cache, for `/_diagnostics`.
#[derive(Debug, Default)]
pub(crate) struct NearStats {
    /// Reads answered from L1.
    pub(crate) hits: AtomicU64,
    /// Invalidation pushes received.
    pub(crate) pushes: AtomicU64,
    /// Times tracking was (re-)established.
    pub(crate) tracking_starts: AtomicU64,
    /// Times the tracking connection was lost or went silent (L1 dropped).
    pub(crate) tracking_losses: AtomicU64,
}

/// State shared by the request path, the push handler and the tracking task.
struct State {
    pages: quick_cache::sync::Cache<String, Entry, ByteWeight>,
    epoch: AtomicU64,
    /// Milliseconds since `started` at which the last answered `PING` was sent; `u64::MAX`
    /// while tracking is not established.
    fresh_as_of_ms: AtomicU64,
    started: Instant,
    ttl: Duration,
    /// Wakes the tracking task when the connection reported a disconnection.
    disconnected: Notify,
    stats: NearStats,
    /// Set once tracking was found unsupported: L1 stays off.
    unsupported: AtomicBool,
}

impl State {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Drops every entry (by moving the epoch) and stops serving until tracking is fresh again.
    fn lose_tracking(&self) {
        self.fresh_as_of_ms.store(u64::MAX, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.pages.clear();
    }

    /// Runs inside the tracking connection's read loop, before any later reply is delivered.
    fn on_push(&self, push: &PushInfo) {
        match push.kind {
            PushKind::Invalidate => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                self.stats.pushes.fetch_add(1, Ordering::Relaxed);
                self.pages.clear();
            }
            PushKind::Disconnection => {
                self.lose_tracking();
                self.disconnected.notify_one();
            }
            _ => {}
        }
    }
}

/// The in-process L1 of one container's pages. Cheap to clone.
#[derive(Clone)]
pub(crate) struct NearCache {
    state: Arc<State>,
    started: Arc<AtomicBool>,
}

impl NearCache {
    /// An L1 bounded to `max_bytes` (keys, bodies and a fixed overhead per entry), whose
    /// entries live at most `ttl`.
    pub(crate) fn new(max_bytes: u64, ttl: Duration) -> Self {
        // The estimate only sizes the index: assume 16 KB pages (a 100-row page is 10–25 KB).
        let estimated_items = (max_bytes / 16_384).clamp(16, 1 << 20) as usize;
        Self {
            state: Arc::new(State {
                pages: quick_cache::sync::Cache::with_weighter(
                    estimated_items,
                    max_bytes,
                    ByteWeight,
                ),
                epoch: AtomicU64::new(0),
                fresh_as_of_ms: AtomicU64::new(u64::MAX),
                started: Instant::now(),
                ttl,
                disconnected: Notify::new(),
                stats: NearStats::default(),
                unsupported: AtomicBool::new(false),
            }),
            started: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether tracking is established and was confirmed alive within [`HEARTBEAT_BOUND`].
    pub(crate) fn live(&self) -> bool {
        let s = &self.state;
        let fresh = s.fresh_as_of_ms.load(Ordering::Acquire);
        fresh != u64::MAX && s.now_ms().saturating_sub(fresh) < HEARTBEAT_BOUND.as_millis() as u64
    }

    /// The current epoch; capture it before a Redis lookup whose page may enter L1.
    pub(crate) fn epoch(&self) -> u64 {
        self.state.epoch.load(Ordering::Acquire)
    }

    /// The page of `hash` and its escaped form, when L1 holds it under the current epoch and
    /// tracking is live.
    pub(crate) fn get(&self, hash: &str) -> Option<(Bytes, EscapedBody)> {
        if !self.live() {
            return None;
        }
        let entry = self.state.pages.get(hash)?;
        if entry.epoch != self.epoch() || Instant::now() >= entry.expires {
            return None;
        }
        self.state.stats.hits.fetch_add(1, Ordering::Relaxed);
        Some((entry.body, entry.escaped))
    }

    /// Keeps `body` as the page of `hash`, read under `epoch`, for at most `ttl` (the Redis
    /// entry's remaining time to live, when the page came from Redis) and the configured TTL;
    /// ignored when the epoch moved since (the page may predate a write) or tracking is not
    /// live.
    pub(crate) fn insert(&self, hash: &str, body: &Bytes, epoch: u64, ttl: Option<Duration>) {
        if epoch != self.epoch() || !self.live() {
            return;
        }
        let entry = Entry {
            body: body.clone(),
            escaped: EscapedBody::default(),
            escaped_len: crate::api::escaped_len(body) as u64,
            epoch,
            expires: Instant::now() + ttl.map_or(self.state.ttl, |t| t.min(self.state.ttl)),
        };
        self.state.pages.insert(hash.to_string(), entry);
    }

    /// This instance changed the generation (or found the server changed): nothing in L1 may
    /// be served any more.
    pub(crate) fn invalidate(&self) {
        self.state.epoch.fetch_add(1, Ordering::AcqRel);
        self.state.pages.clear();
    }

    /// Bytes held (keys, bodies, overhead), at most the configured bound.
    pub(crate) fn weight(&self) -> u64 {
        self.state.pages.weight()
    }

    /// Counters for `/_diagnostics`.
    pub(crate) fn stats(&self) -> &NearStats {
        &self.state.stats
    }

    /// Starts the tracking task on the first call (the cache connects to nothing at
    /// construction). Needs a Tokio runtime.
    pub(crate) fn ensure_tracking(&self, client: &redis::Client, gen_key: &str) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.state);
        let client = client.clone();
        let gen_key = gen_key.to_string();
        tokio::spawn(tracking::track(weak, client, gen_key));
    }
}
