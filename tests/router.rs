//! The router in-process (axum's `oneshot`), with Redis and Cosmos unreachable: what must work
//! before any backing service answers.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cosmos_cache_handler::config::Settings;
use http_body_util::BodyExt;
use tower::ServiceExt;

fn settings() -> Settings {
    Settings::from_lookup(|name| {
        match name {
            "REDIS_CONNECTION_STRING" => Some("redis://127.0.0.1:1"),
            "COSMOS_ENDPOINT" => Some("http://127.0.0.1:1/"),
            "COSMOS_KEY" => Some("a2V5"),
            "COSMOS_DATABASE" => Some("tutorial"),
            "COSMOS_CONTAINER" => Some("us_cities"),
            _ => None,
        }
        .map(str::to_string)
    })
    .expect("settings")
}

fn app() -> axum::Router {
    let state = cosmos_cache_handler::build_state(&settings()).expect("state");
    cosmos_cache_handler::router(state, "api")
}

async fn call(request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let (status, _, json) = send(request).await;
    (status, json)
}

/// Status, `Allow` header and JSON body (`Null` when not JSON) of `request`.
async fn send(request: Request<Body>) -> (StatusCode, Option<String>, serde_json::Value) {
    let response = app().oneshot(request).await.expect("infallible");
    let status = response.status();
    let allow = response
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, allow, json)
}

#[tokio::test]
async fn readiness_probe_answers_without_backends() {
    let response = app()
        .oneshot(Request::get("/").body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn malformed_invocation_fails_and_unknown_function_is_404() {
    let (status, body) = call(
        Request::post("/query")
            .header("content-type", "application/json")
            .body(Body::from("{\"Data\": 1}"))
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_invocation");
    let (status, _) = call(
        Request::post("/nope")
            .body(Body::from("{}"))
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(
        Request::get("/api/nope")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// [`send`] of `method path` with no body.
async fn call_method(method: &str, path: &str) -> (StatusCode, Option<String>, serde_json::Value) {
    send(
        Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .expect("request"),
    )
    .await
}

#[tokio::test]
async fn wrong_method_is_a_json_405_naming_the_allowed_ones() {
    // Payload paths (`/query`, `/update`, the change feed's `/invalidate`, other spellings of
    // a function's name) are POST only; the forwarded functions take what their function.json
    // lists; the probe and the diagnostics are GET.
    let cases = [
        ("/invalidate", "POST"),
        ("/query", "POST"),
        ("/update", "POST"),
        ("/Query", "POST"),
        ("/api/query", "GET, POST"),
        ("/api/Query/", "GET, POST"),
        ("/API/query", "GET, POST"),
        ("/api/update", "POST, DELETE"),
        ("/_diagnostics", "GET, HEAD"),
        ("/", "GET, HEAD"),
    ];
    for (path, allow) in cases {
        for method in ["PUT", "PATCH"] {
            let (status, header, body) = call_method(method, path).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(header.as_deref(), Some(allow), "{method} {path}");
            assert_eq!(
                body["error"]["code"], "method_not_allowed",
                "{method} {path}: {body}"
            );
        }
    }
    for method in ["GET", "DELETE"] {
        for path in ["/invalidate", "/query", "/update"] {
            let (status, header, _) = call_method(method, path).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(header.as_deref(), Some("POST"), "{method} {path}");
        }
    }
}

#[tokio::test]
async fn a_path_that_names_no_function_is_a_404_whatever_the_method() {
    // These used to answer 405 (the POST-only `/{function}` route matched them).
    for path in ["/favicon.ico", "/api", "/nope", "/api/nope", "/robots.txt/"] {
        for method in ["GET", "POST", "PUT"] {
            let (status, header, body) = call_method(method, path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
            assert_eq!(header, None, "{method} {path}");
            assert_eq!(
                body["error"]["code"], "not_found",
                "{method} {path}: {body}"
            );
        }
    }
}

/// The functions' own paths are static routes and other spellings go through the `{function}`
/// routes (the host matches names case-insensitively and forwards the client's path, trailing
/// slash included): every spelling must reach the same function, in both modes.
#[tokio::test]
async fn every_spelling_of_a_function_path_reaches_it() {
    // A `maxItemCount` of 0 is refused by the query route before Redis or Cosmos is asked.
    for path in [
        "/api/query",
        "/api/query/",
        "/api/Query",
        "/api/QUERY/",
        "/api/qu%65ry",
        "/API/query",
        "/Api/Query/",
        "/API/qu%65ry",
    ] {
        let (status, body) = call(
            Request::get(format!("{path}?maxItemCount=0"))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"]["field"], "maxItemCount", "{path}: {body}");
    }
    for path in ["/query", "/Query", "/QUERY", "/%51uery"] {
        let payload = r#"{"Data":{"req":{"Method":"GET","Query":{"maxItemCount":"0"}}}}"#;
        let (status, body) = call(
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(payload))
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(
            body["Outputs"]["res"]["statusCode"], "400",
            "{path}: {body}"
        );
        let inner: serde_json::Value =
            serde_json::from_str(body["Outputs"]["res"]["body"].as_str().expect("body"))
                .expect("inner JSON");
        assert_eq!(inner["error"]["field"], "maxItemCount", "{path}: {inner}");
    }
    // `update` too: a body that is not JSON, not documents, or documents without a valid id is
    // refused before any backend is asked (it was a 503 while Cosmos DB could not name the
    // partition-key path).
    for (path, body, field) in [
        ("/api/update", "not json", "body"),
        ("/api/Update/", "[]", "body"),
        ("/api/UPDATE", "5", "body"),
        // Object and id checks need no partition-key path either.
        ("/api/update", "{}", "id"),
        ("/api/update", r#"{"state":"Zz"}"#, "id"),
        ("/api/update", r#"{"id":"a/b","state":"Zz"}"#, "id"),
        ("/api/update", "[1,2]", "[0]"),
        ("/api/update", r#"[{"id":"a"},{"id":7}]"#, "[1].id"),
    ] {
        let (status, body) =
            call(Request::post(path).body(Body::from(body)).expect("request")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"]["field"], field, "{path}: {body}");
    }
    for path in [
        "/api/queryx",
        "/api/query/extra",
        "/queries",
        "/api/qu%FFry",
        "/API/nope",
        "/apix/query",
        "/v1/api/query",
    ] {
        let (status, body) =
            call(Request::post(path).body(Body::from("{}")).expect("request")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{path}: {body}");
    }
}

#[tokio::test]
async fn client_errors_need_no_backend() {
    // Validation happens before Redis or Cosmos are touched, so bad input is a 400 even now.
    let (status, body) = call(
        Request::post("/api/query")
            .body(Body::from("{\"query\": 5}"))
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "query");
    let (status, body) = call(
        Request::get("/_diagnostics")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["cache"]["hits"], 0);
    assert_eq!(body["cache"]["invalidationPending"], false);
    assert_eq!(body["cache"]["circuit"], "closed");
}

/// A query string whose percent-decoding is not UTF-8 is a 400 naming the parameter, in both
/// modes (it used to be decoded to U+FFFD, run against Cosmos and cached).
#[tokio::test]
async fn a_query_value_that_is_not_utf8_is_a_400_naming_it() {
    for (query, field) in [("state=Ohio&city=%FF", "city"), ("n%C3=1", "n%C3")] {
        let (status, body) = call(
            Request::get(format!("/api/query?{query}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
        // Payload mode, where the host sent only the URL (no `Query` object).
        let invocation = serde_json::json!({
            "Data": {"req": {"Method": "GET", "Url": format!("http://h/api/query?{query}")}},
            "Metadata": {}
        });
        let (status, body) = call(
            Request::post("/query")
                .header("content-type", "application/json")
                .body(Body::from(invocation.to_string()))
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{query}: {body}");
    }
}

#[tokio::test]
async fn oversized_bodies_get_a_json_413() {
    let big = vec![b' '; cosmos_cache_handler::protocol::BODY_LIMIT + 1];
    let (status, body) = call(
        Request::post("/api/update")
            .body(Body::from(big))
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert_eq!(body["error"]["field"], "body");
}

/// `run` in-process on a real socket: it serves the readiness probe and the routes under the
/// prefix `host.json` names, and returns once its shutdown future completes.
#[tokio::test]
async fn run_serves_on_a_listener_until_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let settings = settings();
    let server = tokio::spawn(async move {
        cosmos_cache_handler::run(listener, &settings, root, async {
            let _ = stopped.await;
        })
        .await
    });
    let http = reqwest::Client::new();
    let ready = http
        .get(format!("http://{addr}/"))
        .send()
        .await
        .expect("readiness probe");
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.text().await.expect("body"), "ready");
    // host.json's routePrefix is `api`: a client error there is the route's own JSON 400.
    let bad = http
        .get(format!("http://{addr}/api/query?maxItemCount=0"))
        .send()
        .await
        .expect("query");
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.expect("json");
    assert_eq!(body["error"]["field"], "maxItemCount");
    stop.send(()).expect("server still running");
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("run returns after shutdown")
        .expect("no panic");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        http.get(format!("http://{addr}/")).send().await.is_err(),
        "the listener is closed after run returned"
    );
}
