//! Functions host emulator CLI: runs the custom handler behind an emulated Azure Functions host
//! (a stand-in for `func start`, which cannot be installed here).
//!
//! ```text
//! cargo build --release
//! cargo run --example host_emulator -- --app-root . --port 7071 --executable target/release/handler
//! ```
//!
//! Prints `Functions host emulator: http://127.0.0.1:7071/api/{query,update} (mode: ...)` and
//! `handler: 127.0.0.1:N ...` (the handler's own port) once the handler answered the readiness
//! probe; Ctrl-C or SIGTERM stops the handler (SIGTERM) and
//! exits. The protocol logic lives in `tests/support/host_emulator.rs`.

#[path = "../tests/support/change_feed.rs"]
mod change_feed;
#[path = "../tests/support/host_emulator.rs"]
mod host_emulator;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use host_emulator::{EmulatorConfig, HOST_OVERRIDE_PREFIX, HostEmulator};

const USAGE: &str = "\
usage: cargo run --example host_emulator -- [options]

options:
  --app-root DIR        folder with host.json and <function>/function.json (default: .)
  --port N              client port (default: 7071; 0 = any free port)
  --host IP             listen address (default: 127.0.0.1)
  --executable PATH     handler binary, overrides customHandler.description.defaultExecutablePath
  --env KEY=VALUE       extra app setting for the handler (repeatable)
  --forwarding BOOL     set AzureFunctionsJobHost__customHandler__enableForwardingHttpRequest
  --no-local-settings   do not load <app-root>/local.settings.json Values
  -h, --help            this text

App settings come from local.settings.json `Values` (skipped when already set in the
environment, as `func start` does), then --env.";

struct Args {
    app_root: PathBuf,
    port: u16,
    host: IpAddr,
    executable: Option<PathBuf>,
    env: Vec<(String, String)>,
    forwarding: Option<bool>,
    local_settings: bool,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut args = Args {
        app_root: PathBuf::from("."),
        port: 7071,
        host: IpAddr::V4(Ipv4Addr::LOCALHOST),
        executable: None,
        env: Vec::new(),
        forwarding: None,
        local_settings: true,
    };
    while let Some(flag) = argv.next() {
        let mut value = |name: &str| argv.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--app-root" => args.app_root = PathBuf::from(value("--app-root")?),
            "--port" => {
                let text = value("--port")?;
                args.port = text
                    .parse()
                    .map_err(|_| format!("--port: '{text}' is not a port number"))?;
            }
            "--host" => {
                let text = value("--host")?;
                args.host = text
                    .parse()
                    .map_err(|_| format!("--host: '{text}' is not an IP address"))?;
            }
            "--executable" => args.executable = Some(PathBuf::from(value("--executable")?)),
            "--env" => {
                let text = value("--env")?;
                let (k, v) = text
                    .split_once('=')
                    .ok_or_else(|| format!("--env: '{text}' is not KEY=VALUE"))?;
                args.env.push((k.to_string(), v.to_string()));
            }
            "--forwarding" => {
                let text = value("--forwarding")?;
                args.forwarding = Some(match text.to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("--forwarding: '{text}' is not true/false")),
                });
            }
            "--no-local-settings" => args.local_settings = false,
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(Some(args))
}

/// `local.settings.json` `Values` (string → string), like `func start` (§2.4).
fn local_settings(app_root: &std::path::Path) -> Result<Vec<(String, String)>, String> {
    let path = app_root.join("local.settings.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
    if json.get("IsEncrypted") == Some(&serde_json::Value::Bool(true)) {
        return Err(format!(
            "{} is encrypted (IsEncrypted: true); decrypt it with `func settings decrypt`",
            path.display()
        ));
    }
    let mut out = Vec::new();
    if let Some(values) = json.get("Values").and_then(|v| v.as_object()) {
        for (k, v) in values {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push((k.clone(), v));
        }
    }
    Ok(out)
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut env = Vec::new();
    if args.local_settings {
        match local_settings(&args.app_root) {
            Ok(values) => {
                // Like `func start`: the process environment wins over local.settings.json.
                for (key, value) in values {
                    if std::env::var_os(&key).is_some_and(|v| !v.is_empty()) {
                        eprintln!(
                            "Skipping '{key}' from local settings as it's already defined in \
                             current environment variables."
                        );
                    } else {
                        env.push((key, value));
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    env.extend(args.env);
    if let Some(forwarding) = args.forwarding {
        env.push((
            format!("{HOST_OVERRIDE_PREFIX}customHandler__enableForwardingHttpRequest"),
            forwarding.to_string(),
        ));
    }
    let cfg = EmulatorConfig {
        app_root: args.app_root,
        executable: args.executable,
        listen: SocketAddr::new(args.host, args.port),
        env,
    };
    let emulator = match HostEmulator::start(cfg).await {
        Ok(emulator) => emulator,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let routes: Vec<String> = emulator
        .functions()
        .iter()
        .filter(|f| f.http_trigger.is_some())
        .map(|f| f.route_text())
        .collect();
    let mut url = emulator.base_url();
    if !emulator.route_prefix().is_empty() {
        url.push('/');
        url.push_str(emulator.route_prefix());
    }
    match routes.as_slice() {
        [one] => url.push_str(&format!("/{one}")),
        many => url.push_str(&format!("/{{{}}}", many.join(","))),
    }
    println!("Functions host emulator: {url} (mode: {})", emulator.mode());
    println!(
        "handler: 127.0.0.1:{} (its own port; GET /_diagnostics there)",
        emulator.handler_port()
    );
    wait_for_stop_signal().await;
    eprintln!("[host-emulator] stopping");
    emulator.shutdown().await;
    ExitCode::SUCCESS
}
