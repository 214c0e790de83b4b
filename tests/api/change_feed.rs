//! The change-feed function `invalidate` on the real stack: writes made straight to Cosmos (not
//! through `update`) reach readers within `feedPollDelay` + processing; a batch that meets Redis
//! down is retried per the function's retry policy and not lost; `update`'s own writes are not
//! invalidated twice; 10,000 fuzzed invocations never answer 2xx without the bump they owe.
//!
//! The host emulator drives the trigger (`tests/support/change_feed.rs`), polling the local
//! Cosmos server's change feed every `feedPollDelay` (1000 ms in `invalidate/function.json`).
//! The stack turns the function off by default; these tests turn it on.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

use crate::support::chaos_proxy::{Behaviour, ChaosProxy};
use crate::support::{Mode, Stack};

/// App settings that turn the change-feed function on.
const TRIGGER_ON: (&str, &str) = ("AzureWebJobs.invalidate.Disabled", "false");
/// "Every read that starts later than this after the write was acknowledged sees it."
const WINDOW: Duration = Duration::from_secs(2);

both_modes!(direct_writes_reach_readers_within_the_window);

fn trigger_stats(stack: &Stack) -> Arc<crate::support::change_feed::TriggerStats> {
    stack
        .host
        .as_ref()
        .expect("handler running")
        .change_feeds()
        .get("invalidate")
        .expect("the invalidate function is watched")
        .1
        .clone()
}

/// Waits until `done` holds, or panics with `what` after `limit`.
async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn probe(seq: u64) -> String {
    json!({"id": "cf-probe", "state": "Texas", "city": "Probe", "seq": seq}).to_string()
}

/// The `seq` of the probe document in a query reply.
fn seen_seq(reply: &crate::support::stack::Reply) -> Option<u64> {
    reply.json()["items"]
        .as_array()?
        .iter()
        .find(|d| d["id"] == "cf-probe")
        .and_then(|d| d["seq"].as_u64())
}

/// Per write: how long after its acknowledgement reads still returned an older version (0 when
/// none did), and the number of reads that started more than [`WINDOW`] after a write's
/// acknowledgement yet missed it.
fn staleness(acks: &[(u64, Instant)], reads: &[(Instant, u64)]) -> (Vec<Duration>, usize) {
    let mut windows = Vec::with_capacity(acks.len());
    for (seq, acked) in acks {
        let last_stale = reads
            .iter()
            .filter(|(start, seen)| start >= acked && seen < seq)
            .map(|(start, _)| *start - *acked)
            .max()
            .unwrap_or_default();
        windows.push(last_stale);
    }
    let violations = reads
        .iter()
        .filter(|(start, seen)| {
            acks.iter()
                .any(|(seq, acked)| *acked + WINDOW < *start && seq > seen)
        })
        .count();
    (windows, violations)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A writer upserts one document straight into the local Cosmos server (its REST API: neither
/// the handler nor its SDK) every 40 ms while two readers query it through the host emulator.
/// `CHANGE_FEED_WRITES` sets the number of writes (default 150; the benchmark runs 2,000).
async fn direct_writes_reach_readers_within_the_window(mode: Mode) {
    let writes: u64 = std::env::var("CHANGE_FEED_WRITES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(150);
    let stack = Arc::new(Stack::start_with(mode, true, &[TRIGGER_ON]).await);
    let stats = trigger_stats(&stack);
    stack
        .cosmos
        .upsert_raw(&stack.database, "us_cities", "Texas", &probe(0))
        .await;
    let first_ack = Instant::now();
    let acks: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(vec![(0, first_ack)]));
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let stack = stack.clone();
        let running = running.clone();
        readers.push(tokio::spawn(async move {
            let mut reads = Vec::new();
            let mut hits = 0usize;
            while running.load(Ordering::Acquire) {
                let start = Instant::now();
                let reply = stack.get("query?id=cf-probe&state=Texas").await;
                assert_eq!(reply.status, 200, "{}", reply.text);
                if reply.cache() == "hit" {
                    hits += 1;
                }
                if let Some(seq) = seen_seq(&reply) {
                    reads.push((start, seq));
                }
            }
            (reads, hits)
        }));
    }
    for seq in 1..=writes {
        tokio::time::sleep(Duration::from_millis(40)).await;
        stack
            .cosmos
            .upsert_raw(&stack.database, "us_cities", "Texas", &probe(seq))
            .await;
        acks.lock().expect("acks").push((seq, Instant::now()));
    }
    // Let the readers run past the last write's window.
    tokio::time::sleep(WINDOW + Duration::from_millis(500)).await;
    running.store(false, Ordering::Release);
    let mut reads = Vec::new();
    let mut hits = 0;
    for reader in readers {
        let (r, h) = reader.await.expect("reader");
        reads.extend(r);
        hits += h;
    }
    let acks = acks.lock().expect("acks").clone();
    let (mut windows, violations) = staleness(&acks, &reads);
    windows.sort();
    let diagnostics = stack.diagnostics().await["cache"].clone();
    println!(
        "{mode:?}: {} direct writes, {} reads ({hits} hits), staleness window p50 {:?} p99 {:?} max {:?}, \
         {violations} violation(s); trigger: {} batches / {} documents / {} failed invocations; \
         handler: {} feed invalidations",
        acks.len(),
        reads.len(),
        percentile(&windows, 50.0),
        percentile(&windows, 99.0),
        windows.last().copied().unwrap_or_default(),
        stats.batches.load(Ordering::Relaxed),
        stats.documents.load(Ordering::Relaxed),
        stats.failed_invocations.load(Ordering::Relaxed),
        diagnostics["feedInvalidations"],
    );
    assert_eq!(violations, 0, "reads older than {WINDOW:?} after the write");
    // The check had something to catch: pages were served from Redis between writes, and
    // the change feed, not a TTL, moved them.
    assert!(
        hits > reads.len() / 4,
        "{hits} hits of {} reads",
        reads.len()
    );
    assert!(diagnostics["feedInvalidations"].as_u64() >= Some(writes / 40));
    // Latest-version mode: writes to one document between two polls arrive as one change.
    assert!(stats.batches.load(Ordering::Relaxed) >= writes / 40);
    match Arc::try_unwrap(stack) {
        Ok(stack) => stack.shutdown().await,
        Err(_) => panic!("readers still hold the stack"),
    }
}

/// The control: with the function off, a direct write is still invisible after the window
/// (the page stays cached until its TTL), so the test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_trigger_direct_writes_stay_stale() {
    let stack = Stack::start(Mode::Payload).await;
    assert!(
        stack
            .host
            .as_ref()
            .expect("running")
            .change_feeds()
            .get("invalidate")
            .is_none()
    );
    stack
        .cosmos
        .upsert_raw(&stack.database, "us_cities", "Texas", &probe(0))
        .await;
    let first = stack.get("query?id=cf-probe&state=Texas").await;
    assert_eq!((first.cache(), seen_seq(&first)), ("miss", Some(0)));
    stack
        .cosmos
        .upsert_raw(&stack.database, "us_cities", "Texas", &probe(1))
        .await;
    tokio::time::sleep(WINDOW + Duration::from_millis(500)).await;
    let later = stack.get("query?id=cf-probe&state=Texas").await;
    assert_eq!((later.cache(), seen_seq(&later)), ("hit", Some(0)));
    stack.shutdown().await;
}

/// Redis unreachable (connections refused; its data intact) when a batch arrives: the
/// invocation fails, the emulator retries per the policy (exponential from 1 s) without moving
/// its checkpoint, and once Redis answers again the generation moves; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_meets_redis_down_is_retried_until_it_lands() {
    let mut stack = Stack::services(Mode::Payload, true, &[TRIGGER_ON]);
    let proxy = ChaosProxy::start(SocketAddr::from(([127, 0, 0, 1], stack.redis.port))).await;
    stack.set_env("REDIS_CONNECTION_STRING", &proxy.redis_url());
    stack.start_handler().await;
    let stats = trigger_stats(&stack);
    assert_eq!(stack.get("query?state=Ohio").await.cache(), "miss");
    assert_eq!(stack.get("query?state=Ohio").await.cache(), "hit");
    let (_, before) = stack.generation();
    let before = before.expect("a generation");

    proxy.set(Behaviour::Refuse);
    proxy.cut_all();
    let doc = json!({"id": "cf-outage", "state": "Ohio", "city": "Outage"});
    stack
        .cosmos
        .upsert_raw(&stack.database, "us_cities", "Ohio", &doc.to_string())
        .await;
    until(Duration::from_secs(20), "two failed invocations", || {
        stats.failed_invocations.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert_eq!(
        stats.batches.load(Ordering::Relaxed),
        0,
        "nothing acknowledged"
    );
    assert_eq!(stack.generation().1, Some(before), "Redis kept its data");

    proxy.set(Behaviour::Pass);
    until(Duration::from_secs(40), "the batch to land", || {
        stats.batches.load(Ordering::Relaxed) >= 1
    })
    .await;
    let after = stack.generation().1.expect("a generation");
    let failed = stats.failed_invocations.load(Ordering::Relaxed);
    println!(
        "Redis down: {failed} failed invocation(s), then the batch landed; generation {before} -> {after}"
    );
    assert_ne!(after, before, "the generation moved");
    assert_eq!(stats.documents.load(Ordering::Relaxed), 1);
    assert_eq!(stats.dropped_batches.load(Ordering::Relaxed), 0);
    assert_eq!(stats.invocations.load(Ordering::Relaxed), failed + 1);
    // Readers now get the new document (a miss under the new generation).
    let now = stack.get("query?state=Ohio").await;
    assert!(now.text.contains("cf-outage"), "{}", now.text);
    stack.shutdown().await;
}

/// A write through `update` bumps once: its change, when the feed delivers it, is recognised and
/// skipped. A direct write right after is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_are_not_invalidated_twice() {
    let stack = Stack::start_with(Mode::Forwarding, true, &[TRIGGER_ON]).await;
    let stats = trigger_stats(&stack);
    assert_eq!(stack.get("query?state=Utah").await.cache(), "miss");
    let update = stack
        .post(
            "update",
            r#"[{"id":"cf-own-1","state":"Utah","city":"Own"},{"id":"cf-own-2","state":"Utah","city":"Own"}]"#,
        )
        .await;
    assert_eq!(update.status, 200, "{}", update.text);
    assert_eq!(update.header("x-cache-invalidation"), Some("done"));
    let after_update = stack.generation().1;
    let own_key = format!("cc:{}:own", stack.key_tag());
    let recorded: usize = redis::cmd("ZCARD")
        .arg(&own_key)
        .query(&mut stack.redis.connection())
        .expect("ZCARD");
    assert_eq!(recorded, 2, "both versions recorded");
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&own_key)
        .query(&mut stack.redis.connection())
        .expect("PTTL");
    assert!((1..=60_000).contains(&ttl_ms), "expires: {ttl_ms} ms");
    assert_eq!(stack.get("query?state=Utah").await.cache(), "miss");
    until(
        Duration::from_secs(10),
        "the feed to deliver both writes",
        || stats.documents.load(Ordering::Relaxed) >= 2,
    )
    .await;
    assert_eq!(stack.generation().1, after_update, "no second bump");
    assert_eq!(stack.get("query?state=Utah").await.cache(), "hit");
    let diagnostics = stack.diagnostics().await["cache"].clone();
    assert!(
        diagnostics["feedOwnWrites"].as_u64() >= Some(1),
        "{diagnostics}"
    );
    assert_eq!(diagnostics["feedInvalidations"], 0, "{diagnostics}");

    let delivered = stats.documents.load(Ordering::Relaxed);
    stack
        .cosmos
        .upsert_raw(
            &stack.database,
            "us_cities",
            "Utah",
            r#"{"id":"cf-own-1","state":"Utah","city":"Someone else"}"#,
        )
        .await;
    until(Duration::from_secs(10), "the direct write", || {
        stats.documents.load(Ordering::Relaxed) > delivered
    })
    .await;
    assert_ne!(stack.generation().1, after_update, "a foreign write bumps");
    let reply = stack.get("query?state=Utah").await;
    assert_eq!(reply.cache(), "miss");
    assert!(reply.text.contains("Someone else"));
    stack.shutdown().await;
}

/// With `REDIS_CLUSTER=true` on a real 3-node cluster: the own-writes set shares the
/// generation's slot (the script touches both), the skip and the bump work as on one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_works_on_a_redis_cluster() {
    let cluster = crate::cluster::LocalCluster::start();
    let mut stack = Stack::services(Mode::Forwarding, true, &[TRIGGER_ON]);
    stack.set_env(
        "REDIS_CONNECTION_STRING",
        &format!("redis://127.0.0.1:{}", cluster.nodes[0].port),
    );
    stack.set_env("REDIS_CLUSTER", "true");
    stack.start_handler().await;
    let stats = trigger_stats(&stack);
    let generation = || -> Vec<Option<String>> {
        cluster
            .nodes
            .iter()
            .map(|n| {
                redis::cmd("GET")
                    .arg(format!("cc:{}:gen", stack.key_tag()))
                    .query::<Option<String>>(&mut n.connection())
                    .unwrap_or(None)
            })
            .collect()
    };
    assert_eq!(stack.get("query?state=Iowa").await.cache(), "miss");
    let update = stack
        .post(
            "update",
            r#"{"id":"cf-cluster","state":"Iowa","city":"Own"}"#,
        )
        .await;
    assert_eq!(
        update.header("x-cache-invalidation"),
        Some("done"),
        "{}",
        update.text
    );
    let after_update = generation();
    until(
        Duration::from_secs(10),
        "the feed to deliver the update",
        || stats.batches.load(Ordering::Relaxed) >= 1,
    )
    .await;
    assert_eq!(
        generation(),
        after_update,
        "own write skipped on the cluster"
    );
    stack
        .cosmos
        .upsert_raw(
            &stack.database,
            "us_cities",
            "Iowa",
            r#"{"id":"cf-cluster","state":"Iowa","city":"Other"}"#,
        )
        .await;
    until(Duration::from_secs(10), "the direct write", || {
        stats.batches.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert_ne!(
        generation(),
        after_update,
        "a direct write bumps on the cluster"
    );
    assert_eq!(stats.failed_invocations.load(Ordering::Relaxed), 0);
    let reply = stack.get("query?state=Iowa").await;
    assert!(reply.text.contains("Other"), "{}", reply.text);
    stack.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The script's rules, in process against a real redis-server.

/// Batches the JSON parser cannot read — a document nested past its recursion limit, a lone
/// UTF-16 surrogate (JavaScript writes them, Cosmos stores them), bytes that are not UTF-8 —
/// in every encoding the host may use: 200 with a bump, never a skipped one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_batches_still_invalidate() {
    let stack = Stack::services(Mode::Payload, false, &[]);
    let app = cosmos_cache_handler::router(stack.app_state(), "api");
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let documents = [
        format!(r#"[{{"id":"a","_etag":"e1"}},{{"id":"b","_etag":"e2","n":{deep}}}]"#),
        r#"[{"id":"a","_etag":"e1"},{"id":"b","_etag":"e2","note":"\ud800"}]"#.to_string(),
    ];
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for docs in &documents {
        // Plain, single-encoded and double-encoded, as in `Data.documents`.
        let single = serde_json::to_string(docs).expect("encode");
        let double = serde_json::to_string(&single).expect("encode");
        for inner in [docs.clone(), single, double] {
            bodies.push(format!(r#"{{"Data":{{"documents":{inner}}},"Metadata":{{}}}}"#).into());
        }
    }
    let mut not_utf8 = br#"{"Data":{"documents":[{"id":"a","_etag":""#.to_vec();
    not_utf8.extend_from_slice(b"\xff\xfe\"}]},\"Metadata\":{}}");
    bodies.push(not_utf8);
    for body in bodies {
        let before = stack.generation().1;
        let shown = String::from_utf8_lossy(&body)
            .chars()
            .take(80)
            .collect::<String>();
        let (status, reply) = invoke(&app, body).await;
        assert_eq!(status, 200, "{reply} for {shown}");
        assert_ne!(stack.generation().1, before, "no bump for {shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_skips_only_batches_of_recorded_versions() {
    use cosmos_cache_handler::cache::FeedInvalidation::{Bumped, OwnWrites};
    let stack = Stack::services(Mode::Payload, false, &[]);
    let cache = stack.app_state().cache;
    let generation = || stack.generation().1;
    let own: Vec<String> = vec!["v1".into(), "v2".into(), "v3".into()];
    cache.invalidate_writes(&own).await;
    let g = generation();
    let some = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // A foreign version in the batch: bump, and our versions stay recorded.
    assert_eq!(
        cache.invalidate_changes(Some(&some(&["v1", "x"]))).await,
        Ok(Bumped)
    );
    assert_ne!(generation(), g);
    // A change without a version: bump.
    let g = generation();
    assert_eq!(cache.invalidate_changes(None).await, Ok(Bumped));
    assert_ne!(generation(), g);
    // Only ours: skip, and forget them.
    let g = generation();
    assert_eq!(
        cache.invalidate_changes(Some(&some(&["v1", "v2"]))).await,
        Ok(OwnWrites)
    );
    assert_eq!(generation(), g);
    // Redelivered: forgotten, so bump (an extra miss, never a stale read).
    assert_eq!(
        cache.invalidate_changes(Some(&some(&["v1"]))).await,
        Ok(Bumped)
    );
    // An empty version list is not "all ours".
    let g = generation();
    assert_eq!(cache.invalidate_changes(Some(&[])).await, Ok(Bumped));
    assert_ne!(generation(), g);
    // v3 is still there; recorded versions age out of the window (scores are Redis ms).
    let key = format!("cc:{}:own", stack.key_tag());
    let _: () = redis::cmd("ZADD")
        .arg(&key)
        .arg(0)
        .arg("v3")
        .query(&mut stack.redis.connection())
        .expect("age v3");
    assert_eq!(
        cache.invalidate_changes(Some(&some(&["v3"]))).await,
        Ok(Bumped)
    );
    // Redis unreachable: an error, not a skip.
    let mut down = stack.settings();
    down.redis = cosmos_cache_handler::config::parse_redis_connection_string(&format!(
        "redis://127.0.0.1:{}",
        crate::support::redis_server::free_port()
    ))
    .expect("url");
    let dead = cosmos_cache_handler::build_state(&down)
        .expect("state")
        .cache;
    assert!(dead.invalidate_changes(Some(&some(&["v9"]))).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Fuzzing the invocation: 10,000 generated payloads against the real router and a real Redis.

/// One generated change.
#[derive(Debug, Clone)]
enum Change {
    /// A document with a version `update` recorded (quoted as Cosmos DB quotes it, or not).
    Own(usize, bool),
    /// A document with a version nobody recorded.
    Foreign(String),
    /// A document without `_etag`, or with a non-string one.
    Unversioned(Value),
    /// Not a document at all.
    Scalar(Value),
}

/// How the batch is wrapped.
#[derive(Debug, Clone)]
enum Shape {
    /// `Data.documents` = the array encoded `layers` times as a JSON string (0 = the array).
    Encoded(usize),
    /// `Data.<other>` as the only entry, double-encoded.
    Renamed,
    /// `Data.documents` is an object, a number or text that is not JSON.
    NotAnArray(Value),
    /// The body is not an invocation: no `Data`, or not JSON, or truncated.
    NoEnvelope(u8),
}

#[derive(Debug, Clone)]
struct Case {
    changes: Vec<Change>,
    shape: Shape,
}

const OWN: [&str; 4] = ["own-a", "own-b", "own-c", "own-d"];

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0..OWN.len(), any::<bool>()).prop_map(|(i, q)| Change::Own(i, q)),
        "[a-z0-9-]{1,12}".prop_map(|s| Change::Foreign(format!("foreign-{s}"))),
        prop_oneof![
            Just(json!({"id": "u"})),
            Just(json!({"id": "u", "_etag": null})),
            Just(json!({"id": "u", "_etag": 5})),
            Just(json!({"id": "u", "_etag": ""})),
            Just(json!({"id": "u", "_etag": ["own-a"]})),
        ]
        .prop_map(Change::Unversioned),
        prop_oneof![
            Just(json!(1)),
            Just(json!("own-a")),
            Just(json!(null)),
            Just(json!([]))
        ]
        .prop_map(Change::Scalar),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let shape = prop_oneof![
        6 => (0usize..4).prop_map(Shape::Encoded),
        1 => Just(Shape::Renamed),
        1 => prop_oneof![
            Just(json!({"id": "x", "_etag": "foreign"})),
            Just(json!(7)),
            Just(json!("not json [")),
            Just(json!(true)),
        ]
        .prop_map(Shape::NotAnArray),
        1 => (0u8..3).prop_map(Shape::NoEnvelope),
    ];
    (proptest::collection::vec(change(), 0..6), shape)
        .prop_map(|(changes, shape)| Case { changes, shape })
}

impl Case {
    fn documents(&self) -> Value {
        Value::Array(
            self.changes
                .iter()
                .enumerate()
                .map(|(i, c)| match c {
                    Change::Own(k, quoted) => {
                        let etag = if *quoted {
                            format!("\"{}\"", OWN[*k])
                        } else {
                            OWN[*k].to_string()
                        };
                        json!({"id": format!("d{i}"), "state": "Texas", "_etag": etag, "_lsn": i})
                    }
                    Change::Foreign(etag) => json!({"id": format!("d{i}"), "_etag": etag}),
                    Change::Unversioned(v) | Change::Scalar(v) => v.clone(),
                })
                .collect(),
        )
    }

    fn body(&self) -> Vec<u8> {
        let docs = self.documents();
        let envelope =
            |data: Value| json!({"Data": data, "Metadata": {"sys": {"MethodName": "invalidate"}}});
        let text = match &self.shape {
            Shape::Encoded(layers) => {
                let mut v = docs;
                for _ in 0..*layers {
                    v = Value::String(v.to_string());
                }
                envelope(json!({ "documents": v })).to_string()
            }
            Shape::Renamed => {
                let v = Value::String(Value::String(docs.to_string()).to_string());
                envelope(json!({ "changes": v })).to_string()
            }
            Shape::NotAnArray(v) => envelope(json!({ "documents": v })).to_string(),
            Shape::NoEnvelope(0) => json!({"documents": docs}).to_string(),
            Shape::NoEnvelope(1) => {
                let full = envelope(json!({ "documents": docs })).to_string();
                full[..full.len() / 2].to_string()
            }
            Shape::NoEnvelope(_) => "\u{1}not json".to_string(),
        };
        text.into_bytes()
    }

    /// Whether the batch holds a change `update` did not invalidate (then a 2xx must come with
    /// a bump). Decided from the generated structure, not by the handler's parser.
    fn owes_a_bump(&self) -> bool {
        let readable = matches!(self.shape, Shape::Encoded(layers) if layers <= 3)
            || matches!(self.shape, Shape::Renamed);
        // An unreadable batch may hide changes: it bumps (a miss, never a stale read).
        !readable
            || (!self.changes.is_empty()
                && self.changes.iter().any(|c| !matches!(c, Change::Own(..))))
    }
}

async fn invoke(app: &axum::Router, body: Vec<u8>) -> (u16, Value) {
    let request = Request::post("/invalidate")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request");
    let reply = crate::support::stack::Reply::from_router(app, request).await;
    (reply.status, reply.json_or_null())
}

/// Properties, for every generated payload: no panic; the answer is JSON; a 2xx for a batch
/// holding a change `update` did not record comes with a generation bump; a 2xx is the
/// `{Outputs, Logs, ReturnValue}` envelope; with Redis up every payload gets a 2xx (an
/// unreadable one bumps too); with Redis unreachable, a batch that owes a bump never gets one.
#[test]
fn fuzzed_invocations_never_skip_a_bump() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stack = Stack::services(Mode::Payload, false, &[]);
    let state = runtime.block_on(async { stack.app_state() });
    let app = cosmos_cache_handler::router(state.clone(), "api");
    let mut dead_settings = stack.settings();
    dead_settings.redis = cosmos_cache_handler::config::parse_redis_connection_string(&format!(
        "redis://127.0.0.1:{}",
        crate::support::redis_server::free_port()
    ))
    .expect("url");
    let dead_app = cosmos_cache_handler::router(
        runtime
            .block_on(async { cosmos_cache_handler::build_state(&dead_settings) })
            .expect("state"),
        "api",
    );
    let own: Vec<String> = OWN.iter().map(|s| s.to_string()).collect();
    let cases: u32 = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let counts = Mutex::new([0usize; 3]); // bumped, skipped while owing nothing, refused
    // One connection for all reads of the generation (not one per case).
    let gen_key = stack.generation().0;
    let conn = Mutex::new(stack.redis.connection());
    let generation = || -> Option<u64> {
        redis::cmd("GET")
            .arg(&gen_key)
            .query(&mut *conn.lock().expect("conn"))
            .expect("GET gen")
    };
    runner
        .run(&case(), |case| {
            runtime.block_on(async {
                // Record our versions afresh (a skip forgets them).
                state.cache.invalidate_writes(&own).await;
                let before = generation();
                let (status, body) = invoke(&app, case.body()).await;
                let after = generation();
                prop_assert!(status == 200, "Redis up: {status} {body} for {case:?}");
                prop_assert!(
                    body.get("Outputs").is_some() && body.get("Logs").is_some(),
                    "{body}"
                );
                prop_assert!(body["ReturnValue"].is_null());
                if case.owes_a_bump() {
                    prop_assert_ne!(before, after, "2xx without the bump for {:?}", case);
                    counts.lock().expect("counts")[0] += 1;
                } else {
                    // Empty, or only recorded versions: nothing moves.
                    prop_assert_eq!(before, after, "a needless bump for {:?}", case);
                    counts.lock().expect("counts")[1] += 1;
                }
                // The same payload with Redis unreachable: a bump owed is never answered 2xx.
                let (dead_status, _) = invoke(&dead_app, case.body()).await;
                if case.owes_a_bump() {
                    prop_assert!(
                        dead_status >= 500,
                        "Redis down answered {dead_status} for {case:?}"
                    );
                    counts.lock().expect("counts")[2] += 1;
                } else {
                    let all_own = !case.changes.is_empty()
                        && matches!(case.shape, Shape::Encoded(0..=3) | Shape::Renamed);
                    // All-own batches cannot be checked without Redis either: refused too.
                    prop_assert!(
                        dead_status == 200 || (all_own && dead_status >= 500),
                        "{dead_status} for {case:?}"
                    );
                }
                Ok::<(), TestCaseError>(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let [bumped, skipped, refused] = *counts.lock().expect("counts");
    println!(
        "{cases} fuzzed invocations: {bumped} owed a bump and got it, {skipped} owed none and \
         moved nothing, {refused} refused with Redis down"
    );
    assert!(bumped > cases as usize / 10 && skipped > cases as usize / 10);
}
