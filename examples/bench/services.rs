//! The benchmark's services: test-support's `redis-server` and local Cosmos launcher, plus
//! what only the benchmark needs beyond them: release `handler` processes started the way the
//! Functions host starts them (each with its own environment), the in-process bare-SDK store,
//! and `handler seed`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cosmos_cache_handler::config::Settings;
use cosmos_cache_handler::store::CosmosStore;
use serde_json::Value;
use test_support::cosmos_server::{self, CosmosServer};
use test_support::redis_server::RedisServer;
use test_support::{free_port, handler_exe, repo_root};

use crate::Res;
use crate::load::raw_get;
use crate::procs::Proc;

/// The database and container of the 1,000-city data set.
pub const DB: &str = "bench";
pub const CONTAINER: &str = "us_cities";

/// Puts the SDK settings a local Cosmos server needs into this process's environment, for the
/// in-process bare-SDK store. Starts the launcher (a child process, no thread) to learn them.
/// The handler's own settings come along; nothing reads them here (the store gets its settings
/// by lookup and every child process starts from a cleared environment).
pub fn set_sdk_env() {
    for (k, v) in cosmos_server::shared().sdk_env(DB, CONTAINER) {
        // SAFETY: called from `main` before the runtime exists: no other thread reads the
        // environment.
        unsafe { std::env::set_var(k, v) };
    }
}

/// Redis, the Cosmos server, the handler binary, and one HTTP client for all requests.
pub struct Services {
    pub root: PathBuf,
    /// `.run/bench`: results, the wrk Lua script, perf data, the package zip.
    pub run_dir: PathBuf,
    pub handler_bin: PathBuf,
    pub redis: RedisServer,
    pub cosmos: &'static CosmosServer,
    pub http: reqwest::Client,
}

/// What one handler process is configured with, beyond the host's own variables.
#[derive(Clone)]
pub struct HandlerCfg {
    pub db: String,
    pub container: String,
    pub redis_url: String,
    /// Extra settings (`CACHE_FILL_LEASE_MS`, `RUST_LOG`, …).
    pub extra: Vec<(String, String)>,
}

impl HandlerCfg {
    /// The same settings with Redis at a port nobody listens on (`x-cache: bypass`).
    pub fn without_redis(&self) -> Self {
        Self {
            redis_url: format!("redis://127.0.0.1:{}", free_port()),
            ..self.clone()
        }
    }

    /// The same settings plus `extra`.
    pub fn with(&self, extra: &[(&str, &str)]) -> Self {
        Self {
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..self.clone()
        }
    }
}

/// A running handler process and its base URL.
pub struct Handler {
    proc: Proc,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl Handler {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `GET /_diagnostics` (Null when it fails).
    pub async fn diagnostics(&self, http: &reqwest::Client) -> Value {
        match http.get(format!("{}/_diagnostics", self.base)).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// The cache's hit counter from the diagnostics (0 when absent).
    pub async fn cache_hits(&self, http: &reqwest::Client) -> u64 {
        self.diagnostics(http).await["cache"]["hits"]
            .as_u64()
            .unwrap_or(0)
    }
}

impl Services {
    /// Starts Redis and (if not yet running) the Cosmos launcher.
    pub fn start() -> Res<Self> {
        let root = repo_root();
        let run_dir = root.join(".run/bench");
        std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        Ok(Self {
            handler_bin: handler_exe(),
            root,
            run_dir,
            redis: RedisServer::start(),
            cosmos: cosmos_server::shared(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .map_err(|e| e.to_string())?,
        })
    }

    pub fn cosmos_pid(&self) -> u32 {
        self.cosmos.pid()
    }

    pub fn redis_pid(&self) -> u32 {
        self.redis.pid().unwrap_or(0)
    }

    /// The handler's settings for `db`/`container` on this run's Redis.
    pub fn handler_cfg(&self, db: &str, container: &str) -> HandlerCfg {
        HandlerCfg {
            db: db.into(),
            container: container.into(),
            redis_url: self.redis.url(),
            extra: Vec::new(),
        }
    }

    /// The settings the handler would read, for the in-process bare-SDK store.
    pub fn store(&self, db: &str, container: &str) -> Res<CosmosStore> {
        let mut env = self.cosmos.sdk_env(db, container);
        env.push(("REDIS_CONNECTION_STRING".into(), self.redis.url()));
        let settings = Settings::from_lookup(|name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .map_err(|e| e.to_string())?;
        Ok(CosmosStore::new(settings.cosmos, Duration::from_secs(5)))
    }

    /// Spawns the handler as the Functions host does: environment only, stdout/stderr to
    /// /dev/null (the host reads them; the benchmark measures the process, not its logs).
    pub fn spawn_handler(&self, cfg: &HandlerCfg, port: u16) -> Res<Proc> {
        let child = Command::new(&self.handler_bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("FUNCTIONS_APP_ROOT_PATH", &self.root)
            .env("REDIS_CONNECTION_STRING", &cfg.redis_url)
            .env("LOG_FORMAT", "json")
            .envs(self.cosmos.sdk_env(&cfg.db, &cfg.container))
            .envs(cfg.extra.iter().cloned())
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("handler: {e}"))?;
        Ok(Proc::new(child))
    }

    /// Spawns the handler on a free port and waits (up to 10 s) until `GET /` answers 200.
    pub async fn start_handler(&self, cfg: &HandlerCfg) -> Res<Handler> {
        let port = free_port();
        let proc = self.spawn_handler(cfg, port)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if raw_get(port, "/").is_some_and(|r| r.status == 200) {
                break;
            }
            if Instant::now() > deadline {
                return Err("the handler did not answer GET /".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Handler {
            proc,
            base: format!("http://127.0.0.1:{port}"),
        })
    }

    /// The Cosmos server's counter `name` for `db` (`queries`, `requests`, …).
    pub async fn cosmos_count(&self, db: &str, name: &str) -> u64 {
        self.cosmos.stats(db).await[name].as_u64().unwrap_or(0)
    }

    /// Empties Redis, so the next requests are misses.
    pub fn flush_redis(&self) -> Res<()> {
        redis::cmd("FLUSHALL")
            .query::<()>(&mut self.redis.connection())
            .map_err(|e| format!("FLUSHALL: {e}"))
    }

    /// Redis's `used_memory` (bytes; 0 when unknown).
    pub fn redis_used_memory(&self) -> u64 {
        redis::cmd("INFO")
            .arg("memory")
            .query::<String>(&mut self.redis.connection())
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Runs `handler seed <args>` against `db` (container `us_cities`); its wall time in s.
    pub fn seed_cli(&self, db: &str, args: &[&str]) -> Res<f64> {
        let started = Instant::now();
        let out = Command::new(&self.handler_bin)
            .arg("seed")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.cosmos.sdk_env(db, CONTAINER))
            .current_dir(&self.root)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "handler seed {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(started.elapsed().as_secs_f64())
    }
}
