//! No stale reads after a write: the write-back race, invalidation after the acknowledgement,
//! a lost generation key, TTLs on every entry, and versioned values.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use futures::FutureExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::support::stack::Reply;
use crate::support::{Mode, Stack};

both_modes!(
    invalidation_waits_for_the_cosmos_acknowledgement,
    lost_generation_key_never_resurrects_old_entries,
    every_cached_entry_has_a_ttl,
    undecodable_entry_is_a_miss_and_is_overwritten
);

async fn call(app: &axum::Router, request: Request<Body>) -> (u16, String, Value) {
    let reply = Reply::from_router(app, request).await;
    (
        reply.status,
        reply.cache().to_string(),
        reply.json_or_null(),
    )
}

fn population_of(body: &Value, city: &str) -> Value {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|c| c["city"] == city)
        .map(|c| c["population"].clone())
        .unwrap_or(Value::Null)
}

/// Request A misses and reads Cosmos (old data); B writes and invalidates; then A stores.
/// The test hook pauses A between "Cosmos answered" and "Redis SET" (no sleeps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_write_back_race_stores_under_a_dead_generation() {
    let stack = Stack::services(Mode::Forwarding, true, &[]);
    let state = stack.app_state();
    let app = cosmos_cache_handler::router(state.clone(), "api");
    let reached = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    {
        let (reached, release) = (reached.clone(), release.clone());
        let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        state.cache.set_before_store_hook(Some(Arc::new(move || {
            let (reached, release) = (reached.clone(), release.clone());
            let pause = first.swap(false, std::sync::atomic::Ordering::SeqCst);
            async move {
                if pause {
                    reached.notify_one();
                    release.notified().await;
                }
            }
            .boxed()
        })));
    }
    let get = || Request::get("/api/query?state=Texas&maxItemCount=1000").body(Body::empty());
    let a = tokio::spawn({
        let app = app.clone();
        let request = get().expect("request");
        async move { call(&app, request).await }
    });
    reached.notified().await;
    // A has read Cosmos and is paused before its SET. B updates Austin.
    let austin = json!({"id":"austin-texas","city":"Austin","state":"Texas","population":42});
    let (status, _, body) = call(
        &app,
        Request::post("/api/update")
            .body(Body::from(austin.to_string()))
            .expect("request"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    release.notify_one();
    let (status, cache, a_body) = a.await.expect("A finishes");
    assert_eq!((status, cache.as_str()), (200, "miss"));
    assert_ne!(
        population_of(&a_body, "Austin"),
        json!(42),
        "A read before the write"
    );

    // After B answered, no query may return A's old page.
    for _ in 0..3 {
        let (status, cache, body) = call(&app, get().expect("request")).await;
        assert_eq!(status, 200);
        assert_eq!(
            population_of(&body, "Austin"),
            json!(42),
            "x-cache: {cache}"
        );
    }
}

async fn invalidation_waits_for_the_cosmos_acknowledgement(mode: Mode) {
    let stack = Stack::start(mode).await;
    assert_eq!(stack.get("query?state=Texas").await.cache(), "miss");
    let (_, before) = stack.generation();
    let before = before.expect("generation exists after a lookup");
    let upserts_before = stack.cosmos_stats().await["upserts"]
        .as_u64()
        .expect("count");
    // The write is throttled twice (the SDK waits the server's retry-after) and then held
    // 600 ms at the server: Cosmos cannot acknowledge it before ~1 s.
    for fault in [
        json!({"kind":"upsert","count":2,"status":429,"retryAfterMs":200,"db":stack.database}),
        json!({"kind":"upsert","count":1,"delayMs":600,"db":stack.database}),
    ] {
        stack.cosmos.fault(fault).await;
    }
    let started = Instant::now();
    let mut polls = 0;
    let reply = {
        let update = stack.post(
            "update",
            r#"{"id":"austin-texas","city":"Austin","state":"Texas","population":77}"#,
        );
        tokio::pin!(update);
        loop {
            tokio::select! {
                reply = &mut update => break reply,
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    if started.elapsed() < Duration::from_millis(900) {
                        assert_eq!(stack.generation().1, Some(before), "bumped before Cosmos acknowledged");
                        polls += 1;
                    }
                }
            }
        }
    };
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(
        polls > 10,
        "the generation was watched during the write ({polls} polls)"
    );
    assert_eq!(stack.generation().1, Some(before + 1));
    let after = stack.get("query?city=Austin&state=Texas").await;
    assert_eq!(after.json()["items"][0]["population"], 77);
    let upserts = stack.cosmos_stats().await["upserts"]
        .as_u64()
        .expect("count")
        - upserts_before;
    assert_eq!(upserts, 3, "two 429s, then the write");
    stack.shutdown().await;
}

async fn lost_generation_key_never_resurrects_old_entries(mode: Mode) {
    let stack = Stack::start(mode).await;
    let first = stack.get("query?state=Ohio").await;
    assert_eq!(first.cache(), "miss");
    assert_eq!(stack.get("query?state=Ohio").await.cache(), "hit");
    let (gen_key, old) = stack.generation();
    let old = old.expect("generation");
    // Only the generation key disappears (eviction, FLUSHDB on a replica, failover...).
    let _: () = redis::cmd("DEL")
        .arg(&gen_key)
        .query(&mut stack.redis.connection())
        .expect("DEL");
    let again = stack.get("query?state=Ohio").await;
    assert_eq!(
        again.cache(),
        "miss",
        "an entry cached before must not be served"
    );
    let fresh = stack.generation().1.expect("re-created");
    assert_ne!(fresh, old);
    assert!(
        fresh >= 1 << 32,
        "re-created from a random value, not 0/1: {fresh}"
    );
    // An update on a missing generation key does not start from 1 either.
    let _: () = redis::cmd("DEL")
        .arg(&gen_key)
        .query(&mut stack.redis.connection())
        .expect("DEL");
    let update = stack
        .post(
            "update",
            r#"{"id":"x-ohio","city":"X","state":"Ohio","population":1}"#,
        )
        .await;
    assert_eq!(update.status, 200);
    assert!(stack.generation().1.expect("gen") > 1 << 32);
    stack.shutdown().await;
}

async fn every_cached_entry_has_a_ttl(mode: Mode) {
    let stack = Stack::start_with(
        mode,
        true,
        &[
            ("CACHE_TTL_SECONDS", "60"),
            ("CACHE_TTL_JITTER_PERCENT", "10"),
        ],
    )
    .await;
    for query in [
        "query?state=Texas",
        "query?state=Ohio",
        "query?city=Austin",
        "query?maxItemCount=10",
    ] {
        assert_eq!(stack.get(query).await.status, 200);
    }
    let post = r#"{"query":"SELECT * FROM c WHERE c.population > @p","parameters":[{"name":"@p","value":1000000}]}"#;
    assert_eq!(stack.post("query", post).await.status, 200);
    let keys = stack.redis_keys();
    let mut conn = stack.redis.connection();
    let mut entries = 0;
    let mut ttls = Vec::new();
    for key in &keys {
        let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut conn).expect("PTTL");
        if key.ends_with(":gen") || key.ends_with(":server") {
            assert_eq!(pttl, -1, "the generation and its server key have no TTL");
        } else {
            entries += 1;
            assert!((50_000..=66_000).contains(&pttl), "{key}: PTTL {pttl} ms");
            ttls.push(pttl);
        }
    }
    assert_eq!(entries, 5, "{keys:?}");
    assert!(
        ttls.iter().any(|&t| t != ttls[0]),
        "jitter spreads TTLs: {ttls:?}"
    );
    stack.shutdown().await;
}

async fn undecodable_entry_is_a_miss_and_is_overwritten(mode: Mode) {
    // A store that times out (250 ms by default) on a loaded machine would leave the old value
    // in place and make this test about timeouts; it is about formats.
    let stack = Stack::start_with(mode, true, &[("REDIS_TIMEOUT_MS", "3000")]).await;
    let first = stack.get("query?state=Utah").await;
    assert_eq!(first.cache(), "miss");
    let entry = stack
        .redis_keys()
        .into_iter()
        .find(|k| !k.ends_with(":gen") && !k.ends_with(":server"))
        .expect("an entry");
    let mut conn = stack.redis.connection();
    let _: () = redis::cmd("SET")
        .arg(&entry)
        .arg("{\"an\":\"older format\"}")
        .query(&mut conn)
        .expect("SET");
    let second = stack.get("query?state=Utah").await;
    assert_eq!(second.status, 200, "never a 500");
    assert_eq!(second.cache(), "miss");
    assert_eq!(second.text, first.text);
    let stored: Vec<u8> = redis::cmd("GET").arg(&entry).query(&mut conn).expect("GET");
    assert!(
        stored.starts_with(b"v1:"),
        "overwritten in the current format"
    );
    assert_eq!(stack.get("query?state=Utah").await.cache(), "hit");
    stack.shutdown().await;
}

/// Redis answers but refuses the generation bump (out of memory under `noeviction`, or a
/// generation that is not a number): the write must still be seen by every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_bump_still_invalidates_every_instance() {
    let stack = Stack::start(Mode::Forwarding).await;
    // A second instance sharing the Redis, in this process.
    let other = cosmos_cache_handler::router(stack.app_state(), "api");
    let texas = || {
        Request::get("/api/query?state=Texas&maxItemCount=1000")
            .body(Body::empty())
            .expect("request")
    };
    let mut conn = stack.redis.connection();
    for (round, population) in [(0, 1001), (1, 1002)] {
        assert_eq!(call(&other, texas()).await.0, 200);
        let (_, cache, _) = call(&other, texas()).await;
        assert_eq!(cache, "hit", "round {round}: cached on the other instance");
        if round == 0 {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory-policy")
                .arg("noeviction")
                .query(&mut conn)
                .expect("policy");
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg("1")
                .query(&mut conn)
                .expect("maxmemory");
        } else {
            let (gen_key, _) = stack.generation();
            let _: () = redis::cmd("SET")
                .arg(&gen_key)
                .arg("not-a-number")
                .query(&mut conn)
                .expect("SET");
        }
        let doc =
            json!({"id":"austin-texas","city":"Austin","state":"Texas","population":population});
        let update = stack.post("update", &doc.to_string()).await;
        assert_eq!(update.status, 200, "{}", update.text);
        let (status, cache, body) = call(&other, texas()).await;
        assert_eq!(status, 200);
        assert_eq!(
            population_of(&body, "Austin"),
            json!(population),
            "round {round}: the other instance served x-cache: {cache}"
        );
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg("0")
            .query(&mut conn)
            .expect("maxmemory");
    }
    stack.shutdown().await;
}
