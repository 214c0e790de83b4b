//! Integration tests on the real stack: a real `redis-server`, the Cosmos-protocol server
//! (`tests/cosmos/launcher.js`), and the `handler` binary behind the host emulator, which
//! reads the repository's own `host.json` and `function.json` files. Every scenario runs in
//! both wire modes (invocation payload and forwarding).

use test_support as support;

/// Declares `<scenario>::payload` and `<scenario>::forwarding` tests for an
/// `async fn <scenario>(Mode)`.
macro_rules! both_modes {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn payload() {
                super::$scenario(crate::support::Mode::Payload).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn forwarding() {
                super::$scenario(crate::support::Mode::Forwarding).await
            }
        }
    )*};
}

mod bad_input;
mod change_feed;
mod chaos;
mod checker;
mod cluster;
mod consistency;
mod continuation;
mod cosmos_outage;
mod failover;
mod hardening;
mod herds;
mod isolation;
mod keyless;
mod near_adversarial;
mod near_cache;
mod near_checker;
mod paging;
mod publish;
mod query;
mod redis_outage;
mod routing;
mod tls;
mod update;
