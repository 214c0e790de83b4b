//! Property tests ("fuzzing") of everything a client or the host controls: the invocation
//! envelope, `query`'s GET and POST parsers and `update`'s validation (POST and DELETE).
//!
//! Each target drives the real router in-process (`oneshot`) with a recording fake [`Store`]
//! (it counts writes and never fails) and a cache pointed at an unreachable Redis (every read
//! bypasses to the fake store, every invalidation is `pending`). Client requests are sent in
//! both wire modes: forwarded (`/api/{function}`) and inside an invocation envelope
//! (`POST /{function}`), where the generator varies the lenient shapes the host may send
//! (`Query` as an object, a JSON string or only in `Url`; a renamed binding; base64 bodies).
//!
//! Most generators start from a valid request and apply at most one realistic mistake whose
//! outcome is known in advance (the field that must be named). Properties:
//! - no panic, and no 5xx for anything a client or the host sends (the fake store never fails);
//! - a malformed envelope gets a non-2xx (it fails the invocation), and nothing is written;
//! - a client fault inside a valid envelope (or forwarded) gets the expected 4xx whose JSON body
//!   names the expected field (`{"error":{"field":...}}`); a valid request gets 200;
//! - nothing is written to the store for any 4xx.
//!
//! 10,000 cases per target by default; `PROPTEST_CASES=1000000 cargo test --release --test fuzz`
//! runs longer (see the README's Tests section).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::Request;
use cosmos_cache_handler::config::Settings;
use cosmos_cache_handler::store::{PkValue, QueryPage, QuerySpec, Store, StoreError, WriteError};
use http_body_util::BodyExt;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------
// The harness: the only code that knows how `AppState` and the `Store` trait look.

/// A store that never fails and counts what it is asked to do.
#[derive(Default)]
struct RecordingStore {
    writes: AtomicUsize,
    queries: AtomicUsize,
}

#[async_trait]
impl Store for RecordingStore {
    async fn partition_key_path(&self) -> Result<String, StoreError> {
        Ok("/state".into())
    }

    async fn query(&self, _spec: &QuerySpec) -> Result<QueryPage, StoreError> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        Ok(QueryPage {
            items: vec![json!({"id": "a", "state": "Texas"})],
            continuation: None,
            request_charge: 1.0,
        })
    }

    async fn upsert(&self, _pk: &PkValue, _id: &str, _doc: &Value) -> Result<f64, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(1.0)
    }

    async fn delete(&self, _pk: &PkValue, _id: &str) -> Result<f64, WriteError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(1.0)
    }
}

struct Harness {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    store: Arc<RecordingStore>,
}

/// The router over the real state, with its store replaced by a [`RecordingStore`] and Redis at
/// a port nothing listens on (every Redis call fails fast; the circuit breaker then skips it).
fn harness() -> Harness {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let settings = Settings::from_lookup(|name| {
        match name {
            "REDIS_CONNECTION_STRING" => Some("redis://127.0.0.1:1"),
            "REDIS_TIMEOUT_MS" => Some("50"),
            "COSMOS_ENDPOINT" => Some("http://127.0.0.1:1/"),
            "COSMOS_KEY" => Some("a2V5"),
            "COSMOS_DATABASE" => Some("tutorial"),
            "COSMOS_CONTAINER" => Some("us_cities"),
            _ => None,
        }
        .map(str::to_string)
    })
    .expect("settings");
    let store = Arc::new(RecordingStore::default());
    let app = {
        let _guard = rt.enter();
        let mut state = cosmos_cache_handler::build_state(&settings).expect("state");
        state.store = store.clone();
        cosmos_cache_handler::router(state, "api")
    };
    Harness { rt, app, store }
}

/// 10,000 cases unless `PROPTEST_CASES` says otherwise; no regression files (a failure prints
/// its minimal input).
fn config() -> Config {
    let mut config = Config {
        failure_persistence: None,
        // ChaCha costs a quarter of the run time in a debug build.
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        // The few filters reject a small share of values; a long run must not abort on the total.
        max_local_rejects: u32::MAX,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 10_000;
    }
    config
}

/// Runs `check` on `config().cases` values of `strategy` against a fresh harness.
fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    check: impl Fn(&Harness, S::Value) -> Result<(), TestCaseError>,
) {
    let harness = harness();
    let mut runner = TestRunner::new(config());
    let passed = AtomicUsize::new(0);
    let result = runner.run(&strategy, |value| {
        check(&harness, value)?;
        passed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    eprintln!(
        "{name}: {} cases passed ({} store writes, {} store queries)",
        passed.into_inner(),
        harness.store.writes.load(Ordering::SeqCst),
        harness.store.queries.load(Ordering::SeqCst)
    );
}

/// What came back, and how many store writes the request caused.
struct Answer {
    status: u16,
    body: Vec<u8>,
    writes: usize,
}

fn send(h: &Harness, request: Request<Body>) -> Answer {
    let before = h.store.writes.load(Ordering::SeqCst);
    let response =
        h.rt.block_on(h.app.clone().oneshot(request))
            .expect("infallible");
    let status = response.status().as_u16();
    let body =
        h.rt.block_on(response.into_body().collect())
            .expect("body")
            .to_bytes()
            .to_vec();
    let writes = h.store.writes.load(Ordering::SeqCst) - before;
    Answer {
        status,
        body,
        writes,
    }
}

// ---------------------------------------------------------------------------------------------
// Client requests, wire modes and the expected outcome.

/// One client request to a function.
#[derive(Clone)]
struct Client {
    function: &'static str,
    method: String,
    query: Vec<(String, String)>,
    body: Vec<u8>,
}

/// The body as text, so that a failing case is readable.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("function", &self.function)
            .field("method", &self.method)
            .field("query", &self.query)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl Client {
    fn new(function: &'static str, method: &str) -> Self {
        Self {
            function,
            method: method.into(),
            query: Vec::new(),
            body: Vec::new(),
        }
    }

    fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    fn with_query(mut self, query: Vec<(String, String)>) -> Self {
        self.query = query;
        self
    }
}

/// What the client must get back.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// 200, after this many store writes.
    Ok { writes: usize },
    /// This 4xx, naming this field (`None`: no field, e.g. 405).
    Fault { status: u16, field: Option<String> },
}

fn bad(field: impl Into<String>) -> Expect {
    Expect::Fault {
        status: 400,
        field: Some(field.into()),
    }
}

fn not_allowed() -> Expect {
    Expect::Fault {
        status: 405,
        field: None,
    }
}

/// How `Data.req.Query` carries the query string in payload mode (§4: all three occur).
#[derive(Debug, Clone, Copy)]
enum QueryAs {
    Object,
    JsonString,
    UrlOnly,
    NullAndUrl,
}

/// The envelope's lenient variations.
#[derive(Debug, Clone)]
struct Wire {
    query_as: QueryAs,
    binding: &'static str,
    lower_method: bool,
    base64_body: bool,
    null_empty_body: bool,
}

#[derive(Debug, Clone)]
enum Mode {
    Forwarded,
    Payload(Wire),
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Forwarded), wire().prop_map(Mode::Payload)]
}

fn wire() -> impl Strategy<Value = Wire> {
    (
        prop_oneof![
            4 => Just(QueryAs::Object),
            1 => Just(QueryAs::JsonString),
            1 => Just(QueryAs::UrlOnly),
            1 => Just(QueryAs::NullAndUrl),
        ],
        prop_oneof![4 => Just("req"), 1 => Just("request")],
        any::<bool>(),
        prop::bool::weighted(0.2),
        any::<bool>(),
    )
        .prop_map(
            |(query_as, binding, lower_method, base64_body, null_empty_body)| Wire {
                query_as,
                binding,
                lower_method,
                base64_body,
                null_empty_body,
            },
        )
}

fn form_encode(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// The invocation envelope the host would send for `c` (§4.2).
fn envelope(c: &Client, w: &Wire) -> Value {
    use base64::Engine;
    let qs = form_encode(&c.query);
    let url = if qs.is_empty() {
        format!("http://127.0.0.1:7071/api/{}", c.function)
    } else {
        format!("http://127.0.0.1:7071/api/{}?{qs}", c.function)
    };
    let method = if w.lower_method {
        c.method.to_lowercase()
    } else {
        c.method.clone()
    };
    let text = std::str::from_utf8(&c.body).ok();
    let base64 = w.base64_body || text.is_none();
    let content_type = if base64 {
        "application/octet-stream"
    } else {
        "application/json; charset=utf-8"
    };
    let mut req = json!({
        "Url": url,
        "Method": method,
        "Headers": {"Content-Type": [content_type], "Host": ["127.0.0.1:7071"]},
        "Params": {"function": c.function},
        "Identities": [],
    });
    let duplicates = c
        .query
        .iter()
        .enumerate()
        .any(|(i, (k, _))| c.query[..i].iter().any(|(j, _)| j == k));
    // The host comma-joins repeated keys in `Query`; the parser then sees other values. Keep
    // the client's exact pairs by sending them in `Url` only.
    let query_as = if duplicates {
        QueryAs::UrlOnly
    } else {
        w.query_as
    };
    let object: Map<String, Value> = c
        .query
        .iter()
        .map(|(k, v)| {
            // The parser takes non-string values as their JSON text: "5" may arrive as 5.
            let value = match v.parse::<u64>() {
                Ok(n) if n.to_string() == *v && k.len() % 2 == 0 => json!(n),
                _ => json!(v),
            };
            (k.clone(), value)
        })
        .collect();
    match query_as {
        QueryAs::Object => req["Query"] = Value::Object(object),
        QueryAs::JsonString => req["Query"] = Value::String(Value::Object(object).to_string()),
        QueryAs::UrlOnly => {}
        QueryAs::NullAndUrl => req["Query"] = Value::Null,
    }
    if c.body.is_empty() && w.null_empty_body {
        req["Body"] = Value::Null;
    } else if !c.body.is_empty() || w.null_empty_body {
        req["Body"] = match (base64, text) {
            (false, Some(t)) => Value::String(t.to_string()),
            _ => Value::String(base64::engine::general_purpose::STANDARD.encode(&c.body)),
        };
    }
    json!({
        "Data": {w.binding: req},
        "Metadata": {"Query": {}, "Headers": {}, "sys": {"MethodName": c.function, "UtcNow": "2026-12-06T00:00:00Z", "RandGuid": "00000000-0000-0000-0000-000000000000"}}
    })
}

fn forwarded_request(c: &Client) -> Request<Body> {
    let qs = form_encode(&c.query);
    Request::builder()
        .method(c.method.as_str())
        .uri(format!("/api/{}?{qs}", c.function))
        .header("content-type", "application/json")
        .body(Body::from(c.body.clone()))
        .expect("request")
}

fn payload_request(path: &str, envelope: Vec<u8>) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        .header("x-azure-functions-invocationid", "fuzz")
        .body(Body::from(envelope))
        .expect("request")
}

/// The client's view of a response: status and JSON body, unwrapping the envelope's
/// `Outputs.res` in payload mode (after checking the envelope is a 200 with a well-formed result).
fn client_view(answer: &Answer, payload: bool) -> Result<(u16, Value), TestCaseError> {
    let outer: Value = serde_json::from_slice(&answer.body).map_err(|e| {
        TestCaseError::fail(format!(
            "status {} with a body that is not JSON ({e}): {:?}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        ))
    })?;
    if !payload {
        return Ok((answer.status, outer));
    }
    prop_assert_eq!(
        answer.status,
        200,
        "a valid envelope must be answered 200, got {}",
        outer
    );
    let res = &outer["Outputs"]["res"];
    let status = res["statusCode"]
        .as_str()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| TestCaseError::fail(format!("no Outputs.res.statusCode: {outer}")))?;
    prop_assert!(outer["Logs"].is_array(), "no Logs: {}", outer);
    prop_assert!(
        outer["ReturnValue"].is_null(),
        "ReturnValue not null: {}",
        outer
    );
    let body: Value = res["body"]
        .as_str()
        .and_then(|b| serde_json::from_str(b).ok())
        .ok_or_else(|| {
            TestCaseError::fail(format!("Outputs.res.body is not JSON text: {outer}"))
        })?;
    Ok((status, body))
}

/// Properties every answer to a client request has, whatever the input.
fn general(status: u16, body: &Value, writes: usize) -> Result<(), TestCaseError> {
    prop_assert!(status < 500, "5xx for client input: {} {}", status, body);
    if (400..500).contains(&status) {
        prop_assert_eq!(writes, 0, "a {} wrote to the store: {}", status, body);
        prop_assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "a {} without an error code and message: {}",
            status,
            body
        );
        if body["error"]["code"] == "bad_request" {
            prop_assert!(
                body["error"]["field"].is_string(),
                "a bad_request naming no field: {}",
                body
            );
        }
    }
    Ok(())
}

/// Sends `c` in `mode` and checks the outcome against `expect`.
fn check_client(
    h: &Harness,
    c: &Client,
    expect: &Expect,
    mode: &Mode,
) -> Result<(), TestCaseError> {
    let (answer, payload) = match mode {
        Mode::Forwarded => (send(h, forwarded_request(c)), false),
        Mode::Payload(w) => {
            let path = format!("/{}", c.function);
            let env = serde_json::to_vec(&envelope(c, w)).expect("serializes");
            (send(h, payload_request(&path, env)), true)
        }
    };
    let (status, body) = client_view(&answer, payload)?;
    general(status, &body, answer.writes)?;
    match expect {
        Expect::Ok { writes } => {
            prop_assert_eq!(status, 200, "expected 200, got {}", body);
            prop_assert_eq!(answer.writes, *writes, "store writes");
        }
        Expect::Fault { status: s, field } => {
            prop_assert_eq!(status, *s, "status; body {}", body);
            prop_assert_eq!(
                body["error"]["field"].as_str(),
                field.as_deref(),
                "field; body {}",
                body
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Building blocks: names, text, JSON values, raw JSON splicing.

const ALPHA_: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_";
const ALNUM_: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_0123456789";

/// Strings of `len` characters out of `alphabet` (cheaper to generate than a regex strategy).
fn chars(alphabet: &str, len: std::ops::Range<usize>) -> impl Strategy<Value = String> + use<> {
    let alphabet: Vec<char> = alphabet.chars().collect();
    vec(prop::sample::select(alphabet), len).prop_map(String::from_iter)
}

/// Strings of any Unicode characters (proptest favours the awkward ones).
fn unicode(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    vec(any::<char>(), len).prop_map(String::from_iter)
}

const RESERVED: [&str; 4] = ["maxItemCount", "continuation", "partitionKey", "code"];

/// A filter name: `[A-Za-z_][A-Za-z0-9_]*`, not reserved.
fn ident() -> impl Strategy<Value = String> {
    (chars(ALPHA_, 1..2), chars(ALNUM_, 0..11))
        .prop_map(|(a, b)| a + &b)
        .prop_filter("reserved", |s| !RESERVED.contains(&s.as_str()))
}

/// Text a client might send: ASCII, any Unicode, empty, long, awkward characters.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => vec(prop::char::range(' ', '~'), 0..17).prop_map(String::from_iter),
        3 => unicode(0..16),
        1 => prop::sample::select(vec![
            "", " ", "Texas", "São Paulo", "東京", "🦀", "a\u{0}b", "\u{202e}rtl", "Ω≈ç√",
            "\"quoted\"", "back\\slash", "a,b", "&=?#%+", "NaN", "null", "'; DROP TABLE c; --",
        ])
        .prop_map(str::to_string),
        1 => (1usize..3000).prop_map(|n| "x".repeat(n)),
    ]
    .boxed()
}

/// A JSON number: integers of every range, finite floats, the awkward ones.
fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("not finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        prop::sample::select(vec![0.0, -0.0, 1e308, -1e308, 5e-324, 0.5])
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        text().prop_map(Value::String),
    ]
}

/// Any JSON value, up to a few levels deep.
fn json_value() -> BoxedStrategy<Value> {
    json_leaf()
        .prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

/// A JSON value that is not a string.
fn non_string() -> impl Strategy<Value = Value> {
    json_value().prop_filter("string", |v| !v.is_string())
}

/// A partition-key value Cosmos accepts: string, finite number, boolean.
fn pk_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        // Cosmos DB's limit is 2,048 bytes; longer keys are a separate case.
        3 => text().prop_filter("too long", |s| s.len() <= 2048).prop_map(Value::String),
        1 => json_number(),
        1 => any::<bool>().prop_map(Value::Bool),
    ]
}

/// A JSON value that is not a valid partition key (null, object, array).
fn bad_pk_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!({})),
        Just(json!([])),
        Just(json!(["Texas"])),
        Just(json!({"state": "Texas"})),
    ]
}

const RAW: &str = "\u{1}RAW\u{1}";

/// Serializes `v` with the string value `RAW` replaced by the raw JSON text `raw` (numbers
/// serde_json would not produce, such as `1e3` or `1e400`).
fn splice(v: &Value, raw: &str) -> Vec<u8> {
    let marker = serde_json::to_string(RAW).expect("serializes");
    serde_json::to_string(v)
        .expect("serializes")
        .replace(&marker, raw)
        .into_bytes()
}

/// Bodies that are no JSON document at all (all give `body`).
fn broken_body(valid: Vec<u8>) -> BoxedStrategy<Vec<u8>> {
    let len = valid.len().max(1);
    let v2 = valid.clone();
    prop_oneof![
        // A strict prefix of a JSON object or array is never JSON.
        (0..len).prop_map(move |n| valid[..n.min(valid.len().saturating_sub(1))].to_vec()),
        // Invalid UTF-8 inside a string.
        (0..4usize).prop_map(move |k| {
            let mut b = v2.clone();
            let at = b.iter().position(|&c| c == b'"').map_or(0, |p| p + 1);
            b.splice(at..at, [0xffu8, 0xfe, 0xc3, 0x28][..=k].iter().copied());
            b
        }),
        prop::sample::select(vec![
            "",
            " ",
            "\n\t ",
            "nope",
            "{",
            "}",
            "{\"a\":}",
            "{\"a\" 1}",
            "[1,]",
            "{'id':'x'}",
            "{\"id\":\"a\",}",
            "\u{feff}{}",
            "NaN",
            "{\"n\": 1e400}",
            "[-]",
            "{\"a\":\"\\u12\"}",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        (129usize..5000).prop_map(|n| "[".repeat(n).into_bytes()),
        (129usize..2000).prop_map(|n| format!("{}1{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
    ]
    .boxed()
}

/// JSON documents that are not objects.
fn non_object_json() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_leaf().prop_map(|v| v.to_string().into_bytes()),
        Just(b"[1,2]".to_vec()),
        Just(b"\"{}\"".to_vec()),
    ]
}

// ---------------------------------------------------------------------------------------------
// query GET

/// A valid page size, the bounds often.
fn page_size() -> impl Strategy<Value = u32> {
    prop_oneof![Just(1u32), Just(1000u32), 1u32..=1000]
}

fn max_item_count_ok() -> impl Strategy<Value = String> {
    (page_size(), 0..4).prop_map(|(n, style)| match style {
        0 => n.to_string(),
        1 => format!(" {n}\t"),
        2 => format!("+{n}"),
        _ => format!("{n:05}"),
    })
}

fn max_item_count_bad() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-0",
            "1001",
            "-1",
            "ten",
            "",
            " ",
            "1e3",
            "1.5",
            "100.0",
            "4294967296",
            "4294967297",
            "99999999999999999999",
            "0x10",
            "\u{663}",
            "5 5",
            "1_000",
            "NaN",
            "++5",
            "5a",
            "１０",
            "null",
        ])
        .prop_map(str::to_string),
        (1001u64..).prop_map(|n| n.to_string()),
        (i64::MIN..0).prop_map(|n| n.to_string()),
    ]
}

/// [`text`] without U+FFFD, which a query string holds only where its bytes were not UTF-8
/// (the host decodes lossily): the GET route refuses it (`query_get_case`).
fn text_no_replacement() -> impl Strategy<Value = String> {
    text().prop_filter("U+FFFD", |s| !s.contains('\u{FFFD}'))
}

/// A valid GET query: unique filters plus any of the reserved parameters, in any order.
fn get_query_valid() -> impl Strategy<Value = Vec<(String, String)>> {
    (
        btree_map(ident(), text_no_replacement(), 0..4),
        prop::option::of(max_item_count_ok()),
        // Only an empty continuation (= none) is valid without a page 1 to take it from: the
        // handler's tokens are bound to their query (`continuation_token_not_issued` below).
        prop::option::of(Just(String::new())),
        prop::option::of(text_no_replacement().prop_filter("too long", |s| s.len() <= 2048)),
        prop::option::of(text()),
    )
        .prop_flat_map(|(filters, max, cont, pk, code)| {
            let mut pairs: Vec<(String, String)> = filters.into_iter().collect();
            for (name, value) in [
                ("maxItemCount", max),
                ("continuation", cont),
                ("partitionKey", pk),
                ("code", code),
            ] {
                if let Some(v) = value {
                    pairs.push((name.into(), v));
                }
            }
            Just(pairs).prop_shuffle()
        })
}

fn bad_filter_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "c.state",
            "2a",
            "a-b",
            "a b",
            "é",
            "x;DROP",
            "state ",
            " state",
            "c[\"x\"]",
            "@f_state",
            "a\u{0}",
            "ß",
            "Ω",
            "$x",
            "maxitemcount ",
            "a.b.c",
        ])
        .prop_map(str::to_string),
        (chars("0123456789", 1..2), chars(ALNUM_, 0..6)).prop_map(|(a, b)| a + &b),
        (
            chars(ALPHA_, 1..5),
            chars("-. $@;", 1..2),
            chars(ALPHA_, 0..5)
        )
            .prop_map(|(a, b, c)| a + &b + &c),
        (prop::char::range('à', 'ÿ'), chars("abcxyz", 0..5)).prop_map(|(a, b)| format!("{a}{b}")),
    ]
}

/// A string of exactly `n` bytes; `wide`: mostly two-byte characters (bytes count, not
/// characters).
fn n_bytes(n: usize, wide: bool) -> String {
    if wide {
        "é".repeat(n / 2) + &"k".repeat(n % 2)
    } else {
        "k".repeat(n)
    }
}

fn query_get_case() -> impl Strategy<Value = (Client, Expect)> {
    let client = |pairs| Client::new("query", "GET").with_query(pairs);
    prop_oneof![
        3 => get_query_valid().prop_map(move |q| (client(q), Expect::Ok { writes: 0 })),
        1 => (get_query_valid(), bad_filter_name(), text(), any::<prop::sample::Index>())
            .prop_map(move |(mut q, name, value, at)| {
                q.insert(at.index(q.len() + 1), (name.clone(), value));
                (client(q), bad(name))
            }),
        1 => (get_query_valid(), ident(), text(), text()).prop_map(move |(mut q, name, a, b)| {
            q.retain(|(k, _)| *k != name);
            q.push((name.clone(), a));
            q.insert(0, (name.clone(), b));
            (client(q), bad(name))
        }),
        // A filter holding U+FFFD: bytes that were not UTF-8, as the host forwards them.
        1 => (get_query_valid(), ident(), text(), text()).prop_map(move |(mut q, name, a, b)| {
            q.retain(|(k, _)| *k != name);
            q.insert(0, (name.clone(), format!("{a}\u{FFFD}{b}")));
            (client(q), bad(name))
        }),
        1 => (get_query_valid(), max_item_count_bad()).prop_map(move |(mut q, v)| {
            q.retain(|(k, _)| k != "maxItemCount");
            q.push(("maxItemCount".into(), v));
            (client(q), bad("maxItemCount"))
        }),
        1 => (get_query_valid(), prop_oneof![Just(2049usize), 2049usize..4000], any::<bool>()).prop_map(move |(mut q, n, wide)| {
            q.retain(|(k, _)| k != "partitionKey");
            q.push(("partitionKey".into(), n_bytes(n, wide)));
            (client(q), bad("partitionKey"))
        }),
        // At the limit: 2,048 bytes (also as 1,024 two-byte characters).
        1 => (get_query_valid(), any::<bool>()).prop_map(move |(mut q, wide)| {
            q.retain(|(k, _)| k != "partitionKey");
            q.push(("partitionKey".into(), n_bytes(2048, wide)));
            (client(q), Expect::Ok { writes: 0 })
        }),
        1 => (get_query_valid(), prop::sample::select(vec!["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"]))
            .prop_map(|(q, m)| (Client::new("query", m).with_query(q), not_allowed())),
        // A continuation token the handler did not issue for this query.
        1 => (get_query_valid(), continuation_token_not_issued()).prop_map(move |(mut q, t)| {
            q.retain(|(k, _)| k != "continuation");
            q.push(("continuation".into(), t));
            (client(q), bad("continuation"))
        }),
    ]
}

/// Non-empty tokens that no page of these queries handed out: garbage, the SDK's own token
/// forms, and the handler's `b1.` form with a wrong or malformed binding.
fn continuation_token_not_issued() -> impl Strategy<Value = String> {
    prop_oneof![
        text().prop_filter("empty", |s| !s.is_empty()),
        prop::sample::select(vec![
            "garbage",
            "c1.eyJvcCI6IlF1ZXJ5In0",
            "+RID:~abc#RT:1",
            "b1.",
            "b1.00000000000000000000000000000000.c1.x",
            "b1.zz.c1.x",
        ])
        .prop_map(str::to_string),
    ]
}

// ---------------------------------------------------------------------------------------------
// query POST

fn param_name() -> impl Strategy<Value = String> {
    ident().prop_map(|n| format!("@{n}"))
}

/// A valid POST query body, as a JSON object.
fn query_body_valid() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop_oneof![
            Just("SELECT * FROM c WHERE c.city = @city".to_string()),
            text().prop_filter("blank", |s| !s.trim().is_empty()),
        ],
        prop::option::of(prop::option::of(btree_map(
            param_name(),
            json_value(),
            0..4,
        ))),
        prop::option::of(prop::option::of(pk_value())),
        prop::option::of(prop::option::of(page_size())),
        // Absent or null only: a token must come from a previous page (see the GET case).
        prop::option::of(Just(None::<String>)),
    )
        .prop_map(|(query, params, pk, max, cont)| {
            let mut o = Map::new();
            o.insert("query".into(), json!(query));
            // Outer None: absent; inner None: null.
            if let Some(p) = params {
                o.insert(
                    "parameters".into(),
                    p.map_or(Value::Null, |p| {
                        p.into_iter()
                            .map(|(name, value)| json!({"name": name, "value": value}))
                            .collect()
                    }),
                );
            }
            if let Some(pk) = pk {
                o.insert("partitionKey".into(), pk.unwrap_or(Value::Null));
            }
            if let Some(max) = max {
                o.insert("maxItemCount".into(), max.map_or(Value::Null, Value::from));
            }
            if let Some(cont) = cont {
                o.insert("continuation".into(), cont.map_or(Value::Null, Value::from));
            }
            o
        })
}

/// A valid body with at least `n` parameters.
fn query_body_with_params(n: usize) -> impl Strategy<Value = Map<String, Value>> {
    (
        query_body_valid(),
        btree_map(param_name(), json_value(), n..n + 3),
    )
        .prop_map(|(mut o, params)| {
            o.insert(
                "parameters".into(),
                params
                    .into_iter()
                    .map(|(name, value)| json!({"name": name, "value": value}))
                    .collect(),
            );
            o
        })
}

fn bad_param_name() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        non_string().prop_map(Some),
        prop::sample::select(vec![
            "", "@", "city", "@2a", "@a-b", "@@a", " @a", "@a ", "@é", "@a.b", "@a b", "@\u{0}",
        ])
        .prop_map(|s| Some(json!(s))),
        ident().prop_map(|n| Some(json!(n))),
    ]
}

fn query_post_case() -> impl Strategy<Value = (Client, Expect)> {
    let post = |body: Vec<u8>| Client::new("query", "POST").with_body(body);
    let obj = |o: Map<String, Value>| serde_json::to_vec(&Value::Object(o)).expect("json");
    let index = any::<prop::sample::Index>();
    prop_oneof![
        4 => query_body_valid().prop_map(move |o| (post(obj(o)), Expect::Ok { writes: 0 })),
        // An unknown field.
        1 => (query_body_valid(), prop_oneof![
                prop::sample::select(vec!["qeury", "Query", "parameter", "partitionkey", "max_item_count", "", "continuationToken", "x", "query "]).prop_map(str::to_string),
                text().prop_filter("known", |k| !["query", "parameters", "partitionKey", "maxItemCount", "continuation"].contains(&k.as_str())),
            ], json_value())
            .prop_map(move |(mut o, k, v)| { o.insert(k.clone(), v); (post(obj(o)), bad(k)) }),
        // `query` missing, not a string, or blank.
        1 => (query_body_valid(), prop_oneof![
                Just(None),
                non_string().prop_map(Some),
                prop::sample::select(vec!["", " ", "\t\n", "\u{3000}", "\u{a0}", "\r\n  "]).prop_map(|s| Some(json!(s))),
            ])
            .prop_map(move |(mut o, q)| {
                match q { None => { o.remove("query"); } Some(q) => { o.insert("query".into(), q); } }
                (post(obj(o)), bad("query"))
            }),
        // `parameters` not an array (nor null).
        1 => (query_body_valid(), prop_oneof![
                non_string().prop_filter("array or null", |v| !v.is_array() && !v.is_null()),
                text().prop_map(Value::String),
            ])
            .prop_map(move |(mut o, p)| { o.insert("parameters".into(), p); (post(obj(o)), bad("parameters")) }),
        // One parameter's name is missing or wrong, or the element is no object.
        1 => (query_body_with_params(1), index.clone(), bad_param_name(), any::<bool>())
            .prop_map(move |(mut o, at, name, whole)| {
                let list = o["parameters"].as_array_mut().expect("array");
                let i = at.index(list.len());
                if whole {
                    list[i] = json!(i);
                } else {
                    match name {
                        None => { list[i].as_object_mut().expect("object").remove("name"); }
                        Some(n) => list[i]["name"] = n,
                    }
                }
                (post(obj(o)), bad(format!("parameters[{i}].name")))
            }),
        // One parameter's value is missing.
        1 => (query_body_with_params(1), index.clone()).prop_map(move |(mut o, at)| {
            let list = o["parameters"].as_array_mut().expect("array");
            let i = at.index(list.len());
            list[i].as_object_mut().expect("object").remove("value");
            (post(obj(o)), bad(format!("parameters[{i}].value")))
        }),
        // A parameter name given twice.
        1 => (query_body_with_params(2), index.clone(), index.clone()).prop_map(move |(mut o, a, b)| {
            let list = o["parameters"].as_array_mut().expect("array");
            let i = 1 + a.index(list.len() - 1);
            let j = b.index(i);
            list[i]["name"] = list[j]["name"].clone();
            (post(obj(o)), bad(format!("parameters[{i}].name")))
        }),
        // `partitionKey` of a type Cosmos does not accept.
        1 => (query_body_valid(), bad_pk_value().prop_filter("null", |v| !v.is_null()))
            .prop_map(move |(mut o, pk)| { o.insert("partitionKey".into(), pk); (post(obj(o)), bad("partitionKey")) }),
        // `maxItemCount` out of range or not an integer (also as raw JSON numbers).
        1 => (query_body_valid(), prop_oneof![
                prop::sample::select(vec!["0", "1001", "-1", "1.5", "1e3", "1000.0", "1E2", "-0", "18446744073709551615", "18446744073709551616", "-9223372036854775808", "\"5\"", "true", "[5]", "{}", "\"\""]).prop_map(str::to_string),
                (1001u64..).prop_map(|n| n.to_string()),
            ])
            .prop_map(move |(mut o, raw)| {
                o.insert("maxItemCount".into(), json!(RAW));
                (post(splice(&Value::Object(o), &raw)), bad("maxItemCount"))
            }),
        // Raw numbers that are valid where any finite number is (partitionKey).
        1 => (query_body_valid(), prop::sample::select(vec!["1e3", "1.0", "-0", "1E308", "18446744073709551616", "5e-324", "0.1e1"]))
            .prop_map(move |(mut o, raw)| {
                o.insert("partitionKey".into(), json!(RAW));
                (post(splice(&Value::Object(o), raw)), Expect::Ok { writes: 0 })
            }),
        // A partition key over Cosmos DB's 2,048 bytes, as GET refuses it.
        1 => (query_body_valid(), prop_oneof![Just(2049usize), 2049usize..4000], any::<bool>())
            .prop_map(move |(mut o, n, wide)| { o.insert("partitionKey".into(), json!(n_bytes(n, wide))); (post(obj(o)), bad("partitionKey")) }),
        // A continuation token not issued for this query.
        1 => (query_body_valid(), continuation_token_not_issued())
            .prop_map(move |(mut o, t)| { o.insert("continuation".into(), json!(t)); (post(obj(o)), bad("continuation")) }),
        // `continuation` empty or not a string.
        1 => (query_body_valid(), prop_oneof![Just(json!("")), non_string().prop_filter("null", |v| !v.is_null())])
            .prop_map(move |(mut o, c)| { o.insert("continuation".into(), c); (post(obj(o)), bad("continuation")) }),
        // The body is not a JSON object.
        1 => query_body_valid().prop_flat_map(move |o| broken_body(obj(o))).prop_map(move |b| (post(b), bad("body"))),
        1 => non_object_json().prop_map(move |b| (post(b), bad("body"))),
        1 => Just(()).prop_map(move |()| (post(b"{\"query\":\"SELECT 1\",\"partitionKey\":1e400}".to_vec()), bad("body"))),
    ]
}

// ---------------------------------------------------------------------------------------------
// update POST

/// A valid id prefix (a suffix `-i` keeps the documents of one batch distinct).
fn id_prefix() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => chars(&format!("{ALNUM_} .~-"), 1..25),
        2 => unicode(0..40).prop_map(|s| s
            .chars()
            .filter(|c| !c.is_control() && !"/\\?#".contains(*c))
            .take(200)
            .collect::<String>()),
        1 => prop::sample::select(vec!["São Paulo", "東京", "🦀", "a.b", "...", ".", "..", "%2F", "a b"])
            .prop_map(str::to_string),
    ]
}

fn document(i: usize) -> impl Strategy<Value = Value> {
    (
        id_prefix(),
        pk_value(),
        btree_map(chars("abcdefgh_", 1..9), json_value(), 0..3),
    )
        .prop_map(move |(id, pk, extra)| {
            let mut doc: Map<String, Value> = extra.into_iter().collect();
            doc.insert("id".into(), json!(format!("{id}-{i}")));
            doc.insert("state".into(), pk);
            Value::Object(doc)
        })
}

/// Valid documents, and whether they are sent as an array (else one object).
fn documents(min: usize) -> impl Strategy<Value = (Vec<Value>, bool)> {
    (
        min.max(1)..min.max(1) + 5,
        // Several documents only fit an array (and must stay one while shrinking).
        if min > 1 {
            Just(true).boxed()
        } else {
            prop::bool::weighted(0.7).boxed()
        },
    )
        .prop_flat_map(|(n, array)| {
            let n = if array { n } else { 1 };
            ((0..n).map(document).collect::<Vec<_>>(), Just(array))
        })
}

fn docs_body(docs: &[Value], array: bool) -> Vec<u8> {
    if array {
        serde_json::to_vec(docs).expect("json")
    } else {
        serde_json::to_vec(&docs[0]).expect("json")
    }
}

fn at(array: bool, i: usize, field: &str) -> String {
    if array {
        format!("[{i}].{field}")
    } else {
        field.to_string()
    }
}

fn bad_id_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "", ".", "..", "a/b", "/", "a\\b", "a?b", "a#b", "tab\tx", "nl\n", "\u{7f}", "\u{85}",
            "\u{0}", "x\r", "..\u{0}",
        ])
        .prop_map(str::to_string),
        prop_oneof![Just(256usize), 256usize..400].prop_map(|n| "x".repeat(n)),
        prop_oneof![Just(256usize), 256usize..300].prop_map(|n| "é".repeat(n)),
        (
            chars("abcxyz", 0..6),
            prop::sample::select(vec!['/', '\\', '?', '#', '\u{1}', '\u{9f}']),
            chars("abcxyz", 0..6)
        )
            .prop_map(|(a, c, b)| format!("{a}{c}{b}")),
    ]
}

fn update_post_case() -> impl Strategy<Value = (Client, Expect)> {
    let post = |body: Vec<u8>| Client::new("update", "POST").with_body(body);
    let index = any::<prop::sample::Index>();
    prop_oneof![
        16 => documents(1).prop_map(move |(d, a)| {
            let n = d.len();
            (post(docs_body(&d, a)), Expect::Ok { writes: n })
        }),
        // Boundary ids that are valid: 255 two-byte characters, dots inside.
        4 => (documents(1), index.clone(), prop::sample::select(vec!["é".repeat(255), "x".repeat(255), "...".into(), ".a".into(), "a..".into()]))
            .prop_map(move |((mut d, a), i, id)| {
                let n = d.len();
                d[i.index(n)]["id"] = json!(id);
                (post(docs_body(&d, a)), Expect::Ok { writes: n })
            }),
        // `id` missing, not a string, or not a valid Cosmos id.
        12 => (documents(1), index.clone(), prop_oneof![
                Just(None),
                non_string().prop_map(Some),
                bad_id_string().prop_map(|s| Some(json!(s))),
            ])
            .prop_map(move |((mut d, a), at_i, id)| {
                let i = at_i.index(d.len());
                match id {
                    None => { d[i].as_object_mut().expect("object").remove("id"); }
                    Some(id) => d[i]["id"] = id,
                }
                (post(docs_body(&d, a)), bad(at(a, i, "id")))
            }),
        // The partition key missing or of the wrong type.
        8 => (documents(1), index.clone(), prop::option::of(bad_pk_value()))
            .prop_map(move |((mut d, a), at_i, pk)| {
                let i = at_i.index(d.len());
                match pk {
                    None => { d[i].as_object_mut().expect("object").remove("state"); }
                    Some(pk) => d[i]["state"] = pk,
                }
                (post(docs_body(&d, a)), bad(at(a, i, "state")))
            }),
        // A document repeated (same id and partition key) later in the batch.
        4 => (documents(2), index.clone(), index.clone()).prop_map(move |((mut d, _), x, y)| {
            let i = 1 + x.index(d.len() - 1);
            let j = y.index(i);
            d[i]["id"] = d[j]["id"].clone();
            d[i]["state"] = d[j]["state"].clone();
            (post(docs_body(&d, true)), bad(format!("[{i}].id")))
        }),
        // An array element that is not an object.
        4 => (documents(2), index.clone(), non_object_json()).prop_map(move |((mut d, _), x, v)| {
            let i = x.index(d.len());
            d[i] = serde_json::from_slice(&v).expect("json");
            (post(docs_body(&d, true)), bad(format!("[{i}]")))
        }),
        // The body as a whole: broken, not an object/array, empty array, too many documents.
        4 => documents(1).prop_flat_map(move |(d, a)| broken_body(docs_body(&d, a))).prop_map(move |b| (post(b), bad("body"))),
        4 => non_object_json()
            .prop_filter("array", |b| b[0] != b'[')
            .prop_map(move |b| (post(b), bad("body"))),
        1 => Just(()).prop_map(move |()| (post(b"[]".to_vec()), bad("body"))),
        1 => (1001usize..1002).prop_map(move |n| {
            let docs: Vec<Value> = (0..n).map(|i| json!({"id": i.to_string(), "state": "T"})).collect();
            (post(serde_json::to_vec(&docs).expect("json")), bad("body"))
        }),
        1 => Just(()).prop_map(move |()| (post(b"{\"id\":\"a\",\"state\":1e400}".to_vec()), bad("body"))),
        // Other methods.
        4 => (documents(1), prop::sample::select(vec!["GET", "PUT", "PATCH", "OPTIONS", "FOO"]))
            .prop_map(|((d, a), m)| (Client::new("update", m).with_body(docs_body(&d, a)), not_allowed())),
    ]
}

// ---------------------------------------------------------------------------------------------
// update DELETE

fn valid_id() -> impl Strategy<Value = String> {
    id_prefix().prop_map(|p| format!("{p}-0"))
}

fn update_delete_case() -> impl Strategy<Value = (Client, Expect)> {
    let del = |q: Vec<(String, String)>, body: Vec<u8>| {
        Client::new("update", "DELETE")
            .with_query(q)
            .with_body(body)
    };
    let pair = |k: &str, v: String| (k.to_string(), v);
    let code = prop::option::of(text());
    let with_code = |mut q: Vec<(String, String)>, code: Option<String>| {
        if let Some(c) = code {
            q.push(("code".into(), c));
        }
        q
    };
    prop_oneof![
        // Query-string form: any string partition key (empty too); a body is then ignored.
        3 => (valid_id(), text(), code.clone(), prop::sample::select(vec!["", "garbage", "{\"id\":5}"]))
            .prop_map(move |(id, pk, c, body)| (
                del(with_code(vec![pair("id", id), pair("partitionKey", pk)], c), body.into()),
                Expect::Ok { writes: 1 },
            )),
        // Body form, for non-string keys.
        3 => (valid_id(), pk_value(), btree_map(chars("abcdefghij", 1..6), json_value(), 0..2), code.clone())
            .prop_map(move |(id, pk, extra, c)| {
                let mut body: Map<String, Value> = extra.into_iter().collect();
                body.insert("id".into(), json!(id));
                body.insert("partitionKey".into(), pk);
                (
                    del(with_code(vec![], c), serde_json::to_vec(&body).expect("json")),
                    Expect::Ok { writes: 1 },
                )
            }),
        // Query form: id missing (no body), empty or invalid; partitionKey missing.
        1 => (text(), prop::sample::select(vec!["", " ", "\n"]))
            .prop_map(move |(pk, body)| (del(vec![pair("partitionKey", pk)], body.into()), bad("id"))),
        1 => (text(), prop_oneof![Just(String::new()), bad_id_string()])
            .prop_map(move |(pk, id)| (del(vec![pair("id", id), pair("partitionKey", pk)], b"{}".to_vec()), bad("id"))),
        1 => valid_id().prop_map(move |id| (del(vec![pair("id", id)], Vec::new()), bad("partitionKey"))),
        // Body form: id missing, not a string or invalid; partitionKey missing or wrong.
        1 => (prop_oneof![Just(None), non_string().prop_map(Some), bad_id_string().prop_map(|s| Some(json!(s)))], pk_value())
            .prop_map(move |(id, pk)| {
                let mut body = json!({"partitionKey": pk});
                if let Some(id) = id {
                    body["id"] = id;
                }
                (del(vec![], serde_json::to_vec(&body).expect("json")), bad("id"))
            }),
        1 => (valid_id(), prop::option::of(bad_pk_value())).prop_map(move |(id, pk)| {
            let mut body = json!({"id": id});
            if let Some(pk) = pk {
                body["partitionKey"] = pk;
            }
            (del(vec![], serde_json::to_vec(&body).expect("json")), bad("partitionKey"))
        }),
        1 => (valid_id(), text()).prop_flat_map(move |(id, pk)| {
            broken_body(serde_json::to_vec(&json!({"id": id, "partitionKey": pk})).expect("json"))
                .prop_filter("blank", |b| !b.iter().all(u8::is_ascii_whitespace))
        })
        .prop_map(move |b| (del(vec![], b), bad("body"))),
        1 => non_object_json().prop_map(move |b| (del(vec![], b), bad("id"))),
    ]
}

// ---------------------------------------------------------------------------------------------
// Malformed envelopes

/// One way to break an otherwise valid envelope.
#[derive(Debug, Clone)]
enum Break {
    Bytes(Vec<u8>),
    TopLevel(Value),
    NoData,
    Data(Value),
    NoRequest(Value),
    NoMethod,
    Method(Value),
    Query(Value),
    Base64(String),
}

fn envelope_break() -> impl Strategy<Value = Break> {
    prop_oneof![
        broken_body(br#"{"Data":{"req":{"Method":"POST"}},"Metadata":{}}"#.to_vec())
            .prop_map(Break::Bytes),
        (json_leaf(), any::<bool>()).prop_map(|(v, arr)| Break::TopLevel(if arr {
            json!([v])
        } else {
            v
        })),
        Just(Break::NoData),
        prop_oneof![json_leaf(), Just(json!([{"req": {"Method": "POST"}}]))].prop_map(Break::Data),
        prop_oneof![
            json_leaf(),
            Just(json!([])),
            Just(json!({})),
            Just(json!({"method": "POST"}))
        ]
        .prop_map(Break::NoRequest),
        Just(Break::NoMethod),
        prop_oneof![
            non_string(),
            prop::sample::select(vec![
                "", " ", "GET POST", "G\tET", "(GET)", "é", "GET\n", "{}", "\"", ",", "P/ST",
                "GET\u{0}", "DELETE;",
            ])
            .prop_map(|s| json!(s)),
        ]
        .prop_map(Break::Method),
        prop_oneof![
            json_number(),
            any::<bool>().prop_map(Value::Bool),
            Just(json!([])),
            Just(json!(["state", "Texas"])),
            prop::sample::select(vec![
                "",
                "state=Texas",
                "[1]",
                "null",
                "5",
                "\"x\"",
                "{",
                "{\"a\":1",
                "?id=a",
            ])
            .prop_map(|s| json!(s)),
        ]
        .prop_map(Break::Query),
        prop::sample::select(vec![
            "%%%",
            "not base64!",
            "eyJpZCI6ImEifQ",
            "===",
            "a",
            "é"
        ])
        .prop_map(|s| Break::Base64(s.to_string())),
    ]
}

fn apply_break(mut env: Value, binding: &str, b: &Break) -> Vec<u8> {
    match b {
        Break::Bytes(bytes) => return bytes.clone(),
        Break::TopLevel(v) => return v.to_string().into_bytes(),
        Break::NoData => {
            env.as_object_mut().expect("object").remove("Data");
        }
        Break::Data(v) => env["Data"] = v.clone(),
        Break::NoRequest(v) => env["Data"] = json!({ binding: v.clone() }),
        Break::NoMethod => {
            env["Data"][binding]
                .as_object_mut()
                .expect("object")
                .remove("Method");
        }
        Break::Method(m) => env["Data"][binding]["Method"] = m.clone(),
        Break::Query(q) => env["Data"][binding]["Query"] = q.clone(),
        Break::Base64(body) => {
            env["Data"][binding]["Headers"] = json!({"Content-Type": ["application/octet-stream"]});
            env["Data"][binding]["Body"] = json!(body);
        }
    }
    serde_json::to_vec(&env).expect("json")
}

// ---------------------------------------------------------------------------------------------
// The targets

#[test]
fn fuzz_query_get() {
    fuzz("query GET", (query_get_case(), mode()), |h, ((c, e), m)| {
        check_client(h, &c, &e, &m)
    });
}

#[test]
fn fuzz_query_post() {
    fuzz(
        "query POST",
        (query_post_case(), mode()),
        |h, ((c, e), m)| check_client(h, &c, &e, &m),
    );
}

#[test]
fn fuzz_update_post() {
    fuzz(
        "update POST",
        (update_post_case(), mode()),
        |h, ((c, e), m)| check_client(h, &c, &e, &m),
    );
}

#[test]
fn fuzz_update_delete() {
    fuzz(
        "update DELETE",
        (update_delete_case(), mode()),
        |h, ((c, e), m)| check_client(h, &c, &e, &m),
    );
}

/// Valid client requests (which would write) inside envelopes broken in one place: the
/// invocation fails (non-2xx) and nothing is written.
#[test]
fn fuzz_malformed_envelopes() {
    let client = prop_oneof![
        documents(1).prop_map(|(d, a)| Client::new("update", "POST").with_body(docs_body(&d, a))),
        valid_id().prop_map(|id| Client::new("update", "DELETE")
            .with_query(vec![("id".into(), id), ("partitionKey".into(), "T".into())])),
        get_query_valid().prop_map(|q| Client::new("query", "GET").with_query(q)),
    ];
    fuzz(
        "malformed envelopes",
        (client, wire(), envelope_break()),
        |h, (c, w, b)| {
            let bytes = apply_break(envelope(&c, &w), w.binding, &b);
            let answer = send(h, payload_request(&format!("/{}", c.function), bytes));
            prop_assert!(
                !(200..300).contains(&answer.status),
                "a malformed envelope was answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
            prop_assert!(answer.status < 500, "5xx: {}", answer.status);
            prop_assert_eq!(answer.writes, 0, "a malformed envelope wrote");
            let body: Value = serde_json::from_slice(&answer.body)
                .map_err(|e| TestCaseError::fail(format!("error body not JSON: {e}")))?;
            prop_assert_eq!(&body["error"]["code"], "bad_invocation", "body {}", body);
            Ok(())
        },
    );
}

/// Random bytes, methods, paths and query strings to every route, in both modes.
#[test]
fn fuzz_arbitrary_bytes() {
    let paths = prop::sample::select(vec![
        "/",
        "/query",
        "/update",
        "/QUERY",
        "/Update",
        "/api/query",
        "/api/update",
        "/api/Query",
        "/nope",
        "/api/nope",
        "/api",
        "/api/",
        "/_diagnostics",
        "/api/query/extra",
    ]);
    let methods = prop::sample::select(vec![
        "GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD", "FOO",
    ]);
    let body = prop_oneof![
        vec(any::<u8>(), 0..512),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        vec(json_value(), 0..4).prop_map(|v| serde_json::to_vec(&v).expect("json")),
    ];
    let query = chars(&format!("{ALNUM_}%&=+.~;,!*'()@:/?-"), 0..41);
    fuzz(
        "arbitrary bytes",
        (paths, methods, query, body),
        |h, (path, method, query, body)| {
            let Ok(request) = Request::builder()
                .method(method)
                .uri(format!("{path}?{query}"))
                .body(Body::from(body))
            else {
                return Ok(());
            };
            let answer = send(h, request);
            prop_assert!(
                answer.status < 500,
                "{} {} -> {}",
                method,
                path,
                answer.status
            );
            if !(200..300).contains(&answer.status) {
                prop_assert_eq!(
                    answer.writes,
                    0,
                    "{} {} -> {} wrote",
                    method,
                    path,
                    answer.status
                );
            }
            let function_route = path.starts_with("/api/") && path.matches('/').count() == 2;
            if function_route && method != "HEAD" {
                let body: Value = serde_json::from_slice(&answer.body).map_err(|e| {
                    TestCaseError::fail(format!("{method} {path}: body not JSON: {e}"))
                })?;
                general(answer.status, &body, answer.writes)?;
            }
            if method == "POST" && answer.status == 200 && !function_route && path != "/" {
                // An envelope that parsed: the client's outcome is inside.
                let (status, body) = client_view(&answer, true)?;
                general(status, &body, answer.writes)?;
            }
            Ok(())
        },
    );
}

/// Random JSON in every place a client or the host controls: the forwarded body, the
/// envelope's `Body`, `Query` and `Method`, and the whole envelope.
#[test]
fn fuzz_arbitrary_json() {
    #[derive(Debug, Clone)]
    enum Place {
        Forwarded(&'static str, &'static str),
        Body(&'static str, &'static str),
        Query(&'static str, &'static str),
        Envelope(&'static str),
        Request(&'static str),
    }
    let function = prop::sample::select(vec!["query", "update"]);
    let method = prop::sample::select(vec!["GET", "POST", "DELETE", "PUT"]);
    let place = (function, method, 0..5).prop_map(|(f, m, k)| match k {
        0 => Place::Forwarded(f, m),
        1 => Place::Body(f, m),
        2 => Place::Query(f, m),
        3 => Place::Envelope(f),
        _ => Place::Request(f),
    });
    fuzz(
        "arbitrary JSON",
        (place, json_value(), json_value()),
        |h, (place, v, w)| {
            let wire = Wire {
                query_as: QueryAs::Object,
                binding: "req",
                lower_method: false,
                base64_body: false,
                null_empty_body: false,
            };
            let (request, payload) = match &place {
                Place::Forwarded(f, m) => {
                    let c = Client::new(f, m).with_body(v.to_string());
                    (forwarded_request(&c), false)
                }
                Place::Body(f, m) => {
                    let c = Client::new(f, m).with_body(v.to_string());
                    let env = envelope(&c, &wire);
                    (
                        payload_request(&format!("/{f}"), env.to_string().into()),
                        true,
                    )
                }
                Place::Query(f, m) => {
                    let mut env = envelope(&Client::new(f, m), &wire);
                    env["Data"]["req"]["Query"] = v.clone();
                    env["Data"]["req"]["Body"] = w.clone();
                    (
                        payload_request(&format!("/{f}"), env.to_string().into()),
                        true,
                    )
                }
                Place::Envelope(f) => (
                    payload_request(&format!("/{f}"), v.to_string().into()),
                    true,
                ),
                Place::Request(f) => {
                    let env = json!({"Data": {"req": v}, "Metadata": w});
                    (
                        payload_request(&format!("/{f}"), env.to_string().into()),
                        true,
                    )
                }
            };
            let answer = send(h, request);
            prop_assert!(answer.status < 500, "{:?} -> {}", place, answer.status);
            if !(200..300).contains(&answer.status) {
                prop_assert_eq!(answer.writes, 0, "{:?} -> {} wrote", place, answer.status);
            }
            if payload && answer.status != 200 {
                return Ok(());
            }
            let (status, body) = client_view(&answer, payload)?;
            general(status, &body, answer.writes)?;
            Ok(())
        },
    );
}
