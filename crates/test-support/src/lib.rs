//! Test support shared by the integration tests (`tests/api`) and the benchmark
//! (`examples/bench/`): real services started and controlled per test, and the stack that
//! puts the `handler` binary behind the host emulator.
//!
//! ## Layout
//! - [`redis_server`]: a `redis-server` of its own on a free port (kill, restart, ACL users).
//! - [`cosmos_server`]: the local Cosmos-protocol server (`tests/cosmos/launcher.js`), one per
//!   test binary, with the SDK settings it needs.
//! - [`chaos_proxy`]: a TCP proxy that can pass, delay, black-hole or cut a connection.
//! - [`failover`]: a primary/replica pair behind a proxy, for promotion tests.
//! - [`stack`]: one test's whole stack (Redis, a database, the handler behind
//!   [`host_emulator`]) in either wire mode.
//! - [`instances`]: more handler instances in the test's process, sharing a stack's Redis
//!   and database.
//! - [`scratch`]: temporary folders removed on drop.
//! - [`identity`]: a local managed-identity endpoint (the App Service protocol Functions on
//!   Linux provides); [`entra_redis`]: a `redis-server` whose only user is the identity, its
//!   password the current token; [`keyless`]: the stack wired for Microsoft Entra ID.

pub mod chaos_proxy;
pub mod cosmos_server;
pub mod entra_redis;
pub mod failover;
pub mod identity;
pub mod instances;
pub mod keyless;
pub mod push_dropper;
pub mod redis_server;
pub mod scratch;
pub mod stack;

pub use host_emulator;
pub use host_emulator::change_feed;
pub use redis_server::free_port;
pub use stack::{Mode, Stack};

use std::path::PathBuf;

/// The repository root: `host.json`, the function folders, `data/` and `tests/cosmos/`.
pub fn repo_root() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    root.canonicalize().unwrap_or(root)
}

/// The `handler` binary cargo built next to the running test or example binary
/// (`target/<profile>/{deps,examples}/<name>` → `target/<profile>/handler`); `HANDLER_EXE`
/// overrides it. Cargo builds a package's binaries before its integration tests, and
/// `scripts/bench.sh` builds it before the benchmark.
///
/// # Panics
/// When the binary is not there: a test cannot run without it.
pub fn handler_exe() -> PathBuf {
    if let Some(path) = std::env::var_os("HANDLER_EXE") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("the test binary's folder")
        .to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    let handler = dir.join("handler");
    assert!(
        handler.exists(),
        "{} is missing: build it with `cargo build --bin handler`",
        handler.display()
    );
    handler
}
