//! The custom handler protocol: two thin wire adapters onto one [`ApiRequest`]/[`ApiResponse`].
//! "§" references are to `docs/custom-handler-protocol.md` (what the handler relies on from the
//! Functions host).
//!
//! - **Invocation payload** (§4, §5): `POST /{FunctionName}` with `{"Data":{"req":{...}},
//!   "Metadata":{...}}`, answered `200 application/json` `{"Outputs":{"res":{"statusCode":"200",
//!   "headers":{...},"body":"..."}},"Logs":[...],"ReturnValue":null}`. A body that is not an
//!   invocation at all gets a 400, which fails the invocation (§5.1); a bad *client* request
//!   inside a valid invocation gets `res.statusCode` 4xx.
//! - **Forwarding** (§6) and proxying (§7): the client's request on its original path
//!   `/{routePrefix}/{function}`, answered with a plain HTTP response.
//! - **Readiness** (§3.3): `GET /` answers at once, before Redis or Cosmos are reachable.

use std::time::Instant;

use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::api::{ApiRequest, ApiResponse, Function};
use crate::error::AppError;
use crate::routes;
use crate::state::AppState;

/// Name of the HTTP output binding in both `function.json` files (`Outputs.res`, §5.4).
pub const HTTP_OUTPUT: &str = "res";
/// Name of the HTTP trigger binding in both `function.json` files (`Data.req`, §4.2).
pub const HTTP_TRIGGER: &str = "req";
/// Header carrying the host's invocation id (§4.1, §6).
pub const INVOCATION_ID: &str = "x-azure-functions-invocationid";
/// Largest client body accepted, in bytes (16 MiB): room for an `update` batch of documents
/// (each at most 2 MB in Cosmos DB).
pub const BODY_LIMIT: usize = 16 << 20;
/// Largest invocation envelope accepted, in bytes: the client body travels inside it as a JSON
/// string, where escaping can grow each byte up to six times (a control byte becomes
/// `\u0001`), plus headers and metadata. A smaller limit answered a body under
/// [`BODY_LIMIT`] with a bare 413, which fails the invocation (the client saw a 500) instead of
/// reaching the route's own 400/413.
pub const ENVELOPE_LIMIT: usize = 6 * BODY_LIMIT + (1 << 20);

/// The handler's routes. `route_prefix` is `extensions.http.routePrefix` from `host.json`
/// (`api` by default); forwarded requests arrive under it (§6, §8). With an empty prefix the
/// forwarded paths would equal the payload paths, so only payload mode is served then.
pub fn router(state: AppState, route_prefix: &str) -> Router {
    let prefix = route_prefix.trim_matches('/');
    let mut router = Router::new()
        .route("/", get(ready).head(ready))
        .route("/_diagnostics", get(diagnostics))
        .route("/{function}", post(invocation));
    if prefix.is_empty() {
        tracing::warn!("routePrefix is empty: forwarded requests cannot be told from invocations");
    } else {
        // The host's router matches `/api/query/` as `/api/query` and forwards the original
        // path, trailing slash included (cf. Azure/azure-functions-host#969).
        router = router
            .route(&format!("/{prefix}/{{function}}"), any(forwarded))
            .route(&format!("/{prefix}/{{function}}/"), any(forwarded));
    }
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(ENVELOPE_LIMIT))
        .with_state(state)
}

/// Readiness probe and ping (§3.3): any response means ready.
async fn ready() -> &'static str {
    "ready"
}

/// Read-only counters of this instance (not routed by the host: only reachable on loopback).
async fn diagnostics(State(state): State<AppState>) -> Response {
    let identity: Vec<_> = state.identity.iter().map(|s| s.stats_json()).collect();
    let body = json!({ "cache": state.cache.stats_json(), "identity": identity });
    json_response(StatusCode::OK, Bytes::from(body.to_string()))
}

/// The function named in the path and the request body (at most `limit` bytes), or the error:
/// 404 for an unknown function, 413 for a body over the limit, 400 for an unreadable body.
fn function_and_body(
    name: &str,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<(Function, Bytes), AppError> {
    let function =
        Function::from_name(name).ok_or_else(|| AppError::NotFound("no such function".into()))?;
    match body {
        Ok(b) if b.len() <= limit => Ok((function, b)),
        Ok(_) => Err(AppError::PayloadTooLarge { limit_bytes: limit }),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(AppError::PayloadTooLarge {
            limit_bytes: ENVELOPE_LIMIT,
        }),
        Err(_) => Err(AppError::bad_request("body", "could not be read")),
    }
}

async fn not_found() -> Response {
    AppError::NotFound("no such function".into())
        .into_api_response()
        .into_http()
}

/// Forwarding/proxying mode: the client's own request (§6, §7).
async fn forwarded(
    State(state): State<AppState>,
    Path(function): Path<String>,
    method: Method,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (function, body) = match function_and_body(&function, body, BODY_LIMIT) {
        Ok(found) => found,
        Err(e) => return e.into_api_response().into_http(),
    };
    let query = raw_query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let request = ApiRequest {
        function,
        method,
        query,
        body,
        invocation_id: invocation_id(&headers),
    };
    let (response, _) = run(&state, &request, "forwarded").await;
    response.into_http()
}

/// Invocation-payload mode (§4, §5).
async fn invocation(
    State(state): State<AppState>,
    Path(function): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (function, body) = match function_and_body(&function, body, ENVELOPE_LIMIT) {
        Ok(found) => found,
        Err(e) => return e.into_api_response().into_http(),
    };
    let request = match parse_invocation(function, &body, invocation_id(&headers)) {
        Ok(r) => r,
        Err(message) => {
            tracing::warn!(function = function.name(), %message, "malformed invocation payload");
            // A non-2xx fails the invocation (§5.1).
            let body = json!({ "error": { "code": "bad_invocation", "message": message } });
            return json_response(StatusCode::BAD_REQUEST, Bytes::from(body.to_string()));
        }
    };
    let (response, log_line) = if request.body.len() > BODY_LIMIT {
        let response = AppError::PayloadTooLarge {
            limit_bytes: BODY_LIMIT,
        }
        .into_api_response();
        (
            response,
            format!("{} -> 413 body too large", function.name()),
        )
    } else {
        run(&state, &request, "payload").await
    };
    json_response(
        StatusCode::OK,
        Bytes::from(invocation_result(&response, &log_line)),
    )
}

/// Dispatches and writes the one log line per invocation; returns the line for `Logs`.
async fn run(state: &AppState, request: &ApiRequest, mode: &'static str) -> (ApiResponse, String) {
    let started = Instant::now();
    let response = routes::dispatch(state, request).await;
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let cache = response.cache.map_or("-", |c| c.as_str());
    let ru = response.request_charge.unwrap_or(0.0);
    let invocation_id = request.invocation_id.as_deref().unwrap_or("-");
    tracing::info!(
        function = request.function.name(),
        method = %request.method,
        mode,
        status = response.status.as_u16(),
        cache,
        duration_ms = format_args!("{duration_ms:.2}"),
        ru,
        invocation_id,
        "invocation"
    );
    let line = format!(
        "{} {} -> {} cache={} {:.2}ms RU={:.2}",
        request.function.name(),
        request.method,
        response.status.as_u16(),
        cache,
        duration_ms,
        ru
    );
    (response, line)
}

fn invocation_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(INVOCATION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

impl ApiResponse {
    /// Renders this response for forwarding mode (and for errors outside any function).
    pub fn into_http(self) -> Response {
        let mut response = json_response(self.status, self.body.clone());
        for (name, value) in self.extra_headers() {
            if let Ok(v) = HeaderValue::from_str(&value) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(name), v);
            }
        }
        response
    }
}

/// The `{Outputs, Logs, ReturnValue}` envelope of §5 for `response`, serialized. `statusCode`
/// is a string and `body` is the already-serialized JSON text, so the host writes it verbatim
/// (§5.4). Serialized from borrowed parts: the page is escaped once, not copied first.
pub fn invocation_result(response: &ApiResponse, log_line: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Envelope<'a> {
        #[serde(rename = "Outputs")]
        outputs: Outputs<'a>,
        #[serde(rename = "Logs")]
        logs: [&'a str; 1],
        #[serde(rename = "ReturnValue")]
        return_value: Option<()>,
    }
    #[derive(serde::Serialize)]
    struct Outputs<'a> {
        // The `res` output binding of both function.json files (HTTP_OUTPUT).
        res: HttpOutput<'a>,
    }
    #[derive(serde::Serialize)]
    struct HttpOutput<'a> {
        #[serde(rename = "statusCode")]
        status_code: &'a str,
        headers: std::collections::BTreeMap<&'static str, String>,
        body: std::borrow::Cow<'a, str>,
    }
    let mut headers = std::collections::BTreeMap::new();
    headers.insert("Content-Type", "application/json".to_string());
    headers.extend(response.extra_headers());
    let envelope = Envelope {
        outputs: Outputs {
            res: HttpOutput {
                status_code: response.status.as_str(),
                headers,
                body: String::from_utf8_lossy(&response.body),
            },
        },
        logs: [log_line],
        return_value: None,
    };
    // Serializing strings and a map of strings cannot fail.
    serde_json::to_vec(&envelope).unwrap_or_default()
}

/// Reads the client request out of an invocation payload, leniently as §4 says: `Query` may
/// be an object or a JSON string (before host PR #6621), values may be non-strings, `Body` may
/// be absent (no Content-Length) or null; only `Method` is required.
///
/// # Errors
/// A message when the body is not an invocation with a `Data.req` HTTP request.
pub fn parse_invocation(
    function: Function,
    body: &[u8],
    invocation_id: Option<String>,
) -> Result<ApiRequest, String> {
    let envelope: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let data = envelope
        .get("Data")
        .and_then(Value::as_object)
        .ok_or("no Data object")?;
    // The trigger is `Data.req` in our function.json files; accept any HTTP-request-shaped
    // input so a renamed binding still works.
    let req = data
        .get(HTTP_TRIGGER)
        .filter(|v| v.is_object())
        .or_else(|| data.values().find(|v| v.get("Method").is_some()))
        .and_then(Value::as_object)
        .ok_or("no HTTP request in Data")?;
    let method = req
        .get("Method")
        .and_then(Value::as_str)
        .ok_or("Data.req.Method is missing")?;
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| "Data.req.Method is not an HTTP method".to_string())?;
    let query = match req.get("Query") {
        None | Some(Value::Null) => query_from_url(req.get("Url").and_then(Value::as_str)),
        Some(Value::Object(map)) => object_pairs(map),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => object_pairs(&map),
            _ => return Err("Data.req.Query is a string but not a JSON object".into()),
        },
        Some(_) => return Err("Data.req.Query is neither an object nor a string".into()),
    };
    let body = match req.get("Body") {
        None | Some(Value::Null) => Bytes::new(),
        // §4.3: application/octet-stream and multipart bodies arrive base64-encoded.
        Some(Value::String(s)) if is_base64_media_type(req.get("Headers")) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(Bytes::from)
                .map_err(|_| "Data.req.Body is not base64 although the content type is binary")?
        }
        Some(Value::String(s)) => Bytes::from(s.clone()),
        // Not what the host sends (§4.3: Body is text), but unambiguous.
        Some(other) => Bytes::from(other.to_string()),
    };
    Ok(ApiRequest {
        function,
        method,
        query,
        body,
        invocation_id,
    })
}

/// Whether `Data.req.Headers` names a media type the host sends base64-encoded (§4.3):
/// `application/octet-stream`, or any type containing `multipart`.
fn is_base64_media_type(headers: Option<&Value>) -> bool {
    let Some(Value::Object(headers)) = headers else {
        return false;
    };
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .flat_map(|(_, v)| match v {
            Value::Array(values) => values.iter().filter_map(Value::as_str).collect::<Vec<_>>(),
            Value::String(s) => vec![s.as_str()],
            _ => Vec::new(),
        })
        .any(|t| {
            // The host decides by the media type alone, before any `;` parameter
            // (`text/plain; boundary=multipart` is text).
            let media = t
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            media == "application/octet-stream" || media.contains("multipart")
        })
}

/// Query values as strings; an array (which the host never sends) is joined with `,` as the
/// host joins repeated keys (§4.3).
fn object_pairs(map: &Map<String, Value>) -> Vec<(String, String)> {
    map.iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k.clone(), s.clone())),
            Value::Null => None,
            Value::Array(items) => Some((
                k.clone(),
                items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(","),
            )),
            other => Some((k.clone(), other.to_string())),
        })
        .collect()
}

fn query_from_url(url: Option<&str>) -> Vec<(String, String)> {
    url.and_then(|u| u.split_once('?'))
        .map(|(_, q)| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_query_shapes() {
        let object =
            br#"{"Data":{"req":{"Method":"get","Query":{"state":"Texas","n":5}}},"Metadata":{}}"#;
        let r = parse_invocation(Function::Query, object, None).expect("parses");
        assert_eq!(r.method, Method::GET);
        assert!(r.query.contains(&("n".into(), "5".into())));
        let string = br#"{"Data":{"req":{"Method":"GET","Query":"{\"state\":\"Ohio\"}"}}}"#;
        let r = parse_invocation(Function::Query, string, None).expect("parses");
        assert_eq!(r.query, vec![("state".to_string(), "Ohio".to_string())]);
        let url_only =
            br#"{"Data":{"req":{"Method":"GET","Url":"http://h/api/query?city=St.%20Louis"}}}"#;
        let r = parse_invocation(Function::Query, url_only, None).expect("parses");
        assert_eq!(r.query, vec![("city".to_string(), "St. Louis".to_string())]);
        assert!(r.body.is_empty());
    }

    #[test]
    fn malformed_invocations_are_errors() {
        for bad in [
            &b"nope"[..],
            b"{}",
            br#"{"Data":{}}"#,
            br#"{"Data":{"req":{"Url":"x"}}}"#,
        ] {
            assert!(parse_invocation(Function::Query, bad, None).is_err());
        }
    }
}
