//! The handler process (§2.3, §3): command line, environment, console output, readiness.

use crate::client::{SendError, send_to_handler};
use crate::consts::READINESS_POLL_INTERVAL;
use crate::error::{EmulatorError, config_err};
use crate::host_config::HostConfig;
use crate::request::readiness_probe_request;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub(crate) fn log(line: &str) {
    eprintln!("[host-emulator] {line}");
}

/// `Environment.ExpandEnvironmentVariables`: `%NAME%` → value when defined, else left as is.
fn expand_env(text: &str, env: &[(String, String)]) -> String {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('%') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('%') {
            Some(end) => {
                let name = &after[..end];
                match lookup(name).filter(|_| !name.is_empty()) {
                    Some(value) => {
                        out.push_str(&value);
                        rest = &after[end + 1..];
                    }
                    None => {
                        out.push('%');
                        rest = after;
                    }
                }
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Removes `%NAME%` tokens left after expansion (what the host does to arguments, §2.1).
fn strip_unresolved(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('%') {
        let after = &rest[start + 1..];
        match after.find('%') {
            Some(end)
                if end > 0
                    && after[..end]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') =>
            {
                out.push_str(&rest[..start]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str(&rest[..=start]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Splits a .NET `ProcessStartInfo.Arguments` string into argv entries: whitespace separates,
/// double quotes group, `\"` is a literal quote.
fn split_command_line(text: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut has_token = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
                has_token = true;
            }
            '"' => {
                in_quotes = !in_quotes;
                has_token = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_token {
                    args.push(std::mem::take(&mut current));
                    has_token = false;
                }
            }
            c => {
                current.push(c);
                has_token = true;
            }
        }
    }
    if has_token {
        args.push(current);
    }
    args
}

/// The command line the host would run (§2.1, §3.1): `(program, argv, working directory)`.
///
/// * `executable_override` (tests: `env!("CARGO_BIN_EXE_handler")`) replaces
///   `defaultExecutablePath`; a relative override that exists relative to the current directory
///   is made absolute, otherwise it goes through the same rule as the host.json value.
/// * Host rule: `%VAR%` expanded; a relative path that exists at `workerDirectory/<path>`
///   becomes that absolute path; otherwise it is used as-is (looked up on `PATH`).
/// * Arguments: `arguments`, then the quoted `defaultWorkerPath`, then `workerArguments`, each
///   `%VAR%`-expanded with unresolved tokens deleted, joined with spaces and re-split.
/// * Working directory: `workingDirectory` (relative → under the app root; empty → app root).
pub fn resolve_command(
    host: &HostConfig,
    app_root: &Path,
    executable_override: Option<&Path>,
    env: &[(String, String)],
) -> Result<(PathBuf, Vec<String>, PathBuf), EmulatorError> {
    let resolve_dir = |dir: &str| {
        let dir = expand_env(dir, env);
        if dir.trim().is_empty() {
            app_root.to_path_buf()
        } else {
            app_root.join(dir)
        }
    };
    let worker_dir = resolve_dir(&host.worker_directory);
    let working_dir = resolve_dir(&host.working_directory);
    let host_rule = |raw: &Path| -> PathBuf {
        if raw.is_relative() {
            let candidate = worker_dir.join(raw);
            if candidate.is_file() {
                return candidate;
            }
        }
        raw.to_path_buf()
    };
    let program = match executable_override {
        Some(path) if path.is_relative() && path.is_file() => {
            std::path::absolute(path).map_err(|source| EmulatorError::Io {
                context: format!("resolving {}", path.display()),
                source,
            })?
        }
        Some(path) => host_rule(path),
        None => {
            let raw = expand_env(&host.default_executable_path, env);
            if raw.trim().is_empty() {
                return Err(config_err(
                    "WorkerDescription DefaultExecutablePath cannot be empty \
                     (customHandler.description.defaultExecutablePath)",
                ));
            }
            host_rule(Path::new(&raw))
        }
    };
    let mut pieces: Vec<String> = host
        .arguments
        .iter()
        .map(|a| strip_unresolved(&expand_env(a, env)))
        .collect();
    if let Some(worker_path) = &host.default_worker_path {
        pieces.push(format!(
            "\"{}\"",
            strip_unresolved(&expand_env(worker_path, env))
        ));
    }
    pieces.extend(
        host.worker_arguments
            .iter()
            .map(|a| strip_unresolved(&expand_env(a, env))),
    );
    let args = split_command_line(&pieces.join(" "));
    Ok((program, args, working_dir))
}

pub(crate) fn free_loopback_port() -> Result<u16, EmulatorError> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| {
        EmulatorError::Io {
            context: "binding 127.0.0.1:0 to pick the handler port".to_string(),
            source,
        }
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| EmulatorError::Io {
            context: "reading the picked handler port".to_string(),
            source,
        })
}

pub(crate) type StderrTail = Arc<Mutex<VecDeque<String>>>;

pub(crate) fn pipe_output<R: Read + Send + 'static>(reader: R, is_stderr: bool, tail: StderrTail) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            if let Some(system) = line.strip_prefix("LanguageWorkerConsoleLog") {
                eprintln!("[handler] (system) {system}");
                continue;
            }
            if is_stderr {
                let level = if line.to_ascii_lowercase().contains("warn") {
                    "Warning"
                } else {
                    "Error"
                };
                eprintln!("[handler] {level}: {line}");
                if let Ok(mut t) = tail.lock() {
                    if t.len() == 3 {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            } else {
                eprintln!("[handler] Information: {line}");
            }
        }
    });
}

/// The running handler process: the `Child` lives behind a mutex; a watcher task polls
/// `try_wait` (every 50 ms) and publishes the exit on a watch channel. Signals are only sent
/// while holding the mutex and before the child has been reaped, so a recycled pid is never
/// signalled.
pub(crate) struct HandlerProcess {
    child: Mutex<Option<Child>>,
    stopping: std::sync::atomic::AtomicBool,
    pub(crate) exit_rx: watch::Receiver<Option<String>>,
    stderr_tail: StderrTail,
}

impl HandlerProcess {
    /// Takes over a spawned child: pipes its console output into the log (keeping the tail of
    /// stderr for error messages) and starts the watcher that publishes its exit.
    pub(crate) fn adopt(mut child: Child) -> Arc<Self> {
        let stderr_tail: StderrTail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(out) = child.stdout.take() {
            pipe_output(out, false, stderr_tail.clone());
        }
        if let Some(err) = child.stderr.take() {
            pipe_output(err, true, stderr_tail.clone());
        }
        let (exit_tx, exit_rx) = watch::channel(None);
        let process = Arc::new(HandlerProcess {
            child: Mutex::new(Some(child)),
            stopping: std::sync::atomic::AtomicBool::new(false),
            exit_rx,
            stderr_tail,
        });
        spawn_watcher(process.clone(), exit_tx);
        process
    }

    pub(crate) fn exit_status(&self) -> Option<String> {
        self.exit_rx.borrow().clone()
    }

    fn tail(&self) -> Vec<String> {
        self.stderr_tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Sends SIGTERM (unix; elsewhere kills) if the child is still running.
    pub(crate) fn terminate(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut guard) = self.child.lock()
            && let Some(child) = guard.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            #[cfg(unix)]
            {
                if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                    // SAFETY: plain kill(2) on our own child, which has not been reaped yet
                    // (reaping only happens under this mutex), so the pid is still ours.
                    unsafe {
                        libc::kill(pid, libc::SIGTERM);
                    }
                }
            }
            #[cfg(not(unix))]
            {
                let _ = child.kill();
            }
        }
    }

    /// SIGKILL and reap, if still running.
    pub(crate) fn kill_now(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut guard) = self.child.lock()
            && let Some(child) = guard.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn spawn_watcher(process: Arc<HandlerProcess>, exit_tx: watch::Sender<Option<String>>) {
    tokio::spawn(async move {
        loop {
            let status = match process.child.lock() {
                Ok(mut guard) => match guard.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => Some(status.to_string()),
                    Some(Ok(None)) => None,
                    Some(Err(e)) => Some(format!("unknown ({e})")),
                    None => Some("not running".to_string()),
                },
                Err(_) => Some("unknown (lock poisoned)".to_string()),
            };
            if let Some(status) = status {
                let tail = process.tail();
                if process.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    log(&format!("handler process stopped ({status})"));
                } else {
                    log(&format!(
                        "handler process exited ({status}); the emulator does not restart it, \
                         later calls get 500. Last stderr lines: {tail:?}"
                    ));
                }
                let _ = exit_tx.send(Some(status));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// §3.3: poll `GET http://127.0.0.1:{port}/` every 25 ms until any HTTP response. A refused
/// connection keeps waiting; once connected, an HTTP-level error also counts as ready.
pub(crate) async fn wait_until_ready(
    port: u16,
    budget: Duration,
    process: &HandlerProcess,
) -> Result<(), EmulatorError> {
    let started = Instant::now();
    let probe = readiness_probe_request(port);
    loop {
        if let Some(status) = process.exit_status() {
            return Err(EmulatorError::HandlerExited {
                status,
                stderr_tail: process.tail(),
            });
        }
        let elapsed = started.elapsed();
        if elapsed >= budget {
            return Err(EmulatorError::ReadinessTimeout {
                budget,
                port,
                stderr_tail: process.tail(),
            });
        }
        match send_to_handler(&probe, Some(budget - elapsed)).await {
            Ok(resp) => {
                log(&format!(
                    "handler ready: GET / answered {} after {:?}",
                    resp.status.as_u16(),
                    started.elapsed()
                ));
                return Ok(());
            }
            Err(SendError::Http(e)) => {
                log(&format!(
                    "handler ready: GET / failed at the HTTP level ({e}), which the host also \
                     treats as ready"
                ));
                return Ok(());
            }
            Err(SendError::Connect(_)) | Err(SendError::Timeout) => {
                tokio::time::sleep(READINESS_POLL_INTERVAL).await;
            }
        }
    }
}
