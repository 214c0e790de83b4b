//! Azure Functions host emulator for custom handlers (test support, not product code).
//!
//! This module plays the part of the Functions host (what `func start` or Azure runs) for one
//! custom-handler app, so the tests need no Core Tools. It follows
//! `docs/custom-handler-protocol.md` ("§" references below point into it) and is checked
//! against the cases in `tests/protocol/`.
//!
//! What it does (see [`HostEmulator::start`]):
//!
//! * reads `host.json` (`customHandler`, `extensions.http.routePrefix`, `functionTimeout`) and
//!   every `<dir>/function.json` below the app root (§2.1, §2.5);
//! * applies app-setting overrides of the form `AzureFunctionsJobHost__a__b__c=value` (from
//!   [`EmulatorConfig::env`] or the process environment; `EmulatorConfig::env` wins), the way
//!   Azure/.NET configuration layers app settings over `host.json`. Example: run the same files
//!   in both wire modes with
//!   `AzureFunctionsJobHost__customHandler__enableForwardingHttpRequest=true|false`;
//! * starts the handler executable with the host's environment variables (§2.3, §3.1), logs its
//!   console output (§3.2), waits for readiness (§3.3);
//! * serves client calls on `/{routePrefix}/{route or function name}` and translates them into
//!   invocation-payload requests (§4, §5) or forwarded requests (§6), per function (§1).
//!
//! The translation steps are exposed as pure functions ([`build_invocation_payload`],
//! [`build_invocation_request`], [`payload_outcome`], [`build_forward_request`],
//! [`forward_response_to_client`], [`handler_path_value`], [`handler_uri`],
//! [`readiness_probe_request`]) so they can be checked against the cases in `tests/protocol/` without a process.
//!
//! Deliberate choices and known gaps versus the real host are listed on [`HostEmulator`].

#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::{oneshot, watch};

// ---------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------

/// Host version the emulator claims in `User-Agent: Azure-Functions-Host/{v}` and
/// `X-Azure-Functions-HostVersion` (§4.1). The host release docs/custom-handler-protocol.md describes is
/// 4.1037.0; the fourth component is a placeholder.
pub const HOST_VERSION: &str = "4.1037.0.0";

/// Readiness probe interval: `GET /` every 25 ms (§3.3, case readiness-probe).
pub const READINESS_POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Default readiness budget, `customHandler.initializationTimeout` = `00:00:30` (§3.3).
pub const DEFAULT_INITIALIZATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Default `functionTimeout` outside Consumption: 30 minutes (§9).
pub const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Largest client request body the emulator buffers (the host's default
/// `maxRequestBodySize` is 100 MiB). Larger bodies get 413.
pub const MAX_REQUEST_BODY_BYTES: usize = 100 * 1024 * 1024;

/// Prefix of app settings that override `host.json` keys (`__` separates path segments).
pub const HOST_OVERRIDE_PREFIX: &str = "AzureFunctionsJobHost__";

/// How long [`HostEmulator::shutdown`] waits after SIGTERM before sending SIGKILL.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

const AUTH_LEVEL_CLAIM: &str = "http://schemas.microsoft.com/2017/07/functions/claims/authlevel";
const NAME_CLAIM_TYPE: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name";
const ROLE_CLAIM_TYPE: &str = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role";
const XML_STRING_TYPE: &str = "http://www.w3.org/2001/XMLSchema#string";

/// Characters `UrlEncoder.Default` leaves alone when the host rebuilds the query string in
/// forwarding mode (§6): ASCII letters, digits and `-._~`; everything else is `%XX` (UTF-8).
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why the emulator could not start (configuration, process or readiness problems).
#[derive(Debug)]
pub enum EmulatorError {
    /// `host.json` / `function.json` / app settings are invalid or unsupported by the emulator.
    Config(String),
    /// A file-system or socket operation failed; `context` says which.
    Io {
        /// What the emulator was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The handler process could not be started.
    Spawn {
        /// Program that was started (after §2.1 resolution).
        program: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The handler exited before it answered the readiness probe.
    HandlerExited {
        /// Exit status as text, e.g. `exit status: 1`.
        status: String,
        /// Last stderr lines (the host attaches the last 3 to the exit exception, §3.2).
        stderr_tail: Vec<String>,
    },
    /// No HTTP answer on `GET /` within the budget: "Initializing HttpWorker timed out." (§3.3).
    ReadinessTimeout {
        /// Budget that elapsed.
        budget: Duration,
        /// Port that was polled.
        port: u16,
        /// Last stderr lines of the handler.
        stderr_tail: Vec<String>,
    },
}

impl fmt::Display for EmulatorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmulatorError::Config(msg) => write!(f, "configuration error: {msg}"),
            EmulatorError::Io { context, source } => write!(f, "{context}: {source}"),
            EmulatorError::Spawn { program, source } => {
                write!(f, "could not start handler {}: {source}", program.display())
            }
            EmulatorError::HandlerExited {
                status,
                stderr_tail,
            } => write!(
                f,
                "handler exited before it was ready ({status}); last stderr lines: {stderr_tail:?}"
            ),
            EmulatorError::ReadinessTimeout {
                budget,
                port,
                stderr_tail,
            } => write!(
                f,
                "Initializing HttpWorker timed out: no HTTP response on GET http://127.0.0.1:{port}/ \
                 within {budget:?}; last stderr lines: {stderr_tail:?}"
            ),
        }
    }
}

impl std::error::Error for EmulatorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EmulatorError::Io { source, .. } | EmulatorError::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn config_err(msg: impl Into<String>) -> EmulatorError {
    EmulatorError::Config(msg.into())
}

// ---------------------------------------------------------------------------------------------
// Order-preserving JSON (the host's Newtonsoft JObject keeps property order; pretty-printed
// bodies and payload field order should too, and serde_json here is built without
// `preserve_order`).
// ---------------------------------------------------------------------------------------------

/// JSON value that keeps object keys in document order. Duplicate keys keep the first position
/// and the last value (Newtonsoft `JObject` behaviour).
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// any JSON number
    Number(serde_json::Number),
    /// a string
    String(String),
    /// an array
    Array(Vec<Json>),
    /// an object, keys in document order
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses JSON text (UTF-8 bytes).
    pub fn parse(bytes: &[u8]) -> Result<Json, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Builds an object from `(key, value)` pairs.
    pub fn object<K: Into<String>>(entries: Vec<(K, Json)>) -> Json {
        Json::Object(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// Exact-key lookup on an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Case-insensitive lookup on an object (the .NET configuration binder and Newtonsoft's
    /// property matching); when several keys match, the last one wins.
    pub fn get_ci(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => entries
                .iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string content, if this is a JSON string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// Compact JSON text.
    pub fn to_compact_string(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "null".to_string())
    }

    /// Indented JSON text, two spaces, `\n` line breaks (like Newtonsoft `JToken.ToString()` on
    /// Linux).
    pub fn to_pretty_string(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "null".to_string())
    }

    /// Converts to a `serde_json::Value` (key order is lost; handy for comparisons).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Converts from a `serde_json::Value`.
    pub fn from_value(value: &serde_json::Value) -> Json {
        match value {
            serde_json::Value::Null => Json::Null,
            serde_json::Value::Bool(b) => Json::Bool(*b),
            serde_json::Value::Number(n) => Json::Number(n.clone()),
            serde_json::Value::String(s) => Json::String(s.clone()),
            serde_json::Value::Array(items) => {
                Json::Array(items.iter().map(Json::from_value).collect())
            }
            serde_json::Value::Object(map) => Json::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), Json::from_value(v)))
                    .collect(),
            ),
        }
    }

    /// `JsonConvert.SerializeObject(value)` for a primitive: the double encoding the host
    /// applies to `Metadata` primitives (§4.2): `"x"` becomes `"\"x\""`.
    pub fn double_encoded(&self) -> Json {
        Json::String(self.to_compact_string())
    }
}

impl From<&str> for Json {
    fn from(s: &str) -> Json {
        Json::String(s.to_string())
    }
}

impl From<String> for Json {
    fn from(s: String) -> Json {
        Json::String(s)
    }
}

impl From<bool> for Json {
    fn from(b: bool) -> Json {
        Json::Bool(b)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => n.serialize(serializer),
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        struct JsonVisitor;
        impl<'de> Visitor<'de> for JsonVisitor {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
                Json::deserialize(d)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Json, E> {
                Ok(serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number))
            }
            fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                Ok(Json::String(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Json, E> {
                Ok(Json::String(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Json>()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut entries: Vec<(String, Json)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: Json = map.next_value()?;
                    if let Some(slot) = entries.iter_mut().find(|(k, _)| *k == key) {
                        slot.1 = value;
                    } else {
                        entries.push((key, value));
                    }
                }
                Ok(Json::Object(entries))
            }
        }
        deserializer.deserialize_any(JsonVisitor)
    }
}

/// What Newtonsoft produces when it reads a JSON scalar into a .NET `string` (or calls
/// `ToString()` on a boxed primitive): strings as-is, integers in decimal, booleans as
/// `True`/`False`. `Ok(None)` for `null`; objects/arrays are an error (the host throws).
fn dotnet_scalar_string(value: &Json) -> Result<Option<String>, String> {
    match value {
        Json::Null => Ok(None),
        Json::String(s) => Ok(Some(s.clone())),
        Json::Bool(true) => Ok(Some("True".to_string())),
        Json::Bool(false) => Ok(Some("False".to_string())),
        Json::Number(n) => Ok(Some(dotnet_number_string(n))),
        Json::Array(_) | Json::Object(_) => Err(format!(
            "expected a string, found JSON {}",
            value.to_compact_string()
        )),
    }
}

fn dotnet_number_string(n: &serde_json::Number) -> String {
    if n.is_f64()
        && let Some(f) = n.as_f64()
        && f.fract() == 0.0
        && f.abs() < 1e15
    {
        return format!("{}", f as i64);
    }
    n.to_string()
}

// ---------------------------------------------------------------------------------------------
// Configuration: host.json (§2.1)
// ---------------------------------------------------------------------------------------------

/// Wire mode used for a function (§1). Proxying (§7) is not emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireMode {
    /// Invocation payload: `POST /{FunctionName}` with `{Data, Metadata}` (§4, §5).
    Payload,
    /// Forwarding: the client request rebuilt on its original path (§6).
    Forwarding,
}

impl fmt::Display for WireMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireMode::Payload => "payload",
            WireMode::Forwarding => "forwarding",
        })
    }
}

/// The parts of `host.json` the emulator uses, after app-setting overrides (§2.1).
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// `customHandler.description.defaultExecutablePath`, not yet `%VAR%`-expanded; may be
    /// empty when [`EmulatorConfig::executable`] overrides it.
    pub default_executable_path: String,
    /// `description.arguments` (strings; a JSON-array string from an app setting is accepted).
    pub arguments: Vec<String>,
    /// `description.workingDirectory` (empty = app root).
    pub working_directory: String,
    /// `description.workerDirectory` (empty = app root): base for a relative executable.
    pub worker_directory: String,
    /// `description.defaultWorkerPath` (legacy), appended quoted after `arguments`.
    pub default_worker_path: Option<String>,
    /// `description.workerArguments` (legacy), appended after the worker path.
    pub worker_arguments: Vec<String>,
    /// `customHandler.enableForwardingHttpRequest` (default false).
    pub enable_forwarding: bool,
    /// `customHandler.port` (2025+ hosts): fixed handler port instead of a free one.
    pub port: Option<u16>,
    /// `customHandler.initializationTimeout` (TimeSpan text), default 30 s.
    pub initialization_timeout: Duration,
    /// `functionTimeout` (`hh:mm:ss`; `-1` = unbounded → `None`), default 30 min.
    pub function_timeout: Option<Duration>,
    /// `extensions.http.routePrefix` with surrounding `/` trimmed; default `api`, may be empty.
    pub route_prefix: String,
    /// Non-fatal remarks (e.g. both `httpWorker` and `customHandler` present).
    pub warnings: Vec<String>,
}

impl HostConfig {
    /// App-wide wire mode: forwarding when `enableForwardingHttpRequest` is on. Individual
    /// functions that are not "HTTP in + HTTP out" still use the payload mode (§1).
    pub fn mode(&self) -> WireMode {
        if self.enable_forwarding {
            WireMode::Forwarding
        } else {
            WireMode::Payload
        }
    }
}

/// Parses `host.json` text and applies app-setting overrides.
///
/// `app_settings` is a list of environment entries in increasing precedence (process
/// environment first, then [`EmulatorConfig::env`]); entries named
/// `AzureFunctionsJobHost__<section>__<key>...` (prefix matched case-insensitively, `__` or `:`
/// between segments) replace the corresponding `host.json` values, case-insensitively, as string
/// values (the .NET binder converts `"true"`/`"false"` and numbers). An override of
/// `customHandler__description__arguments` may hold a JSON array string (§2.1).
///
/// Errors: invalid JSON; no `customHandler` section (a legacy `httpWorker`-only file is
/// rejected: the emulator does not implement its always-forward-to-`/{FunctionName}` mode,
/// §1/case handler-path-selection); missing `description` ("Missing worker Description."); values of the wrong
/// type; features the emulator does not implement (`enableProxyingHttpRequest: true`,
/// `http.routes`, `configurationProfile`).
pub fn parse_host_json(
    text: &str,
    app_settings: &[(String, String)],
) -> Result<HostConfig, EmulatorError> {
    let mut root = Json::parse(text.as_bytes())
        .map_err(|e| config_err(format!("host.json is not valid JSON: {e}")))?;
    if !matches!(root, Json::Object(_)) {
        return Err(config_err("host.json must contain a JSON object"));
    }
    for (name, value) in app_settings {
        if let Some(path) = override_path(name) {
            apply_override(&mut root, &path, value);
        }
    }

    let mut warnings = Vec::new();
    if root.get_ci("configurationProfile").is_some() {
        return Err(config_err(
            "host.json configurationProfile is not emulated (it turns on proxying mode, §2.1/§7)",
        ));
    }
    let section = match (root.get_ci("customHandler"), root.get_ci("httpWorker")) {
        (Some(ch), Some(_)) => {
            warnings.push(
                "both 'httpWorker' and 'customHandler' sections found; using 'customHandler' \
                 (the host does the same, with a warning)"
                    .to_string(),
            );
            ch.clone()
        }
        (Some(ch), None) => ch.clone(),
        (None, Some(_)) => {
            return Err(config_err(
                "host.json uses the legacy 'httpWorker' section; the emulator only supports \
                 'customHandler' (legacy mode forwards HTTP-only functions to /{FunctionName}, \
                 docs/custom-handler-protocol.md §1) - rename the section to 'customHandler'",
            ));
        }
        (None, None) => {
            return Err(config_err(
                "host.json has no 'customHandler' section; this is not a custom handler app",
            ));
        }
    };
    if !matches!(section, Json::Object(_)) {
        return Err(config_err("host.json 'customHandler' must be an object"));
    }

    let description = match section.get_ci("description") {
        Some(d @ Json::Object(_)) => d.clone(),
        Some(Json::Null) | None => {
            return Err(config_err(
                "Missing worker Description. (customHandler.description is required)",
            ));
        }
        Some(_) => return Err(config_err("customHandler.description must be an object")),
    };
    let str_key = |obj: &Json, key: &str| -> Result<String, EmulatorError> {
        match obj.get_ci(key) {
            None | Some(Json::Null) => Ok(String::new()),
            Some(v) => dotnet_scalar_string(v)
                .map(Option::unwrap_or_default)
                .map_err(|e| config_err(format!("customHandler.description.{key}: {e}"))),
        }
    };
    let default_executable_path = str_key(&description, "defaultExecutablePath")?;
    let arguments = string_list(description.get_ci("arguments"), "arguments")?;
    let working_directory = str_key(&description, "workingDirectory")?;
    let worker_directory = str_key(&description, "workerDirectory")?;
    let default_worker_path =
        Some(str_key(&description, "defaultWorkerPath")?).filter(|s| !s.is_empty());
    let worker_arguments = string_list(description.get_ci("workerArguments"), "workerArguments")?;

    let enable_forwarding = config_bool(
        section.get_ci("enableForwardingHttpRequest"),
        "customHandler.enableForwardingHttpRequest",
    )?;
    if config_bool(
        section.get_ci("enableProxyingHttpRequest"),
        "customHandler.enableProxyingHttpRequest",
    )? {
        return Err(config_err(
            "customHandler.enableProxyingHttpRequest=true (proxying mode, §7) is not emulated",
        ));
    }
    if let Some(http) = section.get_ci("http")
        && http.get_ci("routes").is_some()
    {
        return Err(config_err(
            "customHandler.http.routes (function-less mode, 2025+ hosts) is not emulated",
        ));
    }
    let port = match section.get_ci("port") {
        None | Some(Json::Null) => None,
        Some(v) => {
            let text = dotnet_scalar_string(v)
                .map_err(|e| config_err(format!("customHandler.port: {e}")))?
                .unwrap_or_default();
            let port: u16 = text.trim().parse().map_err(|_| {
                config_err(format!("customHandler.port: '{text}' is not a port number"))
            })?;
            if port == 0 {
                return Err(config_err(
                    "Unable to bind to port 0 specified in configuration (customHandler.port)",
                ));
            }
            Some(port)
        }
    };
    let initialization_timeout = match section.get_ci("initializationTimeout") {
        None | Some(Json::Null) => DEFAULT_INITIALIZATION_TIMEOUT,
        Some(v) => {
            let text = dotnet_scalar_string(v)
                .map_err(|e| config_err(format!("customHandler.initializationTimeout: {e}")))?
                .unwrap_or_default();
            parse_timespan(&text).ok_or_else(|| {
                config_err(format!(
                    "customHandler.initializationTimeout: '{text}' is not a TimeSpan"
                ))
            })?
        }
    };
    let function_timeout = match root.get_ci("functionTimeout") {
        None | Some(Json::Null) => Some(DEFAULT_FUNCTION_TIMEOUT),
        Some(v) => {
            let text = dotnet_scalar_string(v)
                .map_err(|e| config_err(format!("functionTimeout: {e}")))?
                .unwrap_or_default();
            if text.trim() == "-1" {
                None
            } else {
                Some(parse_timespan(&text).ok_or_else(|| {
                    config_err(format!("functionTimeout: '{text}' is not hh:mm:ss or -1"))
                })?)
            }
        }
    };
    let route_prefix = match root
        .get_ci("extensions")
        .and_then(|e| e.get_ci("http"))
        .and_then(|h| h.get_ci("routePrefix"))
    {
        None | Some(Json::Null) => "api".to_string(),
        Some(v) => dotnet_scalar_string(v)
            .map_err(|e| config_err(format!("extensions.http.routePrefix: {e}")))?
            .unwrap_or_default()
            .trim_matches('/')
            .to_string(),
    };

    Ok(HostConfig {
        default_executable_path,
        arguments,
        working_directory,
        worker_directory,
        default_worker_path,
        worker_arguments,
        enable_forwarding,
        port,
        initialization_timeout,
        function_timeout,
        route_prefix,
        warnings,
    })
}

fn override_path(name: &str) -> Option<Vec<String>> {
    let prefix_len = HOST_OVERRIDE_PREFIX.len();
    let head = name.get(..prefix_len)?;
    let alt_prefix = "AzureFunctionsJobHost:";
    let rest = if head.eq_ignore_ascii_case(HOST_OVERRIDE_PREFIX) {
        &name[prefix_len..]
    } else if name
        .get(..alt_prefix.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(alt_prefix))
    {
        &name[alt_prefix.len()..]
    } else {
        return None;
    };
    let segments: Vec<String> = rest
        .replace(':', "__")
        .split("__")
        .map(str::to_string)
        .collect();
    if segments.iter().any(String::is_empty) {
        return None;
    }
    Some(segments)
}

fn apply_override(node: &mut Json, path: &[String], value: &str) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if let Json::Array(items) = node {
        if let Ok(index) = first.parse::<usize>() {
            if items.len() <= index {
                items.resize(index + 1, Json::Null);
            }
            if rest.is_empty() {
                items[index] = Json::String(value.to_string());
            } else {
                if !matches!(items[index], Json::Object(_) | Json::Array(_)) {
                    items[index] = Json::Object(Vec::new());
                }
                apply_override(&mut items[index], rest, value);
            }
            return;
        }
        *node = Json::Object(Vec::new());
    }
    if !matches!(node, Json::Object(_)) {
        *node = Json::Object(Vec::new());
    }
    let Json::Object(entries) = node else {
        return;
    };
    let position = entries
        .iter()
        .rposition(|(k, _)| k.eq_ignore_ascii_case(first));
    let index = match position {
        Some(i) => i,
        None => {
            entries.push((first.clone(), Json::Object(Vec::new())));
            entries.len() - 1
        }
    };
    if rest.is_empty() {
        let is_arguments = first.eq_ignore_ascii_case("arguments")
            || first.eq_ignore_ascii_case("workerArguments");
        let parsed_list = if is_arguments && value.trim_start().starts_with('[') {
            Json::parse(value.as_bytes())
                .ok()
                .filter(|j| matches!(j, Json::Array(_)))
        } else {
            None
        };
        entries[index].1 = parsed_list.unwrap_or_else(|| Json::String(value.to_string()));
    } else {
        apply_override(&mut entries[index].1, rest, value);
    }
}

fn string_list(value: Option<&Json>, key: &str) -> Result<Vec<String>, EmulatorError> {
    match value {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .iter()
            .map(|item| {
                dotnet_scalar_string(item)
                    .map(Option::unwrap_or_default)
                    .map_err(|e| config_err(format!("customHandler.description.{key}: {e}")))
            })
            .collect(),
        Some(Json::String(s)) => Ok(vec![s.clone()]),
        Some(other) => Err(config_err(format!(
            "customHandler.description.{key} must be an array of strings, found {}",
            other.to_compact_string()
        ))),
    }
}

fn config_bool(value: Option<&Json>, key: &str) -> Result<bool, EmulatorError> {
    match value {
        None | Some(Json::Null) => Ok(false),
        Some(Json::Bool(b)) => Ok(*b),
        Some(Json::String(s)) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Some(Json::String(s)) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(config_err(format!(
            "{key}: '{}' is not a valid boolean (true/false)",
            other.to_compact_string()
        ))),
    }
}

/// Parses a .NET `TimeSpan` string: `[d.]hh:mm[:ss[.fffffff]]`, or a bare integer = days.
/// Returns `None` for anything else or negative values.
pub fn parse_timespan(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() || text.starts_with('-') {
        return None;
    }
    if !text.contains(':') {
        let days: u64 = text.parse().ok()?;
        return Some(Duration::from_secs(days * 86_400));
    }
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 {
        return None;
    }
    let (days, hours) = match parts[0].split_once('.') {
        Some((d, h)) => (d.parse::<u64>().ok()?, h.parse::<u64>().ok()?),
        None => (0, parts[0].parse::<u64>().ok()?),
    };
    let minutes: u64 = parts[1].parse().ok()?;
    let seconds: f64 = match parts.get(2) {
        Some(s) => s.parse().ok()?,
        None => 0.0,
    };
    if hours > 23 || minutes > 59 || !(0.0..60.0).contains(&seconds) {
        return None;
    }
    Some(
        Duration::from_secs(days * 86_400 + hours * 3_600 + minutes * 60)
            + Duration::from_secs_f64(seconds),
    )
}

// ---------------------------------------------------------------------------------------------
// Configuration: function.json (§2.5) and routing (§8)
// ---------------------------------------------------------------------------------------------

/// One binding of a `function.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingSpec {
    /// `type`, e.g. `httpTrigger`, `http`, `queue`.
    pub kind: String,
    /// `direction`: `in`, `out` or `inout` (lower-cased).
    pub direction: String,
    /// `name`, e.g. `req`, `res`, `$return`.
    pub name: String,
}

/// The `httpTrigger` binding of a function.
#[derive(Clone, Debug)]
pub struct HttpTriggerSpec {
    /// Binding name: the key under `Data` in the payload (`req`).
    pub name: String,
    /// Allowed methods, upper-case; `None` = all methods.
    pub methods: Option<Vec<String>>,
    /// `route` template text as written (`None` = function name).
    pub route: Option<String>,
    /// `authLevel` (lower-case; default `function`). Not enforced (see [`HostEmulator`]).
    pub auth_level: String,
    template: RouteTemplate,
}

/// A function discovered under the app root (folder name = function name, §2.5).
#[derive(Clone, Debug)]
pub struct FunctionSpec {
    /// Function name (folder name): the payload-mode path `/{name}`.
    pub name: String,
    /// All bindings in file order.
    pub bindings: Vec<BindingSpec>,
    /// The HTTP trigger, if any (functions without one are not callable through the emulator).
    pub http_trigger: Option<HttpTriggerSpec>,
    /// Name of the `http` output binding (`res` or `$return`), if any.
    pub http_output: Option<String>,
}

impl FunctionSpec {
    /// `IsHttpInAndOutFunction` (§1): exactly one input binding (direction ≠ out), of type
    /// `httpTrigger`, and exactly one output binding (direction ≠ in), of type `http`;
    /// types compared case-insensitively.
    pub fn is_http_in_and_out(&self) -> bool {
        let inputs: Vec<&BindingSpec> = self
            .bindings
            .iter()
            .filter(|b| b.direction != "out")
            .collect();
        let outputs: Vec<&BindingSpec> = self
            .bindings
            .iter()
            .filter(|b| b.direction != "in")
            .collect();
        inputs.len() == 1
            && outputs.len() == 1
            && inputs[0].kind.eq_ignore_ascii_case("httpTrigger")
            && outputs[0].kind.eq_ignore_ascii_case("http")
    }

    /// Wire mode for this function given the app's `enableForwardingHttpRequest` (§1).
    pub fn wire_mode(&self, enable_forwarding: bool) -> WireMode {
        if enable_forwarding && self.is_http_in_and_out() {
            WireMode::Forwarding
        } else {
            WireMode::Payload
        }
    }

    /// Client-facing route below the prefix: the `route` template or the function name.
    pub fn route_text(&self) -> String {
        self.http_trigger
            .as_ref()
            .and_then(|t| t.route.clone())
            .unwrap_or_else(|| self.name.clone())
    }

    fn has_return_binding(&self) -> bool {
        self.bindings
            .iter()
            .any(|b| b.direction != "in" && b.name == "$return")
    }
}

/// Parses one `function.json` (property names matched case-insensitively).
pub fn parse_function_json(name: &str, text: &str) -> Result<FunctionSpec, EmulatorError> {
    let root = Json::parse(text.as_bytes())
        .map_err(|e| config_err(format!("{name}/function.json is not valid JSON: {e}")))?;
    let bindings_json = match root.get_ci("bindings") {
        Some(Json::Array(items)) => items.clone(),
        _ => {
            return Err(config_err(format!(
                "{name}/function.json: 'bindings' must be an array"
            )));
        }
    };
    let mut bindings = Vec::new();
    let mut http_trigger = None;
    let mut http_output = None;
    for (i, b) in bindings_json.iter().enumerate() {
        let field = |key: &str| -> Result<String, EmulatorError> {
            match b.get_ci(key) {
                Some(Json::String(s)) => Ok(s.clone()),
                None | Some(Json::Null) => Ok(String::new()),
                Some(other) => Err(config_err(format!(
                    "{name}/function.json bindings[{i}].{key} must be a string, found {}",
                    other.to_compact_string()
                ))),
            }
        };
        let kind = field("type")?;
        let direction = field("direction")?.to_ascii_lowercase();
        let binding_name = field("name")?;
        if kind.is_empty() || binding_name.is_empty() {
            return Err(config_err(format!(
                "{name}/function.json bindings[{i}] needs 'type' and 'name'"
            )));
        }
        if !matches!(direction.as_str(), "in" | "out" | "inout") {
            return Err(config_err(format!(
                "{name}/function.json bindings[{i}].direction must be in/out/inout, found '{direction}'"
            )));
        }
        if kind.eq_ignore_ascii_case("httpTrigger") {
            if http_trigger.is_some() {
                return Err(config_err(format!(
                    "{name}/function.json has more than one httpTrigger"
                )));
            }
            let methods = match b.get_ci("methods") {
                None | Some(Json::Null) => None,
                Some(Json::Array(items)) => {
                    let mut methods = Vec::new();
                    for m in items {
                        let m = m.as_str().ok_or_else(|| {
                            config_err(format!("{name}/function.json: methods must be strings"))
                        })?;
                        methods.push(m.to_ascii_uppercase());
                    }
                    Some(methods).filter(|m: &Vec<String>| !m.is_empty())
                }
                Some(_) => {
                    return Err(config_err(format!(
                        "{name}/function.json: methods must be an array"
                    )));
                }
            };
            let route = Some(field("route")?)
                .map(|r| r.trim_matches('/').to_string())
                .filter(|r| !r.is_empty());
            let auth_level = Some(field("authLevel")?.to_ascii_lowercase())
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "function".to_string());
            let template_text = route.clone().unwrap_or_else(|| name.to_string());
            let template = RouteTemplate::parse(&template_text).map_err(|e| {
                config_err(format!("{name}/function.json route '{template_text}': {e}"))
            })?;
            http_trigger = Some(HttpTriggerSpec {
                name: binding_name.clone(),
                methods,
                route,
                auth_level,
                template,
            });
        } else if kind.eq_ignore_ascii_case("http") && direction != "in" {
            http_output = Some(binding_name.clone());
        }
        bindings.push(BindingSpec {
            kind,
            direction,
            name: binding_name,
        });
    }
    Ok(FunctionSpec {
        name: name.to_string(),
        bindings,
        http_trigger,
        http_output,
    })
}

/// Loads every `<dir>/function.json` directly below `app_root`, sorted by function name.
/// A `function.json` with `"disabled": true` is skipped.
pub fn load_functions(app_root: &Path) -> Result<Vec<FunctionSpec>, EmulatorError> {
    let entries = std::fs::read_dir(app_root).map_err(|source| EmulatorError::Io {
        context: format!("reading app root {}", app_root.display()),
        source,
    })?;
    let mut functions = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| EmulatorError::Io {
            context: format!("reading app root {}", app_root.display()),
            source,
        })?;
        let path = entry.path().join("function.json");
        if !path.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).map_err(|source| EmulatorError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        let disabled = Json::parse(text.as_bytes())
            .ok()
            .and_then(|j| j.get_ci("disabled").cloned())
            .is_some_and(|d| d == Json::Bool(true) || d.as_str() == Some("true"));
        if disabled {
            log(&format!("function '{name}' is disabled; skipped"));
            continue;
        }
        functions.push(parse_function_json(&name, &text)?);
    }
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(functions)
}

#[derive(Clone, Debug)]
enum Segment {
    Literal(String),
    Param {
        name: String,
        optional: bool,
        default: Option<String>,
        constraints: Vec<String>,
        catch_all: bool,
    },
}

/// An ASP.NET-style route template (`products/{id:int?}`, `{*path}`): literal segments,
/// whole-segment parameters with optional `?`, `=default`, `:constraint`s, and a final
/// catch-all. Literals match case-insensitively. Constraints checked: `int`, `long`, `bool`,
/// `guid`, `alpha`, `double`/`float`/`decimal`, `min(n)`, `max(n)`, `range(a,b)`,
/// `minlength(n)`, `maxlength(n)`, `length(n)`; others (e.g. `regex`, `datetime`) accept
/// anything. Segments mixing literals and parameters are rejected at load time.
#[derive(Clone, Debug)]
pub struct RouteTemplate {
    segments: Vec<Segment>,
}

impl RouteTemplate {
    /// Parses a template (no leading `/`).
    pub fn parse(text: &str) -> Result<RouteTemplate, String> {
        let mut segments = Vec::new();
        let text = text.trim_matches('/');
        if text.is_empty() {
            return Ok(RouteTemplate { segments });
        }
        let parts: Vec<&str> = text.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() {
                return Err("empty segment".to_string());
            }
            if part.starts_with('{') && part.ends_with('}') && part.len() >= 2 {
                let mut inner = &part[1..part.len() - 1];
                let catch_all = inner.starts_with('*');
                inner = inner.trim_start_matches('*');
                let (head, default) = match inner.split_once('=') {
                    Some((h, d)) => (h, Some(d.to_string())),
                    None => (inner, None),
                };
                let optional = head.ends_with('?');
                let head = head.trim_end_matches('?');
                let mut pieces = split_constraints(head);
                let name = pieces.remove(0);
                if name.is_empty() {
                    return Err(format!("parameter without a name in '{part}'"));
                }
                if catch_all && i + 1 != parts.len() {
                    return Err("a catch-all parameter must be the last segment".to_string());
                }
                segments.push(Segment::Param {
                    name,
                    optional: optional || catch_all,
                    default,
                    constraints: pieces,
                    catch_all,
                });
            } else if part.contains('{') || part.contains('}') {
                return Err(format!(
                    "segment '{part}' mixes literals and parameters (not supported by the emulator)"
                ));
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        Ok(RouteTemplate { segments })
    }

    fn literal_count(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }

    /// Matches already-split raw path segments; returns route values in template order
    /// (percent-decoded; `None` = unused optional parameter without default → JSON `null`).
    pub fn match_segments(&self, path: &[&str]) -> Option<RouteValues> {
        let mut values = Vec::new();
        let mut pos = 0;
        for seg in &self.segments {
            match seg {
                Segment::Literal(lit) => {
                    let actual = path.get(pos)?;
                    if !percent_decode(actual).eq_ignore_ascii_case(lit) {
                        return None;
                    }
                    pos += 1;
                }
                Segment::Param {
                    name,
                    optional,
                    default,
                    constraints,
                    catch_all,
                } => {
                    let raw = if *catch_all {
                        let rest = path.get(pos..).unwrap_or_default().join("/");
                        pos = path.len();
                        Some(rest).filter(|r| !r.is_empty())
                    } else {
                        let v = path.get(pos).map(|s| s.to_string());
                        if v.is_some() {
                            pos += 1;
                        }
                        v
                    };
                    match raw {
                        Some(raw) => {
                            let value = percent_decode(&raw);
                            if !constraints.iter().all(|c| constraint_ok(c, &value)) {
                                return None;
                            }
                            values.push((name.clone(), Some(value)));
                        }
                        None if *optional || default.is_some() => {
                            values.push((name.clone(), default.clone()));
                        }
                        None => return None,
                    }
                }
            }
        }
        if pos != path.len() {
            return None;
        }
        Some(values)
    }
}

fn split_constraints(head: &str) -> Vec<String> {
    // Split on ':' outside parentheses: "id:int:range(1,5)" → ["id", "int", "range(1,5)"].
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for ch in head.chars() {
        match ch {
            '(' => {
                depth += 1;
                current.push(ch);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                current.push(ch);
            }
            ':' if depth == 0 => out.push(std::mem::take(&mut current)),
            _ => current.push(ch),
        }
    }
    out.push(current);
    out
}

fn constraint_ok(constraint: &str, value: &str) -> bool {
    let lower = constraint.to_ascii_lowercase();
    let (name, arg) = match lower.split_once('(') {
        Some((n, a)) => (n.to_string(), Some(a.trim_end_matches(')').to_string())),
        None => (lower.clone(), None),
    };
    let num = |s: &str| s.trim().parse::<f64>().ok();
    match (name.as_str(), arg) {
        ("int", _) => value.parse::<i32>().is_ok(),
        ("long", _) => value.parse::<i64>().is_ok(),
        ("bool", _) => value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false"),
        ("guid", _) => uuid::Uuid::parse_str(value).is_ok(),
        ("alpha", _) => !value.is_empty() && value.chars().all(|c| c.is_ascii_alphabetic()),
        ("double" | "float" | "decimal", _) => value.parse::<f64>().is_ok(),
        ("min", Some(a)) => {
            matches!((value.parse::<i64>(), num(&a)), (Ok(v), Some(m)) if v as f64 >= m)
        }
        ("max", Some(a)) => {
            matches!((value.parse::<i64>(), num(&a)), (Ok(v), Some(m)) if v as f64 <= m)
        }
        ("range", Some(a)) => {
            let mut it = a.split(',');
            match (
                value.parse::<i64>(),
                it.next().and_then(num),
                it.next().and_then(num),
            ) {
                (Ok(v), Some(lo), Some(hi)) => (v as f64) >= lo && (v as f64) <= hi,
                _ => false,
            }
        }
        ("minlength", Some(a)) => num(&a).is_some_and(|m| value.chars().count() as f64 >= m),
        ("maxlength", Some(a)) => num(&a).is_some_and(|m| value.chars().count() as f64 <= m),
        ("length", Some(a)) => {
            let bounds: Vec<f64> = a.split(',').filter_map(num).collect();
            let len = value.chars().count() as f64;
            match bounds.as_slice() {
                [n] => len == *n,
                [lo, hi] => len >= *lo && len <= *hi,
                _ => true,
            }
        }
        _ => true,
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Route values in template order: `(name, value)`, value `None` = unused optional (`null`).
pub type RouteValues = Vec<(String, Option<String>)>;

/// Routing table: `/{routePrefix}/{route or name}` → function (§8).
#[derive(Clone, Debug)]
pub struct RouteTable {
    entries: Vec<(usize, RouteTemplate)>,
}

impl RouteTable {
    /// Builds the table; functions without an HTTP trigger are not routable. Templates with more
    /// literal segments are tried first (roughly ASP.NET's route precedence).
    pub fn new(functions: &[FunctionSpec], route_prefix: &str) -> RouteTable {
        let prefix: Vec<Segment> = route_prefix
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| Segment::Literal(s.to_string()))
            .collect();
        let mut entries: Vec<(usize, RouteTemplate)> = functions
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let trigger = f.http_trigger.as_ref()?;
                let mut segments = prefix.clone();
                segments.extend(trigger.template.segments.iter().cloned());
                Some((i, RouteTemplate { segments }))
            })
            .collect();
        entries.sort_by_key(|(i, t)| (std::cmp::Reverse(t.literal_count()), *i));
        RouteTable { entries }
    }

    /// Finds the function for `method` + raw `path`. A path that matches a route whose
    /// `methods` exclude `method` does not match (the host's router then answers 404, not 405).
    pub fn find(
        &self,
        functions: &[FunctionSpec],
        method: &Method,
        path: &str,
    ) -> Option<(usize, RouteValues)> {
        let trimmed = path.trim_start_matches('/');
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let segments: Vec<&str> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split('/').collect()
        };
        for (index, template) in &self.entries {
            let Some(trigger) = functions.get(*index).and_then(|f| f.http_trigger.as_ref()) else {
                continue;
            };
            let method_ok = trigger
                .methods
                .as_ref()
                .is_none_or(|m| m.iter().any(|m| m == method.as_str()));
            if !method_ok {
                continue;
            }
            if let Some(values) = template.match_segments(&segments) {
                return Some((*index, values));
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and invocation context
// ---------------------------------------------------------------------------------------------

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

    fn header_string(&self, name: &HeaderName) -> Option<String> {
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

// ---------------------------------------------------------------------------------------------
// Payload mode: request (§4)
// ---------------------------------------------------------------------------------------------

/// Title-cases a header name (`content-type` → `Content-Type`). The server side of the emulator
/// only sees lower-case names; Kestrel reports well-known headers in this canonical form.
pub fn display_header_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// `Data.<trigger>.Identities` (§4.3). Without a key the host serializes the default
/// `ClaimsPrincipal` of the request: one unauthenticated identity (case payload-request-and-result). With a key
/// (`x-functions-key` header, else `code` query parameter) the host adds a `WebJobsAuthLevel`
/// identity; the emulator does not validate keys and reports level `Function` (no `keyid`
/// claim, since key names are unknown). Note: Core Tools' `CliAuthenticationHandler` instead
/// gives *every* local request an `Admin` `WebJobsAuthLevel` identity; the emulator follows the
/// Azure behaviour so that key handling differences show up in tests.
pub fn identities_for(req: &ClientRequest) -> Json {
    let key_header = HeaderName::from_static("x-functions-key");
    let has_key = req.headers.contains_key(&key_header)
        || req
            .query_collection()
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("code") && !v.is_empty());
    let (auth_type, authenticated, claims) = if has_key {
        let claim = Json::object(vec![
            ("Issuer", Json::from("LOCAL AUTHORITY")),
            ("OriginalIssuer", Json::from("LOCAL AUTHORITY")),
            ("Properties", Json::Object(Vec::new())),
            ("Type", Json::from(AUTH_LEVEL_CLAIM)),
            ("Value", Json::from("Function")),
            ("ValueType", Json::from(XML_STRING_TYPE)),
        ]);
        (Json::from("WebJobsAuthLevel"), true, vec![claim])
    } else {
        (Json::Null, false, Vec::new())
    };
    Json::Array(vec![Json::object(vec![
        ("AuthenticationType", auth_type),
        ("IsAuthenticated", Json::Bool(authenticated)),
        ("Actor", Json::Null),
        ("BootstrapContext", Json::Null),
        ("Claims", Json::Array(claims)),
        ("Label", Json::Null),
        ("Name", Json::Null),
        ("NameClaimType", Json::from(NAME_CLAIM_TYPE)),
        ("RoleClaimType", Json::from(ROLE_CLAIM_TYPE)),
    ])])
}

fn is_octet_or_multipart(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return false;
    };
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/octet-stream" || media.contains("multipart")
}

/// Builds the invocation payload `{"Data":{...},"Metadata":{...}}` for an HTTP-triggered
/// function (§4.2–§4.4).
///
/// `Data.<trigger>` = `Url`, `Method`, `Query` (object, repeated keys `,`-joined, includes
/// `code`), `Headers` (name → array of strings), `Params` (route values, unused optionals
/// `null`), `Identities` ([`identities_for`]), `Body` (only when `Content-Length > 0`: base64
/// for `application/octet-stream` and any `multipart` type, else UTF-8 text with invalid bytes
/// replaced by U+FFFD).
///
/// `Metadata` = `Query` (object), `Headers` (name → comma-joined string), `Params`, one
/// double-encoded entry per query parameter except `code` and per route value, and
/// `sys: {MethodName, UtcNow, RandGuid}`. Keys ending in `trigger` are dropped (§4.4).
/// Not emulated: top-level properties of a JSON request body in `Metadata`.
pub fn build_invocation_payload(
    function: &FunctionSpec,
    req: &ClientRequest,
    route_values: &[(String, Option<String>)],
    ctx: &InvocationContext,
) -> Json {
    let trigger_name = function
        .http_trigger
        .as_ref()
        .map_or_else(|| "req".to_string(), |t| t.name.clone());
    let query = req.query_collection();
    let query_json = Json::Object(
        query
            .iter()
            .map(|(k, v)| (k.clone(), Json::from(v.as_str())))
            .collect(),
    );
    let mut headers_arrays = Vec::new();
    let mut headers_joined = Vec::new();
    for name in req.headers.keys() {
        let values: Vec<String> = req
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let display = display_header_name(name.as_str());
        headers_joined.push((display.clone(), Json::from(values.join(","))));
        headers_arrays.push((
            display,
            Json::Array(values.into_iter().map(Json::String).collect()),
        ));
    }
    let params = Json::Object(
        route_values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().map_or(Json::Null, Json::String)))
            .collect(),
    );
    let url = format!(
        "{}://{}{}{}",
        req.scheme,
        req.host,
        req.path,
        req.query
            .as_deref()
            .filter(|q| !q.is_empty())
            .map(|q| format!("?{q}"))
            .unwrap_or_default()
    );
    let mut data_req = vec![
        ("Url".to_string(), Json::from(url)),
        ("Method".to_string(), Json::from(req.method.as_str())),
        ("Query".to_string(), query_json.clone()),
        ("Headers".to_string(), Json::Object(headers_arrays)),
        ("Params".to_string(), params.clone()),
        ("Identities".to_string(), identities_for(req)),
    ];
    if req.has_body() {
        let content_type = req.header_string(&header::CONTENT_TYPE);
        let body = if is_octet_or_multipart(content_type.as_deref()) {
            base64::engine::general_purpose::STANDARD.encode(&req.body)
        } else {
            String::from_utf8_lossy(&req.body).into_owned()
        };
        data_req.push(("Body".to_string(), Json::String(body)));
    }

    let mut metadata: Vec<(String, Json)> = vec![
        ("Query".to_string(), query_json),
        ("Headers".to_string(), Json::Object(headers_joined)),
        ("Params".to_string(), params),
    ];
    let extra = query
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("code"))
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .chain(route_values.iter().cloned());
    for (key, value) in extra {
        let Some(value) = value else { continue };
        if key.to_ascii_lowercase().ends_with("trigger")
            || metadata.iter().any(|(k, _)| k.eq_ignore_ascii_case(&key))
        {
            continue;
        }
        metadata.push((key, Json::String(value).double_encoded()));
    }
    metadata.push((
        "sys".to_string(),
        Json::object(vec![
            ("MethodName", Json::from(function.name.as_str())),
            ("UtcNow", Json::from(ctx.utc_now.as_str())),
            ("RandGuid", Json::from(ctx.rand_guid.as_str())),
        ]),
    ));

    Json::object(vec![
        (
            "Data",
            Json::Object(vec![(trigger_name, Json::Object(data_req))]),
        ),
        ("Metadata", Json::Object(metadata)),
    ])
}

/// Wraps a payload into the handler request of §4.1: `POST /{FunctionName}`,
/// `Content-Type: application/json; charset=utf-8`, chunked (no `Content-Length`),
/// `User-Agent: Azure-Functions-Host/{v}`, `X-Azure-Functions-HostVersion`,
/// `X-Azure-Functions-InvocationId`, `traceparent`, `Host: 127.0.0.1:{port}`.
pub fn build_invocation_request(
    port: u16,
    function: &FunctionSpec,
    payload: &Json,
    ctx: &InvocationContext,
) -> HandlerRequest {
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    put("host", format!("127.0.0.1:{port}"));
    put(
        "content-type",
        "application/json; charset=utf-8".to_string(),
    );
    put("user-agent", format!("Azure-Functions-Host/{HOST_VERSION}"));
    put("x-azure-functions-hostversion", HOST_VERSION.to_string());
    put("x-azure-functions-invocationid", ctx.invocation_id.clone());
    put("traceparent", ctx.traceparent.clone());
    let encoded_name: String = utf8_percent_encode(&function.name, QUERY_COMPONENT).collect();
    HandlerRequest {
        method: Method::POST,
        port,
        path_and_query: format!("/{encoded_name}"),
        headers,
        body: Bytes::from(payload.to_compact_string()),
        chunked: true,
    }
}

// ---------------------------------------------------------------------------------------------
// Payload mode: response (§5)
// ---------------------------------------------------------------------------------------------

/// The handler's invocation result `{Outputs, Logs, ReturnValue}` (§5.1), property names
/// matched case-insensitively, unknown keys ignored.
#[derive(Clone, Debug, PartialEq)]
pub struct InvocationResult {
    /// `Outputs` entries (absent/null → empty).
    pub outputs: Vec<(String, Json)>,
    /// `Logs` lines (absent/null → empty).
    pub logs: Vec<String>,
    /// `ReturnValue` (absent → `Json::Null`).
    pub return_value: Json,
}

/// §5.1: a 2xx status, a JSON media type (`application/json` or `text/json`) and a JSON object
/// body are required; anything else fails the invocation (`Err` holds the reason, in the
/// host's words where known).
pub fn parse_invocation_result(resp: &HandlerResponse) -> Result<InvocationResult, String> {
    if !resp.status.is_success() {
        return Err(format!(
            "Response status code does not indicate success: {} (EnsureSuccessStatusCode)",
            resp.status
        ));
    }
    let content_type = resp
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let media = content_type
        .as_deref()
        .unwrap_or("application/octet-stream")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media != "application/json" && media != "text/json" {
        return Err(format!(
            "UnsupportedMediaTypeException: no formatter reads HttpScriptInvocationResult from \
             content of media type '{}'",
            content_type
                .as_deref()
                .unwrap_or("(none → application/octet-stream)")
        ));
    }
    let sanitized = String::from_utf8_lossy(&resp.body);
    let invalid = |detail: String| {
        format!(
            "Invalid HttpResponseMessage: StatusCode: {}, body: {sanitized} ({detail})",
            resp.status.as_u16()
        )
    };
    let root = Json::parse(&resp.body).map_err(|e| invalid(e.to_string()))?;
    if !matches!(root, Json::Object(_)) {
        return Err(invalid("the body is not a JSON object".to_string()));
    }
    let outputs = match root.get_ci("Outputs") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Object(entries)) => entries.clone(),
        Some(other) => {
            return Err(invalid(format!(
                "Outputs must be an object, found {}",
                other.to_compact_string()
            )));
        }
    };
    let logs = match root.get_ci("Logs") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(items)) => items
            .iter()
            .map(|item| dotnet_scalar_string(item).map(Option::unwrap_or_default))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("Logs: {e}")))?,
        Some(other) => {
            return Err(invalid(format!(
                "Logs must be an array of strings, found {}",
                other.to_compact_string()
            )));
        }
    };
    let return_value = root.get_ci("ReturnValue").cloned().unwrap_or(Json::Null);
    Ok(InvocationResult {
        outputs,
        logs,
        return_value,
    })
}

/// The outcome of a payload-mode invocation as the client sees it.
#[derive(Clone, Debug)]
pub struct PayloadOutcome {
    /// What the client receives (500 when `failure` is set).
    pub response: ClientResponse,
    /// `Logs` lines, logged by the host at Information (§5.2); empty on failure.
    pub function_logs: Vec<String>,
    /// Host-side remarks (duplicate headers skipped, bindings not emulated, ...).
    pub host_messages: Vec<String>,
    /// Why the invocation failed, if it did.
    pub failure: Option<String>,
}

/// §5: handler response → client response for `function`.
pub fn payload_outcome(function: &FunctionSpec, resp: &HandlerResponse) -> PayloadOutcome {
    let failed = |reason: String, messages: Vec<String>| PayloadOutcome {
        response: ClientResponse::invocation_failed(),
        function_logs: Vec::new(),
        host_messages: messages,
        failure: Some(reason),
    };
    let result = match parse_invocation_result(resp) {
        Ok(r) => r,
        Err(reason) => return failed(reason, Vec::new()),
    };
    let mut messages = Vec::new();
    if result.outputs.is_empty() {
        messages.push("Outputs not set".to_string());
    }
    match http_response_from_result(function, &result, &mut messages) {
        Ok(response) => PayloadOutcome {
            response,
            function_logs: result.logs,
            host_messages: messages,
            failure: None,
        },
        Err(reason) => failed(reason, messages),
    }
}

/// §5.3–§5.5: picks the HTTP output out of an invocation result and maps it to a client
/// response. `messages` receives host-side remarks.
pub fn http_response_from_result(
    function: &FunctionSpec,
    result: &InvocationResult,
    messages: &mut Vec<String>,
) -> Result<ClientResponse, String> {
    let mut outputs = result.outputs.clone();
    if !function.has_return_binding() {
        // WorkerFunctionInvoker.HandleOutputDictionary: a JSON-object ReturnValue without a
        // $return binding is copied into Outputs by name (§5.5).
        if let Json::Object(entries) = &result.return_value {
            for (k, v) in entries {
                match outputs.iter_mut().find(|(name, _)| name == k) {
                    Some(slot) => slot.1 = v.clone(),
                    None => outputs.push((k.clone(), v.clone())),
                }
            }
        }
    }
    for binding in &function.bindings {
        if binding.direction == "in" || binding.kind.eq_ignore_ascii_case("http") {
            continue;
        }
        if let Some((_, value)) = outputs.iter().find(|(k, _)| *k == binding.name) {
            messages.push(format!(
                "output binding '{}' (type {}) is not emulated; value dropped: {}",
                binding.name,
                binding.kind,
                value.to_compact_string()
            ));
        }
    }
    let Some(output_name) = function.http_output.as_deref() else {
        messages.push(
            "function has no http output binding; the emulator answers 204 (inferred)".to_string(),
        );
        return Ok(ClientResponse::empty(StatusCode::NO_CONTENT));
    };
    if output_name == "$return" {
        return return_value_response(&result.return_value);
    }
    let value = outputs
        .iter()
        .rev()
        .find(|(k, _)| k == output_name)
        .map(|(_, v)| v.clone());
    match value {
        // Missing res → empty ExpandoObject → no "body" key → 200 with the expando as JSON
        // ("{}"), case res-missing.
        None | Some(Json::Null) => Ok(text_response(
            StatusCode::OK,
            HeaderMap::new(),
            None,
            Some("{}".to_string()),
        )),
        Some(value) => {
            let object = http_output_object(&value).map_err(|detail| {
                format!(
                    "Failed while trying to Deserialize to httpOutputBindingResponse. Output is \
                     not in expected format ({detail})"
                )
            })?;
            map_http_output(&object, messages)
        }
    }
}

/// `res` must be a JSON object, or a string holding a JSON object (the host re-parses
/// `value.ToString()`).
fn http_output_object(value: &Json) -> Result<Vec<(String, Json)>, String> {
    match value {
        Json::Object(entries) => Ok(entries.clone()),
        Json::String(s) => match Json::parse(s.as_bytes()) {
            Ok(Json::Object(entries)) => Ok(entries),
            _ => Err(format!("the string {s:?} is not a JSON object")),
        },
        other => Err(format!(
            "found JSON {}, expected an object",
            other.to_compact_string()
        )),
    }
}

/// §5.4: `{statusCode, status (ignored), headers, body}` (names case-insensitive) → response.
fn map_http_output(
    object: &[(String, Json)],
    messages: &mut Vec<String>,
) -> Result<ClientResponse, String> {
    let mut status_code: Option<String> = None;
    let mut body: Option<Json> = None;
    let mut headers_json: Option<Json> = None;
    for (key, value) in object {
        if key.eq_ignore_ascii_case("statusCode") {
            status_code = dotnet_scalar_string(value).map_err(|e| format!("statusCode: {e}"))?;
        } else if key.eq_ignore_ascii_case("status") {
            // Bound into HttpOutputBindingResponse.Status but never used (case res-status-alias-ignored).
            dotnet_scalar_string(value).map_err(|e| format!("status: {e}"))?;
        } else if key.eq_ignore_ascii_case("body") {
            body = Some(value.clone());
        } else if key.eq_ignore_ascii_case("headers") {
            headers_json = Some(value.clone());
        }
    }
    let status = parse_status_code(status_code.as_deref())?;
    let mut content_type: Option<String> = None;
    let mut headers = HeaderMap::new();
    match headers_json {
        None | Some(Json::Null) => {}
        Some(Json::Object(entries)) => {
            for (name, value) in entries {
                if name.eq_ignore_ascii_case("content-type") {
                    match value {
                        Json::Null => {
                            return Err("the content-type header value is null".to_string());
                        }
                        other => content_type = Some(header_value_text(&name, &other)?),
                    }
                    continue;
                }
                let header_name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("'{name}' is not a valid header name"))?;
                if headers.contains_key(&header_name) {
                    messages.push(format!("duplicate header '{name}' skipped"));
                    continue;
                }
                let text = match value {
                    Json::Null => String::new(),
                    other => header_value_text(&name, &other)?,
                };
                let header_value = HeaderValue::from_str(&text)
                    .map_err(|_| format!("header '{name}' has an invalid value {text:?}"))?;
                headers.insert(header_name, header_value);
            }
        }
        Some(other) => {
            return Err(format!(
                "headers must be an object of name → string, found {}",
                other.to_compact_string()
            ));
        }
    }
    let body_text = match body {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s),
        Some(v @ (Json::Object(_) | Json::Array(_))) => Some(v.to_pretty_string()),
        Some(v) => dotnet_scalar_string(&v)?,
    };
    Ok(text_response(status, headers, content_type, body_text))
}

fn header_value_text(name: &str, value: &Json) -> Result<String, String> {
    match value {
        Json::Object(_) | Json::Array(_) => Err(format!(
            "header '{name}' must be a string; the host would write multi-line JSON text {}",
            value.to_compact_string()
        )),
        other => Ok(dotnet_scalar_string(other)?.unwrap_or_default()),
    }
}

/// `HttpBinding.TryParseStatusCode`: `int.TryParse` (whitespace and sign allowed); missing or
/// unparsable → 200. A parsed value outside 100–999 makes ASP.NET throw → invocation failure.
fn parse_status_code(text: Option<&str>) -> Result<StatusCode, String> {
    let Some(parsed) = text.and_then(|t| t.trim().parse::<i32>().ok()) else {
        return Ok(StatusCode::OK);
    };
    u16::try_from(parsed)
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| format!("status code {parsed} is out of range (100-999)"))
}

/// Builds a text response: when there is a body, Content-Type is the given one (default
/// `text/plain`) with `; charset=utf-8` appended unless a charset is present; without a body
/// an explicit Content-Type is sent unchanged.
fn text_response(
    status: StatusCode,
    mut headers: HeaderMap,
    content_type: Option<String>,
    body: Option<String>,
) -> ClientResponse {
    let content_type = match (&body, content_type) {
        (Some(_), ct) => {
            let ct = ct.unwrap_or_else(|| "text/plain".to_string());
            if ct.to_ascii_lowercase().contains("charset=") {
                Some(ct)
            } else {
                Some(format!("{ct}; charset=utf-8"))
            }
        }
        (None, ct) => ct,
    };
    if let Some(ct) = content_type.and_then(|ct| HeaderValue::from_str(&ct).ok()) {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    ClientResponse {
        status,
        reason: None,
        headers,
        body: Bytes::from(body.unwrap_or_default()),
    }
}

/// §5.5 for an http output named `$return`: a JSON object (or JSON-object text) with a `body`
/// key is mapped like `res`; without `body` the object itself is the 200 body. Other shapes
/// (plain strings that the host may base64-decode, null) are rejected as not emulated.
fn return_value_response(value: &Json) -> Result<ClientResponse, String> {
    let object = match value {
        Json::Object(entries) => entries.clone(),
        Json::String(s) => match Json::parse(s.as_bytes()) {
            Ok(Json::Object(entries)) => entries,
            _ => {
                return Err(format!(
                    "$return http value {s:?} is a plain string; the host would base64-decode \
                     it or write it as text (§5.5) - not emulated, return an object"
                ));
            }
        },
        other => {
            return Err(format!(
                "$return http value {} is not emulated (§5.5); return an object with a body",
                other.to_compact_string()
            ));
        }
    };
    if object.iter().any(|(k, _)| k.eq_ignore_ascii_case("body")) {
        map_http_output(&object, &mut Vec::new())
    } else {
        Ok(text_response(
            StatusCode::OK,
            HeaderMap::new(),
            None,
            Some(Json::Object(object).to_pretty_string()),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Forwarding mode (§6)
// ---------------------------------------------------------------------------------------------

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "expect"
    )
}

/// .NET content headers (cannot be added to request headers; only Content-Type and
/// Content-Length are re-created, and only when there is a body).
fn is_content_header(name: &str) -> bool {
    matches!(
        name,
        "allow"
            | "content-disposition"
            | "content-encoding"
            | "content-language"
            | "content-length"
            | "content-location"
            | "content-md5"
            | "content-range"
            | "content-type"
            | "expires"
            | "last-modified"
    )
}

/// Builds the forwarded request (§6, cases forwarding-keeps-path-and-query, handler-path-selection): same method; original path (`/` when
/// empty) + query rebuilt from the parsed query (`QueryHelpers.AddQueryString`: repeated keys
/// comma-joined, key and value percent-encoded except `A-Za-z0-9-._~`); every request header
/// except hop-by-hop ones and content headers other than Content-Type/Content-Length (those two
/// only with a body); `User-Agent` gets `Azure-Functions-Host/{v}` appended;
/// `X-Azure-Functions-HostVersion` and `X-Azure-Functions-InvocationId` set; a `traceparent`
/// added when the client sent none (inferred: .NET's HttpClient diagnostics); body only when
/// `Content-Length > 0`. The client's `Host` header is kept (copied like any other header).
pub fn build_forward_request(
    port: u16,
    req: &ClientRequest,
    ctx: &InvocationContext,
) -> HandlerRequest {
    let path = handler_path_value(WireMode::Forwarding, "", &req.path);
    let query: Vec<String> = req
        .query_collection()
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, QUERY_COMPONENT),
                utf8_percent_encode(v, QUERY_COMPONENT)
            )
        })
        .collect();
    let path_and_query = if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let has_body = req.has_body();
    let connection_listed: Vec<String> = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut headers = HeaderMap::new();
    for (name, value) in &req.headers {
        let n = name.as_str();
        if is_hop_by_hop(n)
            || connection_listed.iter().any(|c| c == n)
            || n == "user-agent"
            || (is_content_header(n) && !(has_body && n == "content-type"))
        {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if has_body {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(req.body.len()));
    }
    let client_ua: Vec<String> = req
        .headers
        .get_all(header::USER_AGENT)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let host_ua = format!("Azure-Functions-Host/{HOST_VERSION}");
    let ua = if client_ua.is_empty() {
        host_ua
    } else {
        format!("{} {host_ua}", client_ua.join(" "))
    };
    if let Ok(v) = HeaderValue::from_str(&ua) {
        headers.insert(header::USER_AGENT, v);
    }
    if let Ok(v) = HeaderValue::from_str(HOST_VERSION) {
        headers.insert(HeaderName::from_static("x-azure-functions-hostversion"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&ctx.invocation_id) {
        headers.insert(HeaderName::from_static("x-azure-functions-invocationid"), v);
    }
    let traceparent = HeaderName::from_static("traceparent");
    if !headers.contains_key(&traceparent)
        && let Ok(v) = HeaderValue::from_str(&ctx.traceparent)
    {
        headers.insert(traceparent, v);
    }
    if !headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(&format!("127.0.0.1:{port}"))
    {
        headers.insert(header::HOST, v);
    }
    HandlerRequest {
        method: req.method.clone(),
        port,
        path_and_query,
        headers,
        body: if has_body {
            req.body.clone()
        } else {
            Bytes::new()
        },
        chunked: false,
    }
}

/// §6 response: status, reason phrase, all headers (multi-valued kept) and the buffered body
/// are passed through unchanged for any status; a lone `Transfer-Encoding: chunked` and the
/// connection-management headers (`Connection`, `Keep-Alive`) are dropped.
pub fn forward_response_to_client(resp: HandlerResponse) -> ClientResponse {
    let mut headers = HeaderMap::new();
    for (name, value) in &resp.headers {
        let n = name.as_str();
        if n == "connection" || n == "keep-alive" || n == "proxy-connection" {
            continue;
        }
        if n == "transfer-encoding" {
            let lone_chunked = resp
                .headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .count()
                == 1
                && value
                    .to_str()
                    .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
            if lone_chunked {
                continue;
            }
        }
        headers.append(name.clone(), value.clone());
    }
    ClientResponse {
        status: resp.status,
        reason: resp.reason,
        headers,
        body: resp.body,
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client towards the handler (hyper, one connection per request, no redirects)
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum SendError {
    /// TCP connect failed (the host's SocketException).
    Connect(std::io::Error),
    /// Connected, but the HTTP exchange failed.
    Http(String),
    /// No complete response in time.
    Timeout,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect failed: {e}"),
            SendError::Http(e) => write!(f, "HTTP exchange failed: {e}"),
            SendError::Timeout => f.write_str("timed out"),
        }
    }
}

async fn send_to_handler(
    req: &HandlerRequest,
    timeout: Option<Duration>,
) -> Result<HandlerResponse, SendError> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, req.port))
            .await
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .title_case_headers(true)
            .handshake::<_, BoxBody<Bytes, Infallible>>(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let body: BoxBody<Bytes, Infallible> = if req.chunked {
            let frames =
                futures::stream::iter(vec![Ok::<_, Infallible>(Frame::data(req.body.clone()))]);
            BoxBody::new(StreamBody::new(frames))
        } else {
            BoxBody::new(Full::new(req.body.clone()))
        };
        let mut builder = hyper::Request::builder()
            .method(req.method.clone())
            .uri(req.path_and_query.as_str());
        if let Some(h) = builder.headers_mut() {
            h.extend(req.headers.clone());
        }
        let request = builder
            .body(body)
            .map_err(|e| SendError::Http(format!("invalid request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| SendError::Http(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| SendError::Http(format!("reading the response body: {e}")))?
            .to_bytes();
        let reason = parts
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
        Ok(HandlerResponse {
            status: parts.status,
            reason,
            headers: parts.headers,
            body,
        })
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, exchange)
            .await
            .unwrap_or(Err(SendError::Timeout)),
        None => exchange.await,
    }
}

// ---------------------------------------------------------------------------------------------
// Handler process (§2.3, §3)
// ---------------------------------------------------------------------------------------------

fn log(line: &str) {
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

fn free_loopback_port() -> Result<u16, EmulatorError> {
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

type StderrTail = Arc<Mutex<VecDeque<String>>>;

fn pipe_output<R: Read + Send + 'static>(reader: R, is_stderr: bool, tail: StderrTail) {
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
struct HandlerProcess {
    child: Mutex<Option<Child>>,
    stopping: std::sync::atomic::AtomicBool,
    exit_rx: watch::Receiver<Option<String>>,
    stderr_tail: StderrTail,
}

impl HandlerProcess {
    fn exit_status(&self) -> Option<String> {
        self.exit_rx.borrow().clone()
    }

    fn tail(&self) -> Vec<String> {
        self.stderr_tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Sends SIGTERM (unix; elsewhere kills) if the child is still running.
    fn terminate(&self) {
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
    fn kill_now(&self) {
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

fn spawn_watcher(process: Arc<HandlerProcess>, exit_tx: watch::Sender<Option<String>>) {
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
async fn wait_until_ready(
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

// ---------------------------------------------------------------------------------------------
// The emulator
// ---------------------------------------------------------------------------------------------

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
/// `change_feed.rs`, with its function's retry policy) (their values are logged and dropped),
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
    // [change feed] The cosmosDBTrigger watchers (`change_feed.rs`).
    change_feeds: super::change_feed::ChangeFeeds,
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
            // [change feed] cosmosDBTrigger functions are emulated by `change_feed.rs`.
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
        let mut child = command.spawn().map_err(|source| EmulatorError::Spawn {
            program: program.clone(),
            source,
        })?;
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

        if let Err(e) = wait_until_ready(handler_port, host.initialization_timeout, &process).await
        {
            process.kill_now();
            return Err(e);
        }

        // [change feed] begin: watch the change feed of every cosmosDBTrigger function.
        let change_feeds = super::change_feed::start(&app_root, &settings, handler_port);
        // [change feed] end
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
            change_feeds, // [change feed]
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

    /// [change feed] The cosmosDBTrigger watchers: their resolved bindings and counters.
    pub fn change_feeds(&self) -> &super::change_feed::ChangeFeeds {
        &self.change_feeds
    }

    /// Whether the handler process has exited (then every call gets 500).
    pub fn handler_exited(&self) -> bool {
        self.shared.process.exit_status().is_some()
    }

    /// Stops accepting calls and waits (up to 5 s) for in-flight calls, then sends SIGTERM to
    /// the handler and waits up to [`SHUTDOWN_GRACE`] for it to exit (then SIGKILL).
    pub async fn shutdown(mut self) {
        self.change_feeds.stop(); // [change feed]
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

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

/// Current UTC time as Newtonsoft writes a UTC `DateTime`: `yyyy-MM-ddTHH:mm:ss.FFFFFFFZ`
/// (up to 7 fraction digits, trailing zeros trimmed).
pub fn utc_now_iso8601() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(now.as_secs(), now.subsec_nanos())
}

/// Formats a Unix time (seconds + nanoseconds) like [`utc_now_iso8601`].
pub fn format_utc(unix_secs: u64, nanos: u32) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs_of_day = unix_secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let fraction = format!("{:07}", nanos / 100);
    let fraction = fraction.trim_end_matches('0');
    let fraction = if fraction.is_empty() {
        String::new()
    } else {
        format!(".{fraction}")
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        secs_of_day / 3_600,
        (secs_of_day / 60) % 60,
        secs_of_day % 60
    )
}
