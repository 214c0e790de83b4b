//! Unit tests of `src/identity/source.rs`.

use super::*;
use azure_core::time::OffsetDateTime;
use std::sync::atomic::AtomicUsize;

/// Answers with the token `make` builds for the n-th call.
struct Scripted<F: Fn(usize) -> AccessToken + Send + Sync> {
    calls: AtomicUsize,
    make: F,
}

impl<F: Fn(usize) -> AccessToken + Send + Sync> std::fmt::Debug for Scripted<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scripted")
    }
}

#[async_trait::async_trait]
impl<F: Fn(usize) -> AccessToken + Send + Sync> TokenCredential for Scripted<F> {
    async fn get_token(
        &self,
        _: &[&str],
        _: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok((self.make)(self.calls.fetch_add(1, Ordering::Relaxed)))
    }
}

fn fast() -> RefreshPolicy {
    RefreshPolicy {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
        attempt_timeout: Duration::from_secs(1),
        reader_wait: Duration::from_millis(200),
    }
}

#[tokio::test]
async fn a_cached_token_returned_again_is_not_republished() {
    // 3 s tokens are refreshed every ~1.5 s; the credential returns the same one until
    // its 4th call (as azure_identity's own cache does).
    let expires = OffsetDateTime::now_utc() + azure_core::time::Duration::seconds(3);
    let credential = Arc::new(Scripted {
        calls: AtomicUsize::new(0),
        make: move |_| AccessToken::new("same", expires),
    });
    let source = TokenSource::start("redis", "s", credential.clone(), fast()).expect("source");
    let mut rx = source.subscribe();
    assert!(source.usable_within(Duration::from_secs(1)).await.is_some());
    rx.borrow_and_update();
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    assert!(credential.calls.load(Ordering::Relaxed) >= 2, "refreshed");
    assert!(!rx.has_changed().unwrap_or(true), "same token: no re-AUTH");
    assert_eq!(source.stats_json()["tokens"], 1);
}

#[tokio::test]
async fn an_expired_token_is_a_failure_and_readers_fail_fast() {
    let past = OffsetDateTime::now_utc() - azure_core::time::Duration::seconds(5);
    let credential = Arc::new(Scripted {
        calls: AtomicUsize::new(0),
        make: move |_| AccessToken::new("old", past),
    });
    let source = TokenSource::start("cosmos", "s", credential, fast()).expect("source");
    let started = Instant::now();
    let error = source.get_token(&["s"], None).await.expect_err("no token");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(error.to_string().contains("expired token"), "{error}");
    assert!(!error.to_string().contains("old"), "{error}");
    let wrong_scope = source.get_token(&["other"], None).await.expect_err("scope");
    assert!(
        wrong_scope.to_string().contains("serves s only"),
        "{wrong_scope}"
    );
    assert!(source.loop_running());
}

#[test]
fn failure_text_is_one_bounded_line() {
    let body = "error: ".to_string() + &"é".repeat(1_000) + "\nhttps://aka.ms/troubleshoot";
    let line = super::one_line(&body);
    assert!(!line.contains('\n'));
    assert_eq!(
        line.chars().count(),
        super::ERROR_TEXT_MAX + "… (cut)".chars().count()
    );
    assert_eq!(super::one_line("short\n  text"), "short text");
}
