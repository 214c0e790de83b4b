//! Forwarding mode (§6): the client request forwarded as HTTP, and the answer passed back.

use crate::consts::{HOST_VERSION, QUERY_COMPONENT};
use crate::host_config::WireMode;
use crate::request::{
    ClientRequest, ClientResponse, HandlerRequest, HandlerResponse, InvocationContext,
    handler_path_value,
};
use axum::body::Bytes;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::utf8_percent_encode;

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
