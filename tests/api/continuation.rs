//! Issue 9.6: a continuation token is only good for the query that produced it. Garbage, a
//! token of another query and a tampered token are a 400 naming `continuation`, and nothing is
//! cached for them (a garbage token used to be served as page 1, then cached as a hit).

use crate::support::{Mode, Stack};

both_modes!(tokens_are_bound_to_their_query);

fn entries(stack: &Stack) -> usize {
    stack
        .redis_keys()
        .iter()
        .filter(|k| !k.ends_with(":gen") && !k.ends_with(":server") && !k.ends_with(":lease"))
        .count()
}

fn encode(token: &str) -> String {
    url::form_urlencoded::byte_serialize(token.as_bytes()).collect()
}

async fn tokens_are_bound_to_their_query(mode: Mode) {
    let stack = Stack::start(mode).await;
    let california = stack.get("query?state=California&maxItemCount=10").await;
    assert_eq!(california.status, 200, "{}", california.text);
    let token = california.json()["continuation"]
        .as_str()
        .expect("California has more than 10 cities")
        .to_string();
    let cached = entries(&stack);

    let texas_token = stack.get("query?state=Texas&maxItemCount=10").await.json()["continuation"]
        .as_str()
        .expect("a token")
        .to_string();
    let cached = cached + 1;
    assert_eq!(entries(&stack), cached);

    let tampered = format!("{}x", &token);
    for (label, path) in [
        (
            "garbage",
            "query?state=Texas&continuation=garbage".to_string(),
        ),
        (
            "garbage, twice",
            "query?state=Texas&continuation=garbage".to_string(),
        ),
        (
            "California's token with Ohio",
            format!(
                "query?state=Ohio&maxItemCount=10&continuation={}",
                encode(&token)
            ),
        ),
        (
            "Texas's token with California",
            format!(
                "query?state=California&maxItemCount=10&continuation={}",
                encode(&texas_token)
            ),
        ),
        (
            "a tampered token",
            format!(
                "query?state=California&maxItemCount=10&continuation={}",
                encode(&tampered)
            ),
        ),
    ] {
        let reply = stack.get(&path).await;
        assert_eq!(reply.status, 400, "{label}: {}", reply.text);
        assert_eq!(reply.error_field(), "continuation", "{label}");
        assert!(reply.header("x-cache").is_none(), "{label}");
    }
    // By POST, with another partition key than the one the token was issued for.
    let body = serde_json::json!({
        "query": "SELECT * FROM c WHERE c.state = @s",
        "parameters": [{"name": "@s", "value": "California"}],
        "partitionKey": "Ohio",
        "continuation": token,
    });
    let reply = stack.post("query", &body.to_string()).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.error_field(), "continuation");
    assert_eq!(entries(&stack), cached, "nothing cached for refused tokens");

    // The token still works with its own query, with another page size too.
    let page2 = stack
        .get(&format!(
            "query?state=California&maxItemCount=25&continuation={}",
            encode(&token)
        ))
        .await;
    assert_eq!(page2.status, 200, "{}", page2.text);
    let body = page2.json();
    assert_eq!(body["count"], 25);
    assert!(
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|c| c["state"] == "California")
    );
    stack.shutdown().await;
}
