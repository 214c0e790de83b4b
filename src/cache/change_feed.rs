//! The change-feed function's invalidation, and how it avoids a second bump for `update`'s own
//! writes.
//!
//! # The problem
//! A write through `update` bumps the generation itself. Its change then reaches the
//! change-feed function (`invalidate/`) about `feedPollDelay` later; bumping again there would
//! drop every page cached since the write, halving the hit rate of a write-heavy container for
//! nothing.
//!
//! # The rule
//! Cosmos gives every version of a document a new `_etag`, and the change feed delivers the
//! document with it. `update` hands the `_etag`s Cosmos returned for its writes to
//! [`Cache::invalidate_writes`], whose script adds them to `cc:{scope}:own` (a sorted set scored
//! by Redis time in ms; entries older than [`OWN_WRITES_WINDOW`] are trimmed, and the key
//! expires after it) **in the same atomic step as the bump**: a recorded version means its
//! bump happened. [`Cache::invalidate_changes`] runs one script that skips the bump only when
//! every change of the batch carries a version recorded within the window (and then forgets
//! them), and bumps otherwise — one round trip. Everything errs towards an extra bump:
//! - a change without an `_etag`, or a version older than the window: bump;
//! - a batch mixing our writes and anyone else's: bump;
//! - the feed delivering a change before `update` recorded it (the poll fell between Cosmos's
//!   acknowledgement and the bump): bump;
//! - a redelivered batch whose versions were already forgotten: bump;
//! - a Redis server that changed under the generation (failover): the bump moves it.
//!
//! The set and the generation share the container's hash tag: one slot on a cluster.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::guard::{CircuitState, Failure};
use super::{Cache, keys};

/// How long a version written through `update` is recognised on the change feed: the feed
/// delivers a change about `feedPollDelay` (1 s here) after the write; a minute leaves room for
/// a backlog or host retries and bounds the set to one minute of writes.
pub const OWN_WRITES_WINDOW: Duration = Duration::from_secs(60);

/// The own-writes set of the container whose hash tag is `tag`.
pub(super) fn own_writes_key(tag: &str) -> String {
    format!("cc:{tag}:own")
}

/// What [`Cache::invalidate_changes`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedInvalidation {
    /// The generation moved.
    Bumped,
    /// Every change was a version `update` recorded (and invalidated) within
    /// [`OWN_WRITES_WINDOW`]: nothing to do.
    OwnWrites,
}

/// Redis did not take the change-feed invalidation; the text is the failure's kind (never a
/// connection detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Redis did not take the invalidation: {0}")]
pub struct FeedInvalidationFailed(pub String);

impl Cache {
    /// Invalidates the container for a change-feed batch, unless the batch is made only of
    /// `update`'s own recorded writes. `versions` holds the `_etag` of every change, or is
    /// `None` when some change has none (then the generation always moves). One round trip;
    /// one immediate retry after a dropped connection, as [`Cache::invalidate`] does. No
    /// background retry: the caller fails the invocation so the host redelivers the batch.
    ///
    /// # Errors
    /// [`FeedInvalidationFailed`] when Redis is down, slow or refuses.
    pub async fn invalidate_changes(
        &self,
        versions: Option<&[String]>,
    ) -> Result<FeedInvalidation, FeedInvalidationFailed> {
        match self.try_feed_bump(versions).await {
            Ok(done) => Ok(done),
            Err(Failure::Error(_)) if self.inner.redis.state() != CircuitState::Open => self
                .try_feed_bump(versions)
                .await
                .map_err(|f| FeedInvalidationFailed(f.to_string())),
            Err(failure) => Err(FeedInvalidationFailed(failure.to_string())),
        }
    }

    async fn try_feed_bump(
        &self,
        versions: Option<&[String]>,
    ) -> Result<FeedInvalidation, Failure> {
        let inner = &self.inner;
        let replied = inner
            .redis
            .run(|mut conn| {
                let mut invocation = inner.feed_bump.key(&inner.gen_key);
                invocation
                    .key(&inner.server_key)
                    .key(&inner.own_writes_key)
                    .arg(keys::random_generation())
                    .arg(OWN_WRITES_WINDOW.as_millis() as u64)
                    .arg(if versions.is_some() { "1" } else { "0" })
                    .arg(versions.unwrap_or_default());
                async move { invocation.invoke_async::<Vec<i64>>(&mut conn).await }
            })
            .await;
        match replied.as_deref() {
            Ok([_, _, 1]) => {
                inner.stats.feed_own_writes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("change-feed batch made only of our own writes: no bump");
                Ok(FeedInvalidation::OwnWrites)
            }
            Ok([generation, moved, ..]) => {
                if *moved == 1 {
                    Self::server_changed(inner);
                }
                inner.stats.invalidations.fetch_add(1, Ordering::Relaxed);
                inner
                    .stats
                    .feed_invalidations
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(generation, "cache invalidated by the change feed");
                Ok(FeedInvalidation::Bumped)
            }
            Ok(other) => {
                tracing::warn!(reply = ?other, "unexpected reply of the change-feed script");
                Err(Failure::Error("unexpected script reply".into()))
            }
            Err(failure) => {
                tracing::warn!(reason = %failure, "change-feed invalidation failed");
                Err(failure.clone())
            }
        }
    }
}
