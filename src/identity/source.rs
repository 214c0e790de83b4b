//! [`TokenSource`]: one scope's Entra ID token, kept fresh in the background.
//!
//! # Why a loop of our own
//! Clients elsewhere lose keyless connections in three known ways: a refresh loop that gives up
//! after a few errors (redis-rs' and redis-entraid's stop after 3), a dropped clone of the
//! provider that silently ends refreshing, and a wait for a token inside the request path while
//! the identity endpoint hangs. Here:
//! - one task per scope refreshes at half the token's remaining lifetime and, on failure,
//!   retries **forever** with exponential backoff and jitter (`backon`), each attempt bounded
//!   by a timeout, so a hanging endpoint costs one attempt, not the loop;
//! - the task belongs to the last clone: dropping any other clone changes nothing, dropping
//!   the last one aborts it (no orphan loop hitting the endpoint);
//! - readers never call the endpoint: they take the current token while it is valid, and wait
//!   (bounded) for the loop's next token only when there is none, so while the endpoint is down
//!   the old token keeps serving until it expires.
//!
//! `azure_identity`'s `ManagedIdentityCredential` caches tokens until 5 minutes before expiry,
//! so a refresh before then returns the same token (nothing is re-sent to Redis); the
//! `AzureCliCredential` caches nothing, which this loop makes up for (one `az` call per
//! half-lifetime, however many requests).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use serde_json::json;
use tokio::sync::watch;

pub use super::token::{RefreshPolicy, Token};

#[derive(Default)]
struct Stats {
    attempts: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU64,
    /// Distinct tokens published (a cached token returned again is not counted).
    tokens: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_attempt: Mutex<Option<Instant>>,
}

struct Shared {
    label: &'static str,
    scope: String,
    credential: Arc<dyn TokenCredential>,
    policy: RefreshPolicy,
    current: watch::Sender<Option<Token>>,
    stats: Stats,
}

/// Aborts the refresh loop when the last [`TokenSource`] clone is dropped.
struct Owner {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One scope's token, refreshed in the background for as long as any clone exists. Cheap to
/// clone. Implements [`TokenCredential`] (for `azure_data_cosmos`), answering from the current
/// token.
#[derive(Clone)]
pub struct TokenSource {
    owner: Arc<Owner>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("label", &self.owner.shared.label)
            .field("scope", &self.owner.shared.scope)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Starts refreshing `scope` tokens from `credential` at once (the first attempt runs
    /// now). `label` names the source in logs and diagnostics (`cosmos`, `redis`).
    ///
    /// # Errors
    /// When called outside a Tokio runtime (the loop needs one).
    pub fn start(
        label: &'static str,
        scope: &str,
        credential: Arc<dyn TokenCredential>,
        policy: RefreshPolicy,
    ) -> Result<Self, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the token refresh needs a Tokio runtime".to_string())?;
        let shared = Arc::new(Shared {
            label,
            scope: scope.to_string(),
            credential,
            policy,
            current: watch::Sender::new(None),
            stats: Stats::default(),
        });
        let task = runtime.spawn(refresh_loop(shared.clone()));
        Ok(Self {
            owner: Arc::new(Owner { shared, task }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// The current token, if it may still be sent.
    pub fn current(&self) -> Option<Token> {
        self.shared()
            .current
            .borrow()
            .as_ref()
            .filter(|t| t.is_usable())
            .cloned()
    }

    /// The current token, or the next one the loop obtains within `budget`.
    pub async fn usable_within(&self, budget: Duration) -> Option<Token> {
        let mut rx = self.shared().current.subscribe();
        tokio::time::timeout(budget, async {
            loop {
                if let Some(t) = rx.borrow_and_update().as_ref().filter(|t| t.is_usable()) {
                    return Some(t.clone());
                }
                rx.changed().await.ok()?;
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Every token the loop publishes (each distinct token once), starting with the current
    /// value.
    pub fn subscribe(&self) -> watch::Receiver<Option<Token>> {
        self.shared().current.subscribe()
    }

    /// Whether the refresh loop is running (it only ends when the last clone is dropped).
    pub fn loop_running(&self) -> bool {
        !self.owner.task.is_finished()
    }

    /// Why there is no token, for error messages: the consecutive failures and the last one's
    /// reason (the endpoint's or the CLI's message; never a token).
    pub fn failure_summary(&self) -> String {
        let s = &self.shared().stats;
        let consecutive = s.consecutive_failures.load(Ordering::Relaxed);
        let last = s
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "no attempt finished yet".into());
        format!("{consecutive} consecutive failed token requests; last: {last}")
    }

    /// Counters for `/_diagnostics`: attempts, failures, consecutive failures, distinct tokens,
    /// whether the loop runs, how long the current token stays usable (ms) and since when the
    /// last attempt started (ms). No token, no error text.
    pub fn stats_json(&self) -> serde_json::Value {
        let shared = self.shared();
        let s = &shared.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let last_attempt = *s.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "source": shared.label,
            "scope": shared.scope,
            "refreshLoop": if self.loop_running() { "running" } else { "stopped" },
            "attempts": n(&s.attempts),
            "successes": n(&s.successes),
            "failures": n(&s.failures),
            "consecutiveFailures": n(&s.consecutive_failures),
            "tokens": n(&s.tokens),
            "tokenUsableForMs": self.current().map(|t| t.usable_for().as_millis() as u64),
            "lastAttemptAgoMs": last_attempt.map(|t| t.elapsed().as_millis() as u64),
        })
    }
}

async fn refresh_loop(shared: Arc<Shared>) {
    let policy = shared.policy;
    let mut backoff = policy.backoff();
    let mut failing = false;
    loop {
        let wait = if failing {
            backoff.next().unwrap_or(policy.max_delay)
        } else {
            shared
                .current
                .borrow()
                .as_ref()
                .map_or(Duration::ZERO, |t| {
                    t.refresh_at.saturating_duration_since(Instant::now())
                })
        };
        tokio::time::sleep(wait).await;
        let s = &shared.stats;
        s.attempts.fetch_add(1, Ordering::Relaxed);
        *s.last_attempt.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let attempt = tokio::time::timeout(
            policy.attempt_timeout,
            shared
                .credential
                .get_token(&[shared.scope.as_str()], None::<TokenRequestOptions<'_>>),
        )
        .await;
        let outcome = match attempt {
            Ok(Ok(access)) => match Token::new(access.clone(), Instant::now()) {
                Some(token) => Ok((token, access)),
                None => Err("the identity endpoint returned an expired token".to_string()),
            },
            Ok(Err(e)) => Err(one_line(&e.to_string())),
            Err(_) => Err(format!(
                "no answer within {} ms",
                policy.attempt_timeout.as_millis()
            )),
        };
        match outcome {
            Ok((token, access)) => {
                s.successes.fetch_add(1, Ordering::Relaxed);
                let after = s.consecutive_failures.swap(0, Ordering::Relaxed);
                if failing {
                    tracing::info!(
                        source = shared.label,
                        failures = after,
                        "Entra ID token obtained again"
                    );
                }
                failing = false;
                backoff = policy.backoff();
                let changed = shared
                    .current
                    .borrow()
                    .as_ref()
                    .is_none_or(|t| !t.same_as(&access));
                if changed {
                    s.tokens.fetch_add(1, Ordering::Relaxed);
                    shared.current.send_replace(Some(token));
                } else {
                    // The credential's own cache answered: same token, later refresh point.
                    shared.current.send_if_modified(|current| {
                        if let Some(t) = current {
                            t.refresh_at = token.refresh_at;
                        }
                        false
                    });
                }
            }
            Err(reason) => {
                s.failures.fetch_add(1, Ordering::Relaxed);
                let consecutive = s.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                // The first failure, then one line per 10: an outage must not flood the log.
                if consecutive == 1 || consecutive.is_multiple_of(10) {
                    tracing::warn!(
                        source = shared.label,
                        consecutive,
                        reason = %reason,
                        "Entra ID token request failed; retrying with backoff"
                    );
                }
                *s.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                failing = true;
            }
        }
    }
}

#[async_trait::async_trait]
impl TokenCredential for TokenSource {
    /// The current token of this source's scope, or the loop's next one within
    /// [`RefreshPolicy::reader_wait`]. `scopes` must be this source's scope.
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        use azure_core::error::{Error, ErrorKind};
        let shared = self.shared();
        if scopes != [shared.scope.as_str()] {
            return Err(Error::with_message(
                ErrorKind::Credential,
                format!(
                    "this {} token source serves {} only",
                    shared.label, shared.scope
                ),
            ));
        }
        match self.usable_within(shared.policy.reader_wait).await {
            Some(t) => Ok(AccessToken::new(t.secret, t.expires_on)),
            None => Err(Error::with_message(
                ErrorKind::Credential,
                format!(
                    "no valid Microsoft Entra ID token for {}: {}",
                    shared.label,
                    self.failure_summary()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests;

/// Longest error text kept from a failed token request, in characters.
const ERROR_TEXT_MAX: usize = 300;

/// `text` on one line (azure_identity appends a troubleshooting link on a line of its own),
/// at most [`ERROR_TEXT_MAX`] characters: the text may quote the identity endpoint's error
/// body, which is not ours to log at any length.
fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match joined.char_indices().nth(ERROR_TEXT_MAX) {
        Some((cut, _)) => format!("{}… (cut)", &joined[..cut]),
        None => joined,
    }
}
