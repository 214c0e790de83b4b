//! `REDIS_CONNECTION_STRING`: a `redis://`/`rediss://` URL, or the Azure portal's
//! StackExchange.Redis form.

use std::fmt;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

/// StackExchange.Redis's configuration option names, lower-cased
/// (<https://stackexchange.github.io/StackExchange.Redis/Configuration.html>).
const STACKEXCHANGE_OPTIONS: [&str; 27] = [
    "abortconnect",
    "allowadmin",
    "asynctimeout",
    "channelprefix",
    "checkcertificaterevocation",
    "configchannel",
    "configcheckseconds",
    "connectretry",
    "connecttimeout",
    "defaultdatabase",
    "heartbeatinterval",
    "highprioritysocketthreads",
    "keepalive",
    "name",
    "password",
    "protocol",
    "proxy",
    "resolvedns",
    "responsetimeout",
    "servicename",
    "setlib",
    "ssl",
    "sslhost",
    "sslprotocols",
    "synctimeout",
    "tiebreaker",
    "version",
];

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
    /// Microsoft Entra ID authentication (`Redis__redisHostName` + `Redis__principalId`): the
    /// user is in `info`, the password is a token supplied per connection. `None` = the
    /// password (if any) of `REDIS_CONNECTION_STRING` is in `info`.
    pub identity: Option<super::RedisIdentity>,
}

impl RedisTarget {
    /// How connections authenticate, for logs and diagnostics: `entra-id` (tokens), `password`
    /// (from the connection string, with or without a user) or `none`. Never the secret itself.
    pub fn auth_kind(&self) -> &'static str {
        if self.identity.is_some() {
            "entra-id"
        } else if self.info.redis_settings().password().is_some() {
            "password"
        } else {
            "none"
        }
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTarget")
            .field("addr", &self.display_addr)
            .field("tls", &self.tls)
            .field("cluster", &self.cluster)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Whether `host` has the shape of an access key rather than a host name: one long DNS label
/// (no dot) of mixed-case letters and digits. Azure Cache for Redis keys are 44 base64
/// characters; host names are case-insensitive and rarely mix cases.
fn looks_like_a_key(host: &str) -> bool {
    !host.contains('.')
        && host.len() >= 24
        && host.chars().any(|c| c.is_ascii_uppercase())
        && host.chars().any(|c| c.is_ascii_lowercase())
        && host.chars().any(|c| c.is_ascii_digit())
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
            identity: None,
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
    if looks_like_a_key(host) {
        // Pasting the access key alone is a common slip; the "host" would then be logged.
        return Err("looks like an access key, not a host name: use host:port,password=<key>,ssl=True (StackExchange.Redis form) or rediss://:<key>@host:port".into());
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
            // `password=` (empty) is no password, as in `redis://:@host`: AUTH with an empty
            // one fails against a server without a password, and every request bypassed.
            "password" => password = Some(v.to_string()).filter(|p| !p.is_empty()),
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
            // Named only when it is one of StackExchange.Redis's own option names: anything
            // else may be the tail of a password that contains a comma.
            other => {
                let shown = if STACKEXCHANGE_OPTIONS.contains(&other) {
                    format!("the option {name:?}")
                } else {
                    "an option (not shown: it may be part of a password with a comma)".to_string()
                };
                return Err(format!(
                    "has {shown}, which this handler does not implement (it reads password, \
                     user, ssl, defaultDatabase, abortConnect=False, allowAdmin); remove it, or \
                     use a redis:// URL"
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
        identity: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stackexchange_form_with_tricky_password() {
        let t = parse_redis_connection_string(
            "contoso.redis.cache.windows.net:6380,password=ab/c+d=e==,ssl=True,abortConnect=False",
        )
        .expect("parses");
        assert!(t.tls);
        assert_eq!(t.display_addr, "contoso.redis.cache.windows.net:6380");
        assert_eq!(t.info.redis_settings().password(), Some("ab/c+d=e=="));
        // An empty password is none (AUTH "" fails against a server without one).
        let t = parse_redis_connection_string("127.0.0.1:6379,password=").expect("parses");
        assert_eq!(t.info.redis_settings().password(), None);
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
            // A password with a comma: its tail is never echoed.
            (
                "cache:6380,password=Abc,hunter2tail=x,ssl=True",
                "not shown",
            ),
        ] {
            let e = parse_redis_connection_string(input).expect_err(input);
            assert!(e.contains(names), "{input}: {e}");
            assert!(!e.contains("hunter2"), "{input}: {e}");
        }
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
        // Host names users have: a container or Kubernetes service name, a long node name.
        for host in [
            "redis",
            "redis-master-0",
            "my-cache-7b9f4c6d5-x2k8q:6379",
            "cache_1",
        ] {
            parse_redis_connection_string(host).expect(host);
        }
    }

    #[test]
    fn an_access_key_alone_is_refused_without_echoing_it() {
        // The shape of an Azure access key (44 base64 characters), with and without its `=`
        // padding, and the padding lost on a copy.
        for key in [
            "Xk9vQ2hR7tLmN4pW8zYb3cDfGh6JkLs1AbCdEfGhIjK=",
            "Xk9vQ2hR7tLmN4pW8zYb3cDfGh6JkLs1AbCdEfGhIjK",
            "Xk9vQ2hR7tLmN4pW8zYb3cDf:6380",
        ] {
            let e = parse_redis_connection_string(key).expect_err(key);
            assert!(!e.contains("Xk9vQ2"), "{key}: {e}");
        }
        let e = parse_redis_connection_string("Xk9vQ2hR7tLmN4pW8zYb3cDfGh6JkLs1AbCdEfGhIjK")
            .expect_err("key");
        assert!(e.contains("access key"), "{e}");
    }
}
