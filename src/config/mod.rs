//! Settings, read once from environment variables (the Function App's app settings, or
//! `local.settings.json` `Values` under `func start`).
//!
//! Every setting has one name, listed in [`names`]. A missing or malformed setting stops
//! start-up with a [`ConfigError`] that names the variable and never contains its value:
//! connection strings carry keys and passwords.
//!
//! - this file: the setting names, [`Settings`] and their loading (with the `from_lookup` seam
//!   tests use instead of the process environment);
//! - `redis.rs`: `REDIS_CONNECTION_STRING`'s two grammars;
//! - `cosmos.rs`: the Cosmos account settings, its connection string and endpoint/key checks;
//! - `identity.rs`: the keyless (Microsoft Entra ID) settings of both, in the Functions host's
//!   identity-based connection form (`CosmosDB__accountEndpoint`, `Redis__redisHostName`, ...);
//! - `route_prefix.rs`: the route prefix, from `host.json` or the app setting overriding it.
//!
//! Secrets are azure_core's [`Secret`]: its `Debug` is redacted and it has no `Display`.

use std::time::Duration;

mod cosmos;
mod identity;
mod redis;
mod route_prefix;

pub use azure_core::credentials::Secret;
pub use cosmos::{CosmosAuth, CosmosSettings, cosmos_from_env, parse_cosmos_connection_string};
pub use identity::{CredentialKind, RedisIdentity};
pub use redis::{RedisTarget, parse_redis_connection_string};
pub use route_prefix::{ROUTE_PREFIX_SETTING, check_route_prefix, route_prefix};

use cosmos::cosmos_from;

/// The environment variable names this binary reads. `local.settings.json.example` lists each.
pub mod names {
    /// Port to listen on, set by the Functions host (docs/custom-handler-protocol.md §2.3).
    pub const PORT: &str = "FUNCTIONS_CUSTOMHANDLER_PORT";
    /// Legacy name of the same port; the host sets both (docs/custom-handler-protocol.md §2.3).
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
    /// Byte bound of the in-process near cache (L1) of pages; 0 (the default) turns it off.
    pub const CACHE_LOCAL_MAX_BYTES: &str = "CACHE_LOCAL_MAX_BYTES";
    /// Outer timeout of every Redis call, in milliseconds (default 250).
    pub const REDIS_TIMEOUT_MS: &str = "REDIS_TIMEOUT_MS";
    /// Budget for retrying throttled (429) Cosmos calls, in milliseconds (default 5000).
    pub const COSMOS_THROTTLE_BUDGET_MS: &str = "COSMOS_THROTTLE_BUDGET_MS";
    /// `json` for JSON log lines, `text` for human-readable ones (default: `json` in Azure).
    pub const LOG_FORMAT: &str = "LOG_FORMAT";

    /// Every setting above except the two ports the host sets itself.
    pub const USER_SETTINGS: [&str; 24] = [
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
        CACHE_LOCAL_MAX_BYTES,
        REDIS_TIMEOUT_MS,
        COSMOS_THROTTLE_BUDGET_MS,
        LOG_FORMAT,
        RUST_LOG,
        COSMOS_IDENTITY_ENDPOINT,
        COSMOS_IDENTITY_CLIENT_ID,
        COSMOS_IDENTITY_CREDENTIAL,
        REDIS_IDENTITY_HOST,
        REDIS_IDENTITY_PRINCIPAL,
        REDIS_IDENTITY_CLIENT_ID,
        REDIS_IDENTITY_CREDENTIAL,
        REDIS_IDENTITY_SSL,
    ];
    /// The log filter, read by `tracing-subscriber` (default `info`).
    pub const RUST_LOG: &str = "RUST_LOG";

    /// Keyless Cosmos DB: the account endpoint, with no key (Microsoft Entra ID).
    pub const COSMOS_IDENTITY_ENDPOINT: &str = "CosmosDB__accountEndpoint";
    /// Keyless Cosmos DB: client id of a user-assigned managed identity (optional).
    pub const COSMOS_IDENTITY_CLIENT_ID: &str = "CosmosDB__clientId";
    /// Keyless Cosmos DB: `managedidentity` or `azurecli` (optional; see `config::identity`).
    pub const COSMOS_IDENTITY_CREDENTIAL: &str = "CosmosDB__credential";
    /// Keyless Redis: `<name>.<region>.redis.azure.net`, `<name>.redis.cache.windows.net`, or
    /// `host:port`.
    pub const REDIS_IDENTITY_HOST: &str = "Redis__redisHostName";
    /// Keyless Redis: the identity's object (principal) id, Redis's ACL user name.
    pub const REDIS_IDENTITY_PRINCIPAL: &str = "Redis__principalId";
    /// Keyless Redis: client id of a user-assigned managed identity (optional).
    pub const REDIS_IDENTITY_CLIENT_ID: &str = "Redis__clientId";
    /// Keyless Redis: `managedidentity` or `azurecli` (optional).
    pub const REDIS_IDENTITY_CREDENTIAL: &str = "Redis__credential";
    /// Keyless Redis: `false` turns TLS off (local runs); default `true`.
    pub const REDIS_IDENTITY_SSL: &str = "Redis__ssl";
    /// Set by Azure Functions / App Service (never by users): the managed-identity endpoint.
    /// Its presence makes managed identity the default credential.
    pub const IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";

    /// The keyless settings above that users set.
    pub const IDENTITY_SETTINGS: [&str; 8] = [
        COSMOS_IDENTITY_ENDPOINT,
        COSMOS_IDENTITY_CLIENT_ID,
        COSMOS_IDENTITY_CREDENTIAL,
        REDIS_IDENTITY_HOST,
        REDIS_IDENTITY_PRINCIPAL,
        REDIS_IDENTITY_CLIENT_ID,
        REDIS_IDENTITY_CREDENTIAL,
        REDIS_IDENTITY_SSL,
    ];
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
    pub(crate) fn new(name: &'static str, problem: impl Into<String>) -> Self {
        Self {
            name,
            problem: problem.into(),
        }
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
    /// Byte bound of the in-process near cache (L1); 0 turns it off (see `cache::near`).
    pub local_max_bytes: u64,
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
    /// What start-up should log about the settings (which of two configured forms is used):
    /// setting names only, never values.
    pub notices: Vec<String>,
}

/// `LOG_FORMAT` through `get` (any case): JSON lines for `json`, and by default on Azure (where
/// `WEBSITE_INSTANCE_ID` is set on every App Service / Functions instance); text for `text`,
/// and by default elsewhere.
///
/// # Errors
/// `LOG_FORMAT` set to anything else.
pub fn json_logs(get: impl Fn(&str) -> Option<String>) -> Result<bool, ConfigError> {
    let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    let format = get(names::LOG_FORMAT).map(|v| v.trim().to_ascii_lowercase());
    match format.as_deref() {
        Some("json") => Ok(true),
        Some("text") => Ok(false),
        Some(_) => Err(ConfigError::new(
            names::LOG_FORMAT,
            "must be `json` or `text`",
        )),
        None => Ok(get("WEBSITE_INSTANCE_ID").is_some()),
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
        let mut notices = Vec::new();
        let mut redis = match identity::redis_identity_from(&get)? {
            Some((info, display_addr, tls, identity)) => {
                if get(names::REDIS).is_some() {
                    notices.push(format!(
                        "both {} and {} are set: Redis uses Microsoft Entra ID ({}, {}); {} is \
                         ignored",
                        names::REDIS_IDENTITY_HOST,
                        names::REDIS,
                        identity.credential.describe(),
                        names::REDIS_IDENTITY_PRINCIPAL,
                        names::REDIS
                    ));
                }
                RedisTarget {
                    info,
                    display_addr,
                    tls,
                    cluster: false,
                    identity: Some(identity),
                }
            }
            None => {
                let raw = get(names::REDIS).ok_or_else(|| {
                    ConfigError::new(
                        names::REDIS,
                        format!(
                            "is not set (set it, or {} and {} for Microsoft Entra ID)",
                            names::REDIS_IDENTITY_HOST,
                            names::REDIS_IDENTITY_PRINCIPAL
                        ),
                    )
                })?;
                parse_redis_connection_string(&raw)
                    .map_err(|problem| ConfigError::new(names::REDIS, problem))?
            }
        };
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
        if redis.cluster && redis.identity.is_none() && redis.info.redis_settings().db() != 0 {
            return Err(ConfigError::new(
                names::REDIS,
                "selects a database other than 0, which a clustered Redis (REDIS_CLUSTER=true) \
                 does not have: remove defaultDatabase= (or the /N of the URL)",
            ));
        }
        let cosmos = cosmos_from(&get, &mut notices)?;
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
            local_max_bytes: number(names::CACHE_LOCAL_MAX_BYTES, 0, 0, 16 << 30)?,
        };
        let cosmos_throttle_budget =
            Duration::from_millis(number(names::COSMOS_THROTTLE_BUDGET_MS, 5_000, 0, 120_000)?);
        let json_logs = json_logs(get)?;
        Ok(Settings {
            port,
            redis,
            cosmos,
            cache,
            cosmos_throttle_budget,
            json_logs,
            notices,
        })
    }
}

#[cfg(test)]
mod tests;
