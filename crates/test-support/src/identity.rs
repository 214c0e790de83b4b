//! A local managed-identity endpoint: what Azure Functions on Linux (App Service) provides in
//! `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`, the protocol `azure_identity`'s
//! `ManagedIdentityCredential` speaks
//! (<https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference>):
//!
//! `GET <endpoint>?api-version=2019-08-01&resource=<resource>[&client_id=<id>]` with header
//! `X-IDENTITY-HEADER: <IDENTITY_HEADER>` → `200 {"access_token", "expires_on" (unix seconds, as
//! a string), "resource", "token_type": "Bearer", "client_id"}`.
//!
//! Tokens are opaque random strings with a short, configurable lifetime. On command the token
//! listener refuses (closes each connection at once), fails (HTTP 500), or hangs (holds each
//! request until the mode changes, then answers it as the new mode says). A second listener,
//! never affected by the mode, answers `GET /verify?token=..&resource=..` (200 while that token
//! is valid for that resource, else 401) for the local Cosmos server, and every issued token is
//! broadcast to in-process subscribers (the Redis ACL rotation).
//!
//! `GET <base>/cli?scope=<scope>` on the token listener answers as `az account get-access-token
//! -o json` prints (`{"accessToken", "expires_on" (a number), "tokenType"}`) for the stand-in
//! `az` script ([`IdentityEndpoint::install_az_stub`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};

/// What the token listener does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Issue tokens.
    Serve,
    /// Close every connection at once (as a stopped endpoint: a transport error).
    Refuse,
    /// Answer HTTP 500.
    Fail,
    /// Hold every request until the mode changes.
    Hang,
}

/// One issued token.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The token text.
    pub token: String,
    /// The resource it is for (`https://redis.azure.com`, `https://cosmos.azure.com`).
    pub resource: String,
    /// Expiry, the second the response stated (`expires_on`).
    pub expires_at: SystemTime,
}

impl Issued {
    /// Whether the token has not expired yet.
    pub fn is_valid(&self) -> bool {
        SystemTime::now() < self.expires_at
    }
}

struct State {
    header: String,
    mode: watch::Sender<Mode>,
    lifetime: Mutex<Duration>,
    issued: Mutex<HashMap<String, Issued>>,
    broadcast: broadcast::Sender<Issued>,
    /// Token requests answered with a token, by resource.
    served: Mutex<HashMap<String, u64>>,
    /// Requests that got no token (refused, failed, or still hanging when the mode changed).
    turned_away: AtomicU64,
    next: AtomicU64,
    /// Awaited before a token is handed out (so a Redis ACL knows it before any client).
    hook: Mutex<Option<IssueHook>>,
}

/// See [`IdentityEndpoint::set_issue_hook`].
pub type IssueHook = Arc<dyn Fn(Issued) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// A running endpoint on 127.0.0.1. Stops when dropped.
pub struct IdentityEndpoint {
    /// Port of the token listener.
    pub port: u16,
    /// Port of the verification listener.
    pub verify_port: u16,
    state: Arc<State>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for IdentityEndpoint {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl IdentityEndpoint {
    /// Starts serving tokens that live `lifetime` (rounded up to whole seconds, as
    /// `expires_on` carries seconds).
    pub async fn start(lifetime: Duration) -> Self {
        let token_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind MI");
        let verify_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind verify");
        let port = token_listener.local_addr().expect("addr").port();
        let verify_port = verify_listener.local_addr().expect("addr").port();
        let state = Arc::new(State {
            header: format!("mi-header-{:016x}", rand::random::<u64>()),
            mode: watch::Sender::new(Mode::Serve),
            lifetime: Mutex::new(lifetime),
            issued: Mutex::new(HashMap::new()),
            broadcast: broadcast::channel(1024).0,
            served: Mutex::new(HashMap::new()),
            turned_away: AtomicU64::new(0),
            next: AtomicU64::new(1),
            hook: Mutex::new(None),
        });
        let tokens = tokio::spawn(accept_loop(token_listener, state.clone(), false));
        let verify = tokio::spawn(accept_loop(verify_listener, state.clone(), true));
        Self {
            port,
            verify_port,
            state,
            tasks: vec![tokens, verify],
        }
    }

    /// `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` for the handler.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "IDENTITY_ENDPOINT".into(),
                format!("http://127.0.0.1:{}/msi/token", self.port),
            ),
            ("IDENTITY_HEADER".into(), self.state.header.clone()),
        ]
    }

    /// The verification URL the local Cosmos server checks tokens with.
    pub fn verify_url(&self) -> String {
        format!("http://127.0.0.1:{}/verify", self.verify_port)
    }

    /// Changes what the token listener does; held (hanging) requests follow the new mode.
    pub fn set_mode(&self, mode: Mode) {
        self.state.mode.send_replace(mode);
    }

    /// Lifetime of tokens issued from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        *self.state.lifetime.lock().expect("lock") = lifetime;
    }

    /// Runs `hook` on every issued token before the response leaves (as Azure, where a token
    /// is valid everywhere the moment it is issued).
    pub fn set_issue_hook(&self, hook: IssueHook) {
        *self.state.hook.lock().expect("lock") = Some(hook);
    }

    /// Every token issued from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Issued> {
        self.state.broadcast.subscribe()
    }

    /// Tokens issued so far for `resource` (e.g. `https://redis.azure.com`).
    pub fn issued_count(&self, resource: &str) -> u64 {
        self.state
            .served
            .lock()
            .expect("lock")
            .get(resource)
            .copied()
            .unwrap_or(0)
    }

    /// Every token issued so far (to check that none leaks into logs or answers).
    pub fn all_tokens(&self) -> Vec<String> {
        self.state
            .issued
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Token requests that got no token.
    pub fn turned_away(&self) -> u64 {
        self.state.turned_away.load(Ordering::Relaxed)
    }

    /// Writes an executable `az` into `dir` that answers `az account get-access-token -o json
    /// --scope <scope>` from this endpoint, as the Azure CLI would after `az login`. Put `dir`
    /// first on the handler's `PATH`.
    pub fn install_az_stub(&self, dir: &std::path::Path) {
        use std::os::unix::fs::PermissionsExt;
        // Node, not curl: node is already a test requirement (the Cosmos server).
        let script = format!(
            r#"#!/bin/sh
# Stand-in for the Azure CLI (test support): az account get-access-token -o json --scope S
exec node -e '
const args = process.argv.slice(1);
const i = args.indexOf("--scope");
const scope = i >= 0 ? args[i + 1] : "";
const url = "http://127.0.0.1:{port}/cli?scope=" + encodeURIComponent(scope);
require("http").get(url, res => {{
  let body = "";
  res.on("data", c => (body += c)).on("end", () => {{
    if (res.statusCode !== 200) {{ process.stderr.write("ERROR: token request failed\n"); process.exit(1); }}
    process.stdout.write(body);
  }});
}}).on("error", e => {{ process.stderr.write("ERROR: " + e.message + "\n"); process.exit(1); }});
' -- "$@"
"#,
            port = self.port
        );
        std::fs::create_dir_all(dir).expect("az stub dir");
        let path = dir.join("az");
        std::fs::write(&path, script).expect("write az stub");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod az stub");
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, verify: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            if verify {
                let _ = serve_verify(stream, &state).await;
            } else {
                let _ = serve_token(stream, &state).await;
            }
        });
    }
}

/// The request line's target and the headers (lower-case names), or `None` when the client
/// closed first.
async fn read_head(stream: &mut TcpStream) -> Option<(String, HashMap<String, String>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?.to_string();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((target, headers))
}

async fn respond(stream: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn query(target: &str) -> (String, HashMap<String, String>) {
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let params = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    (path.to_string(), params)
}

async fn serve_verify(mut stream: TcpStream, state: &State) -> std::io::Result<()> {
    let Some((target, _)) = read_head(&mut stream).await else {
        return Ok(());
    };
    let (path, params) = query(&target);
    if path != "/verify" {
        return respond(&mut stream, 404, "{}").await;
    }
    let valid = params.get("token").is_some_and(|t| {
        state.issued.lock().expect("lock").get(t).is_some_and(|i| {
            i.is_valid() && params.get("resource").is_none_or(|r| r == &i.resource)
        })
    });
    if valid {
        respond(&mut stream, 200, "{\"valid\":true}").await
    } else {
        respond(&mut stream, 401, "{\"valid\":false}").await
    }
}

async fn serve_token(mut stream: TcpStream, state: &State) -> std::io::Result<()> {
    if *state.mode.borrow() == Mode::Refuse {
        state.turned_away.fetch_add(1, Ordering::Relaxed);
        return Ok(()); // dropped: the client sees the connection closed
    }
    let Some((target, headers)) = read_head(&mut stream).await else {
        return Ok(());
    };
    // Hang: hold the request until the mode changes, then follow the new mode.
    let mut mode_rx = state.mode.subscribe();
    loop {
        let mode = *mode_rx.borrow_and_update();
        match mode {
            Mode::Serve => break,
            Mode::Refuse => {
                state.turned_away.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Mode::Fail => {
                state.turned_away.fetch_add(1, Ordering::Relaxed);
                return respond(
                    &mut stream,
                    500,
                    "{\"error\":\"unavailable\",\"error_description\":\"injected failure\"}",
                )
                .await;
            }
            Mode::Hang => {
                if mode_rx.changed().await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    let (path, params) = query(&target);
    let (resource, cli) = match path.as_str() {
        "/msi/token" => {
            if headers.get("x-identity-header") != Some(&state.header) {
                return respond(
                    &mut stream,
                    401,
                    "{\"error\":\"missing or wrong X-IDENTITY-HEADER\"}",
                )
                .await;
            }
            if params.get("api-version").map(String::as_str) != Some("2019-08-01") {
                return respond(&mut stream, 400, "{\"error\":\"unsupported api-version\"}").await;
            }
            match params.get("resource") {
                Some(r) => (r.trim_end_matches('/').to_string(), false),
                None => return respond(&mut stream, 400, "{\"error\":\"no resource\"}").await,
            }
        }
        "/cli" => match params.get("scope") {
            Some(s) => (
                s.trim_end_matches("/.default")
                    .trim_end_matches('/')
                    .to_string(),
                true,
            ),
            None => return respond(&mut stream, 400, "{\"error\":\"no scope\"}").await,
        },
        _ => return respond(&mut stream, 404, "{}").await,
    };
    let lifetime = *state.lifetime.lock().expect("lock");
    let expires_on = (unix_now() + lifetime.as_secs_f64()).ceil() as u64;
    let n = state.next.fetch_add(1, Ordering::Relaxed);
    let token = format!("eyJtest{n:06}x{:032x}", rand::random::<u128>());
    let issued = Issued {
        token: token.clone(),
        resource: resource.clone(),
        expires_at: UNIX_EPOCH + Duration::from_secs(expires_on),
    };
    state
        .issued
        .lock()
        .expect("lock")
        .insert(token.clone(), issued.clone());
    *state
        .served
        .lock()
        .expect("lock")
        .entry(resource.clone())
        .or_insert(0) += 1;
    let hook = state.hook.lock().expect("lock").clone();
    if let Some(hook) = hook {
        hook(issued.clone()).await;
    }
    let _ = state.broadcast.send(issued);
    let body = if cli {
        serde_json::json!({
            "accessToken": token,
            "expires_on": expires_on,
            "tokenType": "Bearer",
        })
    } else {
        serde_json::json!({
            "access_token": token,
            "expires_on": expires_on.to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": params.get("client_id").cloned().unwrap_or_else(|| "system-assigned".into()),
        })
    };
    respond(&mut stream, 200, &body.to_string()).await
}
