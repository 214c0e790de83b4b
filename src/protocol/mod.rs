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

//!
//! ## Layout
//! - this file: the router, the readiness probe, the one dispatch-and-log step both modes share;
//! - `payload.rs`: the invocation-payload adapter (parse `Data.req`, write `Outputs.res`);
//! - `envelope.rs`: the typed view of the invocation envelope `payload.rs` reads;
//! - `forwarding.rs`: the forwarding adapter (the client's own request and response);
//! - `pieces.rs`: a response body written as the pieces it was built from (payload answers).

mod envelope;
mod forwarding;
mod payload;
mod pieces;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use bytes::Bytes;
use serde_json::json;

pub use payload::{invocation_result, parse_invocation};

use crate::api::{ApiRequest, ApiResponse, Function};
use crate::error::AppError;
use crate::routes;
use crate::state::AppState;
use crate::telemetry::Hundredths;
use forwarding::forwarded;
use payload::invocation;

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
        // The change-feed function: payload mode only, never forwarded (protocol §1).
        .route("/invalidate", post(routes::invalidate::invocation));
    // Each function's own path first: a static route carries no path parameters, which axum
    // would otherwise collect into allocations of their own on every request. The `{function}`
    // routes behind them still take other spellings (`/api/Query`: the host matches function
    // names case-insensitively) and unknown names (a JSON 404).
    for function in [Function::Query, Function::Update] {
        router = router.route(&format!("/{}", function.name()), post(invocation));
    }
    router = router.route("/{function}", any(by_name));
    if prefix.is_empty() {
        tracing::warn!("routePrefix is empty: forwarded requests cannot be told from invocations");
    } else {
        // The host's router matches `/api/query/` as `/api/query` and forwards the original
        // path, trailing slash included (cf. Azure/azure-functions-host#969).
        for function in [Function::Query, Function::Update] {
            let path = format!("/{prefix}/{}", function.name());
            router = router
                .route(&format!("{path}/"), any(forwarded))
                .route(&path, any(forwarded));
        }
        router = router
            .route(&format!("/{prefix}/{{function}}"), any(forwarded))
            .route(&format!("/{prefix}/{{function}}/"), any(forwarded));
    }
    // The host matches the prefix case-insensitively too (`/API/query`) and forwards the path
    // as the client sent it: such paths miss the routes above and are forwarded from here.
    let prefix_dir: Option<Arc<str>> = (!prefix.is_empty()).then(|| format!("/{prefix}").into());
    router
        .fallback(move |State(state): State<AppState>, request: Request| {
            let prefix_dir = prefix_dir.clone();
            async move {
                let (dir, _) = dir_and_name(request.uri().path());
                let under_prefix = prefix_dir
                    .as_deref()
                    .is_some_and(|p| dir.eq_ignore_ascii_case(p));
                if under_prefix {
                    forwarded.call(request, state).await
                } else {
                    not_found().await
                }
            }
        })
        // e.g. `GET /invalidate` or `GET /query` (payload mode is POST only): a JSON 405, not
        // axum's empty one.
        .method_not_allowed_fallback(method_not_allowed)
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
    // `queryMemo`: the `GET` query strings this instance resolved and kept (bounded in bytes).
    let memo = json!({ "entries": state.queries.len(), "bytes": state.queries.weight() });
    let body =
        json!({ "cache": state.cache.stats_json(), "identity": identity, "queryMemo": memo });
    json_response(StatusCode::OK, Bytes::from(body.to_string()))
}

/// The function named in the path and the request body (at most `limit` bytes), or the error:
/// 404 for an unknown function, 413 for a body over the limit, 400 for an unreadable body.
fn function_and_body(
    function: Option<Function>,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<(Function, Bytes), AppError> {
    let function = function.ok_or_else(|| AppError::NotFound("no such function".into()))?;
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

/// A JSON 405 naming, in `Allow`, what the path takes: GET (and so HEAD) for the readiness
/// probe and the diagnostics, POST for the invocation paths.
async fn method_not_allowed(uri: Uri) -> Response {
    let allow = match uri.path() {
        "/" | "/_diagnostics" => "GET, HEAD",
        _ => "POST",
    };
    AppError::MethodNotAllowed { allow }
        .into_api_response()
        .into_http()
}

/// `/{name}`: a POST is an invocation; another method is a 405 when the name is a function's
/// (`GET /Query` in invocation-payload mode) and a 404 when it is no function's
/// (`GET /favicon.ico`). One `any` handler rather than `post(..).fallback(..)`, whose 404 axum
/// would give an `Allow: POST` header.
async fn by_name(State(state): State<AppState>, request: Request) -> Response {
    if request.method() == Method::POST {
        return invocation.call(request, state).await;
    }
    match function_named(request.uri().path()) {
        Some(_) => method_not_allowed(request.uri().clone()).await,
        None => not_found().await,
    }
}

/// Dispatches and writes the one log line per invocation; in payload mode also returns the
/// line for `Logs` (forwarded answers have no `Logs`, so the line is not built for them).
async fn run(
    state: &AppState,
    request: &ApiRequest,
    mode: &'static str,
) -> (ApiResponse, Option<String>) {
    let started = Instant::now();
    let response = routes::dispatch(state, request).await;
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let cache = response.cache.map_or("-", |c| c.as_str());
    let ru = response.request_charge.unwrap_or(0.0);
    let invocation_id = request.invocation_id.as_deref().unwrap_or("-");
    // Its own target, so `RUST_LOG=info,invocation=warn` drops this line (15–22 % of the
    // handler's CPU on a near-cache hit, docs/benchmarks.md) and keeps every other one.
    tracing::info!(
        target: "invocation",
        function = request.function.name(),
        method = request.method.as_str(),
        mode,
        status = response.status.as_u16(),
        cache,
        duration_ms = format_args!("{}", Hundredths(duration_ms)),
        ru,
        invocation_id,
        "invocation"
    );
    let line = (mode == "payload").then(|| {
        format!(
            "{} {} -> {} cache={} {}ms RU={}",
            request.function.name(),
            request.method,
            response.status.as_u16(),
            cache,
            Hundredths(duration_ms),
            Hundredths(ru)
        )
    });
    (response, line)
}

/// A request path split at its last `/`, one trailing `/` ignored: `/api/query/` →
/// (`/api`, `query`), `/query` → (``, `query`).
fn dir_and_name(path: &str) -> (&str, &str) {
    let path = path.strip_suffix('/').unwrap_or(path);
    path.rsplit_once('/').unwrap_or(("", path))
}

/// The function a request names: the last segment of its path (`/query`, `/api/query`,
/// `/api/Query/`, `/api/qu%65ry`: percent-decoded, as axum's `Path` decodes), read in place, so
/// the static routes need no path parameter. `None` for a name that is not a function.
struct Named(Option<Function>);

impl<S: Send + Sync> FromRequestParts<S> for Named {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(function_named(parts.uri.path())))
    }
}

/// The function the last segment of `path` names (percent-decoded), if any.
fn function_named(path: &str) -> Option<Function> {
    let (_, name) = dir_and_name(path);
    if name.contains('%') {
        percent_encoding::percent_decode_str(name)
            .decode_utf8()
            .ok()
            .and_then(|name| Function::from_name(&name))
    } else {
        Function::from_name(name)
    }
}

/// The host's invocation id ([`INVOCATION_ID`]), if sent: read from the request's headers
/// where they are, instead of through axum's `HeaderMap` extractor, which copies the whole map
/// on every request.
struct InvocationId(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for InvocationId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .headers
                .get(INVOCATION_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        ))
    }
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.into(),
    )
        .into_response()
}
