//! The `handler` binary as the host runs it: real sockets, real signals, real environment.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Settings pointing at services that are not there (port 1 refuses connections).
fn unreachable_services() -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_CONNECTION_STRING", "redis://127.0.0.1:1".into()),
        ("COSMOS_ENDPOINT", "http://127.0.0.1:1/".into()),
        ("COSMOS_KEY", "a2V5".into()),
        ("COSMOS_DATABASE", "tutorial".into()),
        ("COSMOS_CONTAINER", "us_cities".into()),
        ("COSMOS_DISABLE_IMDS", "1".into()),
    ]
}

/// The handler on `port`, with services that are not there and `extra` settings, stdout piped.
fn spawn_handler(port: u16, extra: &[(&str, &str)], stderr: Stdio) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_handler"))
        .env_clear()
        .envs(unreachable_services())
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .envs(extra.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start handler")
}

/// The body of the first answer to `GET /`, polled as the host does (protocol §3.3), within the
/// host's 30 s budget.
fn wait_ready(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match reqwest::blocking_get(port) {
            Some(body) => return body,
            None => {
                assert!(Instant::now() < deadline, "no readiness answer");
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }
}

/// SIGTERM, as the host stops the handler; it must exit 0.
fn sigterm_exits_cleanly(child: &mut std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("handler exits");
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
}

#[test]
fn ready_before_redis_and_cosmos_then_graceful_sigterm() {
    let port = free_port();
    let mut child = spawn_handler(port, &[], Stdio::piped());
    assert_eq!(wait_ready(port), "ready");
    sigterm_exits_cleanly(&mut child);
}

#[test]
fn configuration_errors_name_the_setting_never_the_value() {
    let secret = "s3cr3t/p+ss=";
    let cases = [
        ("COSMOS_KEY", None, "COSMOS_KEY"),
        (
            "REDIS_CONNECTION_STRING",
            Some(format!("cache.example:notaport,password={secret},ssl=True")),
            "REDIS_CONNECTION_STRING",
        ),
        (
            "COSMOS_ENDPOINT",
            Some(format!("ftp://{secret}")),
            "COSMOS_ENDPOINT",
        ),
    ];
    for ((name, value, expected), format) in cases
        .into_iter()
        .flat_map(|case| [(case.clone(), "text"), (case, "json")])
    {
        let mut env = unreachable_services();
        env.retain(|(k, _)| *k != name);
        if let Some(v) = value {
            env.push((name, v));
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_handler"))
            .env_clear()
            .envs(env)
            .env("LOG_FORMAT", format)
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", free_port().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start handler");
        let exit = child.wait().expect("exits");
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("read stderr");
        assert!(!exit.success(), "{name}: must not start");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(
            !stderr.contains(secret),
            "{name} leaked its value: {stderr}"
        );
        if format == "json" {
            // With LOG_FORMAT=json the error is a JSON line too, as every other line is.
            for line in stderr.lines() {
                let line: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{name}: not a JSON line ({e}): {line}"));
                assert_eq!(line["level"], "ERROR", "{name}: {line}");
            }
        }
    }
}

/// A port already taken is a start-up failure naming the port, in the configured format.
#[test]
fn a_taken_port_is_an_error_line_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let child = spawn_handler(port, &[("LOG_FORMAT", "json")], Stdio::piped());
    let output = child.wait_with_output().expect("exits");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line: serde_json::Value = stderr
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("a JSON line in {stderr}"));
    assert_eq!(line["level"], "ERROR", "{line}");
    let message = line["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{line}");
}

/// Stdout (INFO: the per-invocation lines) is written in batches by a thread of its own: the
/// lines reach the pipe while the handler runs, in order, and the ones still buffered at SIGTERM
/// are written before it exits.
#[test]
fn stdout_lines_arrive_while_running_and_none_are_lost_at_sigterm() {
    let port = free_port();
    let mut child = spawn_handler(port, &[("LOG_FORMAT", "text")], Stdio::null());
    let mut stdout = child.stdout.take().expect("stdout");
    let (sender, lines) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&chunk[..n]));
            while let Some(end) = text.find('\n') {
                let line: String = text.drain(..=end).collect();
                let _ = sender.send(line);
            }
        }
    });
    wait_ready(port);
    // `maxItemCount=0` is refused (400) before Redis or Cosmos are asked: one invocation line
    // each, at once.
    let invocations = |count: usize| {
        for _ in 0..count {
            let status = reqwest::status_of(port, "/api/query?maxItemCount=0");
            assert_eq!(status, Some(400));
        }
    };
    let is_invocation = |line: &str| line.contains("invocation") && line.contains("status=400");
    invocations(20);
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen < 20 {
        let wait = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(wait) {
            Ok(line) if is_invocation(&line) => seen += 1,
            Ok(_) => {}
            Err(e) => panic!("{seen} of 20 invocation lines on stdout while running ({e})"),
        }
    }
    // The next ones are answered, then SIGTERM at once: still buffered, written on the way out.
    invocations(30);
    sigterm_exits_cleanly(&mut child);
    reader.join().expect("reader");
    let after: Vec<String> = lines.try_iter().filter(|l| is_invocation(l)).collect();
    assert_eq!(after.len(), 30, "invocation lines after SIGTERM: {after:?}");
}

/// Tiny blocking HTTP GETs without pulling in a blocking client.
mod reqwest {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    fn get(port: u16, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    }

    /// The body of `GET /`, which must be a 200.
    pub fn blocking_get(port: u16) -> Option<String> {
        let response = get(port, "/")?;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response.split("\r\n\r\n").nth(1).map(str::to_string)
    }

    /// The status code of `GET path`.
    pub fn status_of(port: u16, path: &str) -> Option<u16> {
        get(port, path)?.get(9..12)?.parse().ok()
    }
}
