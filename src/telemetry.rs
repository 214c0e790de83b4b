//! Logging to stdout with `tracing-subscriber`. The Functions host turns each stdout line into
//! an Information log and each stderr line into an Error (or a Warning when the line contains
//! "warn") (spec §3.2), so everything goes to stdout and the level is in the line itself.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: JSON lines when `json` (in Azure), human-readable text
/// otherwise. `RUST_LOG` overrides the default filter `info`.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_target(false);
    // `try_init` fails only when a subscriber is already installed (tests): keep that one.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}
