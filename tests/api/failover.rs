//! Invalidations that survive a Redis failover: a real primary and replica behind the chaos
//! proxy, which switches to the promoted replica while two handler instances keep running (the
//! binary behind the host emulator, and a second instance in this process). The replica either
//! missed the last write (detached just before it) or had every write.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::failover::ReplicatedRedis;
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
        let response = self
            .second
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let (cache, invalidation) = (header("x-cache"), header("x-cache-invalidation"));
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        ((status, cache, body), invalidation)
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
