//! Redis failure modes through a TCP chaos proxy: killed and restarted under load, idle close,
//! black hole (with the circuit breaker), and a non-I/O reconnect failure (`WRONGPASS`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::support::chaos_proxy::{Behaviour, ChaosProxy};
use crate::support::{Mode, Stack};

/// Waits until `query` is served from Redis again; returns how long that took.
async fn until_hit(stack: &Stack, query: &str, budget: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let reply = stack.get(query).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        if reply.cache() == "hit" {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < budget,
            "hits did not resume within {budget:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load_fails_no_request() {
    let mut stack = Stack::start(Mode::Forwarding).await;
    let queries = [
        "query?state=Texas",
        "query?state=Ohio",
        "query?state=Utah",
        "query?city=Austin",
    ];
    let mut statuses = Vec::new();
    let mut outcomes = Vec::new();
    for round in 0..60 {
        if round == 20 {
            stack.redis.kill();
        }
        if round == 40 {
            stack.redis.restart();
        }
        let replies = join_all(queries.iter().map(|q| stack.get(q))).await;
        for r in replies {
            statuses.push(r.status);
            outcomes.push(r.cache().to_string());
        }
    }
    let failed = statuses.iter().filter(|s| **s != 200).count();
    let bypassed = outcomes.iter().filter(|o| *o == "bypass").count();
    println!(
        "kill/restart under load: {} requests, {failed} failed, {bypassed} bypassed",
        statuses.len()
    );
    assert_eq!(failed, 0);
    assert!(
        bypassed >= 20 * queries.len(),
        "answered from Cosmos while Redis was down"
    );
    let resumed = until_hit(&stack, "query?state=Texas", Duration::from_secs(5)).await;
    println!("hits resumed {resumed:?} after the restarted Redis answered");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_close_by_the_server_is_survived() {
    let mut stack = Stack::services(Mode::Forwarding, true, &[]);
    let proxy = ChaosProxy::start(SocketAddr::from(([127, 0, 0, 1], stack.redis.port))).await;
    stack.set_env("REDIS_CONNECTION_STRING", &proxy.redis_url());
    stack.start_handler().await;
    assert_eq!(stack.get("query?state=Iowa").await.cache(), "miss");
    assert_eq!(stack.get("query?state=Iowa").await.cache(), "hit");
    // Azure closes idle connections after 10 minutes; here, all of them at once.
    proxy.cut_all();
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        let reply = stack.get("query?state=Iowa").await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        outcomes.push(reply.cache().to_string());
    }
    println!("after the idle close: {outcomes:?}");
    assert_eq!(outcomes.last().map(String::as_str), Some("hit"));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_is_bounded_by_the_timeout_and_the_breaker() {
    let mut stack = Stack::services(Mode::Forwarding, true, &[("REDIS_TIMEOUT_MS", "100")]);
    let proxy = ChaosProxy::start(SocketAddr::from(([127, 0, 0, 1], stack.redis.port))).await;
    stack.set_env("REDIS_CONNECTION_STRING", &proxy.redis_url());
    stack.start_handler().await;
    assert_eq!(stack.get("query?state=Maine").await.cache(), "miss");
    assert_eq!(stack.get("query?state=Maine").await.cache(), "hit");

    proxy.set(Behaviour::BlackHole);
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let started = Instant::now();
        let reply = stack.get("query?state=Maine").await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.cache(), "bypass");
    }
    let diagnostics = stack.diagnostics().await["cache"].clone();
    println!("black hole: 30 requests, slowest {slowest:?}, diagnostics {diagnostics}");
    assert!(diagnostics["circuitOpened"].as_u64() >= Some(1));
    // The test's Redis has no password (it used to say "password" here).
    assert_eq!(diagnostics["redisAuth"], "none");
    assert!(
        diagnostics["circuitSkipped"].as_u64() >= Some(15),
        "the breaker skipped Redis instead of paying the timeout each time"
    );
    // Each request: at most the lookup timeout (100 ms), the store timeout (100 ms) and a
    // Cosmos query (debug build, busy CI machine); without the timeout a black hole would
    // hang a request until the client gives up.
    assert!(slowest < Duration::from_millis(1500), "slowest {slowest:?}");

    proxy.set(Behaviour::Pass);
    let resumed = until_hit(&stack, "query?state=Maine", Duration::from_secs(5)).await;
    println!("black hole lifted: hits resumed after {resumed:?}");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongpass_after_key_rotation_recovers_without_restart() {
    let mut stack = Stack::services(Mode::Forwarding, true, &[]);
    stack.redis =
        crate::support::redis_server::RedisServer::start_with(&["--requirepass", "old-key"]);
    let url = format!("redis://:old-key@127.0.0.1:{}", stack.redis.port);
    stack.set_env("REDIS_CONNECTION_STRING", &url);
    stack.start_handler().await;
    assert_eq!(stack.get("query?state=Kansas").await.cache(), "miss");
    assert_eq!(stack.get("query?state=Kansas").await.cache(), "hit");
    let diagnostics = stack.diagnostics().await.to_string();
    assert!(
        diagnostics.contains(r#""redisAuth":"password""#),
        "{diagnostics}"
    );
    assert!(
        !diagnostics.contains("old-key"),
        "no secret in {diagnostics}"
    );

    let admin = |command: &[&str], password: &str| {
        let mut conn = redis::Client::open(format!(
            "redis://:{password}@127.0.0.1:{}",
            stack.redis.port
        ))
        .and_then(|c| c.get_connection())
        .expect("admin connection");
        let mut cmd = redis::cmd(command[0]);
        for arg in &command[1..] {
            cmd.arg(*arg);
        }
        cmd.query::<redis::Value>(&mut conn).expect("admin command");
    };
    // Rotate the key and drop the handler's connection: its reconnects now get WRONGPASS.
    admin(&["CONFIG", "SET", "requirepass", "new-key"], "old-key");
    admin(
        &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"],
        "new-key",
    );
    for _ in 0..10 {
        let reply = stack.get("query?state=Kansas").await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.cache(), "bypass");
    }
    // The cause is fixed (the old key is valid again): hits resume without a restart.
    admin(&["CONFIG", "SET", "requirepass", "old-key"], "new-key");
    let resumed = until_hit(&stack, "query?state=Kansas", Duration::from_secs(10)).await;
    println!("WRONGPASS fixed: hits resumed after {resumed:?}");
    stack.shutdown().await;
}

/// Once Redis answers again, a write's invalidation is tried even while the breaker is still
/// open. The breaker used to skip it too: the write answered `pending`, and other instances
/// served the old page until the cool-down ended and the retry landed (the breaker helper saw
/// stale reads 600 ms after the write's 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_bumps_although_the_breaker_is_still_open() {
    let mut stack = Stack::services(Mode::Forwarding, true, &[("REDIS_TIMEOUT_MS", "100")]);
    let proxy = ChaosProxy::start(SocketAddr::from(([127, 0, 0, 1], stack.redis.port))).await;
    stack.set_env("REDIS_CONNECTION_STRING", &proxy.redis_url());
    stack.start_handler().await;
    let page = stack.get("query?state=Maine").await;
    assert_eq!(page.cache(), "miss", "{}", page.text);
    let mut doc = page.json()["items"][0].clone();
    doc["population"] = serde_json::json!(4242);
    let (_, before) = stack.generation();

    proxy.set(Behaviour::BlackHole);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.diagnostics().await["cache"]["circuit"] != "open" {
        assert!(Instant::now() < deadline, "the breaker never opened");
        assert_eq!(stack.get("query?state=Maine").await.status, 200);
    }
    proxy.set(Behaviour::Pass);
    let write = stack.post("update", &doc.to_string()).await;
    assert_eq!(write.status, 200, "{}", write.text);
    assert_eq!(write.header("x-cache-invalidation"), Some("done"));
    let (_, after) = stack.generation();
    assert!(after > before, "generation {before:?} -> {after:?}");
    stack.shutdown().await;
}
