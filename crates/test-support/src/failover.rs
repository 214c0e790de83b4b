//! A real Redis primary and replica (`--replicaof`) behind the chaos proxy, which can fail
//! over to the replica while the handlers keep running, as Azure's endpoint does behind one
//! host name: either after the replica caught up with every write, or after it was detached
//! (`REPLICAOF NO ONE`) so that it misses the last writes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::chaos_proxy::{Behaviour, ChaosProxy};
use crate::redis_server::RedisServer;
use crate::scratch::ScratchDir;

/// Two `redis-server`s, one replicating the other, and the proxy clients connect to.
pub struct ReplicatedRedis {
    servers: [RedisServer; 2],
    primary: usize,
    /// Clients connect here; it forwards to the current primary.
    pub proxy: ChaosProxy,
    detached: bool,
    /// Each server's working directory: a full sync writes an RDB file there (not in the
    /// repository). Declared after `servers`, so removed after they stopped.
    _dirs: [ScratchDir; 2],
}

fn addr(server: &RedisServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.port))
}

fn replicaof(server: &RedisServer, primary: Option<&RedisServer>) {
    let mut cmd = redis::cmd("REPLICAOF");
    match primary {
        Some(p) => cmd.arg("127.0.0.1").arg(p.port),
        None => cmd.arg("NO").arg("ONE"),
    };
    let _: () = cmd.query(&mut server.connection()).expect("REPLICAOF");
}

impl ReplicatedRedis {
    /// A primary, a replica in sync with it, and a proxy to the primary.
    pub async fn start() -> Self {
        let dirs = [ScratchDir::new("replica-a"), ScratchDir::new("replica-b")];
        let server = |dir: &ScratchDir| {
            let dir = dir.path().to_string_lossy().into_owned();
            RedisServer::start_with(&["--dir", &dir])
        };
        let servers = [server(&dirs[0]), server(&dirs[1])];
        replicaof(&servers[1], Some(&servers[0]));
        let proxy = ChaosProxy::start(addr(&servers[0])).await;
        let pair = Self {
            servers,
            primary: 0,
            proxy,
            detached: false,
            _dirs: dirs,
        };
        pair.wait_in_sync().await;
        pair
    }

    /// `redis://` URL of the proxy (what the handlers use).
    pub fn url(&self) -> String {
        self.proxy.redis_url()
    }

    /// The server clients currently reach.
    pub fn primary(&self) -> &RedisServer {
        &self.servers[self.primary]
    }

    /// The server a failover would promote.
    pub fn replica(&self) -> &RedisServer {
        &self.servers[1 - self.primary]
    }

    /// Waits until the replica's link is up and it applied every write of the primary.
    pub async fn wait_in_sync(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = self.replica().replication_field("master_link_status") == "up";
            if up
                && self.replica().replication_field("master_repl_offset")
                    == self.primary().replication_field("master_repl_offset")
            {
                return;
            }
            assert!(Instant::now() < deadline, "the replica did not catch up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Detaches the replica (`REPLICAOF NO ONE`): from now on it misses every write, and the
    /// next [`ReplicatedRedis::fail_over`] promotes it as it is (a lagging replica).
    pub fn detach_replica(&mut self) {
        replicaof(self.replica(), None);
        self.detached = true;
    }

    /// Entries (pages) stored under the replica's current generation of the container whose
    /// hash tag is `tag`: what a failover to it would make unreachable.
    pub fn replica_entries(&self, tag: &str) -> usize {
        let mut conn = self.replica().connection();
        let generation: Option<String> = redis::cmd("GET")
            .arg(format!("cc:{tag}:gen"))
            .query(&mut conn)
            .expect("GET gen");
        let Some(generation) = generation else {
            return 0;
        };
        let prefix = format!("cc:{tag}:{generation}:");
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).expect("KEYS");
        keys.iter()
            .filter(|k| k.starts_with(&prefix) && !k.ends_with(":lease"))
            .count()
    }

    /// Fails over: promotes the replica (after it caught up, unless it was detached), points the
    /// proxy at it and closes every open connection, then makes the old primary a replica of
    /// the new one (in sync again before the next failover).
    pub async fn fail_over(&mut self) {
        if !self.detached {
            // A planned failover of a replica that has every write: stop traffic, let it
            // catch up, promote it.
            self.proxy.set(Behaviour::Refuse);
            self.proxy.cut_all();
            self.wait_in_sync().await;
            replicaof(self.replica(), None);
        }
        self.proxy.switch_upstream(addr(self.replica()));
        self.proxy.set(Behaviour::Pass);
        self.primary = 1 - self.primary;
        replicaof(self.replica(), Some(self.primary()));
        self.detached = false;
    }
}
