//! Redis with Microsoft Entra ID: user = the identity's object id, password = a token for
//! [`crate::identity::REDIS_SCOPE`]. Azure closes a connection whose token expired, so every
//! open connection is re-authenticated (`AUTH <user> <token>`) with each new token, well before
//! the old one expires (tokens are refreshed at half their lifetime).
//!
//! Two parts:
//! - [`EntraCredentials`], the redis crate's `StreamingCredentialsProvider`: each new
//!   connection (the single connection after every reconnect, and every cluster node's) opens
//!   with the current token. It yields that token and then nothing: when there is no valid
//!   token it fails the connect at once, so requests take the bypass path instead of waiting.
//! - [`reauth_loop`]: the re-AUTH of open connections, driven by the token source. It is ours
//!   rather than the crate's per-connection task because that task ends after one failed
//!   re-AUTH (redis 1.8.1 `aio/multiplexed_connection.rs`), leaving the connection to die at
//!   expiry; this loop retries a failed re-AUTH with backoff until it succeeds or a newer token
//!   replaces it, and ends only with the cache.

use std::pin::Pin;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::BackoffBuilder;
use futures::Stream;
use redis::auth::{BasicAuth, StreamingCredentialsProvider};
use redis::{ErrorKind, RedisError, RedisResult};

use super::guard::GuardedRedis;
use crate::identity::TokenSource;

/// The Entra ID identity of the Redis connection.
#[derive(Clone)]
pub struct EntraCredentials {
    /// Tokens for [`crate::identity::REDIS_SCOPE`].
    pub source: TokenSource,
    /// The ACL user: the identity's object (principal) id.
    pub user: String,
}

impl StreamingCredentialsProvider for EntraCredentials {
    fn subscribe(&self) -> Pin<Box<dyn Stream<Item = RedisResult<BasicAuth>> + Send + 'static>> {
        let first = match self.source.current() {
            Some(token) => Ok(BasicAuth::new(
                self.user.clone(),
                token.secret.secret().to_string(),
            )),
            None => Err(RedisError::from((
                ErrorKind::AuthenticationFailed,
                "no valid Microsoft Entra ID token for Redis (the token refresh keeps retrying)",
            ))),
        };
        // Then nothing, ever: re-AUTH is `reauth_loop`'s job (an ended stream would make the
        // crate log that re-authentication stopped).
        Box::pin(futures::stream::StreamExt::chain(
            futures::stream::once(futures::future::ready(first)),
            futures::stream::pending(),
        ))
    }
}

/// Pauses between tries of one failed re-AUTH: 100 ms doubling up to 1 s, plus jitter (so at
/// most 2 s): short against a token lifetime (the next token comes at half of it).
fn reauth_backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Re-authenticates the guard's connection with every token `credentials.source` publishes.
/// Ends when the guard is dropped (or the source, which the guard owns).
pub(super) async fn reauth_loop(guard: Weak<GuardedRedis>, credentials: EntraCredentials) {
    let mut tokens = credentials.source.subscribe();
    // The current token opened the connection; only later ones need a re-AUTH.
    tokens.borrow_and_update();
    'tokens: loop {
        if tokens.changed().await.is_err() {
            return;
        }
        let mut backoff = reauth_backoff();
        loop {
            let Some(token) = tokens.borrow_and_update().clone() else {
                continue 'tokens;
            };
            if !token.is_usable() {
                continue 'tokens;
            }
            let Some(redis) = guard.upgrade() else {
                return;
            };
            match redis.reauthenticate(&credentials.user, &token).await {
                Ok(()) => {
                    redis.reauths.fetch_add(1, Ordering::Relaxed);
                    // Redis took the new token: whatever opened the breaker (an expired token)
                    // is gone, so the next request goes to Redis instead of waiting out the
                    // cool-down.
                    redis.close_breaker();
                    continue 'tokens;
                }
                Err(reason) => {
                    let failures = redis.reauth_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(
                        reason = %reason,
                        failures,
                        "Redis re-AUTH with the new Entra ID token failed; retrying"
                    );
                }
            }
            drop(redis);
            // Retry this token after a pause, or move on at once to a newer one.
            tokio::select! {
                () = tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(2))) => {}
                changed = tokens.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    backoff = reauth_backoff();
                }
            }
        }
    }
}
