//! [`Token`] (a token and when to use it until) and [`RefreshPolicy`] (the refresh loop's
//! timing), the values `source.rs`'s loop works with.

use std::time::{Duration, Instant};

use azure_core::credentials::{AccessToken, Secret};
use azure_core::time::OffsetDateTime;
use backon::BackoffBuilder;

/// Timing of the refresh loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// First pause after a failed attempt; doubles per consecutive failure.
    pub min_delay: Duration,
    /// Longest pause between two failed attempts, before jitter (jitter adds up to as much
    /// again). Bounds how late a returning endpoint is noticed.
    pub max_delay: Duration,
    /// Longest one attempt may take (a hanging endpoint).
    pub attempt_timeout: Duration,
    /// How long a reader without a valid token waits for the loop's next one.
    pub reader_wait: Duration,
}

impl Default for RefreshPolicy {
    /// 100 ms doubling up to 500 ms (+ jitter, so at most 1 s between attempts): a returning
    /// endpoint is seen within about a second, at the price of two requests a second per
    /// scope while it is down. Attempts time out after 5 s (a request held by a hanging
    /// endpoint is answered when it returns); readers wait at most 2 s.
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(5),
            reader_wait: Duration::from_secs(2),
        }
    }
}

impl RefreshPolicy {
    pub(super) fn backoff(&self) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// A token and when to use it until.
#[derive(Clone)]
pub struct Token {
    /// The access token (a JWT in Azure). Never printed: `Secret`'s `Debug` is redacted.
    pub secret: Secret,
    /// Expiry as the identity endpoint stated it.
    pub expires_on: OffsetDateTime,
    /// The same expiry on this process's monotonic clock.
    expires_at: Instant,
    /// Refresh from here on: half-way through the lifetime left when it arrived.
    pub(super) refresh_at: Instant,
    /// Considered expired this long before `expires_at` (a tenth of its lifetime, at most
    /// 30 s), so it is never sent in its last moment.
    skew: Duration,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("expires_on", &self.expires_on)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// `None` when the token is already (nearly) expired.
    pub(super) fn new(access: AccessToken, now: Instant) -> Option<Self> {
        let left = access.expires_on - OffsetDateTime::now_utc();
        let left = Duration::try_from(left).ok().filter(|d| !d.is_zero())?;
        let skew = (left / 10).min(Duration::from_secs(30));
        Some(Self {
            secret: access.token,
            expires_on: access.expires_on,
            expires_at: now + left,
            refresh_at: now + left / 2,
            skew,
        })
    }

    /// Whether the token may still be sent.
    pub fn is_usable(&self) -> bool {
        Instant::now() + self.skew < self.expires_at
    }

    /// Time left before the token stops being usable (zero when it is not).
    pub fn usable_for(&self) -> Duration {
        self.expires_at
            .saturating_duration_since(Instant::now() + self.skew)
    }

    pub(super) fn same_as(&self, other: &AccessToken) -> bool {
        self.expires_on == other.expires_on && self.secret.secret() == other.token.secret()
    }
}
