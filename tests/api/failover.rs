//! Invalidations that survive a Redis failover: a real primary and replica behind the chaos
//! proxy, which switches to the promoted replica while two handler instances keep running (the
//! binary behind the host emulator, and a second instance in this process). The replica either
//! missed the last write (detached just before it) or had every write.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};

use crate::support::failover::ReplicatedRedis;
use crate::support::stack::Reply;
use crate::support::{Mode, Stack};

both_modes!(acknowledged_update_survives_failovers);

/// Two handler instances sharing one Redis endpoint: `0` = the binary behind the host
/// emulator, `1` = a second instance in this process.
pub(crate) struct Instances {
    pub stack: Stack,
    pub second: axum::Router,
}

impl Instances {
    /// Starts a seeded stack whose handlers reach Redis at `redis_url`.
    pub async fn start(mode: Mode, redis_url: &str) -> Self {
        let mut stack = Stack::services(mode, true, &[]);
        stack.set_env("REDIS_CONNECTION_STRING", redis_url);
        stack.start_handler().await;
        let second = cosmos_cache_handler::router(stack.app_state(), "api");
        Self { stack, second }
    }

    /// `GET /api/<path_and_query>` on instance `which`: (status, x-cache, body).
    pub async fn get(&self, which: usize, path_and_query: &str) -> (u16, String, Value) {
        if which == 0 {
            let reply = self.stack.get(path_and_query).await;
            let body = serde_json::from_str(&reply.text).unwrap_or(Value::Null);
            return (reply.status, reply.cache().to_string(), body);
        }
        let request = Request::get(format!("/api/{path_and_query}"))
            .body(Body::empty())
            .expect("request");
        self.call(request).await.0
    }

    /// `POST /api/update` on instance `which`: (status, x-cache-invalidation).
    pub async fn update(&self, which: usize, doc: &Value) -> (u16, String) {
        if which == 0 {
            let reply = self.stack.post("update", &doc.to_string()).await;
            let invalidation = reply.header("x-cache-invalidation").unwrap_or("-");
            return (reply.status, invalidation.to_string());
        }
        let request = Request::post("/api/update")
            .header("content-type", "application/json")
            .body(Body::from(doc.to_string()))
            .expect("request");
        let ((status, _, _), invalidation) = self.call(request).await;
        (status, invalidation)
    }

    async fn call(&self, request: Request<Body>) -> ((u16, String, Value), String) {
        let reply = Reply::from_router(&self.second, request).await;
        let invalidation = reply
            .header("x-cache-invalidation")
            .unwrap_or("-")
            .to_string();
        (
            (
                reply.status,
                reply.cache().to_string(),
                reply.json_or_null(),
            ),
            invalidation,
        )
    }
}

/// `population` of `city` in a query page.
pub(crate) fn population_of(body: &Value, city: &str) -> Option<u64> {
    body["items"]
        .as_array()?
        .iter()
        .find(|c| c["city"] == city)
        .and_then(|c| c["population"].as_u64())
}

const TEXAS: &str = "query?state=Texas&maxItemCount=1000";

/// On both instances, until a hit: every answer shows `population` for Austin. Returns how long
/// hits took to resume.
async fn until_hit_with(instances: &Instances, population: u64) -> Duration {
    let started = Instant::now();
    for which in 0..2 {
        let mut seen = Vec::new();
        loop {
            let (status, cache, body) = instances.get(which, TEXAS).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                population_of(&body, "Austin"),
                Some(population),
                "instance {which} answered older data (x-cache: {cache}) after {seen:?}"
            );
            if cache == "hit" {
                break;
            }
            seen.push(cache);
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "instance {which}: hits did not resume within 2 s: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    started.elapsed()
}

async fn acknowledged_update_survives_failovers(mode: Mode) {
    let mut redis = ReplicatedRedis::start().await;
    let instances = Instances::start(mode, &redis.url()).await;
    let tag = instances.stack.key_tag();
    for which in 0..2 {
        instances.get(which, TEXAS).await;
        let (_, cache, _) = instances.get(which, TEXAS).await;
        assert_eq!(cache, "hit", "instance {which} caches Texas");
    }
    redis.wait_in_sync().await;

    // 1. The replica misses the write: detached just before it, then promoted as it is. The
    //    write goes through instance 0; instance 1 has Texas cached and never saw the bump.
    redis.detach_replica();
    let austin = |population: u64| json!({"id":"austin-texas","city":"Austin","state":"Texas","population":population});
    let (status, invalidation) = instances.update(0, &austin(1001)).await;
    assert_eq!((status, invalidation.as_str()), (200, "done"));
    let unreachable = redis.replica_entries(&tag);
    assert!(unreachable >= 1, "the replica holds the old Texas page");
    redis.fail_over().await;
    let resumed = until_hit_with(&instances, 1001).await;
    println!(
        "lagging failover: {unreachable} entries made unreachable, hits resumed in {resumed:?}"
    );

    // 2. The replica has every write (a planned failover); the write goes through instance 1.
    redis.wait_in_sync().await;
    let (status, invalidation) = instances.update(1, &austin(1002)).await;
    assert_eq!((status, invalidation.as_str()), (200, "done"));
    until_hit_with(&instances, 1002).await;
    redis.fail_over().await;
    let resumed = until_hit_with(&instances, 1002).await;
    println!("up-to-date failover: hits resumed in {resumed:?}");
    let changes = instances.stack.diagnostics().await["cache"]["serverChanges"].clone();
    println!("instance 0 saw the server change {changes} times");
    instances.stack.shutdown().await;
}

/// Operations between two failovers of the measured checker, and how many failovers
/// (`FAILOVERS`, default 6; at least 5 for the report).
fn failovers() -> usize {
    std::env::var("FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

/// The bump script before this design (no server check), to measure what the check costs.
const BUMP_BEFORE: &str = r"
redis.pcall('SET', KEYS[1], ARGV[1], 'NX')
local g = redis.pcall('INCR', KEYS[1])
if type(g) == 'table' and g.err then
  redis.call('DEL', KEYS[1])
  return -1
end
return g
";

/// p50 and p99 of `samples`, in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples
            .get(i)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    (at(0.50), at(0.99))
}

/// The measured checker (run by `scripts/bench.sh --failover`, or with `--ignored`): 16
/// workers read and write through two handler instances while the Redis endpoint fails over
/// `FAILOVERS` times at random moments, to a lagging replica every other time. Every query that
/// started after an update's response must reflect it. Prints stale reads, hit resumption per
/// failover, entries each failover made unreachable, and write latency with and without
/// replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of about a minute: scripts/bench.sh --failover"]
async fn failover_checker_report() {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

    use crate::support::stack::city_rows;

    let mut redis = ReplicatedRedis::start().await;
    let instances = Arc::new(Instances::start(Mode::Forwarding, &redis.url()).await);
    let tag = instances.stack.key_tag();
    let states = ["Texas", "Ohio", "Florida", "Washington"];
    let cities: Arc<Vec<(String, String)>> = Arc::new(
        city_rows()
            .into_iter()
            .filter(|c| states.contains(&c.state.as_str()))
            .map(|c| (c.city, c.state))
            .collect(),
    );
    let acked: Arc<HashMap<String, AtomicU64>> = Arc::new(
        cities
            .iter()
            .map(|(c, s)| (format!("{c}|{s}"), AtomicU64::new(0)))
            .collect(),
    );
    let locks: Arc<HashMap<String, tokio::sync::Mutex<()>>> = Arc::new(
        cities
            .iter()
            .map(|(c, s)| (format!("{c}|{s}"), tokio::sync::Mutex::new(())))
            .collect(),
    );
    let next_version = Arc::new(AtomicU64::new(1_000_000_000));
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, writes, hits, stale, unconfirmed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let write_latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Versions whose update answered `pending` (Redis unreachable during a switch): their
    // guarantee is the documented weaker one, so stale reads after them are counted apart.
    let pending_versions = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let stale_after_pending = Arc::new(AtomicUsize::new(0));
    // When each instance last served a hit (ms since `epoch`): hits resume after a failover
    // when both have served one since.
    let epoch = Instant::now();
    let last_hit = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (instances, cities, acked, locks, next_version, stop) = (
                instances.clone(),
                cities.clone(),
                acked.clone(),
                locks.clone(),
                next_version.clone(),
                stop.clone(),
            );
            let (pending_versions, stale_after_pending, last_hit) = (
                pending_versions.clone(),
                stale_after_pending.clone(),
                last_hit.clone(),
            );
            let (reads, writes, hits, stale, unconfirmed, write_latencies) = (
                reads.clone(),
                writes.clone(),
                hits.clone(),
                stale.clone(),
                unconfirmed.clone(),
                write_latencies.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let which = rand::random::<u32>() as usize % 2;
                    let (city, state) = &cities[rand::random::<u32>() as usize % cities.len()];
                    let key = format!("{city}|{state}");
                    if rand::random::<u32>().is_multiple_of(10) {
                        let _serialized = locks[&key].lock().await;
                        let version = next_version.fetch_add(1, Ordering::SeqCst);
                        let doc = json!({"id": cosmos_cache_handler::seed::city_id(city, state),
                            "city": city, "state": state, "population": version});
                        let started = Instant::now();
                        let (status, invalidation) = instances.update(which, &doc).await;
                        let took = started.elapsed();
                        assert_eq!(status, 200);
                        if invalidation == "done" {
                            write_latencies
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(took);
                        } else {
                            unconfirmed.fetch_add(1, Ordering::Relaxed);
                        }
                        if invalidation != "done" {
                            pending_versions
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(version);
                        }
                        acked[&key].fetch_max(version, Ordering::SeqCst);
                        writes.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let floor: HashMap<String, u64> = cities
                            .iter()
                            .filter(|(_, s)| s == state)
                            .map(|(c, s)| (c.clone(), acked[&format!("{c}|{s}")].load(Ordering::SeqCst)))
                            .collect();
                        let query = format!("query?state={state}&maxItemCount=1000");
                        let (status, cache, body) = instances.get(which, &query).await;
                        assert_eq!(status, 200, "{body}");
                        if cache == "hit" {
                            hits.fetch_add(1, Ordering::Relaxed);
                            last_hit[which].fetch_max(
                                epoch.elapsed().as_millis() as u64,
                                Ordering::SeqCst,
                            );
                        }
                        for item in body["items"].as_array().expect("items") {
                            let name = item["city"].as_str().unwrap_or_default();
                            let seen = item["population"].as_u64().unwrap_or(0);
                            let floor = floor.get(name).copied().unwrap_or(0);
                            if floor > 0 && seen < floor {
                                let pending = pending_versions
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .contains(&floor);
                                if pending {
                                    stale_after_pending.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    stale.fetch_add(1, Ordering::Relaxed);
                                }
                                eprintln!("STALE ({cache}, instance {which}, pending {pending}): {name}, {state}: saw {seen}, acknowledged {floor}");
                            }
                        }
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // The failovers, at random moments. Hits have resumed when both instances have served a
    // hit (of any worker's query) since the switch.
    let mut report = Vec::new();
    for round in 0..failovers() {
        tokio::time::sleep(Duration::from_millis(
            500 + u64::from(rand::random::<u32>() % 1500),
        ))
        .await;
        redis.wait_in_sync().await;
        let lagging = round % 2 == 0;
        if lagging {
            redis.detach_replica();
            // Writes acknowledged by the primary from now on never reach the replica.
            tokio::time::sleep(Duration::from_millis(
                100 + u64::from(rand::random::<u32>() % 400),
            ))
            .await;
        }
        let writes_before = writes.load(Ordering::Relaxed);
        let unreachable = redis.replica_entries(&tag);
        redis.fail_over().await;
        let switched = epoch.elapsed().as_millis() as u64;
        let resumed = loop {
            let since = last_hit
                .iter()
                .map(|t| t.load(Ordering::SeqCst))
                .min()
                .unwrap_or(0);
            if since > switched {
                break Duration::from_millis(since - switched);
            }
            assert!(
                epoch.elapsed().as_millis() as u64 - switched < 10_000,
                "no hits 10 s after failover {round}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        report.push((round, lagging, unreachable, resumed, writes_before));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("worker");
    }
    let mut with_replica = write_latencies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let (p50_replica, p99_replica) = percentiles(&mut with_replica);

    // Write latency without load, with the replica attached and against a Redis without
    // replicas (Basic tier, local runs): end to end through the emulator, and the bump alone
    // (this design's script vs. the script before it, one round trip each).
    redis.wait_in_sync().await;
    let standalone = Instances::start(Mode::Forwarding, &instances.stack.redis.url()).await;
    let mut latency = Vec::new();
    for (label, setup, url) in [
        ("with a replica", &*instances, redis.url()),
        (
            "without replicas",
            &standalone,
            standalone.stack.redis.url(),
        ),
    ] {
        let mut end_to_end = Vec::new();
        for i in 0..200 {
            let (city, state) = &cities[i % cities.len()];
            let doc = json!({"id": cosmos_cache_handler::seed::city_id(city, state),
                "city": city, "state": state, "population": 2_000_000_000u64 + i as u64});
            let started = Instant::now();
            let (status, invalidation) = setup.update(0, &doc).await;
            assert_eq!((status, invalidation.as_str()), (200, "done"));
            end_to_end.push(started.elapsed());
        }
        let cache = setup.stack.app_state().cache;
        let mut bump_now = Vec::new();
        for _ in 0..500 {
            let started = Instant::now();
            cache.invalidate().await;
            bump_now.push(started.elapsed());
        }
        let client = redis::Client::open(url).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let before = redis::Script::new(BUMP_BEFORE);
        let mut bump_before = Vec::new();
        for _ in 0..500 {
            let started = Instant::now();
            let _: i64 = before
                .key(format!("cc:{tag}:gen"))
                .arg(1u64 << 40)
                .invoke_async(&mut conn)
                .await
                .expect("bump");
            bump_before.push(started.elapsed());
        }
        latency.push((
            label,
            percentiles(&mut end_to_end),
            percentiles(&mut bump_now),
            percentiles(&mut bump_before),
        ));
    }

    let (reads, writes, hits, stale) = (
        reads.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed),
        hits.load(Ordering::Relaxed),
        stale.load(Ordering::Relaxed),
    );
    println!("\n## Failover checker (2 instances, 16 workers)\n");
    println!("| failover | replica | entries made unreachable | hits resumed after |");
    println!("|---|---|---|---|");
    for (round, lagging, unreachable, resumed, _) in &report {
        println!(
            "| {} | {} | {unreachable} | {} ms |",
            round + 1,
            if *lagging {
                "lagging (detached)"
            } else {
                "up to date"
            },
            resumed.as_millis()
        );
    }
    println!(
        "\n{} operations ({reads} queries, {writes} updates, {hits} hits), {} failovers, **{stale} stale reads** after `done`; {} updates answered `pending` during a switch, {} stale reads after those",
        reads + writes,
        report.len(),
        unconfirmed.load(Ordering::Relaxed),
        stale_after_pending.load(Ordering::Relaxed)
    );
    println!(
        "update latency under the checker's load (16 workers, failovers; `done` only): p50 {p50_replica:.2} ms, p99 {p99_replica:.2} ms ({} writes)\n",
        with_replica.len()
    );
    println!(
        "| without load | update end to end p50 / p99 | bump now p50 / p99 | bump before p50 / p99 |"
    );
    println!("|---|---|---|---|");
    for (label, e2e, now, before) in &latency {
        println!(
            "| {label} | {:.2} / {:.2} ms | {:.3} / {:.3} ms | {:.3} / {:.3} ms |",
            e2e.0, e2e.1, now.0, now.1, before.0, before.1
        );
    }
    assert_eq!(stale, 0);
    assert!(report.len() >= 5.min(failovers()));
    for (round, _, _, resumed, _) in &report {
        assert!(
            *resumed < Duration::from_secs(2),
            "failover {round}: hits resumed after {resumed:?}"
        );
    }
    standalone.stack.shutdown().await;
}
