//! A randomized consistency checker: concurrent readers and writers over the 1,000 cities.
//! Every query that started after an update's response was received must reflect that update
//! or a later one. `CHECKER_OPS` sets the number of operations (default 10,000).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures::future::join_all;
use serde_json::json;

use crate::support::stack::city_rows;
use crate::support::{Mode, Stack};

const WORKERS: usize = 16;
/// Versions start above every real population, so a version is never confused with one.
const FIRST_VERSION: u64 = 1_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_reads_and_writes_never_see_stale_data() {
    let ops: usize = std::env::var("CHECKER_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let stack = Arc::new(Stack::start(Mode::Forwarding).await);
    // A few states with several cities each: queries overlap, so hits and invalidations mix.
    let rows = city_rows();
    let states = ["Texas", "Ohio", "Florida", "Washington"];
    let cities: Vec<(String, String)> = rows
        .iter()
        .filter(|c| states.contains(&c.state.as_str()))
        .map(|c| (c.city.clone(), c.state.clone()))
        .collect();
    let acked: Arc<HashMap<String, AtomicU64>> = Arc::new(
        cities
            .iter()
            .map(|(c, s)| (format!("{c}|{s}"), AtomicU64::new(0)))
            .collect(),
    );
    // Writes to one city are serialized, so Cosmos holds that city's versions in order
    // (concurrent upserts of one document would be last-writer-wins, not a cache bug).
    let write_locks: Arc<HashMap<String, tokio::sync::Mutex<()>>> = Arc::new(
        cities
            .iter()
            .map(|(c, s)| (format!("{c}|{s}"), tokio::sync::Mutex::new(())))
            .collect(),
    );
    let next_version = Arc::new(AtomicU64::new(FIRST_VERSION));
    let done = Arc::new(AtomicUsize::new(0));
    let stale = Arc::new(AtomicUsize::new(0));
    let (reads, writes, hits) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let cities = Arc::new(cities);
    let workers = (0..WORKERS).map(|_| {
        let write_locks = write_locks.clone();
        let (stack, acked, next_version, done, stale, cities) = (
            stack.clone(),
            acked.clone(),
            next_version.clone(),
            done.clone(),
            stale.clone(),
            cities.clone(),
        );
        let (reads, writes, hits) = (reads.clone(), writes.clone(), hits.clone());
        async move {
            while done.fetch_add(1, Ordering::Relaxed) < ops {
                let pick = rand::random::<u32>() as usize % cities.len();
                let (city, state) = &cities[pick];
                if rand::random::<u32>().is_multiple_of(10) {
                    let key = format!("{city}|{state}");
                    let _serialized = write_locks[&key].lock().await;
                    let version = next_version.fetch_add(1, Ordering::SeqCst);
                    let id = cosmos_cache_handler::seed::city_id(city, state);
                    let doc =
                        json!({"id": id, "city": city, "state": state, "population": version});
                    let reply = stack.post("update", &doc.to_string()).await;
                    assert_eq!(reply.status, 200, "{}", reply.text);
                    acked[&format!("{city}|{state}")].fetch_max(version, Ordering::SeqCst);
                    writes.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Snapshot what had been acknowledged before this query started.
                    let floor: HashMap<String, u64> = cities
                        .iter()
                        .filter(|(_, s)| s == state)
                        .map(|(c, s)| {
                            let k = format!("{c}|{s}");
                            let v = acked[&k].load(Ordering::SeqCst);
                            (c.clone(), v)
                        })
                        .collect();
                    let reply = stack
                        .get(&format!("query?state={state}&maxItemCount=1000"))
                        .await;
                    assert_eq!(reply.status, 200, "{}", reply.text);
                    if reply.cache() == "hit" {
                        hits.fetch_add(1, Ordering::Relaxed);
                    }
                    for item in reply.json()["items"].as_array().expect("items") {
                        let name = item["city"].as_str().unwrap_or_default();
                        let seen = item["population"].as_u64().unwrap_or(0);
                        let floor = floor.get(name).copied().unwrap_or(0);
                        if floor > 0 && seen < floor {
                            stale.fetch_add(1, Ordering::Relaxed);
                            eprintln!("STALE: {name}, {state}: saw {seen}, acknowledged {floor}");
                        }
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    join_all(workers).await;
    let (reads, writes, hits, stale) = (
        reads.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed),
        hits.load(Ordering::Relaxed),
        stale.load(Ordering::Relaxed),
    );
    println!(
        "checker: {} operations ({reads} queries, {writes} updates, {hits} cache hits), {stale} stale reads",
        reads + writes
    );
    assert!(reads + writes >= ops);
    assert_eq!(stale, 0);
    assert!(hits > 0, "the cache was exercised");
}
