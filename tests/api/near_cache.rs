//! The near cache (L1, `CACHE_LOCAL_MAX_BYTES`): pages served without a Redis round trip
//! (`x-cache: hit-local`), kept correct by Redis's invalidation pushes on the generation key,
//! dropped when the tracking connection is lost or silent, and off where Redis refuses
//! tracking.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::chaos_proxy::{Behaviour, ChaosProxy};
use crate::support::{Mode, Stack, instances};

both_modes!(own_writes_are_read_at_once_and_hot_pages_skip_redis);

/// The near-cache setting every L1 test turns on (also `near_adversarial.rs`, `near_checker/`).
pub(crate) const L1: (&str, &str) = ("CACHE_LOCAL_MAX_BYTES", "8000000");
pub(crate) const TEXAS: &str = "query?state=Texas";

/// An `update` body for Austin, Texas with `population`.
pub(crate) fn austin(population: u64) -> Value {
    json!({"id": "austin-texas", "city": "Austin", "state": "Texas", "population": population})
}

/// Austin's population on a query page, if the page holds Austin.
pub(crate) fn population_of_austin(text: &str) -> Option<u64> {
    let body: Value = serde_json::from_str(text).ok()?;
    body["items"]
        .as_array()?
        .iter()
        .find(|c| c["city"] == "Austin")
        .and_then(|c| c["population"].as_u64())
}

/// Reads `TEXAS` until it is served from L1; panics after `limit`.
async fn until_local_hit(stack: &Stack, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let reply = stack.get(TEXAS).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        if reply.cache() == "hit-local" {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "no hit-local within {limit:?} (last: {})",
            reply.cache()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn own_writes_are_read_at_once_and_hot_pages_skip_redis(mode: Mode) {
    let stack = Stack::start_with(mode, true, &[L1]).await;
    assert_eq!(stack.get(TEXAS).await.cache(), "miss");
    let warm = until_local_hit(&stack, Duration::from_secs(5)).await;
    println!("L1 serving {warm:?} after the first miss");
    // Every read after this instance's own 200 sees the write, 20 times over; between writes the
    // page comes back to L1.
    for population in 5_000_001..5_000_021 {
        let reply = stack.post("update", &austin(population).to_string()).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let read = stack.get(TEXAS).await;
        assert_ne!(
            read.cache(),
            "hit-local",
            "served from L1 right after a write"
        );
        assert_eq!(population_of_austin(&read.text), Some(population));
        until_local_hit(&stack, Duration::from_secs(5)).await;
        let again = stack.get(TEXAS).await;
        assert_eq!(population_of_austin(&again.text), Some(population));
    }
    let local = stack.diagnostics().await["cache"]["local"].clone();
    println!("near cache counters: {local}");
    assert!(local["hits"].as_u64().expect("hits") >= 40, "{local}");
    assert_eq!(local["live"], true, "{local}");
    assert!(local["bytes"].as_u64().expect("bytes") > 10_000, "{local}");
    assert!(
        local["bytes"].as_u64().expect("bytes") <= 8_000_000,
        "{local}"
    );
    stack.shutdown().await;
}

async fn write_on(app: &axum::Router, population: u64) {
    let reply = instances::post(app, "update", &austin(population).to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

/// Writes through one instance, reads through another that serves from L1: a read that starts
/// 10 ms after the writer's 200 never returns the old population.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_another_instance_invalidate_l1_within_10_ms() {
    let stack = Stack::start_with(Mode::Forwarding, true, &[L1]).await;
    let writer = stack.instance(&[]);
    let (mut stale, mut local_hits, mut reads) = (0, 0, 0);
    for population in 6_000_001..6_000_101u64 {
        // Warm L1 on the reader with the current page.
        until_local_hit(&stack, Duration::from_secs(5)).await;
        write_on(&writer, population).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        for _ in 0..3 {
            let read = stack.get(TEXAS).await;
            reads += 1;
            if read.cache() == "hit-local" {
                local_hits += 1;
            }
            if population_of_austin(&read.text) != Some(population) {
                stale += 1;
            }
        }
    }
    println!(
        "100 writes on instance B, {reads} reads on instance A starting ≥ 10 ms after each \
         200: {stale} stale, {local_hits} served from L1"
    );
    assert_eq!(stale, 0);
    // The reads after the first one come back to L1 (the reader filled it again).
    assert!(local_hits > 0);
    stack.shutdown().await;
}

/// The tracking connection goes silent (a black hole): L1 stops within the heartbeat bound,
/// and a write made meanwhile by another instance (on a path that still works) is never
/// hidden longer than that bound. When the path comes back, L1 comes back without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tracking_connection_stops_l1_within_the_heartbeat_bound() {
    let mut stack = Stack::services(Mode::Forwarding, true, &[L1, ("REDIS_TIMEOUT_MS", "100")]);
    let proxy = ChaosProxy::start(SocketAddr::from(([127, 0, 0, 1], stack.redis.port))).await;
    stack.set_env("REDIS_CONNECTION_STRING", &proxy.redis_url());
    stack.start_handler().await;
    let writer = stack.instance(&[("REDIS_CONNECTION_STRING", &stack.redis.url())]);
    assert_eq!(stack.get(TEXAS).await.cache(), "miss");
    until_local_hit(&stack, Duration::from_secs(5)).await;

    proxy.set(Behaviour::BlackHole);
    write_on(&writer, 7_000_001).await;
    let written = Instant::now();
    let mut worst_stale: Option<Duration> = None;
    let mut last_local = None;
    while written.elapsed() < Duration::from_millis(1_500) {
        let started = written.elapsed();
        let read = stack.get(TEXAS).await;
        assert_eq!(read.status, 200, "{}", read.text);
        if read.cache() == "hit-local" {
            last_local = Some(started);
        }
        if population_of_austin(&read.text) != Some(7_000_001) {
            worst_stale = worst_stale.max(Some(started));
        }
    }
    println!(
        "tracking black-holed: last L1 answer {last_local:?} after the write, last stale read \
         {worst_stale:?} after it (heartbeat bound 250 ms)"
    );
    assert!(
        worst_stale.is_none_or(|t| t < Duration::from_millis(300)),
        "{worst_stale:?}"
    );
    assert!(
        last_local.is_none_or(|t| t < Duration::from_millis(300)),
        "{last_local:?}"
    );

    proxy.set(Behaviour::Pass);
    proxy.cut_all();
    let back = until_local_hit(&stack, Duration::from_secs(10)).await;
    println!("L1 back {back:?} after the path returned");
    let read = stack.get(TEXAS).await;
    assert_eq!(population_of_austin(&read.text), Some(7_000_001));
    let local = stack.diagnostics().await["cache"]["local"].clone();
    assert!(
        local["trackingLosses"].as_u64().expect("losses") >= 1,
        "{local}"
    );
    assert!(
        local["trackingStarts"].as_u64().expect("starts") >= 2,
        "{local}"
    );
    stack.shutdown().await;
}

/// An ACL user without `CLIENT TRACKING`: L1 stays off (the reads are Redis hits, never
/// `hit-local`) and everything else works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_redis_refuses_tracking_l1_stays_off() {
    let mut stack = Stack::services(Mode::Payload, true, &[L1]);
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "app",
            "on",
            ">app-password",
            "~*",
            "&*",
            "+@all",
            "-client|tracking",
        ])
        .query(&mut stack.redis.connection())
        .expect("ACL SETUSER");
    let url = format!("redis://app:app-password@127.0.0.1:{}", stack.redis.port);
    stack.set_env("REDIS_CONNECTION_STRING", &url);
    stack.start_handler().await;
    l1_stays_off(stack).await;
}

/// A write that bypasses `update` (no invalidation) is hidden at most for the TTL, with L1 as
/// without it: an instance that reads the page from Redis shortly before the Redis entry expires
/// keeps it in L1 only for what is left of the entry's TTL, not for a whole TTL more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_keeps_a_page_no_longer_than_its_redis_entry() {
    let stack = Stack::services(Mode::Forwarding, true, &[L1, ("CACHE_TTL_SECONDS", "2")]);
    let (filler, reader) = (stack.instance(&[]), stack.instance(&[]));
    // The reader's tracking connection starts with its first read (of another page).
    instances::get(&reader, "query?state=Ohio").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = instances::get(&filler, TEXAS).await;
    assert_eq!(first.cache(), "miss");
    // The entry was stored before that answer came back, so it expires by `stored` + 2.2 s
    // (2 s ± 10 %) however long the fill took. (Taken before the request, the bound missed a
    // fill slowed by the rest of the suite: one read at 2.30 s was still, rightly, an L1 hit.)
    let stored = Instant::now();
    // Another writer changes Austin behind the handler's back.
    stack
        .cosmos
        .upsert_raw(
            &stack.database,
            crate::support::stack::CONTAINER,
            "Texas",
            &austin(9_123_456).to_string(),
        )
        .await;
    // Shortly before the Redis entry expires (2 s ± 10 %), the reader loads it into L1.
    tokio::time::sleep(Duration::from_millis(1_600).saturating_sub(stored.elapsed())).await;
    assert_eq!(instances::get(&reader, TEXAS).await.cache(), "hit");
    let local = instances::get(&reader, TEXAS).await;
    assert_eq!(
        local.cache(),
        "hit-local",
        "the scenario needs the page in L1"
    );
    assert_ne!(population_of_austin(&local.text), Some(9_123_456));
    // Every entry stored at `stored` is gone from Redis by 2.2 s: from then on, the new row.
    tokio::time::sleep(Duration::from_millis(2_300).saturating_sub(stored.elapsed())).await;
    let mut stale = Vec::new();
    while stored.elapsed() < Duration::from_millis(4_000) {
        let read = instances::get(&reader, TEXAS).await;
        assert_eq!(read.status, 200, "{}", read.text);
        if population_of_austin(&read.text) != Some(9_123_456) {
            stale.push((stored.elapsed(), read.cache().to_string()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stale.is_empty(), "old page after the TTL: {stale:?}");
    stack.shutdown().await;
}

/// A path that answers every command but never delivers a push (a proxy that drops RESP3 push
/// frames): tracking is accepted, yet the probe write's invalidation never arrives, so L1 stays
/// off instead of serving pages nobody will invalidate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_pushes_never_arrive_l1_stays_off() {
    let mut stack = Stack::services(Mode::Forwarding, true, &[L1]);
    let dropper = crate::support::push_dropper::PushDropper::start(SocketAddr::from((
        [127, 0, 0, 1],
        stack.redis.port,
    )))
    .await;
    stack.set_env("REDIS_CONNECTION_STRING", &dropper.redis_url());
    stack.start_handler().await;
    l1_stays_off(stack).await;
}

/// L1 never went live on `stack`: the Texas page misses, then is a Redis hit 20 times (never
/// `hit-local`), and the counters show no L1 hit and no tracking start.
async fn l1_stays_off(stack: Stack) {
    assert_eq!(stack.get(TEXAS).await.cache(), "miss");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..20 {
        assert_eq!(stack.get(TEXAS).await.cache(), "hit");
    }
    let local = stack.diagnostics().await["cache"]["local"].clone();
    assert_eq!(local["live"], false, "{local}");
    assert_eq!(local["hits"], 0, "{local}");
    assert_eq!(local["trackingStarts"], 0, "{local}");
    stack.shutdown().await;
}
