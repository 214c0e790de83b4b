//! Payload mode, request side (§4): the invocation payload the host POSTs to the handler.

use crate::consts::{
    AUTH_LEVEL_CLAIM, HOST_VERSION, NAME_CLAIM_TYPE, QUERY_COMPONENT, ROLE_CLAIM_TYPE,
    XML_STRING_TYPE,
};
use crate::functions::FunctionSpec;
use crate::json::Json;
use crate::request::{ClientRequest, HandlerRequest, InvocationContext};
use axum::body::Bytes;
use axum::http::Method;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use base64::Engine as _;
use percent_encoding::utf8_percent_encode;

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
