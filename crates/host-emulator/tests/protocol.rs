//! Tests of the Functions host emulator (this crate) itself.
//!
//! The pure translation functions are checked against the protocol cases in `tests/protocol/`
//! (read at test time; every expected value comes from a case file, placeholders such as
//! `{PORT}` are filled in or matched as wildcards). `docs/custom-handler-protocol.md` describes
//! the protocol they capture. One end-to-end
//! test starts a small Python echo handler through the emulator in both wire modes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::header::{HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use base64::Engine as _;
use host_emulator::{
    self as emu, ClientRequest, EmulatorConfig, EmulatorError, FunctionSpec, HandlerResponse,
    HostEmulator, InvocationContext, Json, RouteTable, WireMode,
};
use serde_json::{Value, json};

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

const CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/protocol");

/// The repository root: the app's `host.json` and function folders.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Loads the protocol case `tests/protocol/<name>.json` (see `docs/custom-handler-protocol.md`).
fn vector(name: &str) -> Value {
    let path = format!("{CASES}/{name}.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Replaces `{NAME}` placeholders.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// `actual` matches `template` where every `{...}` placeholder stands for any non-empty text.
fn matches_template(actual: &str, template: &str) -> bool {
    let mut literals = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        literals.push(&rest[..start]);
        rest = &rest[start + end + 1..];
    }
    literals.push(rest);
    if literals.len() == 1 {
        return actual == template;
    }
    let first = literals[0];
    let last = literals[literals.len() - 1];
    if !actual.starts_with(first)
        || !actual.ends_with(last)
        || actual.len() < first.len() + last.len()
    {
        return false;
    }
    let mut middle = &actual[first.len()..actual.len() - last.len()];
    for literal in &literals[1..literals.len() - 1] {
        // Each placeholder needs at least one character before the next literal.
        match middle.get(1..).and_then(|m| m.find(literal)) {
            Some(pos) => middle = &middle[1 + pos + literal.len()..],
            None => return false,
        }
    }
    !middle.is_empty()
}

/// Drops a trailing " (...)" remark from an expected value.
fn strip_annotation(text: &str) -> &str {
    match text.find(" (") {
        Some(pos) if text.ends_with(')') => &text[..pos],
        _ => text,
    }
}

fn function(name: &str, trigger: &str, output: &str, methods: &[&str]) -> FunctionSpec {
    let text = json!({
        "bindings": [
            {"type": "httpTrigger", "direction": "in", "name": trigger, "methods": methods},
            {"type": "http", "direction": "out", "name": output}
        ]
    })
    .to_string();
    emu::parse_function_json(name, &text).expect("valid function.json")
}

fn headers_from(value: &Value) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let Some(object) = value.as_object() else {
        return headers;
    };
    for (name, v) in object {
        let values: Vec<String> = match v {
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().expect("header value string").to_string())
                .collect(),
            Value::String(s) => vec![s.clone()],
            other => panic!("unexpected header value {other}"),
        };
        let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
        for v in values {
            headers.append(
                name.clone(),
                HeaderValue::from_str(&v).expect("header value"),
            );
        }
    }
    headers
}

/// Splits `scheme://host/path?query` without normalising (an empty path stays empty).
fn client_request(method: &str, url: &str, headers: HeaderMap, body: Vec<u8>) -> ClientRequest {
    let (scheme, rest) = url.split_once("://").expect("absolute URL");
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host = &rest[..host_end];
    let path_and_query = &rest[host_end..];
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (path_and_query, None),
    };
    ClientRequest {
        method: Method::from_bytes(method.as_bytes()).expect("method"),
        scheme: scheme.to_string(),
        host: host.to_string(),
        path: path.to_string(),
        query,
        headers,
        body: Bytes::from(body),
    }
}

fn handler_response(v: &Value) -> HandlerResponse {
    let status =
        StatusCode::from_u16(v["status"].as_u64().expect("status") as u16).expect("status");
    let body = match (&v["json_body"], &v["body"]) {
        (Value::Null, Value::String(s)) => s.clone().into_bytes(),
        (Value::Null, Value::Null) => Vec::new(),
        (json_body, _) => serde_json::to_vec(json_body).expect("json body"),
    };
    HandlerResponse {
        status,
        reason: None,
        headers: headers_from(&v["headers"]),
        body: Bytes::from(body),
    }
}

fn fixed_context() -> InvocationContext {
    InvocationContext {
        invocation_id: "6f9a1a9e-2d4b-4c57-9a55-3f1d7c0c1b11".to_string(),
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00".to_string(),
        utc_now: "2023-10-12T20:13:49.640002Z".to_string(),
        rand_guid: "4e773554-f6b7-4ea2-b07d-4c5fd5aba741".to_string(),
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_string())
}

/// Checks the invocation envelope headers of a case (`host_request.headers`).
fn assert_envelope(expected: &Value, req: &emu::HandlerRequest, ctx: &InvocationContext) {
    let port = req.port.to_string();
    for (name, value) in expected.as_object().expect("headers object") {
        let template = fill(
            value.as_str().expect("header string"),
            &[
                ("HOST_VERSION", emu::HOST_VERSION),
                ("INVOCATION_ID", &ctx.invocation_id),
                ("FUNCTIONS_CUSTOMHANDLER_PORT", &port),
            ],
        );
        if name.eq_ignore_ascii_case("transfer-encoding") {
            assert_eq!(template, "chunked");
            assert!(req.chunked, "payload request must be chunked");
            assert!(
                req.headers.get("content-length").is_none(),
                "chunked request must not carry Content-Length"
            );
            continue;
        }
        let actual = header_text(&req.headers, name)
            .unwrap_or_else(|| panic!("missing header {name} in {:?}", req.headers));
        assert!(
            matches_template(&actual, &template),
            "header {name}: {actual:?} does not match {template:?}"
        );
    }
}

fn assert_client_response(expected: &Value, actual: &emu::ClientResponse, id: &str) {
    let status = expected["status"].as_u64().expect("expected status");
    assert_eq!(u64::from(actual.status.as_u16()), status, "{id}: status");
    // Bodies in parentheses are prose ("(inferred)"), not values.
    if let Some(body) = expected["body"].as_str()
        && !body.starts_with('(')
    {
        assert_eq!(String::from_utf8_lossy(&actual.body), body, "{id}: body");
    }
    if let Some(headers) = expected["headers"].as_object() {
        for (name, value) in headers {
            let expected_value = strip_annotation(value.as_str().expect("header string"));
            assert_eq!(
                header_text(&actual.headers, name).as_deref(),
                Some(expected_value),
                "{id}: header {name}"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// Payload mode (§4, §5)
// ------------------------------------------------------------------------------------------

#[test]
fn payload_request_matches_host_unit_test() {
    let v = vector("payload-request-and-result");
    let host_request = &v["host_request"];
    let data = host_request["json_body"]["Data"]
        .as_object()
        .expect("Data object");
    let (trigger_name, expected_req) = data.iter().next().expect("one trigger entry");
    let url = host_request["url"].as_str().expect("url");
    let (base, function_name) = url.rsplit_once('/').expect("url with function name");
    let port: u16 = base
        .rsplit_once(':')
        .expect("port")
        .1
        .parse()
        .expect("port");
    let f = function(function_name, trigger_name, "res", &["get"]);

    let req = client_request(
        expected_req["Method"].as_str().expect("Method"),
        expected_req["Url"].as_str().expect("Url"),
        headers_from(&expected_req["Headers"]),
        expected_req["Body"]
            .as_str()
            .expect("Body")
            .as_bytes()
            .to_vec(),
    );
    let ctx = fixed_context();
    let payload = emu::build_invocation_payload(&f, &req, &[], &ctx).to_value();
    let actual_req = &payload["Data"][trigger_name.as_str()];
    for (field, expected) in expected_req.as_object().expect("req object") {
        assert_eq!(
            &actual_req[field.as_str()],
            expected,
            "Data.{trigger_name}.{field}"
        );
    }
    // Params is absent only because the unit test sets no route data; a live
    // host always sends it.
    assert_eq!(actual_req["Params"], json!({}));

    // Metadata: Query/Headers plus one double-encoded entry per query parameter (the case's
    // rule: Metadata[key] == JsonConvert.SerializeObject(value)), and sys.
    let metadata = &payload["Metadata"];
    assert_eq!(metadata["Query"], expected_req["Query"]);
    for (name, values) in expected_req["Headers"].as_object().expect("headers") {
        let joined: Vec<&str> = values
            .as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("string"))
            .collect();
        assert_eq!(metadata["Headers"][name.as_str()], json!(joined.join(",")));
    }
    for (name, value) in expected_req["Query"].as_object().expect("query") {
        assert_eq!(
            metadata[name.as_str()],
            json!(serde_json::to_string(value).expect("encode")),
            "Metadata.{name} is double-encoded"
        );
    }
    assert_eq!(metadata["sys"]["MethodName"], json!(function_name));
    assert_eq!(metadata["sys"]["UtcNow"], json!(ctx.utc_now));
    assert_eq!(metadata["sys"]["RandGuid"], json!(ctx.rand_guid));

    let envelope = emu::build_invocation_request(port, &f, &Json::from_value(&payload), &ctx);
    assert_eq!(envelope.method.as_str(), host_request["method"]);
    assert_eq!(envelope.url(), url);
    assert_envelope(&host_request["headers"], &envelope, &ctx);
    let sent: Value = serde_json::from_slice(&envelope.body).expect("payload JSON");
    assert_eq!(sent, payload);
}

#[test]
fn payload_response_res_201_and_logs() {
    let v = vector("payload-request-and-result");
    let f = function("testFunctionName", "testInputReq", "res", &["get"]);
    let outcome = emu::payload_outcome(&f, &handler_response(&v["handler_response"]));
    assert_eq!(outcome.failure, None);
    assert_client_response(&v["expected_http_response"], &outcome.response, "02");
    let expected_logs: Vec<String> = v["expected_host_state"]["function_logs"]
        .as_array()
        .expect("logs")
        .iter()
        .map(|l| {
            l.as_str()
                .expect("log")
                .strip_prefix("Information: ")
                .expect("Information level")
                .to_string()
        })
        .collect();
    assert_eq!(outcome.function_logs, expected_logs);
}

#[test]
fn non_2xx_fails_the_invocation() {
    let v = vector("payload-non-2xx-fails-the-invocation");
    let f = function("fn", "req", "res", &["get"]);
    let outcome = emu::payload_outcome(&f, &handler_response(&v["handler_response"]));
    assert!(
        outcome.failure.is_some(),
        "non-2xx must fail the invocation"
    );
    assert!(outcome.function_logs.is_empty());
    assert_client_response(&v["expected_http_response"], &outcome.response, "06");

    // Same envelope as case payload-request-and-result, with placeholders for port and function name.
    let ctx = fixed_context();
    let req = client_request(
        "GET",
        "http://localhost/api/fn",
        HeaderMap::new(),
        Vec::new(),
    );
    let payload = emu::build_invocation_payload(&f, &req, &[], &ctx);
    let envelope = emu::build_invocation_request(8123, &f, &payload, &ctx);
    let host_request = &v["host_request"];
    assert!(matches_template(
        &envelope.url(),
        host_request["url"].as_str().expect("url")
    ));
    assert_envelope(&host_request["headers"], &envelope, &ctx);
}

#[test]
fn malformed_json_fails_with_host_message() {
    let v = vector("payload-result-not-json");
    let f = function("fn", "req", "res", &["get"]);
    let outcome = emu::payload_outcome(&f, &handler_response(&v["handler_response"]));
    let failure = outcome.failure.expect("invalid JSON must fail");
    let parts = v["expected_host_state"]["message_contains"]
        .as_array()
        .expect("message_contains");
    assert!(!parts.is_empty());
    for part in parts {
        let part = part.as_str().expect("text");
        assert!(
            failure.contains(part),
            "{failure:?} should contain {part:?}"
        );
    }
    assert_client_response(&v["expected_http_response"], &outcome.response, "08a");
}

#[test]
fn wrong_content_type_fails() {
    let v = vector("payload-result-wrong-content-type");
    let f = function("fn", "req", "res", &["get"]);
    let outcome = emu::payload_outcome(&f, &handler_response(&v["handler_response"]));
    let failure = outcome.failure.expect("text/plain must fail");
    let exception = v["expected_host_state"]["message_contains"][0]
        .as_str()
        .expect("the exception the host names");
    assert!(failure.contains(exception), "{failure:?}");
    assert_client_response(&v["expected_http_response"], &outcome.response, "08b");

    // A missing Content-Type fails the same way.
    let mut resp = handler_response(&v["handler_response"]);
    resp.headers.clear();
    assert!(emu::payload_outcome(&f, &resp).failure.is_some());
}

#[test]
fn json_without_invocation_shape_succeeds() {
    let v = vector("payload-result-without-envelope-keys");
    let resp = handler_response(&v["handler_response"]);
    let result = emu::parse_invocation_result(&resp).expect("unknown keys are ignored");
    let expected = &v["expected_host_state"];
    assert_eq!(
        Json::Object(result.outputs.clone()).to_value(),
        expected["Outputs"]
    );
    assert_eq!(result.return_value.to_value(), expected["Return"]);
    assert!(result.logs.is_empty());
    // The case's function is queue-style (no http output).
    let queue = emu::parse_function_json(
        "q",
        r#"{"bindings":[{"type":"queueTrigger","direction":"in","name":"queue"}]}"#,
    )
    .expect("function.json");
    assert_eq!(emu::payload_outcome(&queue, &resp).failure, None);
}

#[test]
fn res_normalization() {
    let f = function("fn", "req", "res", &["get"]);
    for id in [
        "res-status-only",
        "res-empty-object",
        "res-body-only",
        "res-body-and-status",
        "res-body-status-headers",
        "res-not-an-object",
        "res-status-alias-ignored",
        "res-numeric-status-and-json-body",
        "res-missing",
    ] {
        let v = vector(id);
        let outcome = emu::payload_outcome(&f, &handler_response(&v["handler_response"]));
        let expected = &v["expected_http_response"];
        if expected["status"] == json!(500) {
            assert!(outcome.failure.is_some(), "{id}: must fail");
        } else {
            assert_eq!(outcome.failure, None, "{id}");
        }
        assert_client_response(expected, &outcome.response, id);
    }
}

#[test]
fn octet_stream_body_is_base64() {
    let v = vector("octet-stream-body-is-base64");
    let client = &v["client_request"];
    let body = hex(client["body_hex"].as_str().expect("hex"));
    let url = fill(
        client["url"].as_str().expect("url"),
        &[("host", "localhost:7071")],
    );
    let req = client_request(
        client["method"].as_str().expect("method"),
        &url,
        headers_from(&client["headers"]),
        body,
    );
    let host_request = &v["host_request"];
    let function_name = host_request["url"]
        .as_str()
        .expect("url")
        .rsplit('/')
        .next()
        .expect("function name");
    let functions = vec![function(function_name, "req", "res", &["post"])];
    let routes = RouteTable::new(&functions, "api");
    let (index, route_values) = routes
        .find(&functions, &req.method, &req.path)
        .expect("client URL routes to the function");
    let f = &functions[index];
    let ctx = fixed_context();
    let payload = emu::build_invocation_payload(f, &req, &route_values, &ctx);
    let envelope = emu::build_invocation_request(9000, f, &payload, &ctx);
    assert!(matches_template(
        &envelope.url(),
        host_request["url"].as_str().expect("url")
    ));
    let payload = payload.to_value();
    let expected_req = &host_request["json_body_excerpt"]["Data"]["req"];
    assert_eq!(payload["Data"]["req"]["Method"], expected_req["Method"]);
    assert_eq!(payload["Data"]["req"]["Body"], expected_req["Body"]);
    for (name, value) in expected_req["Headers"].as_object().expect("headers") {
        assert_eq!(
            payload["Data"]["req"]["Headers"][name.as_str()],
            *value,
            "{name}"
        );
    }
    let outcome = emu::payload_outcome(f, &handler_response(&v["handler_response"]));
    assert_client_response(&v["expected_http_response"], &outcome.response, "11");
}

#[test]
fn other_binary_media_type_is_lossy_text() {
    let v = vector("other-binary-body-is-lossy-text");
    let client = &v["client_request"];
    let req = client_request(
        client["method"].as_str().expect("method"),
        "http://localhost:7071/api/upload",
        headers_from(&client["headers"]),
        hex(client["body_hex"].as_str().expect("hex")),
    );
    let f = function("upload", "req", "res", &["post"]);
    let payload = emu::build_invocation_payload(&f, &req, &[], &fixed_context()).to_value();
    assert_eq!(
        payload["Data"]["req"]["Body"],
        v["host_request"]["json_body_excerpt"]["Data"]["req"]["Body"]
    );
    let outcome = emu::payload_outcome(&f, &handler_response(&v["handler_response"]));
    assert_client_response(&v["expected_http_response"], &outcome.response, "12");
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex byte"))
        .collect()
}

// ------------------------------------------------------------------------------------------
// Forwarding mode (§6)
// ------------------------------------------------------------------------------------------

#[test]
fn forwarding_keeps_path_prefix_and_code() {
    let v = vector("forwarding-keeps-path-and-query");
    let key = "k3y_VALUE-1.~";
    let client = &v["client_request"];
    let url = fill(
        client["url"].as_str().expect("url"),
        &[("host", "localhost:7071"), ("FUNCTION_KEY", key)],
    );
    let handler_port = 7999u16;
    let port_text = handler_port.to_string();
    let host_request = &v["host_request"];
    let expected_url = fill(
        host_request["url"].as_str().expect("url"),
        &[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", &port_text),
            ("FUNCTION_KEY", key),
        ],
    );
    let ua_template = host_request["headers"]["User-Agent"].as_str().expect("UA");
    let ua_template = strip_annotation(ua_template);
    let ctx = fixed_context();

    for client_ua in [None, Some("curl/8.5.0")] {
        let mut headers = headers_from(&client["headers"]);
        if let Some(ua) = client_ua {
            headers.insert("user-agent", HeaderValue::from_str(ua).expect("UA"));
        }
        let req = client_request(
            client["method"].as_str().expect("method"),
            &url,
            headers,
            Vec::new(),
        );
        let fwd = emu::build_forward_request(handler_port, &req, &ctx);
        assert_eq!(fwd.method.as_str(), host_request["method"]);
        assert_eq!(fwd.url(), expected_url);
        assert!(fwd.body.is_empty(), "the case's body is null");
        assert!(!fwd.chunked);
        for (name, value) in host_request["headers"].as_object().expect("headers") {
            if name == "..." || name == "User-Agent" {
                continue;
            }
            let expected = fill(
                value.as_str().expect("string"),
                &[
                    ("HOST_VERSION", emu::HOST_VERSION),
                    ("INVOCATION_ID", &ctx.invocation_id),
                ],
            );
            assert_eq!(header_text(&fwd.headers, name), Some(expected), "{name}");
        }
        let expected_ua = fill(
            ua_template,
            &[
                ("client UA, if any", client_ua.unwrap_or("")),
                ("HOST_VERSION", emu::HOST_VERSION),
            ],
        );
        assert_eq!(
            header_text(&fwd.headers, "user-agent").as_deref(),
            Some(expected_ua.trim())
        );
    }

    let mut response = handler_response(&v["handler_response"]);
    let body = fill(
        &String::from_utf8_lossy(&response.body),
        &[("FUNCTION_KEY", key)],
    );
    response.body = Bytes::from(body);
    let client_response = emu::forward_response_to_client(response);
    let mut expected = v["expected_http_response"].clone();
    expected["body"] = json!(fill(
        expected["body"].as_str().expect("body"),
        &[("FUNCTION_KEY", key)]
    ));
    assert_client_response(&expected, &client_response, "03");
}

#[test]
fn forwarding_passes_non_2xx_through() {
    let v = vector("forwarding-non-2xx-passes-through");
    let req = client_request(
        "GET",
        "http://localhost:7071/api/things?b=2&a=1",
        HeaderMap::new(),
        Vec::new(),
    );
    let fwd = emu::build_forward_request(7100, &req, &fixed_context());
    assert_eq!(fwd.method.as_str(), v["host_request"]["method"]);
    assert!(matches_template(
        &fwd.url(),
        v["host_request"]["url"].as_str().expect("url")
    ));
    let client_response = emu::forward_response_to_client(handler_response(&v["handler_response"]));
    assert_client_response(&v["expected_http_response"], &client_response, "05");
    let expected_headers = v["expected_http_response"]["headers"]
        .as_object()
        .expect("headers");
    assert_eq!(client_response.headers.len(), expected_headers.len());
}

#[test]
fn forwarding_rebuilds_query_and_filters_headers() {
    // Protocol §6: repeated keys are
    // comma-joined and re-encoded; hop-by-hop and body headers without a body are dropped.
    let mut headers = HeaderMap::new();
    headers.insert("connection", HeaderValue::from_static("keep-alive"));
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    headers.insert("content-language", HeaderValue::from_static("en"));
    headers.insert("x-functions-key", HeaderValue::from_static("abc"));
    let req = client_request(
        "GET",
        "http://localhost:7071/api/q?tag=a&tag=b&x=%2F%3D",
        headers,
        Vec::new(),
    );
    let fwd = emu::build_forward_request(7100, &req, &fixed_context());
    assert_eq!(fwd.path_and_query, "/api/q?tag=a%2Cb&x=%2F%3D");
    assert!(fwd.headers.get("connection").is_none());
    assert!(fwd.headers.get("content-type").is_none());
    assert!(fwd.headers.get("content-language").is_none());
    assert_eq!(
        header_text(&fwd.headers, "x-functions-key").as_deref(),
        Some("abc")
    );
    assert!(fwd.headers.get("traceparent").is_some());

    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("content-length", HeaderValue::from_static("2"));
    let req = client_request("POST", "http://h/api/q", headers, b"{}".to_vec());
    let fwd = emu::build_forward_request(7100, &req, &fixed_context());
    assert_eq!(&fwd.body[..], b"{}");
    assert_eq!(
        header_text(&fwd.headers, "content-length").as_deref(),
        Some("2")
    );
    assert_eq!(
        header_text(&fwd.headers, "content-type").as_deref(),
        Some("application/json")
    );

    // A lone Transfer-Encoding: chunked is dropped from the handler's response.
    let mut resp_headers = HeaderMap::new();
    resp_headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    resp_headers.append("set-cookie", HeaderValue::from_static("a=1"));
    resp_headers.append("set-cookie", HeaderValue::from_static("b=2"));
    let client = emu::forward_response_to_client(HandlerResponse {
        status: StatusCode::FOUND,
        reason: None,
        headers: resp_headers,
        body: Bytes::new(),
    });
    assert_eq!(client.status, StatusCode::FOUND);
    assert!(client.headers.get("transfer-encoding").is_none());
    assert_eq!(client.headers.get_all("set-cookie").iter().count(), 2);
}

// ------------------------------------------------------------------------------------------
// Readiness (§3.3) and path selection (case handler-path-selection)
// ------------------------------------------------------------------------------------------

#[test]
fn readiness_probe_shape_and_schedule() {
    let v = vector("readiness-probe");
    let probe = &v["host_request"];
    let req = emu::readiness_probe_request(8555);
    assert_eq!(req.method.as_str(), probe["method"]);
    assert_eq!(
        req.url(),
        fill(
            probe["url"].as_str().expect("url"),
            &[("FUNCTIONS_CUSTOMHANDLER_PORT", "8555")]
        )
    );
    assert!(req.body.is_empty() && probe["body"].is_null());
    let interval = probe["poll_interval_ms"]
        .as_u64()
        .expect("poll_interval_ms");
    assert_eq!(
        emu::READINESS_POLL_INTERVAL,
        Duration::from_millis(interval)
    );
    let default_timeout = probe["initialization_timeout_default"]
        .as_str()
        .expect("initialization_timeout_default");
    assert_eq!(
        Some(emu::DEFAULT_INITIALIZATION_TIMEOUT),
        emu::parse_timespan(default_timeout)
    );
}

#[test]
fn path_selection_matrix() {
    let v = vector("handler-path-selection");
    let function_name = "someFuntionName";
    for case in v["cases"].as_array().expect("cases") {
        let section = case["section"].as_str().expect("section");
        let forwarding = case["enableForwardingHttpRequest"].as_bool().expect("bool");
        let incoming = case["incoming"].as_str().expect("incoming");
        let expected_path = case["path"].as_str().expect("path");
        if section.starts_with("httpWorker") {
            // Legacy section: the emulator rejects it clearly instead of emulating it.
            let host_json = json!({
                "version": "2.0",
                "httpWorker": {
                    "description": {"defaultExecutablePath": "x"},
                    "enableForwardingHttpRequest": forwarding
                }
            })
            .to_string();
            match emu::parse_host_json(&host_json, &[]) {
                Err(EmulatorError::Config(msg)) => assert!(msg.contains("httpWorker"), "{msg}"),
                other => panic!("legacy httpWorker must be rejected, got {other:?}"),
            }
            continue;
        }
        let host_json = json!({
            "version": "2.0",
            "customHandler": {
                "description": {"defaultExecutablePath": "x"},
                "enableForwardingHttpRequest": forwarding
            }
        })
        .to_string();
        let config = emu::parse_host_json(&host_json, &[]).expect("customHandler host.json");
        let f = function(function_name, "req", "res", &["get"]);
        let mode = f.wire_mode(config.enable_forwarding);
        let path = incoming
            .split_once("://")
            .map(|(_, rest)| rest.find('/').map_or("", |i| &rest[i..]))
            .expect("absolute URL");
        assert_eq!(
            emu::handler_path_value(mode, function_name, path),
            expected_path,
            "{case}"
        );
    }
    for example in v["uri_examples"].as_array().expect("uri_examples") {
        let uri = example["uri"].as_str().expect("uri");
        let port: u16 = uri
            .trim_start_matches("http://127.0.0.1:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        assert_eq!(
            emu::handler_uri(port, example["pathValue"].as_str().expect("pathValue")),
            uri
        );
    }
}

// ------------------------------------------------------------------------------------------
// Configuration and routing (protocol §1, §2, §8)
// ------------------------------------------------------------------------------------------

#[test]
fn app_setting_overrides_forwarding_flag_case_insensitively() {
    let root = &repo_root();
    let text = std::fs::read_to_string(root.join("host.json")).expect("project host.json");
    let base = emu::parse_host_json(&text, &[]).expect("project host.json parses");
    for (value, expected) in [("false", WireMode::Payload), ("True", WireMode::Forwarding)] {
        let settings = vec![(
            "AzureFunctionsJobHost__customHandler__enableForwardingHttpRequest".to_string(),
            value.to_string(),
        )];
        let config = emu::parse_host_json(&text, &settings).expect("override applies");
        assert_eq!(config.mode(), expected);
        assert_eq!(config.route_prefix, base.route_prefix);
    }
    let upper = r#"{"CUSTOMHANDLER":{"Description":{"DefaultExecutablePath":"h",
        "Arguments":["a"]},"EnableForwardingHttpRequest":"true"},
        "extensions":{"http":{"routePrefix":""}}}"#;
    let config = emu::parse_host_json(upper, &[]).expect("keys are case-insensitive");
    assert!(config.enable_forwarding);
    assert_eq!(config.default_executable_path, "h");
    assert_eq!(config.arguments, vec!["a".to_string()]);
    assert_eq!(config.route_prefix, "");
    let args_override = vec![(
        "AzureFunctionsJobHost__customHandler__description__arguments".to_string(),
        r#"["--x", "y"]"#.to_string(),
    )];
    let config = emu::parse_host_json(upper, &args_override).expect("arguments override");
    assert_eq!(config.arguments, vec!["--x".to_string(), "y".to_string()]);
    assert!(matches!(
        emu::parse_host_json(r#"{"customHandler":{}}"#, &[]),
        Err(EmulatorError::Config(m)) if m.contains("Missing worker Description")
    ));
}

#[test]
fn project_functions_route_with_methods() {
    let root = &repo_root();
    let functions = emu::load_functions(root).expect("project function.json files");
    let names: Vec<&str> = functions.iter().map(|f| f.name.as_str()).collect();
    assert!(
        names.contains(&"query") && names.contains(&"update"),
        "{names:?}"
    );
    for f in &functions {
        if f.http_trigger.is_some() {
            assert!(f.is_http_in_and_out(), "{} is HTTP in + out", f.name);
        } else {
            // The change-feed function: a cosmosDBTrigger, always in payload mode (§1).
            assert_eq!(f.name, "invalidate");
            assert_eq!(f.bindings[0].kind, "cosmosDBTrigger");
            assert!(matches!(f.wire_mode(true), emu::WireMode::Payload));
        }
    }
    let routes = RouteTable::new(&functions, "api");
    let find = |method: Method, path: &str| {
        routes
            .find(&functions, &method, path)
            .map(|(i, _)| functions[i].name.clone())
    };
    assert_eq!(find(Method::GET, "/api/query").as_deref(), Some("query"));
    assert_eq!(find(Method::POST, "/API/Query/").as_deref(), Some("query"));
    assert_eq!(find(Method::POST, "/api/update").as_deref(), Some("update"));
    // Method not in `methods` → the route does not match → 404 (host router behaviour).
    assert_eq!(find(Method::GET, "/api/update"), None);
    assert_eq!(find(Method::GET, "/query"), None);
    // No HTTP route for the change-feed function.
    assert_eq!(find(Method::POST, "/api/invalidate"), None);
}

#[test]
fn route_templates_fill_params() {
    let text = r#"{"bindings":[{"type":"httpTrigger","direction":"in","name":"req",
        "route":"products/{id:int}/{name?}"},{"type":"http","direction":"out","name":"res"},
        {"type":"queue","direction":"out","name":"q"}]}"#;
    let f = emu::parse_function_json("products", text).expect("function.json");
    assert!(
        !f.is_http_in_and_out(),
        "an extra queue output forces payload mode"
    );
    assert_eq!(f.wire_mode(true), WireMode::Payload);
    let functions = vec![f];
    let routes = RouteTable::new(&functions, "");
    let (_, values) = routes
        .find(&functions, &Method::DELETE, "/products/42/a%20b")
        .expect("match");
    assert_eq!(
        values,
        vec![
            ("id".to_string(), Some("42".to_string())),
            ("name".to_string(), Some("a b".to_string()))
        ]
    );
    let (_, values) = routes
        .find(&functions, &Method::GET, "/products/7")
        .expect("optional parameter may be missing");
    assert_eq!(values[1], ("name".to_string(), None));
    assert!(
        routes
            .find(&functions, &Method::GET, "/products/x")
            .is_none()
    );
}

#[test]
fn utc_timestamps_look_like_newtonsoft() {
    assert_eq!(emu::format_utc(0, 0), "1970-01-01T00:00:00Z");
    assert_eq!(
        emu::format_utc(1_697_141_629, 640_002_000),
        "2023-10-12T20:13:49.640002Z"
    );
}

// ------------------------------------------------------------------------------------------
// End to end: a Python echo handler started by the emulator
// ------------------------------------------------------------------------------------------

const ECHO_HANDLER: &str = r#"#!/usr/bin/env python3
import base64, json, os, signal, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

probes = {"count": 0}
marker = os.environ.get("EMU_TEST_MARKER")

def on_term(signum, frame):
    if marker:
        with open(marker, "w") as f:
            f.write("SIGTERM")
    os._exit(0)

signal.signal(signal.SIGTERM, on_term)
print("echo handler starting", flush=True)
print("this line is a warning for the emulator", file=sys.stderr, flush=True)
time.sleep(float(os.environ.get("EMU_TEST_START_DELAY", "0")))

ENV_KEYS = ["FUNCTIONS_CUSTOMHANDLER_PORT", "FUNCTIONS_HTTPWORKER_PORT",
            "FUNCTIONS_CUSTOMHANDLER_WORKER_ID", "FUNCTIONS_HTTPWORKER_ID",
            "FUNCTIONS_APP_ROOT_PATH", "EMU_TEST_SETTING"]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status, content_type, body, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        if self.command == "GET" and self.path == "/":
            probes["count"] += 1
            self.reply(404, "text/plain", b"not found")
            return
        body = self.read_body()
        echo = {
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_b64": base64.b64encode(body).decode(),
            "env": {k: os.environ.get(k) for k in ENV_KEYS},
            "cwd": os.getcwd(),
            "argv": sys.argv[1:],
            "probes": probes["count"],
        }
        if self.path.startswith("/api/"):
            if "exit=1" in self.path:
                os._exit(3)
            self.reply(207, "application/json", json.dumps(echo).encode(), [("X-Echo", "1")])
            return
        payload = json.loads(body)
        echo["payload"] = payload
        if payload["Data"]["req"]["Query"].get("exit") == "1":
            os._exit(3)
        result = {
            "Outputs": {"res": {"statusCode": "207",
                                "headers": {"Content-Type": "application/json", "X-Echo": "1"},
                                "body": json.dumps(echo)}},
            "Logs": ["echo handled " + self.path],
            "ReturnValue": None,
        }
        self.reply(200, "application/json; charset=utf-8", json.dumps(result).encode())

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any

port = int(os.environ["FUNCTIONS_CUSTOMHANDLER_PORT"])
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.daemon_threads = True
server.serve_forever()
"#;

struct TempApp {
    root: PathBuf,
}

impl Drop for TempApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn write_echo_app(extra_host: Value) -> TempApp {
    let root = std::env::temp_dir().join(format!("emu-e2e-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(root.join("echo")).expect("create app dir");
    std::fs::create_dir_all(root.join("items")).expect("create app dir");
    let script = root.join("echo_handler.py");
    std::fs::write(&script, ECHO_HANDLER).expect("write handler");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("chmod handler");
    }
    let mut host = json!({
        "version": "2.0",
        "customHandler": {
            "description": {
                "defaultExecutablePath": "echo_handler.py",
                "workingDirectory": "",
                "arguments": ["--greeting", "%EMU_TEST_GREETING%", "%EMU_UNDEFINED_VAR_42%"]
            },
            "enableForwardingHttpRequest": false
        },
        "extensions": {"http": {"routePrefix": "api"}}
    });
    if let (Some(host_obj), Some(extra)) = (host.as_object_mut(), extra_host.as_object()) {
        for (k, v) in extra {
            host_obj.insert(k.clone(), v.clone());
        }
    }
    std::fs::write(root.join("host.json"), host.to_string()).expect("write host.json");
    let echo = json!({"bindings": [
        {"type": "httpTrigger", "direction": "in", "name": "req", "authLevel": "function",
         "methods": ["get", "post"]},
        {"type": "http", "direction": "out", "name": "res"}
    ]});
    std::fs::write(root.join("echo/function.json"), echo.to_string()).expect("write");
    let items = json!({"bindings": [
        {"type": "httpTrigger", "direction": "in", "name": "req", "authLevel": "anonymous",
         "methods": ["get"], "route": "items/{id:int}/{name?}"},
        {"type": "http", "direction": "out", "name": "res"}
    ]});
    std::fs::write(root.join("items/function.json"), items.to_string()).expect("write");
    TempApp { root }
}

fn header_of<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["headers"]
        .as_array()
        .expect("headers list")
        .iter()
        .find(|pair| {
            pair[0]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .and_then(|pair| pair[1].as_str())
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<(&str, Vec<u8>)>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = client
        .request(method, url)
        .header("X-Custom", "yes")
        .header("User-Agent", "emu-test/1.0");
    if let Some((content_type, bytes)) = body {
        request = request.header("Content-Type", content_type).body(bytes);
    }
    let response = request.send().await.expect("request to the emulator");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("response body").to_vec();
    (status, headers, bytes)
}

fn canonical(path: &str) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_echo_handler_in_both_modes() {
    let app = write_echo_app(json!({}));
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client");
    for (forwarding, expected_mode) in
        [("false", WireMode::Payload), ("true", WireMode::Forwarding)]
    {
        let marker = app.root.join(format!("terminated-{forwarding}"));
        let mut cfg = EmulatorConfig::new(&app.root);
        cfg.env = vec![
            (
                "AzureFunctionsJobHost__customHandler__enableForwardingHttpRequest".to_string(),
                forwarding.to_string(),
            ),
            ("EMU_TEST_GREETING".to_string(), "hello world".to_string()),
            ("EMU_TEST_SETTING".to_string(), "from-cfg-env".to_string()),
            ("EMU_TEST_START_DELAY".to_string(), "0.3".to_string()),
            (
                "EMU_TEST_MARKER".to_string(),
                marker.to_string_lossy().into_owned(),
            ),
        ];
        let emulator = HostEmulator::start(cfg).await.expect("emulator starts");
        assert_eq!(emulator.mode(), expected_mode);
        assert_eq!(emulator.function_mode("echo"), Some(expected_mode));
        let base = emulator.base_url();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        assert_eq!(
            emulator.function_url("items").as_deref(),
            Some(format!("{base}/api/items/{{id:int}}/{{name?}}").as_str())
        );

        // GET with query (repeated key, function key).
        let url = format!("{base}/api/echo?name=Atlas&tag=a&tag=b&code=k1");
        let (status, headers, body) = call(&client, reqwest::Method::GET, &url, None).await;
        assert_eq!(status, 207, "{}", String::from_utf8_lossy(&body));
        assert_eq!(
            headers.get("x-echo").and_then(|v| v.to_str().ok()),
            Some("1")
        );
        let echo: Value = serde_json::from_slice(&body).expect("echo JSON");
        let handler_port = emulator.handler_port().to_string();
        assert_eq!(
            echo["env"]["FUNCTIONS_CUSTOMHANDLER_PORT"],
            json!(handler_port)
        );
        assert_eq!(
            echo["env"]["FUNCTIONS_HTTPWORKER_PORT"],
            json!(handler_port)
        );
        let worker_id = echo["env"]["FUNCTIONS_CUSTOMHANDLER_WORKER_ID"]
            .as_str()
            .expect("worker id");
        assert!(uuid::Uuid::parse_str(worker_id).is_ok());
        assert_eq!(echo["env"]["FUNCTIONS_HTTPWORKER_ID"], json!(worker_id));
        assert_eq!(
            canonical(
                echo["env"]["FUNCTIONS_APP_ROOT_PATH"]
                    .as_str()
                    .expect("root")
            ),
            canonical(&app.root.to_string_lossy())
        );
        assert_eq!(echo["env"]["EMU_TEST_SETTING"], json!("from-cfg-env"));
        assert_eq!(
            canonical(echo["cwd"].as_str().expect("cwd")),
            canonical(&app.root.to_string_lossy())
        );
        // %VAR% expanded, unresolved token deleted, joined and re-split on spaces (§2.1).
        assert_eq!(echo["argv"], json!(["--greeting", "hello", "world"]));
        assert!(
            echo["probes"].as_u64().expect("probes") >= 1,
            "readiness probe seen"
        );
        assert_eq!(
            header_of(&echo, "X-Azure-Functions-HostVersion"),
            Some(emu::HOST_VERSION)
        );
        let invocation_id =
            header_of(&echo, "X-Azure-Functions-InvocationId").expect("invocation id");
        assert!(uuid::Uuid::parse_str(invocation_id).is_ok());
        assert!(header_of(&echo, "traceparent").is_some_and(|t| t.len() == 55));
        // Client headers travel inside the payload in payload mode, on the wire in forwarding.
        let expected_custom = match expected_mode {
            WireMode::Payload => None,
            WireMode::Forwarding => Some("yes"),
        };
        assert_eq!(header_of(&echo, "X-Custom"), expected_custom);

        match expected_mode {
            WireMode::Payload => {
                assert_eq!(
                    headers.get("content-type").and_then(|v| v.to_str().ok()),
                    Some("application/json; charset=utf-8")
                );
                assert_eq!(echo["method"], json!("POST"));
                assert_eq!(echo["path"], json!("/echo"));
                assert_eq!(header_of(&echo, "Transfer-Encoding"), Some("chunked"));
                assert_eq!(header_of(&echo, "Content-Length"), None);
                assert_eq!(
                    header_of(&echo, "Content-Type"),
                    Some("application/json; charset=utf-8")
                );
                let ua = format!("Azure-Functions-Host/{}", emu::HOST_VERSION);
                assert_eq!(header_of(&echo, "User-Agent"), Some(ua.as_str()));
                let req = &echo["payload"]["Data"]["req"];
                assert_eq!(req["Url"], json!(url));
                assert_eq!(req["Method"], json!("GET"));
                assert_eq!(
                    req["Query"],
                    json!({"name": "Atlas", "tag": "a,b", "code": "k1"})
                );
                assert_eq!(req["Headers"]["X-Custom"], json!(["yes"]));
                assert_eq!(req["Params"], json!({}));
                assert_eq!(
                    req["Identities"][0]["AuthenticationType"],
                    json!("WebJobsAuthLevel")
                );
                assert!(req.get("Body").is_none(), "no body without Content-Length");
                let metadata = &echo["payload"]["Metadata"];
                assert_eq!(metadata["name"], json!("\"Atlas\""));
                assert_eq!(metadata["tag"], json!("\"a,b\""));
                assert!(metadata.get("code").is_none());
                assert_eq!(metadata["Headers"]["X-Custom"], json!("yes"));
                assert_eq!(metadata["sys"]["MethodName"], json!("echo"));
            }
            WireMode::Forwarding => {
                assert_eq!(
                    headers.get("content-type").and_then(|v| v.to_str().ok()),
                    Some("application/json")
                );
                assert_eq!(echo["method"], json!("GET"));
                assert_eq!(
                    echo["path"],
                    json!("/api/echo?name=Atlas&tag=a%2Cb&code=k1")
                );
                assert_eq!(header_of(&echo, "Transfer-Encoding"), None);
                let ua = format!("emu-test/1.0 Azure-Functions-Host/{}", emu::HOST_VERSION);
                assert_eq!(header_of(&echo, "User-Agent"), Some(ua.as_str()));
            }
        }

        // POST with a JSON body.
        let (status, _, body) = call(
            &client,
            reqwest::Method::POST,
            &format!("{base}/api/echo"),
            Some(("application/json", br#"{"hello":"world"}"#.to_vec())),
        )
        .await;
        assert_eq!(status, 207);
        let echo: Value = serde_json::from_slice(&body).expect("echo JSON");
        match expected_mode {
            WireMode::Payload => {
                assert_eq!(
                    echo["payload"]["Data"]["req"]["Body"],
                    json!(r#"{"hello":"world"}"#)
                );
            }
            WireMode::Forwarding => {
                let forwarded = base64::engine::general_purpose::STANDARD
                    .decode(echo["body_b64"].as_str().expect("b64"))
                    .expect("base64");
                assert_eq!(forwarded, br#"{"hello":"world"}"#);
                assert_eq!(header_of(&echo, "Content-Length"), Some("17"));
                assert_eq!(header_of(&echo, "Content-Type"), Some("application/json"));
            }
        }

        // Binary body: base64 in payload mode, bytes in forwarding mode.
        let (status, _, body) = call(
            &client,
            reqwest::Method::POST,
            &format!("{base}/api/echo"),
            Some(("application/octet-stream", vec![0x00, 0xff, 0x10])),
        )
        .await;
        assert_eq!(status, 207);
        let echo: Value = serde_json::from_slice(&body).expect("echo JSON");
        match expected_mode {
            WireMode::Payload => assert_eq!(echo["payload"]["Data"]["req"]["Body"], json!("AP8Q")),
            WireMode::Forwarding => assert_eq!(echo["body_b64"], json!("AP8Q")),
        }

        // Route parameters.
        let (status, _, body) = call(
            &client,
            reqwest::Method::GET,
            &format!("{base}/api/items/42/widget"),
            None,
        )
        .await;
        assert_eq!(status, 207);
        let echo: Value = serde_json::from_slice(&body).expect("echo JSON");
        match expected_mode {
            WireMode::Payload => {
                assert_eq!(echo["path"], json!("/items"));
                let req = &echo["payload"]["Data"]["req"];
                assert_eq!(req["Params"], json!({"id": "42", "name": "widget"}));
                assert_eq!(req["Identities"][0]["IsAuthenticated"], json!(false));
                assert_eq!(echo["payload"]["Metadata"]["id"], json!("\"42\""));
            }
            WireMode::Forwarding => assert_eq!(echo["path"], json!("/api/items/42/widget")),
        }
        let (status, _, body) = call(
            &client,
            reqwest::Method::GET,
            &format!("{base}/api/items/7"),
            None,
        )
        .await;
        assert_eq!(status, 207);
        if expected_mode == WireMode::Payload {
            let echo: Value = serde_json::from_slice(&body).expect("echo JSON");
            assert_eq!(
                echo["payload"]["Data"]["req"]["Params"],
                json!({"id": "7", "name": null})
            );
        }

        // Not routable: int constraint, method not allowed, unknown function.
        for (method, path) in [
            (reqwest::Method::GET, "/api/items/abc"),
            (reqwest::Method::DELETE, "/api/echo"),
            (reqwest::Method::GET, "/api/nope"),
            (reqwest::Method::GET, "/echo"),
        ] {
            let (status, _, _) =
                call(&client, method.clone(), &format!("{base}{path}"), None).await;
            assert_eq!(status, 404, "{method} {path}");
        }

        emulator.shutdown().await;
        let marker_text = std::fs::read_to_string(&marker).unwrap_or_default();
        assert_eq!(
            marker_text, "SIGTERM",
            "handler received SIGTERM on shutdown"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_exit_turns_calls_into_500() {
    let app = write_echo_app(json!({}));
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client");
    let emulator = HostEmulator::start(EmulatorConfig::new(&app.root))
        .await
        .expect("emulator starts");
    assert_eq!(emulator.mode(), WireMode::Payload);
    let base = emulator.base_url();
    let (status, _, _) = call(
        &client,
        reqwest::Method::GET,
        &format!("{base}/api/echo?exit=1"),
        None,
    )
    .await;
    assert_eq!(status, 500, "the handler died during the call");
    for _ in 0..100 {
        if emulator.handler_exited() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(emulator.handler_exited());
    let (status, _, _) = call(
        &client,
        reqwest::Method::GET,
        &format!("{base}/api/echo"),
        None,
    )
    .await;
    assert_eq!(status, 500, "no restart: later calls fail");
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_failures_are_reported() {
    // A handler that never listens: readiness budget from customHandler.initializationTimeout.
    let app = write_echo_app(json!({}));
    let mut cfg = EmulatorConfig::new(&app.root);
    cfg.env = vec![
        (
            "AzureFunctionsJobHost__customHandler__initializationTimeout".to_string(),
            "00:00:01".to_string(),
        ),
        ("EMU_TEST_START_DELAY".to_string(), "30".to_string()),
    ];
    let started = std::time::Instant::now();
    match HostEmulator::start(cfg).await {
        Err(EmulatorError::ReadinessTimeout { budget, .. }) => {
            assert_eq!(budget, Duration::from_secs(1));
        }
        Err(other) => panic!("expected a readiness timeout, got {other}"),
        Ok(_) => panic!("expected a readiness timeout, the emulator started"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));

    // A handler that exits at once.
    let app = write_echo_app(json!({}));
    std::fs::write(
        app.root.join("echo_handler.py"),
        "#!/usr/bin/env python3\nimport sys\nprint('boom', file=sys.stderr)\nsys.exit(3)\n",
    )
    .expect("rewrite handler");
    match HostEmulator::start(EmulatorConfig::new(&app.root)).await {
        Err(EmulatorError::HandlerExited { status, .. }) => {
            assert!(status.contains('3'), "{status}")
        }
        Err(other) => panic!("expected HandlerExited, got {other}"),
        Ok(_) => panic!("expected HandlerExited, the emulator started"),
    }

    // Executable override that does not exist.
    let app = write_echo_app(json!({}));
    let mut cfg = EmulatorConfig::new(&app.root);
    cfg.executable = Some(app.root.join("no-such-handler"));
    assert!(matches!(
        HostEmulator::start(cfg).await,
        Err(EmulatorError::Spawn { .. })
    ));
}
