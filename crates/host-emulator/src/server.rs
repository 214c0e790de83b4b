//! The emulator itself: the client-facing server that dispatches to the handler per function.

use crate::client::{SendError, send_to_handler};
use crate::consts::{MAX_REQUEST_BODY_BYTES, SHUTDOWN_GRACE};
use crate::error::{EmulatorError, config_err};
use crate::forwarding::{build_forward_request, forward_response_to_client};
use crate::functions::{FunctionSpec, load_functions};
use crate::host_config::{WireMode, parse_host_json};
use crate::payload_request::{build_invocation_payload, build_invocation_request};
use crate::payload_response::payload_outcome;
use crate::process::{HandlerProcess, free_loopback_port, log, resolve_command, wait_until_ready};
use crate::request::{ClientRequest, ClientResponse, InvocationContext};
use crate::routing::RouteTable;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{self};
use axum::response::Response;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How to start a [`HostEmulator`].
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Folder holding `host.json` and `<function>/function.json` (the script root).
    pub app_root: PathBuf,
    /// Overrides `customHandler.description.defaultExecutablePath`; tests pass
    /// `env!("CARGO_BIN_EXE_handler")`.
    pub executable: Option<PathBuf>,
    /// Where clients call, e.g. `127.0.0.1:7071`, or `127.0.0.1:0` for a free port.
    pub listen: SocketAddr,
    /// App settings: extra environment for the handler process, and the source of
    /// `AzureFunctionsJobHost__...` overrides of `host.json` (these win over the process
    /// environment).
    pub env: Vec<(String, String)>,
}

impl EmulatorConfig {
    /// Config for `app_root` listening on `127.0.0.1:0`, no override, no extra settings.
    pub fn new(app_root: impl Into<PathBuf>) -> EmulatorConfig {
        EmulatorConfig {
            app_root: app_root.into(),
            executable: None,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            env: Vec::new(),
        }
    }
}

struct Shared {
    functions: Vec<FunctionSpec>,
    routes: RouteTable,
    enable_forwarding: bool,
    handler_port: u16,
    function_timeout: Option<Duration>,
    local_addr: SocketAddr,
    process: Arc<HandlerProcess>,
}

/// A running Functions host emulator: a handler process plus an HTTP front end.
///
/// Behaviour and deliberate choices (sections of docs/custom-handler-protocol.md in brackets):
///
/// * Routing [§8]: `/{routePrefix}/{route or functionName}`, literals case-insensitive. A path
///   whose route exists but whose `methods` exclude the request method gets **404**, not 405:
///   the host's router treats the method as a route constraint, so the route simply does not
///   match. Unknown paths also get 404 (empty body).
/// * Auth: `authLevel` is not enforced (like Core Tools locally); `code` and
///   `x-functions-key` are passed through unchanged. `Identities` see [`identities_for`].
/// * Failed invocations [§5.6] get `500` with an empty body; the reason is logged.
/// * Process exit [§3.4]: logged with the last stderr lines; the emulator does **not** restart
///   the handler — every later call gets 500.
/// * Shutdown: SIGTERM, up to [`SHUTDOWN_GRACE`], then SIGKILL. Dropping the emulator without
///   `shutdown` SIGKILLs the handler.
///
/// Known gaps versus the real host: no proxying mode (§7), no legacy `httpWorker` mode, no
/// non-HTTP triggers or output bindings other than `cosmosDBTrigger` (emulated by
/// `change_feed.rs`, with its function's retry policy; other values are logged and dropped),
/// no retry policies for other functions (§4.5), no restart after exit or function timeout, payload-mode redirects from the
/// handler are not followed (the host's HttpClient would follow them), header names reach the
/// handler Title-Cased (Kestrel keeps the client's spelling for non-standard headers), one TCP
/// connection per call (no pooling), JSON request-body properties are not added to `Metadata`,
/// `Url` is always `http://`, the 500 body of a failed invocation is empty.
///
/// Not verified on a live host: forwarded requests keep the client's `Host` header
/// and gain a `traceparent`; `res` text bodies default to `text/plain; charset=utf-8`; an
/// HTTP-triggered function without an http output answers 204.
pub struct HostEmulator {
    base_url: String,
    local_addr: SocketAddr,
    mode: WireMode,
    route_prefix: String,
    shared: Arc<Shared>,
    server_stop: Option<oneshot::Sender<()>>,
    server_task: Option<tokio::task::JoinHandle<()>>,
    /// The cosmosDBTrigger watchers (`change_feed.rs`).
    change_feeds: crate::change_feed::ChangeFeeds,
}

impl HostEmulator {
    /// Reads the configuration, binds `cfg.listen`, starts the handler, waits for readiness
    /// (§3.3) and starts serving. Fails (after killing the handler) on configuration errors, a
    /// handler that exits early, or no readiness within `initializationTimeout` (30 s).
    pub async fn start(cfg: EmulatorConfig) -> Result<HostEmulator, EmulatorError> {
        let app_root = std::path::absolute(&cfg.app_root).map_err(|source| EmulatorError::Io {
            context: format!("resolving app root {}", cfg.app_root.display()),
            source,
        })?;
        let mut settings: Vec<(String, String)> = std::env::vars().collect();
        settings.extend(cfg.env.iter().cloned());

        let host_json_path = app_root.join("host.json");
        let host_text =
            std::fs::read_to_string(&host_json_path).map_err(|source| EmulatorError::Io {
                context: format!("reading {}", host_json_path.display()),
                source,
            })?;
        let host = parse_host_json(&host_text, &settings)?;
        for warning in &host.warnings {
            log(&format!("warning: {warning}"));
        }
        let functions = load_functions(&app_root)?;
        if functions.is_empty() {
            return Err(config_err(format!(
                "no <function>/function.json found under {}",
                app_root.display()
            )));
        }
        for f in &functions {
            // cosmosDBTrigger functions are emulated by `change_feed.rs`.
            let change_feed = f
                .bindings
                .iter()
                .any(|b| b.kind.eq_ignore_ascii_case("cosmosDBTrigger"));
            if f.http_trigger.is_none() && !change_feed {
                log(&format!(
                    "function '{}' has no httpTrigger; non-HTTP triggers are not emulated",
                    f.name
                ));
            }
        }
        let routes = RouteTable::new(&functions, &host.route_prefix);
        let (program, args, working_dir) =
            resolve_command(&host, &app_root, cfg.executable.as_deref(), &settings)?;

        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| EmulatorError::Io {
                context: format!("binding the emulator to {}", cfg.listen),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| EmulatorError::Io {
            context: "reading the emulator address".to_string(),
            source,
        })?;

        let handler_port = match host.port {
            Some(port) => {
                std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(|e| {
                    config_err(format!(
                        "Unable to bind to port {port} specified in configuration: {e}"
                    ))
                })?;
                log(&format!(
                    "Using port {port} specified via configuration for custom handler."
                ));
                port
            }
            None => free_loopback_port()?,
        };
        let worker_id = uuid::Uuid::new_v4().to_string();
        let port_text = handler_port.to_string();
        let mut command = Command::new(&program);
        command
            .args(&args)
            .current_dir(&working_dir)
            .envs(cfg.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", &port_text)
            .env("FUNCTIONS_HTTPWORKER_PORT", &port_text)
            .env("FUNCTIONS_CUSTOMHANDLER_WORKER_ID", &worker_id)
            .env("FUNCTIONS_HTTPWORKER_ID", &worker_id)
            .env("FUNCTIONS_APP_ROOT_PATH", &app_root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        log(&format!(
            "starting handler: {} {:?} (cwd {}, port {handler_port}, mode {})",
            program.display(),
            args,
            working_dir.display(),
            host.mode()
        ));
        let child = command.spawn().map_err(|source| EmulatorError::Spawn {
            program: program.clone(),
            source,
        })?;
        let process = HandlerProcess::adopt(child);

        if let Err(e) = wait_until_ready(handler_port, host.initialization_timeout, &process).await
        {
            process.kill_now();
            return Err(e);
        }

        // Watch the change feed of every cosmosDBTrigger function.
        let change_feeds = crate::change_feed::start(&app_root, &settings, handler_port);
        let shared = Arc::new(Shared {
            functions,
            routes,
            enable_forwarding: host.enable_forwarding,
            handler_port,
            function_timeout: host.function_timeout,
            local_addr,
            process,
        });
        let router = axum::Router::new()
            .fallback(serve_client)
            .with_state(shared.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server_task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                log(&format!("server error: {e}"));
            }
        });
        let shown_ip = if local_addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            local_addr.ip()
        };
        let emulator = HostEmulator {
            base_url: format!("http://{}", SocketAddr::new(shown_ip, local_addr.port())),
            local_addr,
            mode: host.mode(),
            route_prefix: host.route_prefix.clone(),
            shared,
            server_stop: Some(stop_tx),
            server_task: Some(server_task),
            change_feeds,
        };
        log(&format!(
            "listening on {} (mode {})",
            emulator.base_url, emulator.mode
        ));
        Ok(emulator)
    }

    /// Client base URL, `http://127.0.0.1:<port>` (no trailing slash, no route prefix).
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Address the emulator listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// App-wide mode: `Forwarding` when `enableForwardingHttpRequest` is on (after app-setting
    /// overrides), else `Payload`. Functions that are not HTTP-in + HTTP-out always use the
    /// payload mode ([`HostEmulator::function_mode`]).
    pub fn mode(&self) -> WireMode {
        self.mode
    }

    /// Mode actually used for function `name`, if it exists.
    pub fn function_mode(&self, name: &str) -> Option<WireMode> {
        self.shared
            .functions
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.wire_mode(self.shared.enable_forwarding))
    }

    /// Port the handler listens on (`FUNCTIONS_CUSTOMHANDLER_PORT`).
    pub fn handler_port(&self) -> u16 {
        self.shared.handler_port
    }

    /// Functions loaded from the app root (sorted by name).
    pub fn functions(&self) -> &[FunctionSpec] {
        &self.shared.functions
    }

    /// `extensions.http.routePrefix` in effect (no slashes; may be empty).
    pub fn route_prefix(&self) -> &str {
        &self.route_prefix
    }

    /// Client URL of function `name` (route template text for routes with parameters), e.g.
    /// `http://127.0.0.1:7071/api/query`.
    pub fn function_url(&self, name: &str) -> Option<String> {
        let f = self.shared.functions.iter().find(|f| f.name == name)?;
        f.http_trigger.as_ref()?;
        let mut url = self.base_url.clone();
        if !self.route_prefix.is_empty() {
            url.push('/');
            url.push_str(&self.route_prefix);
        }
        url.push('/');
        url.push_str(&f.route_text());
        Some(url)
    }

    /// The cosmosDBTrigger watchers: their resolved bindings and counters.
    pub fn change_feeds(&self) -> &crate::change_feed::ChangeFeeds {
        &self.change_feeds
    }

    /// Whether the handler process has exited (then every call gets 500).
    pub fn handler_exited(&self) -> bool {
        self.shared.process.exit_status().is_some()
    }

    /// Stops accepting calls and waits (up to 5 s) for in-flight calls, then sends SIGTERM to
    /// the handler and waits up to [`SHUTDOWN_GRACE`] for it to exit (then SIGKILL).
    pub async fn shutdown(mut self) {
        self.change_feeds.stop();
        if let Some(stop) = self.server_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.server_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let process = self.shared.process.clone();
        process.terminate();
        let mut exit_rx = process.exit_rx.clone();
        let exited = matches!(
            tokio::time::timeout(SHUTDOWN_GRACE, exit_rx.wait_for(Option::is_some)).await,
            Ok(Ok(_))
        );
        if !exited {
            log("handler did not exit after SIGTERM; sending SIGKILL");
            process.kill_now();
        }
    }
}

impl Drop for HostEmulator {
    fn drop(&mut self) {
        if let Some(stop) = self.server_stop.take() {
            let _ = stop.send(());
        }
        self.shared.process.kill_now();
    }
}

fn into_axum_response(resp: ClientResponse) -> Response {
    let mut response = Response::new(Body::from(resp.body));
    *response.status_mut() = resp.status;
    *response.headers_mut() = resp.headers;
    if let Some(reason) = resp.reason
        && let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason)
    {
        response.extensions_mut().insert(phrase);
    }
    response
}

async fn serve_client(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let Some((index, route_values)) = shared.routes.find(&shared.functions, &parts.method, &path)
    else {
        log(&format!(
            "no function matches {} {path} -> 404 (a route whose methods exclude the request \
             method does not match)",
            parts.method
        ));
        return into_axum_response(ClientResponse::empty(StatusCode::NOT_FOUND));
    };
    let Some(function) = shared.functions.get(index) else {
        return into_axum_response(ClientResponse::empty(StatusCode::NOT_FOUND));
    };
    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let body = if content_length > 0 {
        match axum::body::to_bytes(body, MAX_REQUEST_BODY_BYTES).await {
            Ok(bytes) => bytes,
            Err(e) => {
                log(&format!("could not read the request body: {e}"));
                return into_axum_response(ClientResponse::empty(StatusCode::PAYLOAD_TOO_LARGE));
            }
        }
    } else {
        Bytes::new()
    };
    let host = parts
        .headers
        .get(header::HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_else(|| shared.local_addr.to_string());
    let client_traceparent = parts
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let client = ClientRequest {
        method: parts.method.clone(),
        scheme: "http".to_string(),
        host,
        path,
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    };
    let ctx = InvocationContext::new(client_traceparent.as_deref());
    let mode = function.wire_mode(shared.enable_forwarding);
    log(&format!(
        "Executing 'Functions.{}' (Reason='{} {}', Id={}, mode {mode})",
        function.name, client.method, client.path, ctx.invocation_id
    ));
    let (response, failure) = if let Some(status) = shared.process.exit_status() {
        (
            ClientResponse::invocation_failed(),
            Some(format!("the handler process has exited ({status})")),
        )
    } else {
        match mode {
            WireMode::Payload => {
                invoke_payload(&shared, function, &client, &route_values, &ctx).await
            }
            WireMode::Forwarding => invoke_forwarding(&shared, &client, &ctx).await,
        }
    };
    match &failure {
        None => log(&format!(
            "Executed 'Functions.{}' (Succeeded, Id={}, Duration={}ms) -> {}",
            function.name,
            ctx.invocation_id,
            started.elapsed().as_millis(),
            response.status.as_u16()
        )),
        Some(reason) => log(&format!(
            "Executed 'Functions.{}' (Failed, Id={}, Duration={}ms): {reason}",
            function.name,
            ctx.invocation_id,
            started.elapsed().as_millis()
        )),
    }
    into_axum_response(response)
}

async fn invoke_payload(
    shared: &Shared,
    function: &FunctionSpec,
    client: &ClientRequest,
    route_values: &[(String, Option<String>)],
    ctx: &InvocationContext,
) -> (ClientResponse, Option<String>) {
    let payload = build_invocation_payload(function, client, route_values, ctx);
    let request = build_invocation_request(shared.handler_port, function, &payload, ctx);
    let handler_timeout = shared.function_timeout;
    match send_to_handler(&request, handler_timeout).await {
        Ok(resp) => {
            let outcome = payload_outcome(function, &resp);
            for line in &outcome.function_logs {
                log(&format!("Functions.{} Information: {line}", function.name));
            }
            for message in &outcome.host_messages {
                log(&format!("Functions.{}: {message}", function.name));
            }
            (outcome.response, outcome.failure)
        }
        Err(e) => (
            ClientResponse::invocation_failed(),
            Some(send_failure_text(shared, &e)),
        ),
    }
}

async fn invoke_forwarding(
    shared: &Shared,
    client: &ClientRequest,
    ctx: &InvocationContext,
) -> (ClientResponse, Option<String>) {
    let request = build_forward_request(shared.handler_port, client, ctx);
    match send_to_handler(&request, shared.function_timeout).await {
        Ok(resp) => (forward_response_to_client(resp), None),
        Err(e) => (
            ClientResponse::invocation_failed(),
            Some(send_failure_text(shared, &e)),
        ),
    }
}

fn send_failure_text(shared: &Shared, error: &SendError) -> String {
    let mut text = match error {
        SendError::Timeout => {
            "Timeout value of functionTimeout exceeded by function (the host would restart the \
             handler; the emulator does not)"
                .to_string()
        }
        other => format!("calling the handler failed: {other}"),
    };
    if let Some(status) = shared.process.exit_status() {
        text.push_str(&format!(" (handler process exited: {status})"));
    }
    text
}
