//! The sweeps of the scale rows: a list of distinct queries sent 16 (or N) at a time within a
//! time budget: first to fill the cache (misses), then replayed as hits.

use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::load::{query_url, timed_get};

/// What one sweep did.
pub struct Sweep {
    /// Queries answered 200, counted as the completed prefix of the list.
    pub done: usize,
    /// Of those, answered `x-cache: miss`.
    pub misses: usize,
    /// `done` per second.
    pub rate: f64,
    pub secs: f64,
    /// Share of `done` answered `x-cache: hit`.
    pub hit_rate: f64,
}

/// Sends `GET /api/query?city=..&<pk_field>=..` for each of `queries`, `concurrency` at a time,
/// until the list ends or `budget` is spent.
pub async fn sweep_pass(
    http: &reqwest::Client,
    base: &str,
    pk_field: &str,
    queries: &[(String, String)],
    budget: Duration,
    concurrency: usize,
) -> Sweep {
    let started = Instant::now();
    let deadline = started + budget;
    let results: Vec<Option<String>> = futures::stream::iter(queries.iter())
        .map(|(c, p)| {
            let url = query_url(base, &[("city", c), (pk_field, p)]);
            async move {
                if Instant::now() > deadline {
                    return None;
                }
                let r = timed_get(http, &url).await;
                (r.status == 200).then_some(r.cache)
            }
        })
        .buffered(concurrency)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    // Count the completed prefix (buffered keeps order), so the hit pass replays exactly it.
    let done = results.iter().take_while(|r| r.is_some()).count();
    let misses = results.iter().flatten().filter(|c| *c == "miss").count();
    let hits = results.iter().flatten().filter(|c| *c == "hit").count();
    Sweep {
        done,
        misses,
        rate: done as f64 / secs,
        secs,
        hit_rate: hits as f64 / done.max(1) as f64,
    }
}
