//! The HTTP floor: a bare server (axum, tokio, the handler's own HTTP stack) answering every
//! request with fixed bytes, run as a child process of this benchmark
//! (`bench --floor-server <port> <file>`). No handler can serve a page faster than this
//! server serves the same bytes on the same machine, so rows 11 read against it as well as
//! against `redis-benchmark`.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use axum::http::header;
use bytes::Bytes;

use crate::Res;
use crate::procs::Proc;

/// The argument that turns this binary into the floor server.
const FLAG: &str = "--floor-server";

/// A running floor server.
pub struct Floor {
    proc: Proc,
    /// `http://127.0.0.1:<port>/`.
    pub url: String,
}

impl Floor {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// Starts a floor server answering `body` (written to `file` first) and waits until it answers.
pub async fn start(http: &reqwest::Client, body: &[u8], file: &Path) -> Res<Floor> {
    std::fs::write(file, body).map_err(|e| e.to_string())?;
    let port = test_support::redis_server::free_port();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = Command::new(exe)
        .arg(FLAG)
        .arg(port.to_string())
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("floor server: {e}"))?;
    let floor = Floor {
        proc: Proc::new(child),
        url: format!("http://127.0.0.1:{port}/"),
    };
    for _ in 0..200 {
        if let Ok(r) = http.get(&floor.url).send().await
            && r.bytes().await.is_ok_and(|b| b.as_ref() == body)
        {
            return Ok(floor);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err("the floor server did not answer".into())
}

/// When this process was started as the floor server, serves until killed and returns its exit
/// code; otherwise `None`.
pub fn serve_if_asked() -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some(FLAG) {
        return None;
    }
    Some(match serve(&args[1..]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor server: {e}");
            ExitCode::FAILURE
        }
    })
}

fn serve(args: &[String]) -> Res<()> {
    let [port, file] = args else {
        return Err(format!("usage: bench {FLAG} <port> <file>"));
    };
    let body = Bytes::from(std::fs::read(file).map_err(|e| e.to_string())?);
    // The handler's runtime: multi-threaded, one worker per core (Tokio's default).
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
            .await
            .map_err(|e| e.to_string())?;
        let app = axum::Router::new().fallback(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        });
        axum::serve(listener, app).await.map_err(|e| e.to_string())
    })
}
