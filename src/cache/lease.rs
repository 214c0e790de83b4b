//! The fleet-wide fill lease of a missed page: the leader reads Cosmos and stores the page (and
//! releases the lease) in one round trip; an instance that finds the lease held by another polls
//! for that instance's result instead of reading Cosmos too.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Cache, Filled, keys};
use crate::error::AppError;

/// How often a lease waiter looks for the leaseholder's result.
const LEASE_POLL: Duration = Duration::from_millis(10);

/// This request's part in the fleet-wide fill lease of a missed page.
pub(super) enum Lease {
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

impl Cache {
    /// The leader's side of a miss: with the fleet-wide fill lease (taken by the lookup), read
    /// Cosmos and store; without it, wait for whoever holds it. Returns the page and whether it
    /// came from Redis.
    pub(super) async fn fill_with_lease<F, Fut>(
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
}
