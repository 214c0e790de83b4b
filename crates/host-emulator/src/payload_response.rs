//! Payload mode, response side (§5): `Outputs`/`Logs`/`ReturnValue` back into an HTTP answer.

use crate::functions::FunctionSpec;
use crate::json::{Json, dotnet_scalar_string};
use crate::request::{ClientResponse, HandlerResponse};
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

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
