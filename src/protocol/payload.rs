//! Invocation-payload mode (§4, §5): `POST /{FunctionName}` with `{"Data":{"req":{...}},
//! "Metadata":{...}}` in, `{"Outputs":{"res":{...}},"Logs":[...],"ReturnValue":null}` out.

use axum::body::Body;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::envelope::{Envelope, QueryField};
use super::pieces::Pieces;
use super::{
    BODY_LIMIT, ENVELOPE_LIMIT, InvocationId, Named, function_and_body, json_response, run,
};
use crate::api::{ApiRequest, ApiResponse, Function, query_pairs};
use crate::error::AppError;
use crate::state::AppState;

/// Invocation-payload mode (§4, §5).
pub(super) async fn invocation(
    State(state): State<AppState>,
    Named(function): Named,
    InvocationId(invocation_id): InvocationId,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (function, body) = match function_and_body(function, body, ENVELOPE_LIMIT) {
        Ok(found) => found,
        Err(e) => return e.into_api_response().into_http(),
    };
    let request = match parse_invocation(function, &body, invocation_id) {
        Ok(r) => r,
        Err(message) => {
            tracing::warn!(function = function.name(), error = %message, "malformed invocation payload");
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
        let (response, line) = run(&state, &request, "payload").await;
        (response, line.unwrap_or_default())
    };
    let body = Pieces::new(invocation_pieces(&response, &log_line));
    json_response(StatusCode::OK, Body::new(body))
}

/// The `{Outputs, Logs, ReturnValue}` envelope of §5 for `response`, serialized. `statusCode`
/// is a string and `body` is the already-serialized JSON text as a JSON string, so the host
/// writes it verbatim (§5.4).
pub fn invocation_result(response: &ApiResponse, log_line: &str) -> Vec<u8> {
    let [head, body, tail] = invocation_pieces(response, log_line);
    [head, body, tail].concat()
}

/// [`invocation_result`] in three pieces: the envelope before the body's JSON string, the
/// string, and the envelope after it. The string is the near cache's escaped form when it
/// keeps one ([`ApiResponse::escaped`]): shared, neither escaped nor copied again.
fn invocation_pieces(response: &ApiResponse, log_line: &str) -> [Bytes; 3] {
    let body = match &response.escaped {
        Some(escaped) => escaped.literal(&response.body),
        None => crate::api::escape(&response.body),
    };
    // `Content-Type` first, then the others by name (all lower case, so after it).
    let mut extra: Vec<_> = response.extra_headers().collect();
    extra.sort_unstable_by_key(|(name, _)| *name);
    // Writing strings into a Vec cannot fail. Key order as in §5.2's example: `Outputs`
    // (`res`: `statusCode`, `headers`, `body`), `Logs`, `ReturnValue`.
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(br#"{"Outputs":{"res":{"statusCode":"#);
    let _ = serde_json::to_writer(&mut head, response.status.as_str());
    head.extend_from_slice(br#","headers":{"Content-Type":"application/json""#);
    for (name, value) in &extra {
        head.push(b',');
        let _ = serde_json::to_writer(&mut head, name);
        head.push(b':');
        let _ = serde_json::to_writer(&mut head, value);
    }
    head.extend_from_slice(br#"},"body":"#);
    let mut tail = Vec::with_capacity(log_line.len() + 48);
    tail.extend_from_slice(br#"}},"Logs":"#);
    let _ = serde_json::to_writer(&mut tail, &[log_line]);
    tail.extend_from_slice(br#","ReturnValue":null}"#);
    [Bytes::from(head), body, Bytes::from(tail)]
}

/// Why `body` is not a readable invocation: not JSON at all, or JSON of the wrong shape.
fn invocation_error(body: &[u8], e: &serde_json::Error) -> String {
    if e.is_data() && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        // Valid JSON, wrong shape: a field given twice (serde's message names it), or `Data`
        // (or the whole body) is not an object.
        let message = e.to_string();
        if message.starts_with("duplicate field") {
            format!("Data.req: {message}")
        } else {
            "no Data object".into()
        }
    } else {
        format!("body is not JSON: {e}")
    }
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
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| invocation_error(body, &e))?;
    let req = envelope
        .data
        .ok_or("no Data object")?
        .0
        .ok_or("no HTTP request in Data")?;
    let method = match &req.method {
        Some(Value::String(m)) => m.as_str(),
        _ => return Err("Data.req.Method is missing or not a string".into()),
    };
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| "Data.req.Method is not an HTTP method".to_string())?;
    let query = match req.query {
        None | Some(QueryField::Null) => query_from_url(req.url.as_ref().and_then(Value::as_str))
            .map_err(|field| {
            format!("Data.req.Url: query parameter {field:?} is not UTF-8 once percent-decoded")
        })?,
        Some(QueryField::Pairs(pairs)) => pairs,
        // Read as the object form is.
        Some(QueryField::Text(text)) => match serde_json::from_str::<QueryField>(&text) {
            Ok(QueryField::Pairs(pairs)) => pairs,
            _ => return Err("Data.req.Query is a string but not a JSON object".into()),
        },
        Some(QueryField::Other) => {
            return Err("Data.req.Query is neither an object nor a string".into());
        }
    };
    let body = match req.body {
        None | Some(Value::Null) => Bytes::new(),
        // §4.3: application/octet-stream and multipart bodies arrive base64-encoded.
        Some(Value::String(s))
            if req
                .headers
                .and_then(|h| h.0)
                .is_some_and(|types| types.name_base64()) =>
        {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(Bytes::from)
                .map_err(|_| "Data.req.Body is not base64 although the content type is binary")?
        }
        Some(Value::String(s)) => Bytes::from(s),
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

fn query_from_url(url: Option<&str>) -> Result<Vec<(String, String)>, String> {
    url.and_then(|u| u.split_once('?'))
        .map(|(_, q)| query_pairs(q))
        .transpose()
        .map(Option::unwrap_or_default)
}

#[cfg(test)]
mod tests;
