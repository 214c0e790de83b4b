//! `host.json` (§2.1) and the `AzureFunctionsJobHost__*` app-setting overrides.

use crate::consts::{
    DEFAULT_FUNCTION_TIMEOUT, DEFAULT_INITIALIZATION_TIMEOUT, HOST_OVERRIDE_PREFIX,
};
use crate::error::{EmulatorError, config_err};
use crate::json::{Json, dotnet_scalar_string};
use std::fmt;
use std::time::Duration;

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
