//! A clustered Redis (OSS cluster protocol, as Azure Managed Redis with the OSS clustering
//! policy and Premium clustered caches speak): a real local 3-node `redis-server` cluster.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::redis_server::RedisServer;
use crate::support::{Mode, Stack};

/// Three cluster-enabled nodes joined with `redis-cli --cluster create`, all slots covered.
struct LocalCluster {
    nodes: Vec<RedisServer>,
    _dirs: Vec<std::path::PathBuf>,
}

impl LocalCluster {
    fn start() -> Self {
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..3 {
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
            .args(["--cluster-replicas", "0", "--cluster-yes"])
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
