//! Settings, read once from environment variables (the Function App's app settings, or
//! `local.settings.json` `Values` under `func start`).
//!
//! Every setting has one name, listed in [`names`]. A missing or malformed setting stops
//! start-up with a [`ConfigError`] that names the variable and never contains its value:
//! connection strings carry keys and passwords.

use std::fmt;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

/// The environment variable names this binary reads. `local.settings.json.example` lists each.
pub mod names {
    /// Port to listen on, set by the Functions host (spec §2.3).
    pub const PORT: &str = "FUNCTIONS_CUSTOMHANDLER_PORT";
    /// Legacy name of the same port; the host sets both (spec §2.3).
    pub const PORT_LEGACY: &str = "FUNCTIONS_HTTPWORKER_PORT";
    /// `redis://`, `rediss://` URL or the Azure portal's StackExchange.Redis form.
    pub const REDIS: &str = "REDIS_CONNECTION_STRING";
    /// `true` for a clustered cache (OSS cluster protocol); default `false`.
    pub const REDIS_CLUSTER: &str = "REDIS_CLUSTER";
    /// Cosmos "PRIMARY CONNECTION STRING": `AccountEndpoint=...;AccountKey=...;`.
    pub const COSMOS_CONNECTION_STRING: &str = "COSMOS_CONNECTION_STRING";
    /// Cosmos account endpoint, used with [`COSMOS_KEY`] when no connection string is set.
    pub const COSMOS_ENDPOINT: &str = "COSMOS_ENDPOINT";
    /// Cosmos account key, used with [`COSMOS_ENDPOINT`].
    pub const COSMOS_KEY: &str = "COSMOS_KEY";
    /// Database name.
    pub const COSMOS_DATABASE: &str = "COSMOS_DATABASE";
    /// Container name.
    pub const COSMOS_CONTAINER: &str = "COSMOS_CONTAINER";
    /// Cache entry time-to-live in seconds (default 300).
    pub const CACHE_TTL_SECONDS: &str = "CACHE_TTL_SECONDS";
    /// TTL jitter in percent, ± (default 10).
    pub const CACHE_TTL_JITTER_PERCENT: &str = "CACHE_TTL_JITTER_PERCENT";
    /// Largest response body stored in Redis, in bytes (default 1 MiB).
    pub const CACHE_MAX_VALUE_BYTES: &str = "CACHE_MAX_VALUE_BYTES";
    /// Fill lease per missed page, in milliseconds (default 2000; 0 turns leases off).
    pub const CACHE_FILL_LEASE_MS: &str = "CACHE_FILL_LEASE_MS";
    /// Outer timeout of every Redis call, in milliseconds (default 250).
    pub const REDIS_TIMEOUT_MS: &str = "REDIS_TIMEOUT_MS";
    /// Budget for retrying throttled (429) Cosmos calls, in milliseconds (default 5000).
    pub const COSMOS_THROTTLE_BUDGET_MS: &str = "COSMOS_THROTTLE_BUDGET_MS";
    /// `json` for JSON log lines, `text` for human-readable ones (default: `json` in Azure).
    pub const LOG_FORMAT: &str = "LOG_FORMAT";

    /// Every setting above except the two ports the host sets itself.
    pub const USER_SETTINGS: [&str; 15] = [
        REDIS,
        REDIS_CLUSTER,
        COSMOS_CONNECTION_STRING,
        COSMOS_ENDPOINT,
        COSMOS_KEY,
        COSMOS_DATABASE,
        COSMOS_CONTAINER,
        CACHE_TTL_SECONDS,
        CACHE_TTL_JITTER_PERCENT,
        CACHE_MAX_VALUE_BYTES,
        CACHE_FILL_LEASE_MS,
        REDIS_TIMEOUT_MS,
        COSMOS_THROTTLE_BUDGET_MS,
        LOG_FORMAT,
        RUST_LOG,
    ];
    /// The log filter, read by `tracing-subscriber` (default `info`).
    pub const RUST_LOG: &str = "RUST_LOG";
}

/// A string that must never be printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for handing to a client library. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A start-up error naming the setting at fault. Its text never contains the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("setting {name}: {problem}")]
pub struct ConfigError {
    /// The environment variable's name.
    pub name: &'static str,
    /// What is wrong with it, without its value.
    pub problem: String,
}

impl ConfigError {
    fn new(name: &'static str, problem: impl Into<String>) -> Self {
        Self {
            name,
            problem: problem.into(),
        }
    }
}

/// Where and how to reach the Cosmos DB account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosmosSettings {
    /// Account endpoint, e.g. `https://<account>.documents.azure.com:443/`.
    pub endpoint: String,
    /// Account key (base64 text).
    pub key: Secret,
    /// Database name.
    pub database: String,
    /// Container name.
    pub container: String,
}

impl CosmosSettings {
    /// `<account host[:port]>/<database>/<container>`, host lower-cased: what identifies the
    /// container across deployments. Cache keys and continuation tokens are scoped by it, so
    /// two Cosmos accounts with the same database and container names never share cache
    /// entries, even in one Redis database. (The endpoint was checked to be a URL with a host at
    /// load time; an endpoint that somehow is not falls back to its text.)
    pub fn scope(&self) -> String {
        let account = url::Url::parse(&self.endpoint)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_ascii_lowercase();
                Some(match u.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| self.endpoint.clone());
        format!("{account}/{}/{}", self.database, self.container)
    }
}

/// Cache tuning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    /// Time-to-live of a cached query page.
    pub ttl: Duration,
    /// ± jitter applied to `ttl`, in percent (0–50).
    pub ttl_jitter_percent: u8,
    /// Largest body stored in Redis, in bytes; larger pages are served but not cached.
    pub max_value_bytes: usize,
    /// Outer timeout wrapped around every Redis call.
    pub redis_timeout: Duration,
    /// How long one instance may hold the fill lease of a missed page while it reads Cosmos;
    /// other instances wait up to this long for its result. Zero disables leases.
    pub fill_lease: Duration,
}

/// All settings of the handler.
#[derive(Clone, Debug)]
pub struct Settings {
    /// TCP port on 127.0.0.1 to listen on.
    pub port: u16,
    /// Redis connection parameters (the password is inside and is never printed by us).
    pub redis: RedisTarget,
    /// Cosmos DB account and container.
    pub cosmos: CosmosSettings,
    /// Cache tuning.
    pub cache: CacheSettings,
    /// Total time the Cosmos SDK may spend waiting on throttled (429) retries.
    pub cosmos_throttle_budget: Duration,
    /// JSON log lines instead of human-readable text.
    pub json_logs: bool,
}

/// Parsed `REDIS_CONNECTION_STRING`.
#[derive(Clone)]
pub struct RedisTarget {
    /// What the `redis` crate connects with.
    pub info: ConnectionInfo,
    /// `host:port` for logs (no credentials).
    pub display_addr: String,
    /// Whether TLS is used.
    pub tls: bool,
    /// Whether to use the cluster client (`REDIS_CLUSTER=true`).
    pub cluster: bool,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTarget")
            .field("addr", &self.display_addr)
            .field("tls", &self.tls)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Reads every setting from the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first missing or malformed variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads every setting through `get` (a variable name → its value), so tests need not
    /// touch the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first missing or malformed variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let port = match get(names::PORT)
            .map(|v| (names::PORT, v))
            .or_else(|| get(names::PORT_LEGACY).map(|v| (names::PORT_LEGACY, v)))
        {
            Some((name, v)) => v
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| ConfigError::new(name, "must be a TCP port number (1-65535)"))?,
            // `func start` always sets it; a bare `cargo run` gets a fixed dev port.
            None => 3000,
        };
        let redis_raw =
            get(names::REDIS).ok_or_else(|| ConfigError::new(names::REDIS, "is not set"))?;
        let mut redis = parse_redis_connection_string(&redis_raw)
            .map_err(|problem| ConfigError::new(names::REDIS, problem))?;
        redis.cluster = match get(names::REDIS_CLUSTER).as_deref().map(str::trim) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(_) => {
                return Err(ConfigError::new(
                    names::REDIS_CLUSTER,
                    "must be true or false",
                ));
            }
        };
        if redis.cluster && redis.info.redis_settings().db() != 0 {
            return Err(ConfigError::new(
                names::REDIS,
                "selects a database other than 0, which a clustered Redis (REDIS_CLUSTER=true) \
                 does not have: remove defaultDatabase= (or the /N of the URL)",
            ));
        }
        let cosmos = cosmos_from(&get)?;
        let number =
            |name: &'static str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
                match get(name) {
                    None => Ok(default),
                    Some(v) => match v.trim().parse::<u64>() {
                        Ok(n) if (min..=max).contains(&n) => Ok(n),
                        _ => Err(ConfigError::new(
                            name,
                            format!("must be a whole number from {min} to {max}"),
                        )),
                    },
                }
            };
        let cache = CacheSettings {
            ttl: Duration::from_secs(number(names::CACHE_TTL_SECONDS, 300, 1, 30 * 86_400)?),
            ttl_jitter_percent: number(names::CACHE_TTL_JITTER_PERCENT, 10, 0, 50)? as u8,
            max_value_bytes: number(names::CACHE_MAX_VALUE_BYTES, 1 << 20, 1, 512 << 20)? as usize,
            redis_timeout: Duration::from_millis(number(names::REDIS_TIMEOUT_MS, 250, 1, 60_000)?),
            fill_lease: Duration::from_millis(number(
                names::CACHE_FILL_LEASE_MS,
                2_000,
                0,
                60_000,
            )?),
        };
        let cosmos_throttle_budget =
            Duration::from_millis(number(names::COSMOS_THROTTLE_BUDGET_MS, 5_000, 0, 120_000)?);
        let json_logs = match get(names::LOG_FORMAT).as_deref().map(str::trim) {
            Some("json") => true,
            Some("text") => false,
            Some(_) => {
                return Err(ConfigError::new(
                    names::LOG_FORMAT,
                    "must be `json` or `text`",
                ));
            }
            // WEBSITE_INSTANCE_ID is set on every Azure App Service / Functions instance.
            None => get("WEBSITE_INSTANCE_ID").is_some(),
        };
        Ok(Settings {
            port,
            redis,
            cosmos,
            cache,
            cosmos_throttle_budget,
            json_logs,
        })
    }
}

/// Reads only the Cosmos settings (the seeding command needs no Redis).
///
/// # Errors
/// [`ConfigError`] naming the first missing or malformed variable.
pub fn cosmos_from_env() -> Result<CosmosSettings, ConfigError> {
    cosmos_from(&|name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

fn cosmos_from(get: &dyn Fn(&str) -> Option<String>) -> Result<CosmosSettings, ConfigError> {
    let (endpoint, key) = match get(names::COSMOS_CONNECTION_STRING) {
        Some(cs) => parse_cosmos_connection_string(&cs)
            .map_err(|p| ConfigError::new(names::COSMOS_CONNECTION_STRING, p))?,
        None => {
            let endpoint = get(names::COSMOS_ENDPOINT).ok_or_else(|| {
                ConfigError::new(
                    names::COSMOS_ENDPOINT,
                    "is not set (set COSMOS_CONNECTION_STRING, or COSMOS_ENDPOINT and COSMOS_KEY)",
                )
            })?;
            let key = get(names::COSMOS_KEY)
                .ok_or_else(|| ConfigError::new(names::COSMOS_KEY, "is not set"))?;
            (endpoint, Secret::new(key))
        }
    };
    let from_connection_string = get(names::COSMOS_CONNECTION_STRING).is_some();
    let (endpoint_setting, key_setting) = if from_connection_string {
        (
            names::COSMOS_CONNECTION_STRING,
            names::COSMOS_CONNECTION_STRING,
        )
    } else {
        (names::COSMOS_ENDPOINT, names::COSMOS_KEY)
    };
    check_endpoint(&endpoint).map_err(|p| ConfigError::new(endpoint_setting, p))?;
    check_key(&key).map_err(|p| ConfigError::new(key_setting, p))?;
    let database = get(names::COSMOS_DATABASE)
        .ok_or_else(|| ConfigError::new(names::COSMOS_DATABASE, "is not set"))?;
    let container = get(names::COSMOS_CONTAINER)
        .ok_or_else(|| ConfigError::new(names::COSMOS_CONTAINER, "is not set"))?;
    Ok(CosmosSettings {
        endpoint,
        key,
        database,
        container,
    })
}

/// The endpoint must be an `https://` URL (or `http://` for a local emulator) with a host and
/// no credentials in it (the SDK logs the endpoint).
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let url = url::Url::parse(endpoint)
        .map_err(|_| "the account endpoint is not a valid URL".to_string())?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(
            "the account endpoint must start with https:// (or http:// for a local emulator)"
                .into(),
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the account endpoint has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the account endpoint must not contain credentials".into());
    }
    Ok(())
}

/// Cosmos account keys are base64 (the portal shows 88 characters).
fn check_key(key: &Secret) -> Result<(), String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(key.expose().trim())
        .map(|_| ())
        .map_err(|_| "the account key is not base64".to_string())
}

/// Parses a Cosmos DB connection string as the Azure portal shows it
/// ("PRIMARY CONNECTION STRING"): `AccountEndpoint=https://x.documents.azure.com:443/;AccountKey=abc==;`.
/// Keys are case-insensitive; values may contain `=` (base64 padding); unknown keys are ignored.
///
/// # Errors
/// A description of the problem that never includes the key.
pub fn parse_cosmos_connection_string(s: &str) -> Result<(String, Secret), String> {
    let mut endpoint = None;
    let mut key = None;
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err("is not of the form AccountEndpoint=...;AccountKey=...;".into());
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "accountendpoint" => endpoint = Some(v.trim().to_string()),
            "accountkey" => key = Some(Secret::new(v.trim())),
            _ => {}
        }
    }
    match (endpoint, key) {
        (Some(e), Some(k)) if !e.is_empty() && !k.expose().is_empty() => Ok((e, k)),
        (None, _) | (Some(_), None) if s.is_empty() => Err("is empty".into()),
        (e, _) if e.as_deref().is_none_or(str::is_empty) => Err("has no AccountEndpoint".into()),
        _ => Err("has no AccountKey".into()),
    }
}

/// Parses `REDIS_CONNECTION_STRING`: a `redis://` or `rediss://` URL
/// (`rediss://:password@host:6380/0`), or the Azure portal's "Primary connection string
/// (StackExchange.Redis)" form `host:6380,password=...,ssl=True,abortConnect=False`
/// (options are case-insensitive; `user=` is read for ACL users; others are ignored).
///
/// # Errors
/// A description of the problem that never includes the password.
pub fn parse_redis_connection_string(s: &str) -> Result<RedisTarget, String> {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("redis://") || lower.starts_with("rediss://") {
        let info = s
            .into_connection_info()
            .map_err(|_| "is not a valid redis:// or rediss:// URL".to_string())?;
        let (display_addr, tls) = match info.addr() {
            ConnectionAddr::Tcp(h, p) => (format!("{h}:{p}"), false),
            ConnectionAddr::TcpTls { host, port, .. } => (format!("{host}:{port}"), true),
            _ => return Err("must name a TCP host and port".into()),
        };
        return Ok(RedisTarget {
            info,
            display_addr,
            tls,
            cluster: false,
        });
    }
    let mut parts = s.split(',').map(str::trim);
    let endpoint = parts.next().unwrap_or_default();
    // A host name, an IPv4 address or a bracketed IPv6 address, and an optional port: anything
    // else (another URL scheme, `user:password@`, a path) is a mistake, and echoing it could
    // print a password.
    let host_chars =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']');
    if endpoint.is_empty() || !endpoint.chars().all(host_chars) {
        return Err(
            "must be a redis:// or rediss:// URL, or host:port,password=...,ssl=True (StackExchange.Redis form)".into(),
        );
    }
    let (host, port) = match endpoint.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_matches(|c| c == '[' || c == ']'),
            p.parse::<u16>()
                .map_err(|_| "has an invalid port in host:port".to_string())?,
        ),
        None => (endpoint, 6379),
    };
    if host.is_empty() {
        return Err("has an empty host".into());
    }
    let mut password = None;
    let mut user = None;
    let mut tls = false;
    let mut db = 0_i64;
    for option in parts.filter(|p| !p.is_empty()) {
        let Some((k, v)) = option.split_once('=') else {
            return Err("has an option without `=` (expected name=value after the host)".into());
        };
        let name = k.trim();
        let flag = |v: &str| match v.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        // Options are matched case-insensitively, as StackExchange.Redis does. Only what is
        // implemented is accepted: an option silently ignored once let two environments share
        // one cache (`defaultDatabase`, cf. stefanprodan/AspNetCoreRateLimit#288).
        match name.to_ascii_lowercase().as_str() {
            "password" => password = Some(v.to_string()),
            "user" => user = Some(v.trim().to_string()),
            "ssl" => {
                tls = flag(v).ok_or("has ssl= that is neither True nor False")?;
            }
            "defaultdatabase" => {
                db = v
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or("has defaultDatabase= that is not a whole number from 0")?;
            }
            // The handler never fails start-up on Redis (it serves from Cosmos meanwhile),
            // which is what abortConnect=False asks for.
            "abortconnect" => {
                if flag(v).ok_or("has abortConnect= that is neither True nor False")? {
                    return Err(
                        "has abortConnect=True, which this handler does not implement: \
                                it starts and serves from Cosmos DB while Redis is unreachable; \
                                use abortConnect=False"
                            .into(),
                    );
                }
            }
            // Admin commands are never sent; the portal's strings may carry this flag.
            "allowadmin" => {
                flag(v).ok_or("has allowAdmin= that is neither True nor False")?;
            }
            "connecttimeout" | "synctimeout" | "asynctimeout" | "responsetimeout" => {
                return Err(format!(
                    "has {name}=, which this handler does not read: set REDIS_TIMEOUT_MS (one \
                     timeout for connecting and for every command) instead"
                ));
            }
            _ => {
                return Err(format!(
                    "has the option {name:?}, which this handler does not implement (it reads \
                     password, user, ssl, defaultDatabase, abortConnect=False, allowAdmin); \
                     remove it, or use a redis:// URL"
                ));
            }
        }
    }
    let addr = if tls {
        ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_string(), port)
    };
    let mut redis_info = RedisConnectionInfo::default();
    if let Some(p) = password {
        redis_info = redis_info.set_password(p);
    }
    if let Some(u) = user {
        redis_info = redis_info.set_username(u);
    }
    redis_info = redis_info.set_db(db);
    let info = addr
        .into_connection_info()
        .map_err(|_| "could not be turned into a connection".to_string())?
        .set_redis_settings(redis_info);
    Ok(RedisTarget {
        info,
        display_addr: format!("{host}:{port}"),
        tls,
        cluster: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn base() -> HashMap<&'static str, String> {
        HashMap::from([
            (names::REDIS, "redis://127.0.0.1:6379".to_string()),
            (
                names::COSMOS_CONNECTION_STRING,
                "AccountEndpoint=https://acct.documents.azure.com:443/;AccountKey=c2VjcmV0/+k=;"
                    .to_string(),
            ),
            (names::COSMOS_DATABASE, "tutorial".to_string()),
            (names::COSMOS_CONTAINER, "us_cities".to_string()),
        ])
    }

    fn load(env: &HashMap<&'static str, String>) -> Result<Settings, ConfigError> {
        Settings::from_lookup(|n| env.get(n).cloned())
    }

    #[test]
    fn portal_cosmos_connection_string_keeps_padding() {
        let s = load(&base()).expect("valid settings");
        assert_eq!(s.cosmos.endpoint, "https://acct.documents.azure.com:443/");
        assert_eq!(s.cosmos.key.expose(), "c2VjcmV0/+k=");
        assert_eq!(s.cache.ttl, Duration::from_secs(300));
        assert_eq!(s.port, 3000);
    }

    #[test]
    fn stackexchange_form_with_tricky_password() {
        let t = parse_redis_connection_string(
            "contoso.redis.cache.windows.net:6380,password=ab/c+d=e==,ssl=True,abortConnect=False",
        )
        .expect("parses");
        assert!(t.tls);
        assert_eq!(t.display_addr, "contoso.redis.cache.windows.net:6380");
        assert_eq!(t.info.redis_settings().password(), Some("ab/c+d=e=="));
    }

    #[test]
    fn stackexchange_default_database_and_refused_options() {
        let staging =
            parse_redis_connection_string("cache:6379,defaultDatabase=1,abortConnect=False")
                .expect("parses");
        assert_eq!(staging.info.redis_settings().db(), 1);
        let production =
            parse_redis_connection_string("cache:6379,abortConnect=False").expect("parses");
        assert_eq!(production.info.redis_settings().db(), 0);
        let mixed_case =
            parse_redis_connection_string("cache:6379,DEFAULTDATABASE=7,allowAdmin=true")
                .expect("parses");
        assert_eq!(mixed_case.info.redis_settings().db(), 7);
        for (input, names) in [
            ("cache:6379,defaultDatabase=one", "defaultDatabase="),
            ("cache:6379,defaultDatabase=-1", "defaultDatabase="),
            ("cache:6379,abortConnect=True", "abortConnect=True"),
            ("cache:6379,syncTimeout=5000", "REDIS_TIMEOUT_MS"),
            (
                "cache:6379,password=hunter2,sslHost=other.example",
                "\"sslHost\"",
            ),
            ("cache:6379,name=app,password=hunter2", "\"name\""),
            ("cache:6379,connectRetry=3", "\"connectRetry\""),
        ] {
            let e = parse_redis_connection_string(input).expect_err(input);
            assert!(e.contains(names), "{input}: {e}");
            assert!(!e.contains("hunter2"), "{input}: {e}");
        }
    }

    #[test]
    fn cosmos_scope_names_the_account() {
        let settings = |endpoint: &str| CosmosSettings {
            endpoint: endpoint.into(),
            key: Secret::new("k"),
            database: "db".into(),
            container: "c".into(),
        };
        assert_eq!(
            settings("https://Prod.documents.azure.com:443/").scope(),
            "prod.documents.azure.com/db/c"
        );
        assert_eq!(
            settings("http://127.0.0.1:8081/").scope(),
            "127.0.0.1:8081/db/c"
        );
        assert_ne!(
            settings("https://prod.documents.azure.com:443/").scope(),
            settings("https://staging.documents.azure.com:443/").scope()
        );
    }

    #[test]
    fn managed_redis_endpoint_and_urls() {
        let t = parse_redis_connection_string(
            "myc.westeurope.redis.azure.net:10000,password=x=,ssl=True,abortConnect=False",
        )
        .expect("parses");
        assert_eq!(t.display_addr, "myc.westeurope.redis.azure.net:10000");
        assert!(t.tls);
        let u = parse_redis_connection_string("rediss://:p%2Fw@h.example:6380/0").expect("url");
        assert!(u.tls);
        assert_eq!(u.display_addr, "h.example:6380");
        assert_eq!(u.info.redis_settings().password(), Some("p/w"));
        let plain = parse_redis_connection_string("localhost:6379").expect("bare host");
        assert!(!plain.tls);
    }

    #[test]
    fn malformed_settings_name_the_variable_and_hide_the_value() {
        let mut env = base();
        env.insert(names::REDIS, "h:notaport,password=hunter2secret".into());
        let e = load(&env).expect_err("bad port");
        assert_eq!(e.name, names::REDIS);
        assert!(!e.to_string().contains("hunter2secret"), "{e}");

        let mut env = base();
        env.insert(
            names::COSMOS_CONNECTION_STRING,
            "AccountKey=topsecretkey==".into(),
        );
        let e = load(&env).expect_err("no endpoint");
        assert_eq!(e.name, names::COSMOS_CONNECTION_STRING);
        assert!(!e.to_string().contains("topsecretkey"), "{e}");

        let mut env = base();
        env.remove(names::COSMOS_CONNECTION_STRING);
        assert_eq!(
            load(&env).expect_err("missing").name,
            names::COSMOS_ENDPOINT
        );
        env.insert(names::COSMOS_ENDPOINT, "http://127.0.0.1:8081".into());
        assert_eq!(load(&env).expect_err("missing key").name, names::COSMOS_KEY);

        let mut env = base();
        env.insert(names::CACHE_TTL_SECONDS, "0".into());
        assert_eq!(
            load(&env).expect_err("ttl 0").name,
            names::CACHE_TTL_SECONDS
        );

        let mut env = base();
        env.remove(names::REDIS);
        assert_eq!(load(&env).expect_err("no redis").name, names::REDIS);

        // A URL with the wrong scheme is not mistaken for host:port (and never echoed).
        for wrong in [
            "redis:/:hunter2@127.0.0.1:6379",
            "http://:hunter2@h:6379",
            "h:6379/0",
        ] {
            let mut env = base();
            env.insert(names::REDIS, wrong.into());
            let e = load(&env).expect_err("wrong scheme");
            assert_eq!(e.name, names::REDIS);
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        for (name, value) in [
            (
                names::COSMOS_CONNECTION_STRING,
                "AccountEndpoint=https://;AccountKey=a2V5;",
            ),
            (
                names::COSMOS_CONNECTION_STRING,
                "AccountEndpoint=https://u:hunter2@h/;AccountKey=a2V5;",
            ),
            (
                names::COSMOS_CONNECTION_STRING,
                "AccountEndpoint=https://h/;AccountKey=not-b64!!;",
            ),
            (names::PORT, "0"),
            (names::REDIS_CLUSTER, "yes"),
        ] {
            let mut env = base();
            env.insert(name, value.into());
            let e = load(&env).expect_err(value);
            assert_eq!(e.name, name, "{value}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = load(&base()).expect("valid");
        let printed = format!("{s:?}");
        assert!(!printed.contains("c2VjcmV0"), "{printed}");
    }
}
