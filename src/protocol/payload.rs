//! Invocation-payload mode (§4, §5): `POST /{FunctionName}` with `{"Data":{"req":{...}},
//! "Metadata":{...}}` in, `{"Outputs":{"res":{...}},"Logs":[...],"ReturnValue":null}` out.

use axum::body::Body;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::envelope::{Envelope, QueryField, object_pairs};
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
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::new(body),
    )
        .into_response()
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
        Some(QueryField::Text(text)) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => object_pairs(map),
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
    fn query_object_reads_as_a_json_map_would() {
        // The object form is read straight into pairs; the string form (older hosts) through
        // a `serde_json::Map`. The same object must give the same pairs: by name, the last of
        // a repeated name winning (also when it is null), null left out, arrays joined.
        let object = r#"{"z":"1","a":[1,"x",null],"n":5,"b":true,"d":"first","d":null,"e":null,"e":"last","o":{"k":1}}"#;
        let as_object = format!(r#"{{"Data":{{"req":{{"Method":"GET","Query":{object}}}}}}}"#);
        let as_string = format!(
            r#"{{"Data":{{"req":{{"Method":"GET","Query":{}}}}}}}"#,
            serde_json::to_string(object).expect("a string")
        );
        let from_object = parse_invocation(Function::Query, as_object.as_bytes(), None);
        let from_string = parse_invocation(Function::Query, as_string.as_bytes(), None);
        let from_object = from_object.expect("parses").query;
        assert_eq!(from_object, from_string.expect("parses").query);
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            from_object,
            vec![
                pair("a", "1,x,null"),
                pair("b", "true"),
                pair("e", "last"),
                pair("n", "5"),
                pair("o", r#"{"k":1}"#),
                pair("z", "1"),
            ]
        );
    }

    #[test]
    fn result_headers_are_one_object_content_type_first_then_by_name() {
        let mut response = ApiResponse::json(StatusCode::SERVICE_UNAVAILABLE, Bytes::from("{}"));
        response.cache = Some(crate::api::CacheOutcome::Miss);
        response.request_charge = Some(2.5);
        response.retry_after_secs = Some(3);
        response.invalidation = Some("pending");
        let out = invocation_result(&response, "query GET -> 503");
        let text = std::str::from_utf8(&out).expect("utf-8");
        assert_eq!(
            text,
            concat!(
                r#"{"Outputs":{"res":{"statusCode":"503","headers":{"Content-Type":"application/json","#,
                r#""retry-after":"3","x-cache":"miss","x-cache-invalidation":"pending","#,
                r#""x-ms-request-charge":"2.50"},"body":"{}"}},"Logs":["query GET -> 503"],"#,
                r#""ReturnValue":null}"#
            )
        );
        let plain = invocation_result(&ApiResponse::json(StatusCode::OK, Bytes::from("[]")), "");
        assert!(
            plain.starts_with(br#"{"Outputs":{"res":{"statusCode":"200","headers":{"Content-Type":"application/json"},"body":"[]"}}"#),
            "{}",
            String::from_utf8_lossy(&plain)
        );
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

    #[test]
    fn shapes_the_typed_envelope_must_still_read_or_name() {
        let parse = |b: &[u8]| parse_invocation(Function::Query, b, None);
        // A renamed trigger binding, after a `req` that is not an object.
        let renamed = br#"{"Data":{"req":5,"request":{"Method":"GET","Query":{"city":"Waco"}}}}"#;
        let r = parse(renamed).expect("renamed binding");
        assert_eq!(r.query, vec![("city".to_string(), "Waco".to_string())]);
        // Whatever `Metadata` and `Identities` hold is skipped, not read.
        let odd = br#"{"Metadata":[1,{"x":null}],"Data":{"req":{"Method":"POST","Identities":7,"Body":"{}"}}}"#;
        assert_eq!(&parse(odd).expect("odd metadata").body[..], b"{}");
        // Base64 bodies still follow the content type.
        let binary = br#"{"Data":{"req":{"Method":"POST","Headers":{"Content-Type":["application/octet-stream"]},"Body":"e30="}}}"#;
        assert_eq!(&parse(binary).expect("binary").body[..], b"{}");
        // The messages name what is wrong.
        assert_eq!(
            parse(br#"{"Data":[]}"#).err().as_deref(),
            Some("no Data object")
        );
        assert_eq!(parse(b"[1,2]").err().as_deref(), Some("no Data object"));
        let twice = br#"{"Data":{"req":{"Method":"GET","Query":{},"Query":{}}}}"#;
        let message = parse(twice).err().unwrap_or_default();
        assert!(
            message.starts_with("Data.req: duplicate field `Query`"),
            "{message}"
        );
        assert_eq!(
            parse(br#"{"Data":{"other":{"x":1}}}"#).err().as_deref(),
            Some("no HTTP request in Data")
        );
        assert_eq!(
            parse(br#"{"Data":{"req":{"Method":7}}}"#).err().as_deref(),
            Some("Data.req.Method is missing or not a string")
        );
        // Escaped strings are read (owned, not borrowed) as well as plain ones.
        let escaped = br#"{"Data":{"req":{"Method":"G\u0045t","Url":"http://h/api/query?city=A%20b\u0026n=1","Query":null}}}"#;
        let r = parse(escaped).expect("escaped");
        assert_eq!(r.method, Method::GET);
        assert_eq!(
            r.query,
            vec![("city".into(), "A b".into()), ("n".into(), "1".into())]
        );
        // Query values of every JSON type; null drops the pair (order is not significant:
        // the route sorts the filters).
        let typed = br#"{"Data":{"req":{"Method":"GET","Query":{"z":"\"q\"","a":null,"b":[1,"x"],"c":true}}}}"#;
        let mut query = parse(typed).expect("typed").query;
        query.sort();
        assert_eq!(
            query,
            vec![
                ("b".to_string(), "1,x".to_string()),
                ("c".into(), "true".into()),
                ("z".into(), "\"q\"".into())
            ]
        );
        // A Url that is not a string is no query, not an error.
        let odd_url = br#"{"Data":{"req":{"Method":"GET","Url":{"x":[1]}}}}"#;
        assert!(parse(odd_url).expect("odd url").query.is_empty());
        assert_eq!(
            parse(br#"{"Data":{"req":{"Method":"GET","Query":5}}}"#)
                .err()
                .as_deref(),
            Some("Data.req.Query is neither an object nor a string")
        );
        assert_eq!(
            parse(br#"{"Data":{"req":{"Method":"GET","Query":"[1]"}}}"#)
                .err()
                .as_deref(),
            Some("Data.req.Query is a string but not a JSON object")
        );
        assert_eq!(
            parse(br#"{"Data":{"req":{"Method":"GE T"}}}"#)
                .err()
                .as_deref(),
            Some("Data.req.Method is not an HTTP method")
        );
        let truncated = parse(br#"{"Data":{"req":{"Method":"GET""#).expect_err("truncated");
        assert!(truncated.starts_with("body is not JSON"), "{truncated}");
    }
}
