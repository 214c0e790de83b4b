//! The real stack with Microsoft Entra ID for one test: a local managed-identity endpoint
//! ([`crate::identity`]), a `redis-server` whose only client user is the identity
//! ([`crate::entra_redis`]), a Cosmos server of its own (`tests/cosmos/launcher.js
//! --aad-verify-url`, seeded with the 1,000-city CSV through `handler seed` with the key, then
//! switched to `disableLocalAuth`), and the handler behind the host emulator.

use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command};
use std::time::Duration;

use serde_json::Value;

use crate::cosmos_server::EMULATOR_KEY;
use crate::entra_redis::EntraRedis;
use crate::host_emulator::{EmulatorConfig, HostEmulator};
use crate::identity::IdentityEndpoint;
use crate::stack::{CONTAINER, Mode, Reply, cities_csv};

/// The identity's object id: the Redis ACL user.
pub const PRINCIPAL: &str = "8f0e5d2c-6b1a-4c7e-9d3f-2a4b6c8d0e1f";

/// A Cosmos server of this test's own (the shared one accepts any key).
pub struct LocalCosmos {
    /// `http://127.0.0.1:<port>/`.
    pub endpoint: String,
    child: Child,
    _stdin: ChildStdin,
}

impl Drop for LocalCosmos {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LocalCosmos {
    /// `node launcher.js --port 0 --exit-with-parent <args>`.
    pub fn start(args: &[&str]) -> Self {
        let (child, stdin, endpoint) = crate::cosmos_server::launch(args);
        Self {
            endpoint,
            child,
            _stdin: stdin,
        }
    }

    /// `POST /_test/auth {"disableLocalAuth": on}`.
    pub async fn disable_local_auth(&self, on: bool) {
        let status = reqwest::Client::new()
            .post(format!("{}_test/auth", self.endpoint))
            .json(&serde_json::json!({ "disableLocalAuth": on }))
            .send()
            .await
            .expect("_test/auth")
            .status();
        assert!(status.is_success(), "{status}");
    }

    /// The launcher's auth counters (`aadAccepted`, `aadRefused`, `masterAccepted`,
    /// `masterRefused`, `controlPlaneRefused`).
    pub async fn auth_counters(&self) -> Value {
        reqwest::get(format!("{}_test/auth", self.endpoint))
            .await
            .expect("_test/auth")
            .json()
            .await
            .expect("JSON")
    }

    /// SDK settings only a local server needs.
    pub fn sdk_env() -> Vec<(String, String)> {
        crate::cosmos_server::local_sdk_env()
    }
}

/// Everything one keyless test needs.
pub struct KeylessStack {
    /// The managed-identity endpoint.
    pub identity: IdentityEndpoint,
    /// Redis with the identity's ACL user.
    pub redis: EntraRedis,
    /// This test's Cosmos server.
    pub cosmos: LocalCosmos,
    /// The seeded database (container [`CONTAINER`]).
    pub database: String,
    /// The host emulator in front of the handler.
    pub host: Option<HostEmulator>,
    /// Wire mode.
    pub mode: Mode,
    http: reqwest::Client,
}

impl KeylessStack {
    /// Starts the endpoint (tokens living `lifetime`), Redis, Cosmos (seeded with the key,
    /// then refusing keys), without a handler.
    pub async fn services(mode: Mode, lifetime: Duration) -> Self {
        let identity = IdentityEndpoint::start(lifetime).await;
        let redis = EntraRedis::start(&identity, PRINCIPAL).await;
        let cosmos = LocalCosmos::start(&["--aad-verify-url", &identity.verify_url()]);
        let database = format!("keyless{}", std::process::id());
        let output = Command::new(crate::handler_exe())
            .args(["seed", "--csv"])
            .arg(cities_csv())
            .envs(LocalCosmos::sdk_env())
            .envs([
                ("COSMOS_ENDPOINT", cosmos.endpoint.as_str()),
                ("COSMOS_KEY", EMULATOR_KEY),
                ("COSMOS_DATABASE", database.as_str()),
                ("COSMOS_CONTAINER", CONTAINER),
            ])
            .output()
            .expect("run handler seed");
        assert!(
            output.status.success(),
            "seed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        cosmos.disable_local_auth(true).await;
        Self {
            identity,
            redis,
            cosmos,
            database,
            host: None,
            mode,
            http: reqwest::Client::new(),
        }
    }

    /// As [`KeylessStack::services`], with the handler started in the keyless configuration.
    pub async fn start(mode: Mode, lifetime: Duration) -> Self {
        let mut stack = Self::services(mode, lifetime).await;
        let env = stack.keyless_env();
        stack.start_handler(env).await;
        stack
    }

    fn common_env(&self) -> Vec<(String, String)> {
        let mut env = LocalCosmos::sdk_env();
        env.extend([
            ("COSMOS_DATABASE".to_string(), self.database.clone()),
            ("COSMOS_CONTAINER".to_string(), CONTAINER.to_string()),
            ("RUST_LOG".to_string(), "warn".to_string()),
            // These tests count bypasses caused by authentication: a 250 ms timeout on a
            // machine shared with other builds would add bypasses of its own.
            ("REDIS_TIMEOUT_MS".to_string(), "1000".to_string()),
            (
                "AzureFunctionsJobHost__customHandler__enableForwardingHttpRequest".to_string(),
                (self.mode == Mode::Forwarding).to_string(),
            ),
        ]);
        env
    }

    /// The keyless settings, with the managed identity (`IDENTITY_ENDPOINT` present).
    pub fn keyless_env(&self) -> Vec<(String, String)> {
        let mut env = self.common_env();
        env.extend(self.identity.env());
        env.extend([
            (
                "CosmosDB__accountEndpoint".to_string(),
                self.cosmos.endpoint.clone(),
            ),
            (
                "Redis__redisHostName".to_string(),
                format!("127.0.0.1:{}", self.redis.proxy_port),
            ),
            ("Redis__principalId".to_string(), PRINCIPAL.to_string()),
            ("Redis__ssl".to_string(), "false".to_string()),
        ]);
        env
    }

    /// The key settings of the same services (which refuse keys).
    pub fn key_env(&self) -> Vec<(String, String)> {
        let mut env = self.common_env();
        env.extend([
            ("COSMOS_ENDPOINT".to_string(), self.cosmos.endpoint.clone()),
            ("COSMOS_KEY".to_string(), EMULATOR_KEY.to_string()),
            (
                "REDIS_CONNECTION_STRING".to_string(),
                format!("redis://127.0.0.1:{}", self.redis.proxy_port),
            ),
        ]);
        env
    }

    /// (Re)starts the handler with `env` behind a new host emulator.
    pub async fn start_handler(&mut self, env: Vec<(String, String)>) {
        if let Some(host) = self.host.take() {
            host.shutdown().await;
        }
        let config = EmulatorConfig {
            app_root: crate::repo_root(),
            executable: Some(crate::handler_exe()),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            env,
        };
        let host = HostEmulator::start(config)
            .await
            .unwrap_or_else(|e| panic!("host emulator: {e}"));
        self.host = Some(host);
    }

    fn base(&self) -> String {
        self.host.as_ref().expect("handler running").base_url()
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        Reply::of(request.timeout(Duration::from_secs(60))).await
    }

    /// `GET /api/<path_and_query>` through the emulator.
    pub async fn get(&self, path_and_query: &str) -> Reply {
        self.send(crate::stack::api_get(
            &self.http,
            &self.base(),
            path_and_query,
        ))
        .await
    }

    /// `POST /api/<path>` with a JSON text body.
    pub async fn post(&self, path: &str, body: &str) -> Reply {
        self.send(crate::stack::api_post(&self.http, &self.base(), path, body))
            .await
    }

    /// `GET /_diagnostics` on the handler's own port.
    pub async fn diagnostics(&self) -> Value {
        let port = self.host.as_ref().expect("handler running").handler_port();
        self.http
            .get(format!("http://127.0.0.1:{port}/_diagnostics"))
            .send()
            .await
            .expect("diagnostics")
            .json()
            .await
            .expect("diagnostics JSON")
    }

    /// The diagnostics of the token source `name` (`redis`, `cosmos`).
    pub async fn token_source(&self, name: &str) -> Value {
        self.diagnostics().await["identity"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["source"] == name).cloned())
            .unwrap_or(Value::Null)
    }

    /// Stops the handler.
    pub async fn shutdown(mut self) {
        if let Some(host) = self.host.take() {
            host.shutdown().await;
        }
    }
}
