//! The whole real stack for one test: its own `redis-server`, its own database in the shared
//! Cosmos-protocol server (seeded with the 1,000-city CSV through `handler seed`), and the
//! handler binary behind the host emulator in the chosen wire mode.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::cosmos_server::{self, CosmosServer};
use crate::host_emulator::{EmulatorConfig, HostEmulator};
use crate::redis_server::RedisServer;

/// How the host delivers requests to the handler (protocol §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `POST /{function}` with `{Data, Metadata}`.
    Payload,
    /// The client's request on `/api/{function}`.
    Forwarding,
}

/// The 1,000-city data set, `data/us-cities-top-1k.csv` (see `data/README.md`).
pub fn cities_csv() -> PathBuf {
    crate::repo_root().join("data/us-cities-top-1k.csv")
}

/// One CSV row, read independently of the code under test.
#[derive(Debug, Clone)]
pub struct CityRow {
    /// `City` column.
    pub city: String,
    /// `State` column.
    pub state: String,
    /// `Population` column.
    pub population: u64,
    /// `lat` column (degrees).
    pub lat: f64,
    /// `lon` column (degrees).
    pub lng: f64,
}

/// All rows of the CSV.
pub fn city_rows() -> Vec<CityRow> {
    let mut reader = csv::Reader::from_path(cities_csv()).expect("data/us-cities-top-1k.csv");
    reader
        .records()
        .map(|r| {
            let r = r.expect("a CSV record");
            CityRow {
                city: r[0].trim().to_string(),
                state: r[1].trim().to_string(),
                population: r[2].trim().parse().expect("a population"),
                lat: r[3].trim().parse().expect("a latitude"),
                lng: r[4].trim().parse().expect("a longitude"),
            }
        })
        .collect()
}

/// `GET <base>/api/<path_and_query>` (the emulator's client side).
pub(crate) fn api_get(
    http: &reqwest::Client,
    base: &str,
    path_and_query: &str,
) -> reqwest::RequestBuilder {
    http.get(format!("{base}/api/{path_and_query}"))
}

/// `POST <base>/api/<path>` with a JSON text body.
pub(crate) fn api_post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: &str,
) -> reqwest::RequestBuilder {
    http.post(format!("{base}/api/{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
}

/// A reply from the stack.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body text.
    pub text: String,
}

impl Reply {
    /// Sends `request` and reads the whole answer.
    ///
    /// # Panics
    /// When nothing answers (the test cannot go on).
    pub async fn of(request: reqwest::RequestBuilder) -> Self {
        let response = request.send().await.expect("request to the host emulator");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("response body");
        Reply {
            status,
            headers,
            text,
        }
    }

    /// Runs `request` through an in-process router (axum's `oneshot`: a second handler
    /// instance in the test's own process) and reads the whole answer.
    pub async fn from_router(
        app: &axum::Router,
        request: axum::http::Request<axum::body::Body>,
    ) -> Self {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Reply {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// The body as JSON, or `null` when it is not JSON.
    pub fn json_or_null(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// The body as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
    /// A header's value, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The `x-cache` header.
    pub fn cache(&self) -> &str {
        self.header("x-cache").unwrap_or("(none)")
    }
    /// `error.field` of an error body.
    pub fn error_field(&self) -> String {
        self.json()["error"]["field"]
            .as_str()
            .unwrap_or("(none)")
            .to_string()
    }
}

/// Everything one test needs.
pub struct Stack {
    /// This test's Redis.
    pub redis: RedisServer,
    /// The shared Cosmos-protocol server.
    pub cosmos: &'static CosmosServer,
    /// This test's database (container `us_cities`).
    pub database: String,
    /// The host emulator in front of the handler.
    pub host: Option<HostEmulator>,
    /// Wire mode.
    pub mode: Mode,
    http: reqwest::Client,
    extra_env: Vec<(String, String)>,
}

/// Container name used by every test.
pub const CONTAINER: &str = "us_cities";

fn unique_database() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Stack {
    /// Starts Redis, seeds a fresh database with the CSV, and starts the handler in `mode`.
    pub async fn start(mode: Mode) -> Self {
        Self::start_with(mode, true, &[]).await
    }

    /// As [`Stack::start`], choosing whether to seed and adding handler settings.
    pub async fn start_with(mode: Mode, seed: bool, extra_env: &[(&str, &str)]) -> Self {
        let mut stack = Self::services(mode, seed, extra_env);
        stack.start_handler().await;
        stack
    }

    /// Redis and a (seeded) database, without a handler process: for in-process tests
    /// ([`Stack::app_state`]) or to start the handler later.
    pub fn services(mode: Mode, seed: bool, extra_env: &[(&str, &str)]) -> Self {
        let redis = RedisServer::start();
        let cosmos = cosmos_server::shared();
        let database = unique_database();
        let mut stack = Self {
            redis,
            cosmos,
            database,
            host: None,
            mode,
            http: reqwest::Client::new(),
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        if seed {
            stack.seed();
        }
        stack
    }

    /// Sets (or replaces) a handler setting for the next [`Stack::start_handler`].
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.extra_env.retain(|(k, _)| k != name);
        self.extra_env.push((name.to_string(), value.to_string()));
    }

    /// The handler's settings as the binary would read them.
    pub fn settings(&self) -> cosmos_cache_handler::config::Settings {
        let env = self.handler_env();
        cosmos_cache_handler::config::Settings::from_lookup(|name| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
        .expect("valid handler settings")
    }

    /// The handler's state, built in this process (for in-process tests with test hooks).
    pub fn app_state(&self) -> cosmos_cache_handler::AppState {
        cosmos_cache_handler::build_state(&self.settings()).expect("state")
    }

    /// `GET /_diagnostics` on the handler's own port.
    pub async fn diagnostics(&self) -> Value {
        let url = format!("http://127.0.0.1:{}/_diagnostics", self.handler_port());
        self.http
            .get(url)
            .send()
            .await
            .expect("diagnostics")
            .json()
            .await
            .expect("diagnostics JSON")
    }

    /// The hash tag of this test's cache keys: `{<account host:port>/<db>/<container>}`.
    pub fn key_tag(&self) -> String {
        format!("{{{}}}", self.settings().cosmos.scope())
    }

    /// The container's generation key and its current value, if any.
    pub fn generation(&self) -> (String, Option<u64>) {
        let key = format!("cc:{}:gen", self.key_tag());
        let value: Option<u64> = redis::cmd("GET")
            .arg(&key)
            .query(&mut self.redis.connection())
            .expect("GET gen");
        (key, value)
    }

    /// Every key in this test's Redis.
    pub fn redis_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut self.redis.connection())
            .expect("KEYS");
        keys.sort();
        keys
    }

    /// Environment of the handler process (app settings).
    pub fn handler_env(&self) -> Vec<(String, String)> {
        let mut env = self.cosmos.sdk_env(&self.database, CONTAINER);
        env.push(("REDIS_CONNECTION_STRING".into(), self.redis.url()));
        env.push(("RUST_LOG".into(), "warn".into()));
        // [change feed] The invalidate function's trigger connection (change_feed.rs). Its
        // watcher is off unless a test turns it on (`AzureWebJobs.invalidate.Disabled=false`):
        // it adds Cosmos requests and generation bumps other tests do not expect.
        env.push((
            "CosmosDBConnection".into(),
            format!(
                "AccountEndpoint={};AccountKey={};",
                self.cosmos.endpoint,
                cosmos_server::EMULATOR_KEY
            ),
        ));
        env.push(("AzureWebJobs.invalidate.Disabled".into(), "true".into()));
        // How Azure overrides a host.json value with an app setting; the emulator honours it.
        env.push((
            "AzureFunctionsJobHost__customHandler__enableForwardingHttpRequest".into(),
            (self.mode == Mode::Forwarding).to_string(),
        ));
        env.extend(self.extra_env.iter().cloned());
        env
    }

    /// Runs `handler seed --csv` against this test's database.
    ///
    /// When seeding fails, it is tried again in a fresh database (up to three databases): the
    /// local server answers HTTP 500 for every request in some databases, depending on the
    /// database's resource id it generated (a counter), so a suite that creates more databases
    /// meets them in whichever test comes at that count. Upserts are idempotent.
    pub fn seed(&mut self) {
        let mut last_error = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                self.database = unique_database();
            }
            let output = Command::new(crate::handler_exe())
                .args(["seed", "--csv"])
                .arg(cities_csv())
                .envs(self.cosmos.sdk_env(&self.database, CONTAINER))
                .output()
                .expect("run handler seed");
            if output.status.success() {
                return;
            }
            last_error = String::from_utf8_lossy(&output.stderr).into_owned();
        }
        panic!("seed failed in three databases: {last_error}");
    }

    /// (Re)starts the handler behind a new host emulator.
    pub async fn start_handler(&mut self) {
        if let Some(host) = self.host.take() {
            host.shutdown().await;
        }
        let config = EmulatorConfig {
            app_root: crate::repo_root(),
            executable: Some(crate::handler_exe()),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            env: self.handler_env(),
        };
        let host = HostEmulator::start(config)
            .await
            .unwrap_or_else(|e| panic!("host emulator: {e}"));
        self.host = Some(host);
    }

    /// The host emulator's base URL (`http://127.0.0.1:<port>`).
    pub fn base(&self) -> String {
        self.host.as_ref().expect("handler running").base_url()
    }

    /// The handler's own port (to call it directly, bypassing the emulator).
    pub fn handler_port(&self) -> u16 {
        self.host.as_ref().expect("handler running").handler_port()
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        Reply::of(request).await
    }

    /// `GET /api/<path_and_query>` through the emulator.
    pub async fn get(&self, path_and_query: &str) -> Reply {
        self.send(api_get(&self.http, &self.base(), path_and_query))
            .await
    }

    /// `POST /api/<path>` with a JSON text body.
    pub async fn post(&self, path: &str, body: &str) -> Reply {
        self.send(api_post(&self.http, &self.base(), path, body))
            .await
    }

    /// `DELETE /api/<path_and_query>`.
    pub async fn delete(&self, path_and_query: &str) -> Reply {
        self.send(
            self.http
                .delete(format!("{}/api/{path_and_query}", self.base())),
        )
        .await
    }

    /// Cosmos request counters of this test's database.
    pub async fn cosmos_stats(&self) -> Value {
        self.cosmos.stats(&self.database).await
    }

    /// Stops the handler.
    pub async fn shutdown(mut self) {
        if let Some(host) = self.host.take() {
            host.shutdown().await;
        }
    }
}
