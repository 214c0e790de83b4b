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

fn replication_field(node: &RedisServer, field: &str) -> String {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut node.connection())
        .expect("INFO replication");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// One shard fails over on its own (`CLUSTER FAILOVER TAKEOVER`) to a replica whose link was
/// cut just before an update: the promoted replica has the old generation and the old page, and
/// no instance may serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_failover_to_a_lagging_replica_serves_no_stale_hit() {
    let cluster = LocalCluster::start_with(6, 1);
    let first = format!("redis://127.0.0.1:{}", cluster.nodes[0].port);
    let mut stack = Stack::services(Mode::Forwarding, true, &[]);
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
        .find(|n| replication_field(n, "master_port") == owner.port.to_string())
        .expect("its replica");
    let deadline = Instant::now() + Duration::from_secs(20);
    while replication_field(replica, "master_repl_offset")
        != replication_field(owner, "master_repl_offset")
        || replication_field(replica, "master_link_status") != "up"
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
    while replication_field(owner, "role") != "slave"
        || replication_field(replica, "role") != "master"
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
        if reply.cache() == "hit" {
            break;
        }
        seen.push(reply.cache().to_string());
        assert!(started.elapsed() < Duration::from_secs(5), "{seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("hits resumed after {:?}: {seen:?}", started.elapsed());
    stack.shutdown().await;
}
