//! Logging with `tracing-subscriber`, shaped for the Functions host, which turns each stdout line
//! into an Information log and each stderr line into an Error, or a Warning when the line
//! contains "warn" (protocol §3.2). So INFO and below go to stdout, WARN and ERROR to stderr: every
//! WARN line carries the word `WARN` (text) or `"level":"WARN"` (JSON) and shows as a Warning in
//! Application Insights, and ERROR lines show as Errors.

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

/// Installs the global subscriber: JSON lines when `json` (the default in Azure), human-readable
/// text otherwise. `RUST_LOG` overrides the default filter `info`.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = std::io::stderr
        .with_max_level(Level::WARN)
        .or_else(std::io::stdout);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    // `try_init` fails only when a subscriber is already installed (tests): keep that one.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}
