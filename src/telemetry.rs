//! Logging with `tracing-subscriber`, shaped for the Functions host, which turns each stdout line
//! into an Information log and each stderr line into an Error, or a Warning when the line
//! contains "warn" (protocol §3.2). So INFO and below go to stdout, WARN and ERROR to stderr: every
//! WARN line carries the word `WARN` (text) or `"level":"WARN"` (JSON) and shows as a Warning in
//! Application Insights, and ERROR lines show as Errors.
//!
//! ## Layout
//! - this file: the subscriber (filter, formats, which stream a level goes to);
//! - `batched.rs`: stdout written in batches by a thread of its own;
//! - `json.rs`: the JSON line formatter (the stock one's bytes, at less cost per line);
//! - `time.rs`: the timestamp of both formats (the stock one's text, the date reused per second).

mod batched;
mod json;
mod time;

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::{EitherWriter, MakeWriterExt};

/// Keeps stdout logging going: hold it until the process ends. Dropping it writes the lines
/// still buffered, so a clean exit loses none.
#[must_use = "dropping the guard writes the buffered lines and stops batching them"]
pub struct LogGuard {
    _flusher: Option<batched::Flusher>,
}

/// Installs the global subscriber: JSON lines when `json` (the default in Azure), human-readable
/// text otherwise. `RUST_LOG` overrides the default filter `info`.
///
/// Stdout lines (INFO and below, among them one per invocation) are written in batches, at
/// most 50 ms after they were logged (`batched.rs` says why and what that costs); WARN and
/// ERROR go to stderr at once, unbuffered. Where the batching thread cannot start, stdout is
/// written line by line.
pub fn init(json: bool) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (stdout, flusher) = match batched::start() {
        Ok((stdout, flusher)) => (Stdout::Batched(stdout), Some(flusher)),
        Err(e) => {
            eprintln!("warning: stdout logging unbatched (no thread: {e})");
            (Stdout::Plain, None)
        }
    };
    let writer = std::io::stderr.with_max_level(Level::WARN).or_else(stdout);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_timer(time::SecondCachedTime);
    // `try_init` fails only when a subscriber is already installed (tests): keep that one.
    let _ = if json {
        builder
            .fmt_fields(json::fields())
            .event_format(json::FlatJson::new())
            .try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
    LogGuard { _flusher: flusher }
}

/// Where INFO lines go: in batches, or line by line where the batching thread could not
/// start. An enum rather than `BoxMakeWriter`, which boxes the writer of every line.
enum Stdout {
    Batched(batched::BatchedStdout),
    Plain,
}

impl<'a> MakeWriter<'a> for Stdout {
    type Writer = EitherWriter<batched::Line<'a>, std::io::Stdout>;

    fn make_writer(&'a self) -> Self::Writer {
        match self {
            Self::Batched(batched) => EitherWriter::A(batched.make_writer()),
            Self::Plain => EitherWriter::B(std::io::stdout()),
        }
    }
}

/// A non-negative number written with two decimals (`0.01`, `12.50`), as `{:.2}` writes it,
/// through integer formatting (`itoa`): `{:.2}` runs the exact float-to-decimal algorithm, and the two
/// such numbers of an invocation's log lines (its duration in ms, its RU) cost about as much
/// as the rest of the line. It rounds the value times 100 to a whole number, where `{:.2}`
/// rounds the exact binary value: where the third decimal is a 5 the two may differ by 0.01
/// (`0.015`, a little less in binary, is `0.02` here and `0.01` there; `0.125` is `0.13` here,
/// `0.12` there). The numbers it writes are measurements, not money. Values that are
/// negative, not finite or above 10¹² are written by `{:.2}`.
#[derive(Debug, Clone, Copy)]
pub struct Hundredths(pub f64);

impl std::fmt::Display for Hundredths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let x = self.0;
        if !(0.0..1e12).contains(&x) {
            return write!(f, "{x:.2}");
        }
        // Below 10¹⁴ after scaling: exact in an f64 and in a u64.
        let cents = (x * 100.0).round() as u64;
        let mut units = itoa::Buffer::new();
        f.write_str(units.format(cents / 100))?;
        let cents = (cents % 100) as u8;
        let decimals = [b'.', b'0' + cents / 10, b'0' + cents % 10];
        // Three ASCII bytes.
        f.write_str(std::str::from_utf8(&decimals).unwrap_or(".00"))
    }
}

#[cfg(test)]
mod tests {
    use super::Hundredths;

    #[test]
    fn hundredths_are_what_two_decimals_write() {
        for x in [
            0.0, 0.004, 0.006, 0.01, 0.5, 1.0, 2.5, 3.25159, 9.999, 99.994, 1234.5678,
        ] {
            assert_eq!(Hundredths(x).to_string(), format!("{x:.2}"), "{x}");
        }
        for x in [-1.5, f64::NAN, f64::INFINITY, 1e13] {
            assert_eq!(Hundredths(x).to_string(), format!("{x:.2}"), "{x}");
        }
        // Where the third decimal is a 5, the value times 100 is what is rounded.
        assert_eq!(Hundredths(0.125).to_string(), "0.13");
        assert_eq!(Hundredths(0.015).to_string(), "0.02");
    }
}
