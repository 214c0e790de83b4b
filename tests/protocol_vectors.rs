//! The handler's side of the custom handler protocol, checked against the request/response
//! cases in `tests/protocol/` (see `docs/custom-handler-protocol.md`).

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use cosmos_cache_handler::api::{ApiResponse, CacheOutcome, Function};
use cosmos_cache_handler::protocol::{invocation_result, parse_invocation};
use serde_json::Value;

fn vector(name: &str) -> Value {
    let path = format!("{}/tests/protocol/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Case payload-request-and-result: the host's HTTP-trigger invocation payload (its trigger is named `testInputReq`,
/// Metadata values are double-encoded). We read method, decoded query and the body text.
#[test]
fn reads_the_hosts_invocation_payload() {
    let v = vector("payload-request-and-result");
    let body = serde_json::to_vec(&v["host_request"]["json_body"]).expect("JSON");
    let req = parse_invocation(Function::Query, &body, Some("id-1".into())).expect("parses");
    let sent = &v["host_request"]["json_body"]["Data"]["testInputReq"];
    assert_eq!(
        req.method.as_str(),
        sent["Method"].as_str().expect("Method")
    );
    let mut expected: Vec<(String, String)> = sent["Query"]
        .as_object()
        .expect("Query")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_string()))
        .collect();
    let mut got = req.query.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "decoded query, e.g. 'Ink And Toner'");
    assert_eq!(
        req.body,
        Bytes::from(sent["Body"].as_str().expect("Body").to_string())
    );
    assert_eq!(req.invocation_id.as_deref(), Some("id-1"));
}

/// Cases payload-request-and-result and res-body-status-headers: what the host accepts as `Outputs.res` (§5.4): `statusCode` as a
/// string, `headers` as name → string, `body` as text; `Logs` strings; `ReturnValue` null.
#[test]
fn answers_in_the_shape_the_host_reads() {
    let reference = vector("payload-request-and-result");
    let reference = &reference["handler_response"]["json_body"];
    let mut response = ApiResponse::json(StatusCode::CREATED, Bytes::from_static(b"{\"a\":1}"));
    response.cache = Some(CacheOutcome::Miss);
    response.request_charge = Some(2.5);
    let ours: Value = serde_json::from_slice(&invocation_result(&response, "query GET -> 201"))
        .expect("the envelope is JSON");

    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ours), keys(reference), "Outputs, Logs, ReturnValue");
    assert_eq!(
        keys(&ours["Outputs"]),
        keys(&reference["Outputs"]),
        "the `res` output"
    );
    let res = &ours["Outputs"]["res"];
    assert_eq!(res["statusCode"], reference["Outputs"]["res"]["statusCode"]);
    assert_eq!(
        res["body"], "{\"a\":1}",
        "already-serialized text, written verbatim"
    );
    let header_vector = vector("res-body-status-headers");
    let expected_headers =
        &header_vector["handler_response"]["json_body"]["Outputs"]["res"]["headers"];
    assert!(
        expected_headers
            .as_object()
            .expect("headers")
            .values()
            .all(Value::is_string)
    );
    let headers = res["headers"].as_object().expect("headers");
    assert!(headers.values().all(Value::is_string), "{headers:?}");
    assert_eq!(headers["Content-Type"], "application/json");
    assert_eq!(headers["x-cache"], "miss");
    assert_eq!(headers["x-ms-request-charge"], "2.50");
    assert!(
        ours["Logs"]
            .as_array()
            .expect("Logs")
            .iter()
            .all(Value::is_string)
    );
    assert!(ours["ReturnValue"].is_null());
}

/// Case payload-non-2xx-fails-the-invocation: a non-2xx answer fails the invocation, so only an envelope we cannot read gets
/// one; a client error travels inside `res` with a 2xx envelope (see tests/api/bad_input.rs).
#[test]
fn unreadable_invocations_are_errors() {
    let v = vector("payload-non-2xx-fails-the-invocation");
    assert_eq!(v["handler_response"]["status"], 400);
    for body in [
        &b"Hello World"[..],
        b"{\"key1\":\"value1\"}",
        b"{\"Data\":{\"req\":{}}}",
    ] {
        assert!(parse_invocation(Function::Update, body, None).is_err());
    }
    let ok = br#"{"Data":{"req":{"Method":"delete","Query":"{\"id\":\"x\"}"}},"Metadata":{}}"#;
    let req = parse_invocation(Function::Update, ok, None).expect("lenient");
    assert_eq!(req.method, Method::DELETE);
}
