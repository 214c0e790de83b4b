//! Findings of an adversarial pass, each a test that failed before its fix: a deep query that
//! aborted the process, a token cached by a GET that its equivalent POST could not resume,
//! a content-type parameter mistaken for a multipart body in payload mode, and a body under the
//! limit that outgrew the envelope limit once escaped.

use serde_json::{Value, json};

use crate::support::{Mode, Stack};

both_modes!(
    deep_query_is_refused_and_the_handler_lives,
    get_and_post_of_one_query_page_with_their_own_tokens,
    content_type_parameter_naming_multipart_is_text,
    body_under_the_limit_is_answered_by_the_route
);

async fn deep_query_is_refused_and_the_handler_lives(mode: Mode) {
    let stack = Stack::start(mode).await;
    // 25,000 nested NOT (100 KB): the SDK's recursive planner overflowed a 2 MiB stack at
    // ~10,000 and aborted the process.
    let deep = format!("SELECT * FROM c WHERE {}true", "NOT ".repeat(25_000));
    let reply = stack
        .post("query", &json!({ "query": deep }).to_string())
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.error_field(), "query");
    // Just under the bound: planned on the handler's larger stack, whatever Cosmos answers.
    let near = format!("SELECT * FROM c WHERE {}true", "NOT ".repeat(4_000));
    let reply = stack
        .post("query", &json!({ "query": near }).to_string())
        .await;
    assert!(reply.status < 500, "{} {}", reply.status, reply.text);
    let after = stack.get("query?state=Texas&maxItemCount=1").await;
    assert_eq!(
        after.status, 200,
        "the handler must survive: {}",
        after.text
    );
    stack.shutdown().await;
}

async fn get_and_post_of_one_query_page_with_their_own_tokens(mode: Mode) {
    let stack = Stack::start(mode).await;
    let expected = stack.get("query?state=Ohio&maxItemCount=1000").await.json()["count"]
        .as_u64()
        .expect("count");
    assert!(expected > 5);
    // The GET first (pinned to Ohio's partition), then the POST of the same text and
    // parameters (cross-partition), paged to the end with the tokens it is handed.
    assert_eq!(
        stack.get("query?state=Ohio&maxItemCount=5").await.status,
        200
    );
    let body = |continuation: Value| {
        json!({
            "query": "SELECT * FROM c WHERE c[\"state\"] = @f_state",
            "parameters": [{"name": "@f_state", "value": "Ohio"}],
            "maxItemCount": 5,
            "continuation": continuation,
        })
        .to_string()
    };
    let mut reply = stack.post("query", &body(Value::Null)).await;
    let mut rows = 0;
    for page in 1..=50 {
        assert_eq!(reply.status, 200, "page {page}: {}", reply.text);
        rows += reply.json()["count"].as_u64().expect("count");
        let token = reply.json()["continuation"].clone();
        if token.is_null() {
            break;
        }
        reply = stack.post("query", &body(token)).await;
    }
    assert_eq!(rows, expected);
    stack.shutdown().await;
}

async fn content_type_parameter_naming_multipart_is_text(mode: Mode) {
    let stack = Stack::start(mode).await;
    let response = reqwest::Client::new()
        .post(format!("{}/api/update", stack.base()))
        .header("content-type", "application/json; profile=multipart")
        .body(r#"{"id":"ct-1","state":"Texas","city":"CT"}"#)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{text}");
    stack.shutdown().await;
}

async fn body_under_the_limit_is_answered_by_the_route(mode: Mode) {
    let stack = Stack::start(mode).await;
    // 6 MiB of control bytes: under the 16 MiB body limit, but six times larger once the host
    // escapes it into the invocation payload.
    let response = reqwest::Client::new()
        .post(format!("{}/api/update", stack.base()))
        .header("content-type", "application/json")
        .body(vec![0x01_u8; 6 << 20])
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 400, "{}", &text[..text.len().min(300)]);
    assert!(
        text.contains("\"field\":\"body\""),
        "{}",
        &text[..text.len().min(300)]
    );
    stack.shutdown().await;
}
