//! A client request and the invocation context built from it.

use crate::host_config::WireMode;
use crate::time::utc_now_iso8601;
use axum::body::Bytes;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};

/// A client request as the host sees it (input of the pure translation functions).
#[derive(Clone, Debug)]
pub struct ClientRequest {
    /// Request method.
    pub method: Method,
    /// `http` (the emulator has no TLS).
    pub scheme: String,
    /// `Host` header value, e.g. `127.0.0.1:7071`.
    pub host: String,
    /// Raw path as received, e.g. `/api/query` (may be empty, like `http://localhost`).
    pub path: String,
    /// Raw query string without `?`, as received.
    pub query: Option<String>,
    /// All request headers.
    pub headers: HeaderMap,
    /// Body bytes; only read when `Content-Length` > 0 (§4.3, §6).
    pub body: Bytes,
}

impl ClientRequest {
    /// `Content-Length` header as a number.
    pub fn content_length(&self) -> Option<u64> {
        self.headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    }

    /// The host reads/forwards a body only when `Content-Length > 0` (chunked uploads arrive
    /// without a body).
    pub fn has_body(&self) -> bool {
        self.content_length().is_some_and(|n| n > 0)
    }

    /// ASP.NET `QueryCollection`: decoded (`+` = space), keys case-insensitive (first spelling
    /// kept), repeated keys joined with `,` (`StringValues.ToString()`), first-seen order.
    pub fn query_collection(&self) -> Vec<(String, String)> {
        query_collection(self.query.as_deref())
    }

    pub(crate) fn header_string(&self, name: &HeaderName) -> Option<String> {
        let values: Vec<String> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if values.is_empty() {
            None
        } else {
            Some(values.join(","))
        }
    }
}

fn query_collection(raw: Option<&str>) -> Vec<(String, String)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let Some(raw) = raw else {
        return Vec::new();
    };
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        if k.is_empty() && v.is_empty() {
            continue;
        }
        match out
            .iter_mut()
            .find(|(name, _)| name.eq_ignore_ascii_case(&k))
        {
            Some((_, values)) => values.push(v.into_owned()),
            None => out.push((k.into_owned(), vec![v.into_owned()])),
        }
    }
    out.into_iter().map(|(k, v)| (k, v.join(","))).collect()
}

/// Per-invocation values (fresh for every client call; fixed in tests).
#[derive(Clone, Debug)]
pub struct InvocationContext {
    /// `X-Azure-Functions-InvocationId`, a GUID.
    pub invocation_id: String,
    /// W3C `traceparent` sent to the handler (`00-<32 hex>-<16 hex>-00`).
    pub traceparent: String,
    /// `Metadata.sys.UtcNow`, ISO-8601 UTC with up to 7 fraction digits.
    pub utc_now: String,
    /// `Metadata.sys.RandGuid`.
    pub rand_guid: String,
}

impl InvocationContext {
    /// Fresh ids. When the client sent a valid `traceparent`, its trace id is kept and a new
    /// span id is generated (what .NET's diagnostics handler does); otherwise a new trace starts.
    pub fn new(client_traceparent: Option<&str>) -> InvocationContext {
        let span = uuid::Uuid::new_v4().simple().to_string();
        let trace_id = client_traceparent
            .and_then(|tp| {
                let parts: Vec<&str> = tp.trim().split('-').collect();
                (parts.len() == 4
                    && parts[1].len() == 32
                    && parts[1].chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| parts[1].to_ascii_lowercase())
            })
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        InvocationContext {
            invocation_id: uuid::Uuid::new_v4().to_string(),
            traceparent: format!("00-{trace_id}-{}-00", &span[..16]),
            utc_now: utc_now_iso8601(),
            rand_guid: uuid::Uuid::new_v4().to_string(),
        }
    }
}

/// A request the emulator sends to the handler (output of the pure builders).
#[derive(Clone, Debug)]
pub struct HandlerRequest {
    /// Method.
    pub method: Method,
    /// Handler port (`127.0.0.1:{port}`).
    pub port: u16,
    /// Origin-form target, e.g. `/query` or `/api/query?code=k`.
    pub path_and_query: String,
    /// Headers to send (the emulator's HTTP client writes names in Title-Case).
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
    /// `true` = send with `Transfer-Encoding: chunked` and no `Content-Length` (payload mode).
    pub chunked: bool,
}

impl HandlerRequest {
    /// Absolute URL, `http://127.0.0.1:{port}{path_and_query}`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.path_and_query)
    }
}

/// A response received from the handler.
#[derive(Clone, Debug)]
pub struct HandlerResponse {
    /// Status code.
    pub status: StatusCode,
    /// Non-canonical reason phrase, if the handler sent one.
    pub reason: Option<String>,
    /// Response headers.
    pub headers: HeaderMap,
    /// Full body (the host buffers it).
    pub body: Bytes,
}

/// The response the emulator returns to the client.
#[derive(Clone, Debug)]
pub struct ClientResponse {
    /// Status code.
    pub status: StatusCode,
    /// Reason phrase to send, if not the canonical one.
    pub reason: Option<String>,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl ClientResponse {
    /// A failed invocation as the client sees it: `500` with an empty body (§5.6; the exact
    /// host error body is not verified).
    pub fn invocation_failed() -> ClientResponse {
        ClientResponse {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            reason: None,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// An empty response with `status`.
    pub fn empty(status: StatusCode) -> ClientResponse {
        ClientResponse {
            status,
            reason: None,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }
}

/// The `GET /` readiness probe (§3.3, case readiness-probe).
pub fn readiness_probe_request(port: u16) -> HandlerRequest {
    let mut headers = HeaderMap::new();
    if let Ok(host) = HeaderValue::from_str(&format!("127.0.0.1:{port}")) {
        headers.insert(header::HOST, host);
    }
    HandlerRequest {
        method: Method::GET,
        port,
        path_and_query: "/".to_string(),
        headers,
        body: Bytes::new(),
        chunked: false,
    }
}

/// The path value the host calls the handler on (`DefaultHttpWorkerService`, case handler-path-selection):
/// payload mode → the function name (no leading slash, as `BuildAndGetUri` receives it);
/// forwarding → the incoming absolute path (`/` when empty).
pub fn handler_path_value(mode: WireMode, function_name: &str, incoming_path: &str) -> String {
    match mode {
        WireMode::Payload => function_name.to_string(),
        WireMode::Forwarding => {
            if incoming_path.is_empty() {
                "/".to_string()
            } else {
                incoming_path.to_string()
            }
        }
    }
}

/// `BuildAndGetUri`: `http://127.0.0.1:{port}/` + path value (case handler-path-selection `uri_examples`).
pub fn handler_uri(port: u16, path_value: &str) -> String {
    format!(
        "http://127.0.0.1:{port}/{}",
        path_value.trim_start_matches('/')
    )
}
