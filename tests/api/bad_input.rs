//! Bad input: a 400 naming the field, nothing written; a malformed invocation fails it.

use crate::support::{Mode, Stack};

both_modes!(bad_requests_name_the_field);

async fn bad_requests_name_the_field(mode: Mode) {
    let mut stack = Stack::start_with(mode, false, &[]).await;
    // The container does not exist yet: 503 naming it.
    let missing = stack.get("query?state=Texas").await;
    assert_eq!(missing.status, 503, "{}", missing.text);
    assert!(missing.text.contains("us_cities"), "{}", missing.text);
    stack.seed();

    let cases: [(&str, &str, &str); 5] = [
        ("update", "{not json", "body"),
        ("update", r#"{"city":"X","state":"Texas"}"#, "id"),
        ("update", r#"{"id":"x-y","city":"X"}"#, "state"),
        (
            "update",
            r#"[{"id":"a","state":"T"},{"id":"b","state":{}}]"#,
            "[1].state",
        ),
        (
            "query",
            r#"{"query":"SELECT * FROM c","parameters":[{"name":"city"}]}"#,
            "parameters[0].name",
        ),
    ];
    for (function, body, field) in cases {
        let reply = stack.post(function, body).await;
        assert_eq!(reply.status, 400, "{function} {body}: {}", reply.text);
        assert_eq!(reply.json()["error"]["code"], "bad_request");
        assert_eq!(reply.error_field(), field, "{function} {body}");
    }
    for (query, field) in [
        ("query?c.state=Texas", "c.state"),
        ("query?state=Texas&maxItemCount=0", "maxItemCount"),
        ("query?state=Texas&maxItemCount=2000", "maxItemCount"),
        ("query?state=Texas&maxItemCount=many", "maxItemCount"),
        // Not UTF-8 once decoded: the host forwards it as U+FFFD (payload: in `Query`).
        ("query?state=Texas&city=%FF", "city"),
    ] {
        let reply = stack.get(query).await;
        assert_eq!(reply.status, 400, "{query}: {}", reply.text);
        assert_eq!(reply.error_field(), field, "{query}");
    }
    let delete = stack.delete("update?partitionKey=Texas").await;
    assert_eq!(delete.status, 400);
    assert_eq!(delete.error_field(), "id");

    // Cosmos rejects the SQL: 400 with its message, and nothing is cached.
    let bad_sql = r#"{"query":"SELEC * FROM c"}"#;
    let reply = stack.post("query", bad_sql).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.json()["error"]["code"], "bad_query");
    assert_eq!(reply.header("x-cache"), None);
    let mut redis = stack.redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis).expect("KEYS");
    assert!(
        keys.iter()
            .all(|k| k.ends_with(":gen") || k.ends_with(":server")),
        "no error was cached: {keys:?}"
    );
    stack.shutdown().await;
}

/// A body that is not an invocation payload fails the invocation: non-2xx (protocol §5.1).
#[tokio::test]
async fn malformed_invocation_payload_is_non_2xx() {
    let stack = Stack::start_with(Mode::Payload, false, &[]).await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/query", stack.handler_port());
    for body in [
        "not json",
        "{}",
        r#"{"Data":{}}"#,
        r#"{"Data":{"req":{"Url":"x"}}}"#,
    ] {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("handler answers");
        assert!(
            !response.status().is_success(),
            "{body}: {}",
            response.status()
        );
    }
    // A well-formed invocation with a bad client request succeeds, carrying a 4xx in res.
    let envelope = serde_json::json!({
        "Data": {"req": {"Url": "http://localhost/api/query?maxItemCount=0", "Method": "GET",
                          "Query": {"maxItemCount": "0"}, "Headers": {}, "Params": {}}},
        "Metadata": {}
    });
    let response = client
        .post(&url)
        .json(&envelope)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    let result: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(result["Outputs"]["res"]["statusCode"], "400");
    stack.shutdown().await;
}
