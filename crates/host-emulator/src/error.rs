//! The emulator's error type.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Why the emulator could not start (configuration, process or readiness problems).
#[derive(Debug)]
pub enum EmulatorError {
    /// `host.json` / `function.json` / app settings are invalid or unsupported by the emulator.
    Config(String),
    /// A file-system or socket operation failed; `context` says which.
    Io {
        /// What the emulator was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The handler process could not be started.
    Spawn {
        /// Program that was started (after §2.1 resolution).
        program: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The handler exited before it answered the readiness probe.
    HandlerExited {
        /// Exit status as text, e.g. `exit status: 1`.
        status: String,
        /// Last stderr lines (the host attaches the last 3 to the exit exception, §3.2).
        stderr_tail: Vec<String>,
    },
    /// No HTTP answer on `GET /` within the budget: "Initializing HttpWorker timed out." (§3.3).
    ReadinessTimeout {
        /// Budget that elapsed.
        budget: Duration,
        /// Port that was polled.
        port: u16,
        /// Last stderr lines of the handler.
        stderr_tail: Vec<String>,
    },
}

impl fmt::Display for EmulatorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmulatorError::Config(msg) => write!(f, "configuration error: {msg}"),
            EmulatorError::Io { context, source } => write!(f, "{context}: {source}"),
            EmulatorError::Spawn { program, source } => {
                write!(f, "could not start handler {}: {source}", program.display())
            }
            EmulatorError::HandlerExited {
                status,
                stderr_tail,
            } => write!(
                f,
                "handler exited before it was ready ({status}); last stderr lines: {stderr_tail:?}"
            ),
            EmulatorError::ReadinessTimeout {
                budget,
                port,
                stderr_tail,
            } => write!(
                f,
                "Initializing HttpWorker timed out: no HTTP response on GET http://127.0.0.1:{port}/ \
                 within {budget:?}; last stderr lines: {stderr_tail:?}"
            ),
        }
    }
}

impl std::error::Error for EmulatorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EmulatorError::Io { source, .. } | EmulatorError::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub(crate) fn config_err(msg: impl Into<String>) -> EmulatorError {
    EmulatorError::Config(msg.into())
}
