//! The Cosmos-protocol server for tests: `tests/cosmos/launcher.js`, which wraps the npm
//! package `@vercel/cosmosdb-server` and fixes what the Rust SDK needs (see its README). One
//! server per test binary, started on first use on a free port; it exits with the test
//! process (`--exit-with-parent`: it watches its stdin pipe).
//!
//! [`CosmosServer::sdk_env`] is the one place that lists the SDK settings a local server needs.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

/// The well-known Cosmos DB emulator key. The local server accepts any key; real Cosmos checks
/// it, so tests always send one.
pub const EMULATOR_KEY: &str =
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";

/// The running launcher.
pub struct CosmosServer {
    /// `http://127.0.0.1:<port>/`.
    pub endpoint: String,
    child: Mutex<Child>,
    _stdin: Mutex<ChildStdin>,
}

fn cosmos_dir() -> PathBuf {
    crate::repo_root().join("tests/cosmos")
}

/// The server shared by all tests of this binary.
pub fn shared() -> &'static CosmosServer {
    static SERVER: OnceLock<CosmosServer> = OnceLock::new();
    SERVER.get_or_init(CosmosServer::start)
}

impl CosmosServer {
    fn start() -> Self {
        let (child, stdin, endpoint) = launch(&[]);
        Self {
            endpoint,
            child: Mutex::new(child),
            _stdin: Mutex::new(stdin),
        }
    }

    /// Environment for the handler and `handler seed` against this server and `database`/
    /// `container`, with the [`local_sdk_env`] settings.
    pub fn sdk_env(&self, database: &str, container: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("COSMOS_ENDPOINT", self.endpoint.as_str()),
            ("COSMOS_KEY", EMULATOR_KEY),
            ("COSMOS_DATABASE", database),
            ("COSMOS_CONTAINER", container),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(local_sdk_env());
        env
    }

    /// The launcher's process id (the benchmark reports its RSS and CPU time; 0 if unknown).
    pub fn pid(&self) -> u32 {
        self.child.lock().map_or(0, |c| c.id())
    }

    fn control_url(&self, path: &str) -> String {
        format!("{}_test/{path}", self.endpoint)
    }

    /// Request counters for one database: `{"queries","reads","upserts","deletes","requests"}`.
    pub async fn stats(&self, database: &str) -> Value {
        reqwest::get(format!("{}?db={database}", self.control_url("stats")))
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats JSON")
    }

    /// Injects a fault: `{"kind":"query"|"upsert"|"delete"|"read"|"any","count":N,
    /// "status":429,"retryAfterMs":M,"db":NAME}` or `{"kind":..,"count":N,"delayMs":D,"db":..}`
    /// (always give `db`: tests run in parallel, each in its own database).
    pub async fn fault(&self, fault: Value) {
        let status = reqwest::Client::new()
            .post(self.control_url("faults"))
            .json(&fault)
            .send()
            .await
            .expect("fault")
            .status();
        assert!(status.is_success(), "fault injection refused: {status}");
    }

    /// Clears the faults injected for `database`.
    pub async fn clear_faults(&self, database: &str) {
        let _ = reqwest::Client::new()
            .delete(format!("{}?db={database}", self.control_url("faults")))
            .send()
            .await;
    }
}

impl CosmosServer {
    /// Every row of `query` (optionally scoped to partition `pk`) as the Cosmos SDK returns
    /// them when it pages by itself: the reference the handler's paging is compared with.
    pub async fn sdk_rows(
        &self,
        database: &str,
        container: &str,
        query: &str,
        pk: Option<&str>,
    ) -> Vec<Value> {
        use azure_data_cosmos::{
            AccountReference, CosmosClient, FeedScope, PartitionKey, RoutingStrategy,
        };
        use futures::TryStreamExt;
        let account = AccountReference::with_authentication_key(
            self.endpoint.parse().expect("endpoint URL"),
            azure_core::credentials::Secret::from(EMULATOR_KEY.to_string()),
        );
        let client = CosmosClient::builder()
            .build(account, RoutingStrategy::PreferredRegions(Vec::new()))
            .await
            .expect("SDK client");
        let container = client
            .database_client(database)
            .container_client(container, None)
            .await
            .expect("container client");
        let scope = match pk {
            Some(pk) => FeedScope::partition(PartitionKey::from(pk.to_string())),
            None => FeedScope::full_container(),
        };
        container
            .query_items::<Value>(query, scope, None)
            .await
            .unwrap_or_else(|e| panic!("SDK query {query:?}: {e}"))
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("SDK query {query:?}: {e}"))
    }

    /// Upserts `document` (JSON text, sent as is) into partition `pk` with the REST API,
    /// bypassing the handler and the SDK: for documents the SDK itself would not write.
    pub async fn upsert_raw(&self, database: &str, container: &str, pk: &str, document: &str) {
        let url = format!("{}dbs/{database}/colls/{container}/docs", self.endpoint);
        let response = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .header("x-ms-documentdb-is-upsert", "true")
            .header(
                "x-ms-documentdb-partitionkey",
                serde_json::json!([pk]).to_string(),
            )
            .header("x-ms-version", "2020-07-15")
            // The local server does not check keys; real Cosmos would need a signed token.
            .header("authorization", "type%3Dmaster%26ver%3D1.0%26sig%3Dtest")
            .body(document.to_string())
            .send()
            .await
            .expect("raw upsert");
        assert!(
            response.status().is_success(),
            "raw upsert refused: {}",
            response.status()
        );
    }
}

/// Starts `node launcher.js --port 0 --exit-with-parent <args>` in `tests/cosmos` (running
/// `npm ci` there first when the server package is missing). Returns the child, its stdin (the
/// launcher exits when it closes) and the endpoint `http://127.0.0.1:<port>/`.
pub(crate) fn launch(args: &[&str]) -> (Child, ChildStdin, String) {
    let dir = cosmos_dir();
    if !dir.join("node_modules/@vercel/cosmosdb-server").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm on PATH");
        assert!(status.success(), "npm ci in tests/cosmos failed");
    }
    let mut child = Command::new("node")
        .args(["launcher.js", "--port", "0", "--exit-with-parent"])
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node on PATH");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("launcher prints its address");
    let url = line
        .trim()
        .strip_prefix("cosmos-local listening on ")
        .unwrap_or_else(|| panic!("unexpected launcher output: {line:?}"))
        .to_string();
    let stdin = child.stdin.take().expect("piped stdin");
    (child, stdin, format!("{url}/"))
}

/// SDK settings only a local server needs; against real Cosmos DB none of them is set.
pub fn local_sdk_env() -> Vec<(String, String)> {
    [
        // The SDK writes Cosmos binary JSON by default; real Cosmos DB accepts it, the local
        // server answers 500 "Unexpected token".
        ("AZURE_COSMOS_BINARY_ENCODING_ENABLED", "false"),
        // Real Cosmos DB speaks HTTP/2; the local (Node) server refuses h2 and some plain-HTTP
        // h2 connects fail.
        ("AZURE_COSMOS_CONNECTION_POOL_IS_HTTP2_ALLOWED", "false"),
        // No Azure metadata endpoint here; real deployments may use it for region info.
        ("COSMOS_DISABLE_IMDS", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}
