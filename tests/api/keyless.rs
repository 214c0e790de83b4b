//! Keyless: Microsoft Entra ID for Redis and Cosmos DB against real local components (a
//! managed-identity endpoint speaking the App Service protocol, a `redis-server` whose only
//! client user is the identity, a Cosmos server that checks tokens and refuses keys), with
//! tokens living seconds instead of hours so that every refresh path runs many times.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use cosmos_cache_handler::identity::{RefreshPolicy, TokenSource};
use serde_json::Value;

use crate::support::Mode;
use crate::support::identity::{IdentityEndpoint, Mode as EndpointMode};
use crate::support::keyless::KeylessStack;
use crate::support::stack::Reply;

both_modes!(
    steady_load_with_five_second_tokens,
    identity_endpoint_outage_then_recovery,
    keys_refused_keyless_works,
    failed_reauth_is_retried,
    developer_credential_is_cached,
    cluster_nodes_each_reauthenticate,
);

const STATES: [&str; 6] = ["Texas", "Ohio", "Idaho", "Utah", "Iowa", "Maine"];

/// Every token the endpoint issued: none may appear in an answer.
fn assert_no_token(stack: &KeylessStack, reply: &Reply) {
    for token in stack.identity.all_tokens() {
        assert!(
            !reply.text.contains(&token),
            "token in body: {}",
            reply.text
        );
        for (name, value) in &reply.headers {
            assert!(
                !value.to_str().unwrap_or_default().contains(&token),
                "token in header {name}"
            );
        }
    }
}

/// Queries until one is answered from the cache path (not bypass): the first Redis token is
/// in use. Returns how long that took.
async fn wait_for_cache(stack: &KeylessStack, query: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let reply = stack.get(query).await;
        seen.push((reply.status, reply.cache().to_string()));
        if reply.status == 200 && reply.cache() != "bypass" {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "no cache within {within:?}: {seen:?} (last: {})",
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 60 s of steady load with 5-second tokens: every request answered, no bypass after the first
/// token, every connection re-authenticated before each expiry (the rig closes connections
/// whose token expired: none was), the identity user in `CLIENT LIST`, Cosmos served with
/// tokens only.
async fn steady_load_with_five_second_tokens(mode: Mode) {
    const LIFETIME: Duration = Duration::from_secs(5);
    const LOAD: Duration = Duration::from_secs(60);
    let stack = KeylessStack::start(mode, LIFETIME).await;
    let master_before = stack.cosmos.auth_counters().await["masterAccepted"].clone();
    wait_for_cache(&stack, "query?state=Texas", Duration::from_secs(10)).await;

    let started = Instant::now();
    let outcomes: std::sync::Mutex<HashMap<String, u64>> = Default::default();
    let failures: std::sync::Mutex<Vec<String>> = Default::default();
    let worker = |w: usize| {
        let stack = &stack;
        let outcomes = &outcomes;
        let failures = &failures;
        async move {
            let mut i = 0usize;
            while started.elapsed() < LOAD {
                i += 1;
                let state = STATES[(i + w) % STATES.len()];
                let reply = stack.get(&format!("query?state={state}")).await;
                if reply.status != 200 {
                    failures
                        .lock()
                        .expect("lock")
                        .push(format!("{}: {}", reply.status, reply.text));
                }
                assert_no_token(stack, &reply);
                *outcomes
                    .lock()
                    .expect("lock")
                    .entry(reply.cache().to_string())
                    .or_insert(0) += 1;
                // Worker 0 writes now and then: the invalidation goes through Redis too.
                if w == 0 && i.is_multiple_of(25) {
                    let doc = serde_json::json!({
                        "id": "keyless-probe", "city": "Probe", "state": state, "population": i,
                    });
                    let update = stack.post("update", &doc.to_string()).await;
                    if update.status != 200 || update.header("x-cache-invalidation") != Some("done")
                    {
                        failures.lock().expect("lock").push(format!(
                            "update {} {:?}: {}",
                            update.status,
                            update.header("x-cache-invalidation"),
                            update.text
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    futures::future::join_all((0..3).map(worker)).await;

    let outcomes = outcomes.into_inner().expect("lock");
    let failures = failures.into_inner().expect("lock");
    let answered: u64 = outcomes.values().sum();
    eprintln!("keyless steady load ({mode:?}): {answered} answers {outcomes:?}");
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(outcomes.get("bypass"), None, "{outcomes:?}");
    assert!(
        outcomes.get("hit").copied().unwrap_or(0) > 100,
        "{outcomes:?}"
    );

    // Redis: re-AUTH on every connection before each expiry.
    assert_eq!(
        stack.redis.expired_kills(),
        0,
        "connections outlived their token"
    );
    let now = Instant::now();
    let mut reauths_seen = 0;
    for conn in stack.redis.connections() {
        if conn.auths.is_empty() {
            continue; // never authenticated (refused before the first token)
        }
        reauths_seen += conn.auths.len() - 1;
        let end = conn.closed.unwrap_or(now);
        let mut marks = conn.auths.clone();
        marks.push(end);
        let longest = marks
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        assert!(
            longest < LIFETIME,
            "a connection went {longest:?} without a new token"
        );
    }
    let diagnostics = stack.diagnostics().await;
    let cache = &diagnostics["cache"];
    eprintln!("keyless steady load ({mode:?}): diagnostics {diagnostics}");
    assert_eq!(cache["redisAuth"], "entra-id");
    // 60 s of 5 s tokens refreshed at half-life: about 24 tokens.
    assert!(reauths_seen >= 18, "re-AUTHs seen by Redis: {reauths_seen}");
    assert!(cache["reauths"].as_u64().unwrap_or(0) >= 18, "{cache}");
    let clients = stack.redis.identity_clients();
    assert!(!clients.is_empty(), "CLIENT LIST shows no identity user");
    eprintln!("CLIENT LIST (identity): {clients:?}");

    // Cosmos: tokens only, none refused, no key.
    let auth = stack.cosmos.auth_counters().await;
    assert_eq!(auth["masterAccepted"], master_before, "{auth}");
    assert_eq!(auth["masterRefused"], 0, "{auth}");
    assert_eq!(auth["aadRefused"], 0, "{auth}");
    assert!(auth["aadAccepted"].as_u64().unwrap_or(0) > 0, "{auth}");
    stack.shutdown().await;
}

/// The token endpoint refuses for 15 s, then hangs for 15 s (30 s in all): every request is
/// answered (hits until the Redis token expired, then bypass; Cosmos until its token expired,
/// then a clean 503); the refresh loop is still running; within 2 s of the endpoint's return
/// the cache serves hits again, with no restart.
async fn identity_endpoint_outage_then_recovery(mode: Mode) {
    let stack = KeylessStack::start(mode, Duration::from_secs(5)).await;
    let query = "query?state=Idaho";
    wait_for_cache(&stack, query, Duration::from_secs(10)).await;
    let warm = stack.get(query).await;
    assert_eq!(warm.cache(), "hit", "{}", warm.text);

    let mut by_phase: Vec<(&str, u16, String, Duration)> = Vec::new();
    for (phase, endpoint_mode) in [
        ("refuse", EndpointMode::Refuse),
        ("hang", EndpointMode::Hang),
    ] {
        stack.identity.set_mode(endpoint_mode);
        let phase_started = Instant::now();
        while phase_started.elapsed() < Duration::from_secs(15) {
            let asked = Instant::now();
            let reply = stack.get(query).await;
            let took = asked.elapsed();
            assert!(
                reply.status == 200 || reply.status == 503,
                "{phase}: {} {}",
                reply.status,
                reply.text
            );
            assert!(
                took < Duration::from_secs(10),
                "{phase}: answer took {took:?}"
            );
            assert_no_token(&stack, &reply);
            if reply.status == 503 {
                let message = reply.json()["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                assert!(message.contains("Entra ID"), "{message}");
            }
            by_phase.push((phase, reply.status, reply.cache().to_string(), took));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let redis = stack.token_source("redis").await;
    let cosmos = stack.token_source("cosmos").await;
    eprintln!("after 30 s down ({mode:?}): redis {redis} cosmos {cosmos}");
    for source in [&redis, &cosmos] {
        assert_eq!(source["refreshLoop"], "running", "{source}");
        assert!(
            source["consecutiveFailures"].as_u64().unwrap_or(0) >= 20,
            "{source}"
        );
        assert!(
            source["lastAttemptAgoMs"].as_u64().unwrap_or(u64::MAX) < 6_000,
            "{source}"
        );
    }
    // Hits while the token lasted, then bypass; Cosmos answered until its token expired, then
    // 503 (the cached Idaho page needed no Cosmos while Redis still had a token).
    let summary: Vec<(&str, u16, &str)> = by_phase
        .iter()
        .map(|(p, s, c, _)| (*p, *s, c.as_str()))
        .collect();
    assert!(
        summary
            .first()
            .is_some_and(|(_, s, c)| *s == 200 && *c == "hit"),
        "{summary:?}"
    );
    assert!(
        summary.iter().any(|(_, s, c)| *s == 200 && *c == "bypass")
            || summary.iter().any(|(_, s, _)| *s == 503),
        "the outage outlived the tokens, yet nothing changed: {summary:?}"
    );
    assert!(
        summary.last().is_some_and(|(_, s, _)| *s == 503),
        "after 30 s both tokens expired: {summary:?}"
    );

    stack.identity.set_mode(EndpointMode::Serve);
    let back = Instant::now();
    let mut seen = Vec::new();
    loop {
        let reply = stack.get(query).await;
        seen.push((reply.status, reply.cache().to_string()));
        if reply.status == 200 && reply.cache() == "hit" {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "no recovery: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = back.elapsed();
    eprintln!(
        "keyless outage ({mode:?}): hits again {recovered:?} after the endpoint returned; {seen:?}"
    );
    assert!(
        recovered < Duration::from_secs(2),
        "{recovered:?}: {seen:?}"
    );
    assert_eq!(stack.token_source("redis").await["consecutiveFailures"], 0);
    stack.shutdown().await;
}

/// Keys refused by Cosmos (`disableLocalAuth`) and Redis's `default` user off: the key
/// configuration starts but every query answers 503 naming the key settings (and Redis is
/// bypassed), a keyless setting with a bad value stops start-up naming it, and the keyless
/// configuration of the same services works.
async fn keys_refused_keyless_works(mode: Mode) {
    let mut stack = KeylessStack::services(mode, Duration::from_secs(30)).await;
    let key_env = stack.key_env();
    stack.start_handler(key_env).await;
    let refused = stack.get("query?state=Ohio").await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for name in ["COSMOS_KEY", "CosmosDB__accountEndpoint", "HTTP 403"] {
        assert!(message.contains(name), "{name} not in {message}");
    }
    assert!(
        !refused
            .text
            .contains(crate::support::cosmos_server::EMULATOR_KEY)
    );
    assert!(stack.redis.identity_clients().is_empty());
    let auth = stack.cosmos.auth_counters().await;
    assert!(auth["masterRefused"].as_u64().unwrap_or(0) > 0, "{auth}");

    // A bad keyless value stops start-up, naming the setting.
    let mut bad = stack.keyless_env();
    bad.push(("Redis__ssl".into(), "maybe".into()));
    if let Some(host) = stack.host.take() {
        host.shutdown().await;
    }
    let config = crate::support::host_emulator::EmulatorConfig {
        app_root: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        executable: Some(std::path::PathBuf::from(env!("CARGO_BIN_EXE_handler"))),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        env: bad,
    };
    match crate::support::host_emulator::HostEmulator::start(config).await {
        Ok(_) => panic!("the handler started with Redis__ssl=maybe"),
        Err(e) => assert!(e.to_string().contains("Redis__ssl"), "{e}"),
    }

    let keyless_env = stack.keyless_env();
    stack.start_handler(keyless_env).await;
    wait_for_cache(&stack, "query?state=Ohio", Duration::from_secs(10)).await;
    let hit = stack.get("query?state=Ohio").await;
    assert_eq!((hit.status, hit.cache()), (200, "hit"), "{}", hit.text);
    assert!(!stack.redis.identity_clients().is_empty());
    stack.shutdown().await;
}

/// Reads `query?state=Utah` every 100 ms for `period`: every answer must be a 200 hit.
async fn only_hits_for(stack: &KeylessStack, period: Duration) {
    let started = Instant::now();
    while started.elapsed() < period {
        let reply = stack.get("query?state=Utah").await;
        assert_eq!(
            (reply.status, reply.cache()),
            (200, "hit"),
            "{}",
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// New tokens are held back from Redis's ACL for a while: the handler's re-AUTH with them
/// fails (WRONGPASS), is retried, and succeeds once Redis knows them, before the connection's
/// current token expires; answers never bypass.
async fn failed_reauth_is_retried(mode: Mode) {
    let stack = KeylessStack::start(mode, Duration::from_secs(12)).await;
    wait_for_cache(&stack, "query?state=Utah", Duration::from_secs(10)).await;
    // Start right after a Redis token was issued: the connection's token has 12 s left, the
    // next one comes at half-life (6 s) and is held back until 8 s.
    let issued = stack.identity.issued_count("https://redis.azure.com");
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.identity.issued_count("https://redis.azure.com") == issued {
        assert!(Instant::now() < deadline, "no token refresh within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stack.redis.hold_tokens();
    let before = stack.diagnostics().await["cache"].clone();
    only_hits_for(&stack, Duration::from_secs(8)).await;
    let during = stack.diagnostics().await["cache"].clone();
    assert!(
        during["reauthFailures"].as_u64() > before["reauthFailures"].as_u64(),
        "{before} -> {during}"
    );
    stack.redis.release_tokens().await;
    only_hits_for(&stack, Duration::from_secs(10)).await;
    let after = stack.diagnostics().await["cache"].clone();
    eprintln!("failed re-AUTH ({mode:?}): {before} -> {during} -> {after}");
    assert!(
        after["reauths"].as_u64() > during["reauths"].as_u64(),
        "{during} -> {after}"
    );
    assert_eq!(stack.redis.expired_kills(), 0);
    stack.shutdown().await;
}

/// Local development: the Azure CLI login (a stand-in `az` on `PATH` that answers from the
/// local endpoint). 1,000 queries cause a handful of token requests, not one per request.
async fn developer_credential_is_cached(mode: Mode) {
    let mut stack = KeylessStack::services(mode, Duration::from_secs(3600)).await;
    let bin = std::env::temp_dir().join(format!("cch-az-{}-{:?}", std::process::id(), mode));
    stack.identity.install_az_stub(&bin);
    // No IDENTITY_ENDPOINT: not in Azure, so the developer credential.
    let mut env: Vec<(String, String)> = stack
        .keyless_env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("IDENTITY_"))
        .collect();
    let path = std::env::var("PATH").unwrap_or_default();
    env.push(("PATH".into(), format!("{}:{path}", bin.display())));
    stack.start_handler(env).await;
    wait_for_cache(&stack, "query?state=Texas", Duration::from_secs(20)).await;
    let mut outcomes: HashMap<String, u64> = HashMap::new();
    for i in 0..1_000 {
        let state = STATES[i % STATES.len()];
        let page = 1 + (i / STATES.len()) % 40;
        let reply = stack
            .get(&format!("query?state={state}&maxItemCount={page}"))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        *outcomes.entry(reply.cache().to_string()).or_insert(0) += 1;
    }
    let redis = stack.identity.issued_count("https://redis.azure.com");
    let cosmos = stack.identity.issued_count("https://cosmos.azure.com");
    eprintln!(
        "developer credential ({mode:?}): {outcomes:?}; az token requests: redis {redis}, cosmos {cosmos}"
    );
    assert_eq!(outcomes.get("bypass"), None, "{outcomes:?}");
    assert!(
        outcomes.get("miss").copied().unwrap_or(0) >= 200,
        "{outcomes:?}"
    );
    assert!((1..=2).contains(&redis), "redis: {redis}");
    assert!((1..=2).contains(&cosmos), "cosmos: {cosmos}");
    let auth = stack.cosmos.auth_counters().await;
    assert_eq!(auth["aadRefused"], 0, "{auth}");
    let _ = std::fs::remove_dir_all(&bin);
    stack.shutdown().await;
}

/// A credential that asks the local endpoint over HTTP (as `ManagedIdentityCredential` does,
/// without reading the process environment), to drive [`TokenSource`] in-process.
#[derive(Debug)]
struct EndpointCredential {
    url: String,
    header: String,
    http: reqwest::Client,
}

#[async_trait::async_trait]
impl TokenCredential for EndpointCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        use azure_core::error::{Error, ErrorKind};
        let resource = scopes[0].trim_end_matches("/.default");
        let reply = self
            .http
            .get(format!(
                "{}?api-version=2019-08-01&resource={}",
                self.url,
                form_urlencoded::byte_serialize(resource.as_bytes()).collect::<String>()
            ))
            .header("x-identity-header", &self.header)
            .send()
            .await
            .map_err(|e| Error::with_message(ErrorKind::Io, e.to_string()))?;
        let body: Value = reply
            .json()
            .await
            .map_err(|e| Error::with_message(ErrorKind::DataConversion, e.to_string()))?;
        let expires: i64 = body["expires_on"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::with_message(ErrorKind::DataConversion, "expires_on"))?;
        Ok(AccessToken::new(
            body["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            azure_core::time::OffsetDateTime::from_unix_timestamp(expires)
                .map_err(|e| Error::with_message(ErrorKind::DataConversion, e.to_string()))?,
        ))
    }
}

/// The refresh loop after 100 consecutive failures (a refusing endpoint, fast backoff) is
/// still running and gets the next token as soon as the endpoint serves again; dropping a
/// clone of the source changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_loop_survives_a_hundred_failures() {
    let endpoint = IdentityEndpoint::start(Duration::from_secs(2)).await;
    let env: HashMap<String, String> = endpoint.env().into_iter().collect();
    let credential = Arc::new(EndpointCredential {
        url: env["IDENTITY_ENDPOINT"].clone(),
        header: env["IDENTITY_HEADER"].clone(),
        http: reqwest::Client::new(),
    });
    endpoint.set_mode(EndpointMode::Refuse);
    let policy = RefreshPolicy {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        attempt_timeout: Duration::from_secs(2),
        reader_wait: Duration::from_millis(100),
    };
    let source = TokenSource::start(
        "redis",
        "https://redis.azure.com/.default",
        credential,
        policy,
    )
    .expect("source");
    let clone = source.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while source.stats_json()["consecutiveFailures"]
        .as_u64()
        .unwrap_or(0)
        < 100
    {
        assert!(Instant::now() < deadline, "{}", source.stats_json());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(clone);
    assert!(source.loop_running());
    assert!(source.current().is_none());
    // A reader without a token fails fast, naming no secret.
    let refused = source
        .get_token(&["https://redis.azure.com/.default"], None)
        .await
        .expect_err("no token while refusing");
    assert!(
        refused
            .to_string()
            .contains("consecutive failed token requests"),
        "{refused}"
    );
    let failures = source.stats_json()["consecutiveFailures"]
        .as_u64()
        .unwrap_or(0);
    endpoint.set_mode(EndpointMode::Serve);
    let back = Instant::now();
    let token = source
        .usable_within(Duration::from_secs(2))
        .await
        .expect("a token within 2 s of the endpoint's return");
    eprintln!(
        "refresh loop: token {:?} after {failures} consecutive failures, {:?} after the endpoint returned",
        token.expires_on,
        back.elapsed()
    );
    assert_eq!(source.stats_json()["consecutiveFailures"], 0);
    // The loop goes on refreshing (2 s tokens, refreshed at half-life).
    let issued = endpoint.issued_count("https://redis.azure.com");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(endpoint.issued_count("https://redis.azure.com") > issued);
    assert!(source.loop_running());
}

/// No token and no `IDENTITY_HEADER` in any log line at any level: the handler runs with
/// `RUST_LOG=trace` (every crate's events, the SDKs' and the redis crate's included) through
/// token refreshes, re-AUTHs, an endpoint outage and its recovery, and its whole output is
/// searched for every token the endpoint issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_log_line() {
    let stack = KeylessStack::services(Mode::Forwarding, Duration::from_secs(4)).await;
    let port = crate::support::redis_server::free_port();
    let mut env = stack.keyless_env();
    env.push(("RUST_LOG".into(), "trace".into()));
    env.push(("LOG_FORMAT".into(), "json".into()));
    env.push(("FUNCTIONS_CUSTOMHANDLER_PORT".into(), port.to_string()));
    let log_path = std::env::temp_dir().join(format!("cch-keyless-log-{}", std::process::id()));
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .envs(env)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("handler");
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut statuses = HashMap::new();
    while started.elapsed() < Duration::from_secs(14) {
        let phase = started.elapsed().as_secs();
        stack.identity.set_mode(if (6..9).contains(&phase) {
            EndpointMode::Refuse
        } else {
            EndpointMode::Serve
        });
        if let Ok(reply) = http
            .get(format!("{base}/api/query?state=Texas"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            *statuses.entry(reply.status().as_u16()).or_insert(0) += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGTERM, as the host stops it: the handler writes its buffered stdout lines on the way
    // out, so the whole log is searched.
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: signals our own child, which has not been waited for yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the handler did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&log_path).expect("log");
    let _ = std::fs::remove_file(&log_path);
    let tokens = stack.identity.all_tokens();
    eprintln!(
        "trace log: {} lines, {} tokens issued, answers {statuses:?}",
        text.lines().count(),
        tokens.len()
    );
    assert!(tokens.len() >= 4, "{tokens:?}");
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > 10,
        "{statuses:?}"
    );
    let header = stack
        .identity
        .env()
        .into_iter()
        .find(|(k, _)| k == "IDENTITY_HEADER")
        .map(|(_, v)| v)
        .expect("header");
    for secret in tokens.iter().chain(std::iter::once(&header)) {
        if let Some(line) = text.lines().find(|l| l.contains(secret.as_str())) {
            panic!("a secret in the log: {line}");
        }
    }
}

/// `REDIS_CLUSTER=true` with Entra ID: a real 3-node cluster whose nodes each have the
/// identity's ACL user (passwords = the valid Redis tokens, rotated on every node as they are
/// issued and removed at expiry) and `default` off. 20 s of load with 5-second tokens: no
/// bypass after the first token, every node shows the identity in `CLIENT LIST`, and every node
/// received a re-AUTH per token refresh (`INFO commandstats`). (Closing connections at token
/// expiry is checked on the single endpoint, through the tracking proxy, which a cluster's
/// announced node addresses bypass.)
async fn cluster_nodes_each_reauthenticate(mode: Mode) {
    use crate::support::keyless::PRINCIPAL;
    let cluster = crate::cluster::LocalCluster::start();
    // The services of a keyless stack, with the cluster instead of the single server.
    let mut stack = KeylessStack::services(mode, Duration::from_secs(5)).await;
    let admin_password = format!("admin-{:016x}", rand::random::<u64>());
    for node in &cluster.nodes {
        let mut c = node.connection();
        for args in [
            vec![
                "rig",
                "on",
                &format!(">{admin_password}"),
                "~*",
                "&*",
                "+@all",
            ],
            vec![PRINCIPAL, "on", "resetpass", "~*", "&*", "+@all"],
            vec!["default", "off"],
        ] {
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&args)
                .query::<()>(&mut c)
                .expect("ACL SETUSER");
        }
    }
    let admins: Vec<redis::aio::MultiplexedConnection> = {
        let mut v = Vec::new();
        for node in &cluster.nodes {
            v.push(
                redis::Client::open(format!(
                    "redis://rig:{admin_password}@127.0.0.1:{}",
                    node.port
                ))
                .expect("client")
                .get_multiplexed_async_connection()
                .await
                .expect("admin"),
            );
        }
        v
    };
    let hook_admins = admins.clone();
    stack.identity.set_issue_hook(Arc::new(move |issued| {
        let mut admins = hook_admins.clone();
        Box::pin(async move {
            if issued.resource != "https://redis.azure.com" {
                return;
            }
            for admin in &mut admins {
                crate::support::entra_redis::allow_token(admin, PRINCIPAL, &issued.token).await;
            }
            // Removed from every node when it expires.
            let mut admins = admins.clone();
            tokio::spawn(async move {
                let left = issued
                    .expires_at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                tokio::time::sleep(left).await;
                for admin in &mut admins {
                    let _ = redis::cmd("ACL")
                        .arg("SETUSER")
                        .arg(PRINCIPAL)
                        .arg(format!("<{}", issued.token))
                        .query_async::<()>(admin)
                        .await;
                }
            });
        })
    }));
    let mut env: Vec<(String, String)> = stack
        .keyless_env()
        .into_iter()
        .filter(|(k, _)| k != "Redis__redisHostName")
        .collect();
    env.push((
        "Redis__redisHostName".into(),
        format!("127.0.0.1:{}", cluster.nodes[0].port),
    ));
    env.push(("REDIS_CLUSTER".into(), "true".into()));
    stack.start_handler(env).await;
    wait_for_cache(&stack, "query?state=Texas", Duration::from_secs(15)).await;
    let auth_calls = |admins: &[redis::aio::MultiplexedConnection]| {
        let mut admins = admins.to_vec();
        async move {
            let mut calls = Vec::new();
            for admin in &mut admins {
                let info: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query_async(admin)
                    .await
                    .expect("INFO");
                calls.push(
                    info.lines()
                        .find_map(|l| l.strip_prefix("cmdstat_auth:calls="))
                        .and_then(|rest| rest.split(',').next())
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0),
                );
            }
            calls
        }
    };
    let before = auth_calls(&admins).await;
    let issued_before = stack.identity.issued_count("https://redis.azure.com");
    let started = Instant::now();
    let mut outcomes: HashMap<String, u64> = HashMap::new();
    while started.elapsed() < Duration::from_secs(20) {
        for state in STATES {
            let reply = stack.get(&format!("query?state={state}")).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            *outcomes.entry(reply.cache().to_string()).or_insert(0) += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = auth_calls(&admins).await;
    let refreshes = stack.identity.issued_count("https://redis.azure.com") - issued_before;
    eprintln!(
        "keyless cluster ({mode:?}): {outcomes:?}; {refreshes} tokens; AUTH calls per node {before:?} -> {after:?}"
    );
    assert_eq!(outcomes.get("bypass"), None, "{outcomes:?}");
    assert!(refreshes >= 6, "{refreshes}");
    for (node, (b, a)) in cluster.nodes.iter().zip(before.iter().zip(&after)) {
        assert!(
            a - b >= refreshes - 1,
            "node {}: {b} -> {a} AUTHs for {refreshes} tokens",
            node.port
        );
        let list: String = redis::Client::open(format!(
            "redis://rig:{admin_password}@127.0.0.1:{}",
            node.port
        ))
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("CLIENT").arg("LIST").query(&mut c))
        .expect("CLIENT LIST");
        assert!(
            list.contains(&format!("user={PRINCIPAL}")),
            "node {}: {list}",
            node.port
        );
    }
    stack.shutdown().await;
}

/// `handler seed` with `CosmosDB__accountEndpoint` (keys refused): into the existing container
/// it writes with tokens; a missing container it cannot create (a control-plane operation) and
/// says what to do instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_with_entra_id() {
    let stack = KeylessStack::services(Mode::Payload, Duration::from_secs(60)).await;
    let seed = |database: &str| {
        let env: Vec<(String, String)> = stack
            .keyless_env()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("Redis__") && k != "COSMOS_DATABASE")
            .chain([("COSMOS_DATABASE".to_string(), database.to_string())])
            .collect();
        std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
            .args(["seed", "--csv"])
            .arg(crate::support::stack::cities_csv())
            .envs(env)
            .output()
            .expect("handler seed")
    };
    let before = stack.cosmos.auth_counters().await;
    let into_existing = seed(&stack.database);
    let stdout = String::from_utf8_lossy(&into_existing.stdout);
    assert!(
        into_existing.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&into_existing.stderr)
    );
    assert!(stdout.contains("Microsoft Entra ID"), "{stdout}");
    let after = stack.cosmos.auth_counters().await;
    let accepted = |v: &Value| v["aadAccepted"].as_u64().unwrap_or(0);
    assert!(
        accepted(&after) >= accepted(&before) + 1_000,
        "{before} -> {after}"
    );

    let missing = seed("not_created_yet");
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    for expected in [
        "does not exist",
        "cannot create databases or containers",
        "az cosmosdb sql container create",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    }
    for token in stack.identity.all_tokens() {
        assert!(!stderr.contains(&token) && !stdout.contains(&token));
    }
}
