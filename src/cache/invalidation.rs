//! Invalidation: the generation bump after a write, its immediate retry after a dropped
//! connection, and the background retry of a bump Redis did not take (reads bypass the cache on
//! this instance until it lands).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::guard::{CircuitState, Failure};
use super::{Cache, Inner, Invalidation, keys};

/// Longest pause between two tries of a pending invalidation.
const RETRY_MAX_DELAY: Duration = Duration::from_millis(250);
/// While a pending invalidation keeps failing, one warning per this period (not per try).
const RETRY_WARN_EVERY: Duration = Duration::from_secs(10);

impl Cache {
    /// Invalidates every cached page of the container by bumping its generation. Call only after
    /// Cosmos acknowledged the write.
    pub async fn invalidate(&self) -> Invalidation {
        self.invalidate_writes(&[]).await
    }

    /// As [`Cache::invalidate`], recording `versions` (the `_etag`s Cosmos returned for the
    /// writes) in the same atomic step, so the change-feed function recognises these changes
    /// as already invalidated (`change_feed.rs`). The retries after a failure bump without
    /// recording: the feed then bumps once more, which costs a miss, never a stale read.
    pub async fn invalidate_writes(&self, versions: &[String]) -> Invalidation {
        self.drop_near();
        let first = self.try_bump(versions).await;
        if let Err(failure) = &first {
            tracing::warn!(reason = %failure, "cache invalidation failed");
        }
        match first {
            Ok(()) => return Invalidation::Done,
            // A failover (or an idle close) drops the connection under in-flight commands with
            // an I/O error, and the connection reconnects on the next command: one immediate
            // retry turns most of those into `done` instead of a pending invalidation, during
            // which other instances may serve the previous page. Not after a timeout (a black
            // hole would cost the timeout twice) nor with the breaker open.
            Err(Failure::Error(_)) if self.inner.redis.state() != CircuitState::Open => {
                if self.try_bump(versions).await.is_ok() {
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
        let (mut tries, mut last_warn) = (0u64, std::time::Instant::now());
        loop {
            let failures_before = inner.failed_invalidations.load(Ordering::Acquire);
            tokio::time::sleep(delay).await;
            let bumped = self.try_bump(&[]).await;
            tries += 1;
            if let Err(failure) = &bumped {
                if last_warn.elapsed() >= RETRY_WARN_EVERY {
                    last_warn = std::time::Instant::now();
                    tracing::warn!(reason = %failure, tries, "pending cache invalidation still failing; reads on this instance bypass the cache");
                } else {
                    tracing::debug!(reason = %failure, tries, "pending cache invalidation failed");
                }
            }
            if bumped.is_ok()
                && inner.failed_invalidations.load(Ordering::Acquire) == failures_before
            {
                inner.invalidation_pending.store(false, Ordering::Release);
                inner.retry_running.store(false, Ordering::Release);
                tracing::info!(tries, "pending cache invalidation reached Redis");
                // A failure may have raced with the two stores above; if so, go on.
                if inner.failed_invalidations.load(Ordering::Acquire) == failures_before
                    || inner.retry_running.swap(true, Ordering::AcqRel)
                {
                    return;
                }
                inner.invalidation_pending.store(true, Ordering::Release);
            }
            // Capped low: after a failover, or once Redis answers again, the pending window is
            // what other instances may serve stale. Each try costs at most the Redis timeout.
            delay = (delay * 2).min(RETRY_MAX_DELAY);
        }
    }

    /// A script found a generation this server had not confirmed and moved it
    /// ([`failover`]).
    pub(super) fn server_changed(inner: &Inner) {
        if let Some((near, _)) = &inner.near {
            near.invalidate();
        }
        inner.stats.server_changes.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "Redis server changed since the generation was confirmed (failover, restart or \
             eviction): generation moved, earlier cached pages unreachable"
        );
    }

    /// This instance's own write: L1 may hold pages of the old generation (before and after
    /// the bump, see `near.rs`).
    fn drop_near(&self) {
        if let Some((near, _)) = &self.inner.near {
            near.invalidate();
        }
    }

    /// `SET gen <random> NX` then `INCR gen`, atomically ([`super::scripts::BUMP`]); with
    /// `versions`, recording them first in the same script ([`super::scripts::RECORD`]).
    async fn try_bump(&self, versions: &[String]) -> Result<(), Failure> {
        let inner = &self.inner;
        // Past the breaker: it lets reads skip a failing Redis, but a skipped bump is a window
        // in which other instances serve the old page although Redis may answer again.
        let bumped = inner
            .redis
            .run_past_breaker(|mut conn| {
                let mut invocation = if versions.is_empty() {
                    inner.bump.key(&inner.gen_key)
                } else {
                    inner.record_bump.key(&inner.gen_key)
                };
                invocation
                    .key(&inner.server_key)
                    .arg(keys::random_generation());
                if !versions.is_empty() {
                    invocation
                        .key(&inner.own_writes_key)
                        .arg(super::change_feed::OWN_WRITES_WINDOW.as_millis() as u64)
                        .arg(versions);
                }
                async move { invocation.invoke_async::<(i64, i64)>(&mut conn).await }
            })
            .await;
        match bumped {
            Ok((generation, moved)) => {
                if moved == 1 {
                    Self::server_changed(inner);
                }
                inner.stats.invalidations.fetch_add(1, Ordering::Relaxed);
                // Again after the acknowledgement: a read that captured the epoch between the
                // first drop and the bump read the old generation; its page must not enter L1.
                self.drop_near();
                tracing::debug!(generation, "cache invalidated");
                Ok(())
            }
            // Logged by the callers: the first failure as a warning, the background retries'
            // at most every `RETRY_WARN_EVERY` (one line per try flooded the log in an outage).
            Err(failure) => Err(failure),
        }
    }
}
