//! The host's `cosmosDBTrigger`, emulated (test support, not product code): for every function
//! whose `function.json` has a `cosmosDBTrigger` binding, a task watches the container's change
//! feed on the local Cosmos server and invokes the function with each batch, as the Functions
//! host with the Cosmos DB extension 4.x does. Started by [`crate::HostEmulator`]
//! after the handler is ready; stopped when the emulator stops.
//!
//! What it follows from the host:
//! - the binding's `connection` names an app setting holding a connection string
//!   (`AccountEndpoint=...;AccountKey=...;`), or `<connection>__accountEndpoint` (identity-based);
//!   `databaseName` / `containerName` may be `%SETTING%` references;
//! - it polls the change feed (`GET .../docs` with `A-IM: Incremental feed`, the REST form the
//!   launcher serves) every `feedPollDelay` ms (default 5000) while nothing changed, and again at
//!   once after a batch; at most `maxItemsPerInvocation` (default 100) documents a batch;
//! - `startFromBeginning` (default false): without it, the first checkpoint is "now";
//! - each batch is one payload-mode invocation (non-HTTP triggers always use it, protocol §1):
//!   `POST /{function}` with `{"Data":{"<binding name>":<documents>},"Metadata":{...}}`, the
//!   documents **double-encoded** (a JSON string whose content is a JSON string holding the
//!   array), as a capture of the real host shows;
//! - the checkpoint moves past a batch only after the invocation succeeded (2xx with a JSON
//!   body, §5.1); a failed invocation is retried per the function's `retry` policy
//!   (`fixedDelay` with `delayInterval`, or `exponentialBackoff` from `minimumInterval` doubling
//!   up to `maximumInterval`; `maxRetryCount` -1 = forever). Without a policy, or once the
//!   retries are used up, the host moves on and the batch is lost: so does this emulator;
//! - a function is disabled by `"disabled": true` or the app setting
//!   `AzureWebJobs.<name>.Disabled` (`AzureWebJobs_<name>_Disabled` accepted too) = `true`/`1`.
//!
//! Gaps: the checkpoint lives in memory (no lease container: `leaseContainerName`,
//! `leaseContainerPrefix` and `createLeaseContainerIfNotExists` are read but not used), one
//! partition key range, no request signing (the local server accepts any request), the body is
//! sent with a `Content-Length` (the host chunks it), `Metadata` carries only `sys`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

/// Defaults of the Cosmos DB extension 4.x trigger.
const DEFAULT_FEED_POLL_DELAY: Duration = Duration::from_millis(5000);
const DEFAULT_MAX_ITEMS: u64 = 100;
/// How long one invocation may take before it counts as failed.
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(60);

/// A function-level `retry` policy.
#[derive(Clone, Debug, PartialEq)]
pub enum RetryPolicy {
    /// Failed batches are not retried.
    None,
    /// `fixedDelay`: `delay` between tries.
    Fixed {
        /// Retries after the first try; `None` = forever (`-1`).
        max_retries: Option<u64>,
        /// `delayInterval`.
        delay: Duration,
    },
    /// `exponentialBackoff`: `min`, doubling, capped at `max`.
    Exponential {
        /// Retries after the first try; `None` = forever (`-1`).
        max_retries: Option<u64>,
        /// `minimumInterval`.
        min: Duration,
        /// `maximumInterval`.
        max: Duration,
    },
}

impl RetryPolicy {
    /// The pause before retry number `retry` (1-based), or `None` when no retry is left.
    pub fn delay(&self, retry: u64) -> Option<Duration> {
        match self {
            Self::None => None,
            Self::Fixed { max_retries, delay } => {
                (max_retries.is_none_or(|m| retry <= m)).then_some(*delay)
            }
            Self::Exponential {
                max_retries,
                min,
                max,
            } => (max_retries.is_none_or(|m| retry <= m)).then(|| {
                let factor = 1u32 << (retry.saturating_sub(1)).min(20) as u32;
                min.saturating_mul(factor).min(*max)
            }),
        }
    }
}

/// One `cosmosDBTrigger` function, resolved against the app settings.
#[derive(Clone, Debug)]
pub struct TriggerSpec {
    /// Function (folder) name: the invocation path `/{name}`.
    pub function: String,
    /// Binding name: the key under `Data`.
    pub binding: String,
    /// Account endpoint from the `connection` setting, with a trailing `/`.
    pub endpoint: String,
    /// Monitored database.
    pub database: String,
    /// Monitored container.
    pub container: String,
    /// `feedPollDelay`.
    pub poll_delay: Duration,
    /// `maxItemsPerInvocation`.
    pub max_items: u64,
    /// `startFromBeginning`.
    pub start_from_beginning: bool,
    /// The function's `retry` policy.
    pub retry: RetryPolicy,
}

/// What one watcher did so far (tests read these).
#[derive(Debug, Default)]
pub struct TriggerStats {
    /// Change-feed requests sent.
    pub polls: AtomicU64,
    /// Invocations sent (first tries and retries).
    pub invocations: AtomicU64,
    /// Invocations that failed (non-2xx, not JSON, or no answer).
    pub failed_invocations: AtomicU64,
    /// Batches acknowledged by the function (the checkpoint moved past them).
    pub batches: AtomicU64,
    /// Documents in those batches.
    pub documents: AtomicU64,
    /// Batches given up after the retry policy ran out (lost, as on the host).
    pub dropped_batches: AtomicU64,
}

/// The running watchers of one emulator; dropping it stops them.
#[derive(Default)]
pub struct ChangeFeeds {
    watchers: Vec<(TriggerSpec, Arc<TriggerStats>, tokio::task::JoinHandle<()>)>,
}

impl ChangeFeeds {
    /// The watcher of function `name`: its resolved spec and counters.
    pub fn get(&self, name: &str) -> Option<(&TriggerSpec, &Arc<TriggerStats>)> {
        self.watchers
            .iter()
            .find(|(s, _, _)| s.function == name)
            .map(|(s, stats, _)| (s, stats))
    }

    /// Stops every watcher (an invocation in flight is abandoned).
    pub fn stop(&mut self) {
        for (_, _, task) in self.watchers.drain(..) {
            task.abort();
        }
    }
}

impl Drop for ChangeFeeds {
    fn drop(&mut self) {
        self.stop();
    }
}

fn log(line: &str) {
    eprintln!("[host-emulator] change feed: {line}");
}

/// The last value of app setting `name` (later settings override earlier ones).
fn setting<'a>(settings: &'a [(String, String)], name: &str) -> Option<&'a str> {
    settings
        .iter()
        .rev()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `%NAME%` references replaced by app settings.
///
/// # Errors
/// The name of a missing setting.
fn expand(text: &str, settings: &[(String, String)]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('%') {
        let Some(len) = rest[start + 1..].find('%') else {
            break;
        };
        let name = &rest[start + 1..start + 1 + len];
        out.push_str(&rest[..start]);
        out.push_str(
            setting(settings, name).ok_or_else(|| format!("app setting {name} is not set"))?,
        );
        rest = &rest[start + 2 + len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `hh:mm:ss` as the schema requires.
fn timespan(value: Option<&Value>, what: &str) -> Result<Duration, String> {
    let text = value
        .and_then(Value::as_str)
        .ok_or_else(|| format!("retry.{what} is required (hh:mm:ss)"))?;
    let parts: Vec<u64> = text
        .split(':')
        .map(|p| p.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("retry.{what} {text:?} is not hh:mm:ss"))?;
    match parts.as_slice() {
        [h, m, s] => Ok(Duration::from_secs(h * 3600 + m * 60 + s)),
        _ => Err(format!("retry.{what} {text:?} is not hh:mm:ss")),
    }
}

fn retry_policy(retry: Option<&Value>) -> Result<RetryPolicy, String> {
    let Some(retry) = retry.filter(|r| !r.is_null()) else {
        return Ok(RetryPolicy::None);
    };
    let count = retry
        .get("maxRetryCount")
        .and_then(Value::as_i64)
        .ok_or("retry.maxRetryCount is required (an integer)")?;
    let max_retries = if count < 0 { None } else { Some(count as u64) };
    match retry.get("strategy").and_then(Value::as_str) {
        Some(s) if s.eq_ignore_ascii_case("fixedDelay") => Ok(RetryPolicy::Fixed {
            max_retries,
            delay: timespan(retry.get("delayInterval"), "delayInterval")?,
        }),
        None => Err("retry.strategy is required".into()),
        Some(s) if s.eq_ignore_ascii_case("exponentialBackoff") => Ok(RetryPolicy::Exponential {
            max_retries,
            min: timespan(retry.get("minimumInterval"), "minimumInterval")?,
            max: timespan(retry.get("maximumInterval"), "maximumInterval")?,
        }),
        Some(other) => Err(format!("retry.strategy {other:?} is unknown")),
    }
}

/// The account endpoint of connection setting `name`: `AccountEndpoint` of the connection
/// string, or `<name>__accountEndpoint`. Never returns or logs the key.
fn endpoint(settings: &[(String, String)], name: &str) -> Result<String, String> {
    let from_string = setting(settings, name).and_then(|cs| {
        cs.split(';').find_map(|part| {
            let (k, v) = part.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("AccountEndpoint")
                .then(|| v.trim().to_string())
        })
    });
    let endpoint = from_string
        .or_else(|| setting(settings, &format!("{name}__accountEndpoint")).map(str::to_string))
        .filter(|e| !e.is_empty())
        .ok_or_else(|| {
            format!(
                "connection {name}: set {name} (a connection string) or {name}__accountEndpoint"
            )
        })?;
    Ok(if endpoint.ends_with('/') {
        endpoint
    } else {
        format!("{endpoint}/")
    })
}

/// Reads the `cosmosDBTrigger` of function `name` from its `function.json` text; `Ok(None)`
/// when it has none or is disabled.
///
/// # Errors
/// What is wrong with the binding or the settings it names.
pub fn parse_trigger(
    name: &str,
    function_json: &str,
    settings: &[(String, String)],
) -> Result<Option<TriggerSpec>, String> {
    let root: Value = serde_json::from_str(function_json).map_err(|e| format!("not JSON: {e}"))?;
    let Some(binding) = root
        .get("bindings")
        .and_then(Value::as_array)
        .and_then(|b| {
            b.iter().find(|b| {
                b.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.eq_ignore_ascii_case("cosmosDBTrigger"))
            })
        })
    else {
        return Ok(None);
    };
    let disabled_setting = [
        format!("AzureWebJobs.{name}.Disabled"),
        format!("AzureWebJobs_{name}_Disabled"),
    ]
    .iter()
    .filter_map(|k| setting(settings, k))
    .any(|v| v.eq_ignore_ascii_case("true") || v == "1");
    if root.get("disabled") == Some(&Value::Bool(true)) || disabled_setting {
        return Ok(None);
    }
    let text = |key: &str| -> Result<String, String> {
        let raw = binding
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{key} is required"))?;
        expand(raw, settings).map_err(|e| format!("{key}: {e}"))
    };
    let poll_delay = match binding.get("feedPollDelay") {
        None => DEFAULT_FEED_POLL_DELAY,
        Some(v) => Duration::from_millis(v.as_u64().ok_or("feedPollDelay must be milliseconds")?),
    };
    let max_items = match binding.get("maxItemsPerInvocation") {
        None => DEFAULT_MAX_ITEMS,
        Some(v) => v
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or("maxItemsPerInvocation must be a positive integer")?,
    };
    Ok(Some(TriggerSpec {
        function: name.to_string(),
        binding: text("name")?,
        endpoint: endpoint(settings, &text("connection")?)?,
        database: text("databaseName")?,
        container: text("containerName")?,
        poll_delay,
        max_items,
        start_from_beginning: binding
            .get("startFromBeginning")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        retry: retry_policy(root.get("retry"))?,
    }))
}

/// Starts a watcher for every enabled `cosmosDBTrigger` function under `app_root`. A function
/// whose binding cannot be resolved is logged and left out (the host would not index it).
pub fn start(app_root: &Path, settings: &[(String, String)], handler_port: u16) -> ChangeFeeds {
    let mut feeds = ChangeFeeds::default();
    let Ok(entries) = std::fs::read_dir(app_root) else {
        return feeds;
    };
    let mut dirs: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    dirs.sort();
    for dir in dirs {
        let Ok(text) = std::fs::read_to_string(dir.join("function.json")) else {
            continue;
        };
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match parse_trigger(&name, &text, settings) {
            Ok(Some(spec)) => {
                log(&format!(
                    "function '{name}' watches {}/{} every {} ms",
                    spec.database,
                    spec.container,
                    spec.poll_delay.as_millis()
                ));
                let stats = Arc::new(TriggerStats::default());
                let task = tokio::spawn(watch(spec.clone(), stats.clone(), handler_port));
                feeds.watchers.push((spec, stats, task));
            }
            Ok(None) => {}
            Err(e) => log(&format!("function '{name}' not started: {e}")),
        }
    }
    feeds
}

/// One change-feed page: the documents and the continuation after them.
enum Page {
    Changes(Vec<Value>, String),
    Nothing(String),
}

async fn poll(
    http: &reqwest::Client,
    spec: &TriggerSpec,
    continuation: Option<&str>,
) -> Result<Page, String> {
    let url = format!(
        "{}dbs/{}/colls/{}/docs",
        spec.endpoint, spec.database, spec.container
    );
    let mut request = http
        .get(url)
        .header("a-im", "Incremental feed")
        .header("x-ms-max-item-count", spec.max_items.to_string())
        .header("x-ms-documentdb-partitionkeyrangeid", "0")
        .timeout(Duration::from_secs(30));
    if let Some(c) = continuation {
        request = request.header("if-none-match", c);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match (status, etag) {
        (304, Some(etag)) => Ok(Page::Nothing(etag)),
        (200, Some(etag)) => {
            let body: Value = response
                .json()
                .await
                .map_err(|e| format!("unreadable page: {e}"))?;
            let docs = body
                .get("Documents")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            Ok(Page::Changes(docs, etag))
        }
        (status, _) => Err(format!("HTTP {status}")),
    }
}

/// The invocation body the host sends for a batch: the documents double-encoded under the
/// binding name (see the module docs), and the trigger's `sys` metadata.
pub fn invocation_body(function: &str, binding: &str, documents: &[Value]) -> String {
    let array = Value::Array(documents.to_vec()).to_string();
    let double = Value::String(Value::String(array).to_string());
    json!({
        "Data": { binding: double },
        "Metadata": { "sys": {
            "MethodName": function,
            "UtcNow": crate::utc_now_iso8601(),
            "RandGuid": uuid::Uuid::new_v4().to_string(),
        }},
    })
    .to_string()
}

/// One invocation; `Ok` only for a 2xx whose body is JSON (protocol §5.1).
async fn invoke(
    http: &reqwest::Client,
    spec: &TriggerSpec,
    port: u16,
    body: &str,
) -> Result<(), String> {
    let response = http
        .post(format!("http://127.0.0.1:{port}/{}", spec.function))
        .header("content-type", "application/json; charset=utf-8")
        .header(
            "user-agent",
            format!("Azure-Functions-Host/{}", crate::HOST_VERSION),
        )
        .header("x-azure-functions-hostversion", crate::HOST_VERSION)
        .header(
            "x-azure-functions-invocationid",
            uuid::Uuid::new_v4().to_string(),
        )
        .body(body.to_string())
        .timeout(INVOCATION_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!("HTTP {}", status.as_u16()));
    }
    serde_json::from_str::<Value>(&text)
        .map(|_| ())
        .map_err(|_| "the result is not JSON".to_string())
}

async fn watch(spec: TriggerSpec, stats: Arc<TriggerStats>, port: u16) {
    let http = reqwest::Client::new();
    // The starting checkpoint: "now" unless startFromBeginning (then no If-None-Match).
    let mut continuation: Option<String> = None;
    if !spec.start_from_beginning {
        loop {
            stats.polls.fetch_add(1, Ordering::Relaxed);
            match poll(&http, &spec, Some("*")).await {
                Ok(Page::Nothing(etag) | Page::Changes(_, etag)) => {
                    continuation = Some(etag);
                    break;
                }
                Err(e) => {
                    log(&format!(
                        "{}: cannot read the change feed: {e}",
                        spec.function
                    ));
                    tokio::time::sleep(spec.poll_delay).await;
                }
            }
        }
    }
    loop {
        stats.polls.fetch_add(1, Ordering::Relaxed);
        let (documents, next) = match poll(&http, &spec, continuation.as_deref()).await {
            Ok(Page::Changes(docs, next)) if !docs.is_empty() => (docs, next),
            Ok(Page::Changes(_, next) | Page::Nothing(next)) => {
                continuation = Some(next);
                tokio::time::sleep(spec.poll_delay).await;
                continue;
            }
            Err(e) => {
                log(&format!(
                    "{}: cannot read the change feed: {e}",
                    spec.function
                ));
                tokio::time::sleep(spec.poll_delay).await;
                continue;
            }
        };
        let body = invocation_body(&spec.function, &spec.binding, &documents);
        let mut retry = 0;
        loop {
            stats.invocations.fetch_add(1, Ordering::Relaxed);
            match invoke(&http, &spec, port, &body).await {
                Ok(()) => {
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    stats
                        .documents
                        .fetch_add(documents.len() as u64, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    stats.failed_invocations.fetch_add(1, Ordering::Relaxed);
                    retry += 1;
                    match spec.retry.delay(retry) {
                        Some(delay) => {
                            log(&format!(
                                "{}: invocation failed ({e}); retry {retry} in {} ms",
                                spec.function,
                                delay.as_millis()
                            ));
                            tokio::time::sleep(delay).await;
                        }
                        None => {
                            log(&format!(
                                "{}: invocation failed ({e}); no retry left: batch of {} dropped",
                                spec.function,
                                documents.len()
                            ));
                            stats.dropped_batches.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
        }
        // The checkpoint moves only now: after a success, or after the policy gave up.
        continuation = Some(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Vec<(String, String)> {
        [
            ("COSMOS_DATABASE", "db"),
            ("COSMOS_CONTAINER", "c"),
            (
                "Conn",
                "AccountEndpoint=http://127.0.0.1:9/;AccountKey=secret;",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn reads_the_repository_function() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../invalidate/function.json"),
        )
        .expect("invalidate/function.json");
        let mut env = settings();
        env.push((
            "CosmosDBConnection".into(),
            "AccountEndpoint=http://h:1;AccountKey=k".into(),
        ));
        let spec = parse_trigger("invalidate", &text, &env)
            .expect("valid")
            .expect("enabled");
        assert_eq!(spec.endpoint, "http://h:1/");
        assert_eq!(
            (spec.database.as_str(), spec.container.as_str()),
            ("db", "c")
        );
        assert_eq!(spec.poll_delay, Duration::from_millis(1000));
        assert!(!spec.start_from_beginning);
        assert_eq!(spec.retry.delay(1), Some(Duration::from_secs(1)));
        assert_eq!(spec.retry.delay(3), Some(Duration::from_secs(4)));
        assert_eq!(spec.retry.delay(1000), Some(Duration::from_secs(30)));
        env.push(("AzureWebJobs.invalidate.Disabled".into(), "true".into()));
        assert!(
            parse_trigger("invalidate", &text, &env)
                .expect("valid")
                .is_none()
        );
    }

    #[test]
    fn retry_policies() {
        let fixed = retry_policy(Some(
            &json!({"strategy":"fixedDelay","maxRetryCount":2,"delayInterval":"00:00:03"}),
        ))
        .expect("valid");
        assert_eq!(fixed.delay(1), Some(Duration::from_secs(3)));
        assert_eq!(fixed.delay(2), Some(Duration::from_secs(3)));
        assert_eq!(fixed.delay(3), None);
        assert_eq!(retry_policy(None).expect("none").delay(1), None);
        assert!(retry_policy(Some(&json!({"strategy":"fixedDelay","maxRetryCount":1}))).is_err());
    }

    #[test]
    fn payload_is_double_encoded() {
        let body = invocation_body("invalidate", "documents", &[json!({"id":"a"})]);
        let v: Value = serde_json::from_str(&body).expect("JSON");
        let once: Value =
            serde_json::from_str(v["Data"]["documents"].as_str().expect("a string")).expect("JSON");
        let twice: Value = serde_json::from_str(once.as_str().expect("a string")).expect("JSON");
        assert_eq!(twice, json!([{"id":"a"}]));
    }

    #[test]
    fn missing_settings_are_named() {
        let text = r#"{"bindings":[{"type":"cosmosDBTrigger","direction":"in","name":"d",
            "connection":"Nope","databaseName":"%MISSING%","containerName":"c"}]}"#;
        let e = parse_trigger("f", text, &settings()).expect_err("missing");
        assert!(e.contains("Nope") || e.contains("MISSING"), "{e}");
        assert!(!e.contains("secret"));
    }
}
