//! Stdout in batches: log lines are appended to a shared buffer and written by a flusher thread
//! every [`FLUSH_EVERY`], so a burst of lines costs one `write` instead of one each.
//!
//! Why not `tracing-appender`'s non-blocking writer: its thread writes as soon as its queue is
//! empty, and under a near-cache hit load the queue empties after every line or two. Measured
//! on 2 cores with 50 connections: one `write` per two lines plus the thread's spinning
//! (`sched_yield`) cost about 6 µs per line, nearly half of a hit's whole cost, and no more
//! requests per second than writing each line from the request's thread.
//!
//! Lines are never dropped: when the buffer holds [`FLUSH_AT_BYTES`] (stdout not read fast
//! enough), the thread adding a line writes the batch itself and so waits for the pipe, as
//! plain stdout would. A line reaches stdout at most [`FLUSH_EVERY`] after it was logged,
//! or at [`Flusher`]'s drop (the end of `serve`). Lines still buffered when the process is
//! killed (SIGKILL) are lost: at most the last [`FLUSH_EVERY`] of INFO lines; WARN and ERROR
//! do not come here (stderr, unbuffered).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Longest a logged line waits in the buffer.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Buffered bytes at which the thread adding a line writes the batch itself: 64 KiB (about 300
/// invocation lines), a pipe's default capacity. Under a hit load this is reached every few
/// milliseconds, one `write` per ~300 lines. When stdout is read slowly, a thread then waits
/// for about what a pipe holds, as plain stdout's writes do. With 1 MiB here, a reader doing
/// 200 KB/s stalled both runtime workers (every request, readiness probes included) for 3–6 s
/// at a time.
pub(crate) const FLUSH_AT_BYTES: usize = 64 << 10;

/// The buffer shared by every writer and the flusher thread.
struct Shared {
    /// Lines not yet written.
    lines: Mutex<Vec<u8>>,
    /// Held while a batch is taken and written, so batches reach stdout in order.
    out: Mutex<()>,
    /// Set when the flusher thread must stop; `wake` interrupts its sleep.
    stopping: Mutex<bool>,
    wake: Condvar,
    /// Set at the first failed write (reported once on stderr).
    failed: AtomicBool,
}

impl Shared {
    fn lines(&self) -> MutexGuard<'_, Vec<u8>> {
        // A writer that panicked mid-append leaves at worst a partial line: keep logging.
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes everything buffered so far to stdout.
    fn flush(&self) -> io::Result<()> {
        let _order = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let batch = {
            let mut lines = self.lines();
            // The next batch is likely as long as this one: allocate it once.
            let capacity = lines.len().min(FLUSH_AT_BYTES);
            std::mem::replace(&mut *lines, Vec::with_capacity(capacity))
        };
        if batch.is_empty() {
            return Ok(());
        }
        let mut stdout = io::stdout().lock();
        let written = stdout.write_all(&batch).and_then(|()| stdout.flush());
        if let Err(e) = &written
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            // Once: stdout is gone or full (e.g. /dev/full); say so where the host still reads.
            eprintln!("warning: cannot write log lines to stdout ({e}); INFO lines are dropped");
        }
        written
    }
}

/// The [`MakeWriter`] for stdout lines; cheap to clone.
#[derive(Clone)]
pub(crate) struct BatchedStdout {
    shared: Arc<Shared>,
}

/// Owns the flusher thread: dropping it writes what is buffered and joins the thread.
pub(crate) struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A batched stdout and its flusher thread (named `log-stdout`).
///
/// # Errors
/// The thread could not be spawned.
pub(crate) fn start() -> io::Result<(BatchedStdout, Flusher)> {
    let shared = Arc::new(Shared {
        lines: Mutex::new(Vec::with_capacity(64 << 10)),
        out: Mutex::new(()),
        stopping: Mutex::new(false),
        wake: Condvar::new(),
        failed: AtomicBool::new(false),
    });
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("log-stdout".into())
            .spawn(move || {
                let mut stop = shared
                    .stopping
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                while !*stop {
                    // Sleeps FLUSH_EVERY unless told to stop; `stopping` is unlocked meanwhile.
                    stop = shared
                        .wake
                        .wait_timeout(stop, FLUSH_EVERY)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    // A closed or broken stdout: nothing left to report the failure to.
                    let _ = shared.flush();
                }
            })?
    };
    Ok((
        BatchedStdout {
            shared: shared.clone(),
        },
        Flusher {
            shared,
            thread: Some(thread),
        },
    ))
}

impl Drop for Flusher {
    fn drop(&mut self) {
        *self
            .shared
            .stopping
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = self.shared.flush();
    }
}

/// One event's writer: the formatter hands it the whole line in one `write_all`.
pub(crate) struct Line<'a> {
    shared: &'a Shared,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let full = {
            let mut lines = self.shared.lines();
            lines.extend_from_slice(buf);
            lines.len() >= FLUSH_AT_BYTES
        };
        if full {
            self.shared.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Per-line flushes would undo the batching; the flusher thread writes.
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStdout {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            shared: &self.shared,
        }
    }
}
