//! JSON lines, byte for byte as `tracing-subscriber`'s `json().flatten_event(true)` writes them
//! (`{"timestamp":…,"level":…,"message":…,<fields>}`, no target), at less cost per line.
//!
//! Why: the stock formatter serializes through an adapter from `io::Write` to `fmt::Write`
//! that checks every fragment for UTF-8 (`from_utf8`) and forwards it through two dynamic
//! `write_str` calls; a line is some 40 fragments, and the per-invocation line is written for
//! every hit. Here the same serializer and the same field visitor (`tracing-serde`'s) write
//! into a plain byte buffer kept per thread, which is checked once and handed over in one
//! piece. Events inside a span, and events that came from the `log` crate, go to the stock
//! formatter: the handler opens no span, and those lines carry extra keys (`span`, `spans`) or
//! rewritten metadata that only it knows how to write.

use std::cell::RefCell;
use std::fmt;

use serde::ser::{SerializeMap, Serializer as _};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;

use super::time::SecondCachedTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Largest buffer a thread keeps between lines: a line longer than this (a long error) is
/// written from a buffer of its own, which is then freed.
const KEEP_BYTES: usize = 4 << 10;

thread_local! {
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The event formatter for `LOG_FORMAT=json`; see the module docs.
pub(crate) struct FlatJson<T = SecondCachedTime> {
    timer: T,
    /// For events in a span or from the `log` crate.
    stock: Format<Json, T>,
}

impl FlatJson {
    pub(crate) fn new() -> Self {
        Self::with_timer(SecondCachedTime)
    }
}

impl<T: FormatTime + Clone> FlatJson<T> {
    fn with_timer(timer: T) -> Self {
        let stock = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_target(false)
            .with_timer(timer.clone());
        Self { timer, stock }
    }
}

impl<S, N, T> FormatEvent<S, N> for FlatJson<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
    Format<Json, T>: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let in_span = event.parent().is_some() || ctx.lookup_current().is_some();
        // `tracing-log` marks an event from the `log` crate by these fields.
        if in_span || meta.fields().field("log.target").is_some() {
            return self.stock.format_event(ctx, writer, event);
        }
        let mut write = |buf: &mut Vec<u8>| -> fmt::Result {
            buf.clear();
            let mut serializer = serde_json::Serializer::new(&mut *buf);
            let mut map = serializer.serialize_map(None).map_err(|_| fmt::Error)?;
            map.serialize_entry("timestamp", &Timestamp(&self.timer))
                .and_then(|()| map.serialize_entry("level", meta.level().as_str()))
                .map_err(|_| fmt::Error)?;
            let mut visitor = tracing_serde::SerdeMapVisitor::new(map);
            event.record(&mut visitor);
            visitor
                .take_serializer()
                .and_then(SerializeMap::end)
                .map_err(|_| fmt::Error)?;
            buf.push(b'\n');
            // serde_json writes UTF-8 only; checked once for the whole line.
            writer.write_str(std::str::from_utf8(buf).map_err(|_| fmt::Error)?)
        };
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut buf) => {
                let result = write(&mut buf);
                if buf.capacity() > KEEP_BYTES {
                    *buf = Vec::new();
                }
                result
            }
            // Only if formatting a field logged an event itself.
            Err(_) => write(&mut Vec::new()),
        })
    }
}

/// The timestamp as the timer writes it, serialized as a JSON string without a `String` of
/// its own.
struct Timestamp<'a, T>(&'a T);

impl<T: FormatTime> serde::Serialize for Timestamp<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<T: FormatTime> fmt::Display for Timestamp<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.format_time(&mut Writer::new(f))
    }
}

/// The fields formatter that goes with [`FlatJson`] (spans' fields, for the stock formatter).
pub(crate) fn fields() -> JsonFields {
    JsonFields::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    /// A fixed time, so both formatters' lines can be compared whole.
    #[derive(Clone)]
    struct Fixed;

    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-12-06T23:23:54.641567Z")
        }
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Sink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            self.clone()
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("sink").clone()).expect("utf-8")
        }
    }

    /// Logs the same events through `tracing-subscriber`'s own JSON formatter and through
    /// [`FlatJson`], returning both outputs.
    fn both(log: impl Fn()) -> (String, String) {
        let stock = Sink::default();
        let ours = Sink::default();
        let stock_sub = tracing_subscriber::fmt()
            .with_writer(stock.clone())
            .with_target(false)
            .with_timer(Fixed)
            .json()
            .flatten_event(true)
            .finish();
        tracing::subscriber::with_default(stock_sub, &log);
        let our_sub = tracing_subscriber::fmt()
            .with_writer(ours.clone())
            .fmt_fields(fields())
            .event_format(FlatJson::with_timer(Fixed))
            .finish();
        tracing::subscriber::with_default(our_sub, &log);
        (stock.text(), ours.text())
    }

    #[test]
    fn lines_are_the_stock_formatters_bytes() {
        let (stock, ours) = both(|| {
            let duration_ms = 0.0123_f64;
            tracing::info!(
                target: "invocation",
                function = "query",
                method = %axum::http::Method::GET,
                mode = "payload",
                status = 200_u16,
                cache = "hit-local",
                duration_ms = format_args!("{duration_ms:.2}"),
                ru = 2.83_f64,
                invocation_id = "3f1c2b7e-9d4a-4c3e-8f55-0a1b2c3d4e5f",
                "invocation"
            );
            tracing::warn!(
                error = "quote \" backslash \\ newline \n tab \t bell \u{7} é ✓",
                negative = -7_i64,
                flag = true,
                nan = f64::NAN,
                big = u128::MAX,
                debug = ?Some("x"),
                "odd \"values\""
            );
            let io_error = io::Error::other("disk\nfull");
            tracing::error!(error = &io_error as &dyn std::error::Error, "failed");
            tracing::info!("message only");
            tracing::info!(
                long = "x".repeat(10_000).as_str(),
                "a line longer than the kept buffer"
            );
            tracing::info!(after = 1_u8, "the next line after a long one");
            let span = tracing::info_span!("work", id = 7);
            let _in = span.enter();
            tracing::info!(inside = "span", "an event in a span");
        });
        assert_eq!(stock.lines().count(), 7, "{stock}");
        assert!(
            stock.contains(r#""message":"invocation","function":"query""#),
            "{stock}"
        );
        assert!(
            stock.contains(r#""span":{"id":7,"name":"work"}"#),
            "{stock}"
        );
        assert_eq!(ours, stock);
    }
}
