//! Load and herds: single-flight, fleet-wide fill leases, the value-size cap, throttling, and
//! never caching a failure.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::future::join_all;
use serde_json::json;

use crate::support::redis_server::free_port;
use crate::support::{Mode, Stack};

both_modes!(
    single_flight_one_cosmos_query_for_200_misses,
    values_over_the_size_cap_are_served_not_cached,
    throttling_is_retried_then_503_and_never_cached
);

/// Holds the next Cosmos query of this test's database for 500 ms, so that concurrent
/// requests overlap it; returns the query count before.
async fn hold_next_query(stack: &Stack) -> u64 {
    let before = stack.cosmos_stats().await["queries"]
        .as_u64()
        .expect("count");
    stack
        .cosmos
        .fault(json!({"kind":"query","count":1,"delayMs":500,"db":stack.database}))
        .await;
    before
}

async fn single_flight_one_cosmos_query_for_200_misses(mode: Mode) {
    let stack = Stack::start(mode).await;
    let before = hold_next_query(&stack).await;
    let replies = join_all((0..200).map(|_| stack.get("query?state=California"))).await;
    let queries = stack.cosmos_stats().await["queries"]
        .as_u64()
        .expect("count")
        - before;
    println!("single-flight: 200 concurrent identical misses -> {queries} Cosmos query");
    assert_eq!(queries, 1);
    assert!(
        replies
            .iter()
            .all(|r| r.status == 200 && r.text == replies[0].text)
    );
    // Every other request either waited on the one flight or, arriving after it landed on a
    // busy machine, hit the page it stored.
    let cache = stack.diagnostics().await["cache"].clone();
    let waits = cache["singleFlightWaits"].as_u64().expect("waits");
    let hits = cache["hits"].as_u64().expect("hits");
    assert_eq!(waits + hits, 199, "{cache}");
    assert!(waits > 0, "{cache}");
    stack.shutdown().await;
}

/// Four handler processes sharing one Redis, 50 concurrent identical misses each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_lease_across_four_instances() {
    // A generous Redis timeout: on a busy CI machine a slow Redis call would (correctly) make a
    // waiter give up and read Cosmos itself, which is not what this test is about.
    let stack = Stack::services(
        Mode::Forwarding,
        true,
        &[
            ("CACHE_FILL_LEASE_MS", "3000"),
            ("REDIS_TIMEOUT_MS", "3000"),
        ],
    );
    let env = stack.handler_env();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let mut children: Vec<Child> = ports
        .iter()
        .map(|port| {
            Command::new(env!("CARGO_BIN_EXE_handler"))
                .envs(env.iter().cloned())
                .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
                .stdout(Stdio::null())
                .spawn()
                .expect("handler")
        })
        .collect();
    let client = reqwest::Client::new();
    for port in &ports {
        let url = format!("http://127.0.0.1:{port}/");
        for _ in 0..400 {
            if client.get(&url).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    // Warm each instance's Cosmos client so the race is about the page, not the connection.
    for port in &ports {
        let warm = client
            .get(format!("http://127.0.0.1:{port}/api/query?state=Alaska"))
            .send()
            .await
            .expect("warm");
        assert_eq!(warm.status(), 200);
    }
    let before = hold_next_query(&stack).await;
    let requests = ports.iter().flat_map(|port| {
        let client = client.clone();
        (0..50).map(move |_| {
            let client = client.clone();
            async move {
                let r = client
                    .get(format!("http://127.0.0.1:{port}/api/query?state=Florida"))
                    .send()
                    .await
                    .expect("answer");
                let cache = r.headers()["x-cache"].to_str().unwrap_or("").to_string();
                (r.status().as_u16(), cache, r.text().await.expect("body"))
            }
        })
    });
    let replies = join_all(requests).await;
    let queries = stack.cosmos_stats().await["queries"]
        .as_u64()
        .expect("count")
        - before;
    let hits = replies.iter().filter(|r| r.1 == "hit").count();
    println!(
        "fill lease: 4 instances x 50 concurrent identical misses -> {queries} Cosmos query ({hits} answered from the leaseholder's fill)"
    );
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(replies.iter().all(|r| r.0 == 200 && r.2 == replies[0].2));
    assert_eq!(queries, 1, "at most one Cosmos query per lease period");
}

async fn values_over_the_size_cap_are_served_not_cached(mode: Mode) {
    let stack = Stack::start_with(mode, true, &[("CACHE_MAX_VALUE_BYTES", "4096")]).await;
    let big = stack.get("query?state=California&maxItemCount=1000").await;
    assert_eq!(big.status, 200);
    assert!(big.text.len() > 4096);
    assert_eq!(big.cache(), "miss");
    let again = stack.get("query?state=California&maxItemCount=1000").await;
    assert_eq!(again.cache(), "miss", "not cached");
    assert_eq!(again.text, big.text);
    let small = stack.get("query?city=Austin&state=Texas").await;
    assert!(small.text.len() < 4096);
    assert_eq!(
        stack.get("query?city=Austin&state=Texas").await.cache(),
        "hit"
    );
    assert_eq!(stack.diagnostics().await["cache"]["tooLarge"], 2);
    stack.shutdown().await;
}

async fn throttling_is_retried_then_503_and_never_cached(mode: Mode) {
    let stack = Stack::start_with(mode, true, &[("COSMOS_THROTTLE_BUDGET_MS", "400")]).await;
    // Two 429s within the budget: retried after the server's x-ms-retry-after-ms, then 200.
    stack
        .cosmos
        .fault(json!({"kind":"query","count":2,"status":429,"retryAfterMs":50,"db":stack.database}))
        .await;
    let before = stack.cosmos_stats().await["queries"]
        .as_u64()
        .expect("count");
    let ok = stack.get("query?state=Oregon").await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.cache(), "miss");
    let after = stack.cosmos_stats().await["queries"]
        .as_u64()
        .expect("count");
    assert_eq!(
        after - before,
        3,
        "two throttled attempts and the one that succeeded"
    );

    // Throttled past the budget: 503 with Retry-After, and nothing cached.
    stack
        .cosmos
        .fault(json!({"kind":"query","count":1000,"status":429,"retryAfterMs":100,"db":stack.database}))
        .await;
    let throttled = stack.get("query?state=Nevada").await;
    assert_eq!(throttled.status, 503, "{}", throttled.text);
    assert_eq!(throttled.json()["error"]["code"], "throttled");
    let retry_after: u64 = throttled
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    stack.cosmos.clear_faults(&stack.database).await;
    let keys = stack.redis_keys();
    assert_eq!(
        keys.len(),
        3,
        "the generation, its server and the Oregon page only: {keys:?}"
    );
    let recovered = stack.get("query?state=Nevada").await;
    assert_eq!(recovered.status, 200);
    assert_eq!(recovered.cache(), "miss", "the failure was not cached");
    stack.shutdown().await;
}
