//! Single-flight: concurrent identical misses on this instance share one fill. The first
//! becomes the flight's leader (and works with the fleet-wide fill lease, [`super::lease`]);
//! the others await the same shared future.

use std::future::Future;
use std::sync::atomic::Ordering;

use futures::future::FutureExt;

use super::lease::Lease;
use super::{Cache, Filled, Flight, Served};
use crate::api::CacheOutcome;
use crate::error::AppError;

impl Cache {
    /// Joins (or starts) the flight that fills the page `key`, with this request's part in the
    /// fill `lease`, and answers with its result.
    ///
    /// # Errors
    /// Whatever the flight's `fill` returned.
    pub(super) async fn fly<F, Fut>(
        &self,
        key: String,
        lease: Lease,
        fill: F,
    ) -> Result<Served, AppError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Filled, AppError>> + Send + 'static,
    {
        let inner = &self.inner;
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
                escaped: None,
            });
        }
        inner.stats.misses.fetch_add(1, Ordering::Relaxed);
        Ok(Served {
            body: filled.body,
            outcome: CacheOutcome::Miss,
            request_charge: Some(filled.request_charge),
            escaped: None,
        })
    }
}
