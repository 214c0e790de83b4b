//! A clustered Redis (OSS cluster protocol, as Azure Managed Redis with the OSS clustering
//! policy and Premium clustered caches speak): a real local 3-node `redis-server` cluster.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::redis_server::RedisServer;
use crate::support::{Mode, Stack};

/// Cluster-enabled nodes joined with `redis-cli --cluster create`, all slots covered.
pub(crate) struct LocalCluster {
    pub(crate) nodes: Vec<RedisServer>,
    _dirs: Vec<std::path::PathBuf>,
}

impl LocalCluster {
    /// Three primaries.
    pub(crate) fn start() -> Self {
        Self::start_with(3, 0)
    }

    /// `count` nodes, `replicas` replicas per primary.
    fn start_with(count: usize, replicas: usize) -> Self {
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..count {
            let dir = std::env::temp_dir().join(format!(
                "cch-cluster-{}-{i}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&dir).expect("node dir");
            let dir_arg = dir.to_string_lossy().into_owned();
            nodes.push(RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--dir",
                &dir_arg,
            ]));
            dirs.push(dir);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli");
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.connection())
                    .expect("CLUSTER INFO");
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster not ok: {info}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Self { nodes, _dirs: dirs }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for dir in &self._dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustered_redis_caches_and_invalidates() {
    let cluster = LocalCluster::start();
    let first = format!("redis://127.0.0.1:{}", cluster.nodes[0].port);
    let mut stack = Stack::services(Mode::Forwarding, true, &[]);
    stack.set_env("REDIS_CONNECTION_STRING", &first);
    stack.set_env("REDIS_CLUSTER", "true");
    stack.start_handler().await;

    for state in ["Texas", "Ohio", "Oregon", "Georgia"] {
        let miss = stack.get(&format!("query?state={state}")).await;
        assert_eq!(miss.status, 200, "{}", miss.text);
        assert_eq!(miss.cache(), "miss");
        let hit = stack.get(&format!("query?state={state}")).await;
        assert_eq!(hit.cache(), "hit");
        assert_eq!(hit.text, miss.text);
    }
    // Every key of the container hashes to one slot, thanks to the {db/container} hash tag.
    let mut keys = Vec::new();
    let mut slots = Vec::new();
    for node in &cluster.nodes {
        let mut conn = node.connection();
        let found: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).expect("KEYS");
        for key in found {
            let slot: i64 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&key)
                .query(&mut conn)
                .expect("KEYSLOT");
            slots.push(slot);
            keys.push(key);
        }
    }
    assert_eq!(
        keys.len(),
        6,
        "the generation, its server and four pages: {keys:?}"
    );
    assert!(
        slots.iter().all(|s| *s == slots[0]),
        "{keys:?} -> {slots:?}"
    );

    let update = stack
        .post(
            "update",
            r#"{"id":"austin-texas","city":"Austin","state":"Texas","population":5}"#,
        )
        .await;
    assert_eq!(update.status, 200, "{}", update.text);
    assert_eq!(update.header("x-cache-invalidation"), Some("done"));
    let after = stack.get("query?city=Austin&state=Texas").await;
    assert_eq!(after.cache(), "miss");
    assert_eq!(after.json()["items"][0]["population"], 5);
    assert_eq!(
        stack.get("query?state=Ohio").await.cache(),
        "miss",
        "the whole container was invalidated"
    );
    stack.shutdown().await;
}

/// One shard fails over on its own (`CLUSTER FAILOVER TAKEOVER`) to a replica whose link was
/// cut just before an update: the promoted replica has the old generation and the old page, and
/// no instance may serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_failover_to_a_lagging_replica_serves_no_stale_hit() {
    shard_failover_to_a_lagging_replica(&[]).await;
}

/// The same with the near cache on: its tracking connection, on the demoted primary, is
/// redirected (`MOVED`) by its heartbeat and follows the slot to the promoted replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_failover_with_the_near_cache_serves_no_stale_page() {
    shard_failover_to_a_lagging_replica(&[("CACHE_LOCAL_MAX_BYTES", "8000000")]).await;
}

async fn shard_failover_to_a_lagging_replica(extra_env: &[(&str, &str)]) {
    let near = !extra_env.is_empty();
    let cluster = LocalCluster::start_with(6, 1);
    let first = format!("redis://127.0.0.1:{}", cluster.nodes[0].port);
    let mut stack = Stack::services(Mode::Forwarding, true, extra_env);
    stack.set_env("REDIS_CONNECTION_STRING", &first);
    stack.set_env("REDIS_CLUSTER", "true");
    stack.start_handler().await;
    let texas = "query?state=Texas&maxItemCount=1000";
    assert_eq!(stack.get(texas).await.cache(), "miss");
    assert_eq!(stack.get(texas).await.cache(), "hit");

    // The primary that owns the container's slot (the others answer MOVED), and its replica.
    let gen_key = format!("cc:{}:gen", stack.key_tag());
    let owner = cluster
        .nodes
        .iter()
        .find(|n| {
            redis::cmd("GET")
                .arg(&gen_key)
                .query::<Option<String>>(&mut n.connection())
                .is_ok_and(|g| g.is_some())
        })
        .expect("the slot's primary");
    let replica = cluster
        .nodes
        .iter()
        .find(|n| n.replication_field("master_port") == owner.port.to_string())
        .expect("its replica");
    let deadline = Instant::now() + Duration::from_secs(20);
    while replica.replication_field("master_repl_offset")
        != owner.replication_field("master_repl_offset")
        || replica.replication_field("master_link_status") != "up"
    {
        assert!(Instant::now() < deadline, "replica not in sync");
        std::thread::sleep(Duration::from_millis(10));
    }

    // Make the replica miss the write, deterministically: stop it (SIGSTOP), cut its link at
    // the primary, write, queue `CLUSTER FAILOVER TAKEOVER` on its socket, resume it. It reads
    // the closed link and the command in one event-loop pass, before its once-a-second cron
    // could reconnect, so it is promoted without the bump.
    let mut on_replica = replica.connection();
    let _: () = redis::cmd("READONLY")
        .query(&mut on_replica)
        .expect("READONLY");
    let pid = {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut on_replica)
            .expect("INFO server");
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .expect("process_id")
            .trim()
            .to_string()
    };
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    signal("-STOP");
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(&mut owner.connection())
        .expect("CLIENT KILL");
    let update = stack
        .post(
            "update",
            r#"{"id":"austin-texas","city":"Austin","state":"Texas","population":5}"#,
        )
        .await;
    assert_eq!(update.status, 200, "{}", update.text);
    assert_eq!(update.header("x-cache-invalidation"), Some("done"));
    let owner_gen: Option<String> = redis::cmd("GET")
        .arg(&gen_key)
        .query(&mut owner.connection())
        .expect("GET on the primary");
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", replica.port)).expect("connect");
    std::io::Write::write_all(&mut raw, b"CLUSTER FAILOVER TAKEOVER\r\n").expect("send");
    signal("-CONT");
    let mut reply = [0u8; 64];
    let n = std::io::Read::read(&mut raw, &mut reply).expect("reply");
    assert!(
        reply[..n].starts_with(b"+OK"),
        "{:?}",
        String::from_utf8_lossy(&reply[..n])
    );
    let promoted_gen: Option<String> = redis::cmd("GET")
        .arg(&gen_key)
        .query(&mut on_replica)
        .expect("GET on the promoted replica");
    assert_ne!(
        promoted_gen, owner_gen,
        "the promoted replica missed the bump"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while owner.replication_field("role") != "slave"
        || replica.replication_field("role") != "master"
    {
        assert!(Instant::now() < deadline, "the shard did not fail over");
        std::thread::sleep(Duration::from_millis(20));
    }

    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let reply = stack.get(texas).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let austin = reply.json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|c| c["city"] == "Austin")
            .map(|c| c["population"].clone());
        assert_eq!(
            austin,
            Some(serde_json::json!(5)),
            "older data (x-cache: {}) after {seen:?}",
            reply.cache()
        );
        // With L1, the page this instance read after its own write may still be served from
        // memory (it is the new page); hits from Redis must come back, and then L1 on the new
        // owner.
        let done = if near {
            reply.cache() == "hit-local" && seen.iter().any(|c| c == "hit")
        } else {
            reply.cache() == "hit"
        };
        if done {
            break;
        }
        seen.push(reply.cache().to_string());
        assert!(started.elapsed() < Duration::from_secs(5), "{seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("hits resumed after {:?}: {seen:?}", started.elapsed());
    if near {
        // The tracking connection sat on the demoted primary; its next heartbeat is redirected
        // (`MOVED`) and tracking starts again on the promoted replica.
        let moved = Instant::now();
        loop {
            let local = stack.diagnostics().await["cache"]["local"].clone();
            if local["trackingStarts"].as_u64().expect("starts") >= 2 {
                println!(
                    "tracking on the new owner {:?} later: {local}",
                    moved.elapsed()
                );
                break;
            }
            assert!(
                moved.elapsed() < Duration::from_secs(2),
                "tracking did not move to the new owner: {local}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let after = stack.get(texas).await;
        let austin = after.json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|c| c["city"] == "Austin")
            .map(|c| c["population"].clone());
        assert_eq!(austin, Some(serde_json::json!(5)), "{}", after.cache());
    }
    stack.shutdown().await;
}

/// The near cache on a cluster: the tracking connection is opened through a node that does
/// *not* own the container's slot (the handler must follow `MOVED` to the owner, or it would
/// hear no invalidation), and writes made by another instance are never hidden from reads that
/// start 10 ms after the writer's `200`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_cache_on_a_cluster_tracks_the_slot_owner() {
    use axum::body::Body;
    use axum::http::Request;

    use crate::support::stack::Reply;

    let cluster = LocalCluster::start();
    let mut stack = Stack::services(
        Mode::Forwarding,
        true,
        &[
            ("CACHE_LOCAL_MAX_BYTES", "8000000"),
            ("REDIS_CLUSTER", "true"),
        ],
    );
    let gen_key = format!("cc:{}:gen", stack.key_tag());
    // A node that answers MOVED for the generation key: not the slot's owner.
    let seed = cluster
        .nodes
        .iter()
        .find(|n| {
            redis::cmd("EXISTS")
                .arg(&gen_key)
                .query::<i64>(&mut n.connection())
                .is_err()
        })
        .expect("a node that does not own the slot");
    stack.set_env(
        "REDIS_CONNECTION_STRING",
        &format!("redis://127.0.0.1:{}", seed.port),
    );
    stack.start_handler().await;
    let writer = cosmos_cache_handler::router(stack.app_state(), "api");
    let texas = "query?state=Texas";
    let austin = |reply: &Reply| {
        reply.json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|c| c["city"] == "Austin")
            .and_then(|c| c["population"].as_u64())
    };
    let until_local = || async {
        let started = Instant::now();
        loop {
            let reply = stack.get(texas).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            if reply.cache() == "hit-local" {
                return reply;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "no hit-local on a cluster (last: {})",
                reply.cache()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (mut stale, mut reads) = (0, 0);
    for population in 8_000_001..8_000_051u64 {
        until_local().await;
        let body = format!(
            r#"{{"id":"austin-texas","city":"Austin","state":"Texas","population":{population}}}"#
        );
        let request = Request::post("/api/update")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request");
        let reply = Reply::from_router(&writer, request).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        tokio::time::sleep(Duration::from_millis(10)).await;
        for _ in 0..2 {
            let read = stack.get(texas).await;
            reads += 1;
            if austin(&read) != Some(population) {
                stale += 1;
            }
        }
    }
    let local = stack.diagnostics().await["cache"]["local"].clone();
    println!(
        "cluster, tracking via a non-owner seed: 50 writes on instance B, {reads} reads on A \
         ≥ 10 ms after each 200: {stale} stale; L1 counters {local}"
    );
    assert_eq!(stale, 0);
    assert!(local["pushes"].as_u64().expect("pushes") >= 50, "{local}");
    assert!(local["hits"].as_u64().expect("hits") >= 50, "{local}");
    stack.shutdown().await;
}
