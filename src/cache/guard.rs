//! The one Redis connection (a `ConnectionManager`, or the redis crate's async cluster client
//! for clustered caches), guarded: an outer timeout on every call, a circuit breaker that
//! skips Redis for a short cool-down after repeated failures (instead of paying the timeout on
//! every request while Redis is a black hole), and a rebuild of the connection when the breaker
//! opens, so a connection wedged by a non-I/O failure (`WRONGPASS` after a key rotation,
//! `max number of clients reached`) recovers without restarting the process. With Microsoft
//! Entra ID, every connection opens with the current token and is re-authenticated with each
//! new one ([`super::entra`]).

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::entra::{EntraCredentials, reauth_loop};
use super::redis_error::{self, redis_reason};
use crate::config::RedisTarget;
use crate::identity::Token;
use std::time::{Duration, Instant};

pub use super::connection::RedisConn;
use super::connection::{Connector, connect};

/// Consecutive failures that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 5;
/// How long an open breaker skips Redis.
pub const COOL_DOWN: Duration = Duration::from_secs(1);
/// While the breaker is open, at most one call per this interval goes past it
/// ([`GuardedRedis::run_past_breaker`]): Redis answering again is noticed within it, and an
/// outage costs the timeout that often, not on every write.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);

/// Why a guarded call did not return a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The breaker is open: Redis was not called.
    Open,
    /// No answer within the timeout.
    Timeout,
    /// Redis or the connection returned an error (kind only; never connection details).
    Error(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Open => f.write_str("circuit open"),
            Self::Timeout => f.write_str("timeout"),
            Self::Error(kind) => f.write_str(kind),
        }
    }
}

/// Breaker states, as reported by diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go to Redis.
    Closed,
    /// Calls are skipped until the cool-down ends.
    Open,
    /// The cool-down ended; the next failure reopens at once.
    HalfOpen,
}

/// A Redis connection behind a timeout and a circuit breaker.
pub struct GuardedRedis {
    connector: Connector,
    timeout: Duration,
    conn: RwLock<RedisConn>,
    started: Instant,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `started` until which the breaker is open; 0 = closed.
    open_until_ms: AtomicU64,
    /// Milliseconds since `started` of the last call past the open breaker.
    last_probe_ms: AtomicU64,
    /// Whether the breaker has opened since the last success (half-open after cool-down).
    tripped: std::sync::atomic::AtomicBool,
    /// Times the breaker opened.
    pub opened: AtomicU64,
    /// Calls skipped because the breaker was open.
    pub skipped: AtomicU64,
    /// Calls that failed or timed out.
    pub errors: AtomicU64,
    /// Entra ID: re-AUTHs of the open connection(s) with a new token that Redis accepted.
    pub reauths: AtomicU64,
    /// Entra ID: re-AUTH attempts that failed (each is retried).
    pub reauth_failures: AtomicU64,
    /// Entra ID: the token source and user (`None` with a password or no auth).
    entra: Option<EntraCredentials>,
    /// How connections authenticate, for diagnostics ([`crate::config::RedisTarget::auth_kind`]).
    auth: &'static str,
}

impl GuardedRedis {
    /// A lazily connecting guard around `target` (its `cluster` flag selects the cluster
    /// client). `timeout` bounds every call. With `entra`, connections authenticate with its
    /// tokens and a background task re-authenticates them with each new one (it needs a Tokio
    /// runtime).
    ///
    /// # Errors
    /// When the client cannot be created (a kind of error, no details).
    pub fn new(
        target: &RedisTarget,
        timeout: Duration,
        entra: Option<EntraCredentials>,
    ) -> Result<Arc<Self>, String> {
        let info = target.info.clone();
        let connector = if target.cluster {
            let mut builder = redis::cluster::ClusterClientBuilder::new(vec![info]);
            if let Some(credentials) = &entra {
                builder = builder.set_credentials_provider(credentials.clone());
            }
            Connector::Cluster(Box::new(
                builder
                    .build()
                    .map_err(|e| format!("invalid Redis cluster settings: {:?}", e.kind()))?,
            ))
        } else {
            Connector::Single(
                Box::new(
                    redis::Client::open(info)
                        .map_err(|e| format!("invalid Redis settings: {:?}", e.kind()))?,
                ),
                entra.clone(),
            )
        };
        let runtime =
            match &entra {
                Some(_) => Some(tokio::runtime::Handle::try_current().map_err(|_| {
                    "Redis with Microsoft Entra ID needs a Tokio runtime".to_string()
                })?),
                None => None,
            };
        let conn = connect(&connector, timeout)?;
        let guard = Arc::new(Self {
            connector,
            timeout,
            conn: RwLock::new(conn),
            started: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            last_probe_ms: AtomicU64::new(0),
            tripped: std::sync::atomic::AtomicBool::new(false),
            opened: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            reauths: AtomicU64::new(0),
            reauth_failures: AtomicU64::new(0),
            entra: entra.clone(),
            auth: target.auth_kind(),
        });
        if let (Some(runtime), Some(credentials)) = (runtime, entra) {
            runtime.spawn(reauth_loop(Arc::downgrade(&guard), credentials));
        }
        Ok(guard)
    }

    /// How connections authenticate, as given to [`Self::new`]: `entra-id`, `password` or
    /// `none`. Never the secret itself.
    pub fn auth_kind(&self) -> &'static str {
        self.auth
    }

    /// `AUTH <user> <token>` on the open connection (a single endpoint), or on every node's
    /// (a cluster). Not behind the breaker: an open breaker may be what a new token fixes.
    ///
    /// # Errors
    /// The failure's kind (never the token).
    pub(super) async fn reauthenticate(&self, user: &str, token: &Token) -> Result<(), String> {
        use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
        let conn = self.conn.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut auth = redis::cmd("AUTH");
        auth.arg(user).arg(token.secret.secret());
        let sent = async move {
            match conn {
                RedisConn::Single(mut c) => auth.query_async::<()>(&mut c).await,
                RedisConn::Cluster(mut c) => c
                    .route_command(
                        auth,
                        RoutingInfo::MultiNode((
                            MultipleNodeRoutingInfo::AllNodes,
                            Some(ResponsePolicy::AllSucceeded),
                        )),
                    )
                    .await
                    .map(|_| ()),
            }
        };
        // A re-AUTH may have to reconnect first: allow a few call timeouts.
        match tokio::time::timeout(self.timeout * 4, sent).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(redis_reason(&e)),
            Err(_) => Err("timeout".into()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The breaker's state now.
    pub fn state(&self) -> CircuitState {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until > self.now_ms() {
            CircuitState::Open
        } else if self.tripped.load(Ordering::Acquire) {
            CircuitState::HalfOpen
        } else {
            CircuitState::Closed
        }
    }

    /// Runs `call` on a clone of the shared connection, within the timeout and the breaker.
    ///
    /// # Errors
    /// [`Failure`] when the breaker is open, the call timed out or Redis returned an error.
    pub async fn run<T, F, Fut>(&self, call: F) -> Result<T, Failure>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if self.state() == CircuitState::Open {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return Err(Failure::Open);
        }
        self.call(call).await
    }

    /// [`Self::run`] for the calls correctness needs (a write's invalidation), which also goes
    /// past an open breaker, at most once per [`PROBE_EVERY`]: a skipped call lets other
    /// instances serve the old page, and Redis may well answer again before the cool-down ends
    /// (the breaker is there so that reads skip the timeout). A success closes the breaker.
    ///
    /// # Errors
    /// [`Failure`] when the breaker is open and another call went past it less than
    /// [`PROBE_EVERY`] ago, the call timed out or Redis returned an error.
    pub async fn run_past_breaker<T, F, Fut>(&self, call: F) -> Result<T, Failure>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let open = self.state() == CircuitState::Open;
        if open {
            let now = self.now_ms();
            let last = self.last_probe_ms.load(Ordering::Acquire);
            let due = now >= last + PROBE_EVERY.as_millis() as u64;
            if !due
                || self
                    .last_probe_ms
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                return Err(Failure::Open);
            }
        }
        let outcome = self.call(call).await;
        if open && outcome.is_ok() {
            self.close_breaker();
        }
        outcome
    }

    /// One call on a clone of the shared connection, within the timeout; counts its outcome.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, Failure>
    where
        F: FnOnce(RedisConn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.conn.read().unwrap_or_else(|p| p.into_inner()).clone();
        let outcome = match tokio::time::timeout(self.timeout, call(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failure::Error(self.reason(&e))),
            Err(_) => Err(Failure::Timeout),
        };
        match &outcome {
            Ok(_) => self.succeeded(),
            Err(f) => self.failed(f),
        }
        outcome
    }

    /// Closes the breaker now (a re-AUTH with a new token succeeded).
    pub(super) fn close_breaker(&self) {
        self.open_until_ms.store(0, Ordering::Release);
        self.succeeded();
    }

    fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Release);
        if self.tripped.swap(false, Ordering::AcqRel) {
            tracing::info!("Redis answers again: circuit closed");
        }
    }

    fn failed(&self, failure: &Failure) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let half_open = self.tripped.load(Ordering::Acquire);
        if failures >= FAILURES_TO_OPEN || half_open {
            self.consecutive_failures.store(0, Ordering::Release);
            self.tripped.store(true, Ordering::Release);
            self.open_until_ms.store(
                self.now_ms() + COOL_DOWN.as_millis() as u64,
                Ordering::Release,
            );
            self.opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                reason = %failure,
                cool_down_ms = COOL_DOWN.as_millis() as u64,
                "Redis failing: circuit open, rebuilding the connection"
            );
            // A fresh manager: the old one may be stuck on a connection that will never work.
            if let Ok(fresh) = connect(&self.connector, self.timeout) {
                *self.conn.write().unwrap_or_else(|p| p.into_inner()) = fresh;
            }
        }
    }
}

impl GuardedRedis {
    /// What went wrong, naming the settings to check when Redis refused the credentials.
    fn reason(&self, e: &redis::RedisError) -> String {
        redis_error::describe(e, self.entra.is_some())
    }
}
