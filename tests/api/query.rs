//! `query`: cache-aside reads on the 1,000-city data set.

use std::collections::HashSet;

use crate::support::stack::city_rows;
use crate::support::{Mode, Stack};

both_modes!(
    miss_then_hit_identical_body,
    function_key_is_not_a_filter,
    post_query_with_parameters,
    continuation_paging_returns_each_city_once
);

async fn miss_then_hit_identical_body(mode: Mode) {
    let stack = Stack::start(mode).await;
    let expected: HashSet<String> = city_rows()
        .into_iter()
        .filter(|c| c.state == "Texas")
        .map(|c| c.city)
        .collect();
    let first = stack.get("query?state=Texas&maxItemCount=1000").await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.cache(), "miss");
    let charge: f64 = first
        .header("x-ms-request-charge")
        .expect("request charge on a miss")
        .parse()
        .expect("a number");
    assert!(charge > 0.0);
    let body = first.json();
    let cities: HashSet<String> = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| {
            assert_eq!(c["state"], "Texas");
            c["city"].as_str().expect("city").to_string()
        })
        .collect();
    assert_eq!(cities, expected);
    assert_eq!(body["count"], expected.len());
    assert!(body["continuation"].is_null());

    let second = stack.get("query?state=Texas&maxItemCount=1000").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.cache(), "hit");
    assert_eq!(second.text, first.text, "hit and miss bodies are identical");
    assert!(second.header("x-ms-request-charge").is_none());
    // Another spelling of the same query (the parameters in another order) is the same page:
    // the handler's memo of resolved query strings goes by spelling, the cache key does not.
    for _ in 0..2 {
        let reordered = stack.get("query?maxItemCount=1000&state=Texas").await;
        assert_eq!(reordered.status, 200);
        assert_eq!(reordered.cache(), "hit");
        assert_eq!(reordered.text, first.text);
    }
    // Forwarded, the two spellings are two memo entries; in payload mode the host sends
    // `Query` as an object, whose names arrive in one order whatever the client's.
    let memo = stack.diagnostics().await["queryMemo"].clone();
    let spellings = if mode == Mode::Payload { 1 } else { 2 };
    assert_eq!(memo["entries"], spellings, "{memo}");
    let bytes = memo["bytes"].as_u64().expect("bytes");
    assert!(bytes > 0 && bytes <= 1 << 20, "{memo}");
    stack.shutdown().await;
}

async fn function_key_is_not_a_filter(mode: Mode) {
    let stack = Stack::start(mode).await;
    let with_key = stack.get("query?state=Ohio&code=c2VjcmV0a2V5").await;
    assert_eq!(with_key.status, 200, "{}", with_key.text);
    assert_eq!(with_key.cache(), "miss");
    let ohio = city_rows().iter().filter(|c| c.state == "Ohio").count();
    assert_eq!(with_key.json()["count"], ohio);
    let without = stack.get("query?state=Ohio").await;
    assert_eq!(without.cache(), "hit", "code= is not part of the cache key");
    assert_eq!(without.text, with_key.text);
    stack.shutdown().await;
}

async fn post_query_with_parameters(mode: Mode) {
    let stack = Stack::start(mode).await;
    let mut expected: Vec<String> = city_rows()
        .into_iter()
        .filter(|c| c.state == "California" && c.population > 500_000)
        .map(|c| c.city)
        .collect();
    expected.sort();
    assert!(!expected.is_empty());
    let query = r#"{"query":"SELECT c.city, c.population FROM c WHERE c.state = @state AND c.population > @min","parameters":[{"name":"@state","value":"California"},{"name":"@min","value":500000}],"partitionKey":"California","maxItemCount":1000}"#;
    let first = stack.post("query", query).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.cache(), "miss");
    let mut cities: Vec<String> = first.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| c["city"].as_str().expect("city").to_string())
        .collect();
    cities.sort();
    assert_eq!(cities, expected);

    // The same parameters in another order are the same query: a hit.
    let reordered = r#"{"query":"SELECT c.city, c.population FROM c WHERE c.state = @state AND c.population > @min","parameters":[{"name":"@min","value":500000},{"name":"@state","value":"California"}],"partitionKey":"California","maxItemCount":1000}"#;
    let second = stack.post("query", reordered).await;
    assert_eq!(second.cache(), "hit");
    assert_eq!(second.text, first.text);
    stack.shutdown().await;
}

async fn continuation_paging_returns_each_city_once(mode: Mode) {
    let stack = Stack::start(mode).await;
    let total = city_rows().len();
    let (ids, outcomes) = walk_pages(&stack).await;
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), total, "every city once");
    assert_eq!(unique.len(), total, "no duplicates");
    assert!(outcomes.iter().all(|o| o == "miss"), "{outcomes:?}");
    // Each page is cached under its own continuation token.
    let (again, outcomes) = walk_pages(&stack).await;
    assert_eq!(again, ids);
    assert!(outcomes.iter().all(|o| o == "hit"), "{outcomes:?}");
    stack.shutdown().await;
}

/// Follows `continuation` from the first page to the last; returns the ids and the
/// `x-cache` of each page.
async fn walk_pages(stack: &Stack) -> (Vec<String>, Vec<String>) {
    let mut ids = Vec::new();
    let mut outcomes = Vec::new();
    let mut continuation: Option<String> = None;
    for _ in 0..100 {
        let path = match &continuation {
            None => "query?maxItemCount=100".to_string(),
            Some(c) => format!(
                "query?maxItemCount=100&continuation={}",
                form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()
            ),
        };
        let page = stack.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.text);
        outcomes.push(page.cache().to_string());
        let body = page.json();
        let items = body["items"].as_array().expect("items");
        assert!(items.len() <= 100);
        ids.extend(
            items
                .iter()
                .map(|i| i["id"].as_str().expect("id").to_string()),
        );
        match body["continuation"].as_str() {
            Some(c) => continuation = Some(c.to_string()),
            None => return (ids, outcomes),
        }
    }
    panic!("more than 100 pages");
}
