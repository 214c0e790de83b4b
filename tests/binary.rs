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

#[test]
fn ready_before_redis_and_cosmos_then_graceful_sigterm() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_handler"))
        .env_clear()
        .envs(unreachable_services())
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start handler");
    // Poll GET / as the host does (protocol §3.3), within the host's 30 s budget.
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match reqwest::blocking_get(port) {
            Some(body) => break body,
            None => {
                assert!(Instant::now() < deadline, "no readiness answer");
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    };
    assert_eq!(body, "ready");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("handler exits");
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
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
    for (name, value, expected) in cases {
        let mut env = unreachable_services();
        env.retain(|(k, _)| *k != name);
        if let Some(v) = value {
            env.push((name, v));
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_handler"))
            .env_clear()
            .envs(env)
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
    }
}

/// A tiny blocking HTTP GET of `/` without pulling in a blocking client.
mod reqwest {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    pub fn blocking_get(port: u16) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response.split("\r\n\r\n").nth(1).map(str::to_string)
    }
}
