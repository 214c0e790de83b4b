//! Issue 9.5: a page cached in Redis is served by a fresh handler instance while Cosmos DB is
//! unreachable, by GET as by POST (a GET used to ask Cosmos for the partition-key path first,
//! and answered 503). What is not cached is a 503 naming Cosmos.

use serde_json::json;

use crate::support::chaos_proxy::{Behaviour, ChaosProxy};
use crate::support::stack::Reply;
use crate::support::{Mode, Stack};

both_modes!(cached_pages_survive_a_cosmos_outage_on_a_fresh_instance);

/// Page 2 of `state=Iowa` in pages of 3, following page 1's continuation.
async fn iowa_page_2(stack: &Stack) -> Reply {
    let page1 = stack.get("query?state=Iowa&maxItemCount=3").await;
    assert_eq!(page1.status, 200, "{}", page1.text);
    let token = page1.json()["continuation"]
        .as_str()
        .expect("Iowa has more than 3 cities")
        .to_string();
    let token: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    stack
        .get(&format!(
            "query?state=Iowa&maxItemCount=3&continuation={token}"
        ))
        .await
}

async fn cached_pages_survive_a_cosmos_outage_on_a_fresh_instance(mode: Mode) {
    let (mut stack, proxy) = services_behind_a_proxy(mode).await;
    stack.start_handler().await;
    let post_body = json!({
        "query": "SELECT * FROM c WHERE c.state = @s",
        "parameters": [{"name": "@s", "value": "Iowa"}],
        "partitionKey": "Iowa",
    })
    .to_string();
    let get = stack.get("query?state=Iowa").await;
    assert_eq!((get.status, get.cache()), (200, "miss"), "{}", get.text);
    let post = stack.post("query", &post_body).await;
    assert_eq!((post.status, post.cache()), (200, "miss"), "{}", post.text);
    let page2 = iowa_page_2(&stack).await;
    assert_eq!(page2.status, 200, "{}", page2.text);

    // Cosmos becomes unreachable (connections refused), then a new instance starts.
    proxy.set(Behaviour::Refuse);
    proxy.cut_all();
    stack.start_handler().await;
    let hit = stack.get("query?state=Iowa").await;
    assert_eq!((hit.status, hit.cache()), (200, "hit"), "{}", hit.text);
    assert_eq!(hit.text, get.text, "the same page");
    let post_hit = stack.post("query", &post_body).await;
    assert_eq!((post_hit.status, post_hit.cache()), (200, "hit"));
    let page2_hit = iowa_page_2(&stack).await;
    assert_eq!((page2_hit.status, page2_hit.cache()), (200, "hit"));
    assert_eq!(page2_hit.text, page2.text);

    // Not cached: 503, naming Cosmos, never the client's input.
    let miss = stack.get("query?state=Ohio").await;
    assert_eq!(miss.status, 503, "{}", miss.text);
    let error = &miss.json()["error"];
    assert_eq!(error["code"], "unavailable");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("Cosmos DB")
    );
    assert!(error.get("field").is_none());
    stack.shutdown().await;
}

/// Services for a handler that reaches Cosmos through a proxy (not started): the proxy can cut
/// Cosmos off while the endpoint, and with it the cache keys' account scope, stays the same.
async fn services_behind_a_proxy(mode: Mode) -> (Stack, ChaosProxy) {
    let mut stack = Stack::services(mode, true, &[]);
    let upstream: std::net::SocketAddr = stack
        .cosmos
        .endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("the local server's address");
    let proxy = ChaosProxy::start(upstream).await;
    stack.set_env(
        "COSMOS_ENDPOINT",
        &format!("http://127.0.0.1:{}/", proxy.port),
    );
    (stack, proxy)
}

/// A stack whose handler reaches Cosmos through a proxy, with `state=Iowa` cached (and the
/// container's partition-key path known, as on any instance that has served a miss).
async fn stack_behind_a_proxy() -> (Stack, ChaosProxy, Reply) {
    let (mut stack, proxy) = services_behind_a_proxy(Mode::Forwarding).await;
    stack.start_handler().await;
    let page = stack.get("query?state=Iowa").await;
    assert_eq!((page.status, page.cache()), (200, "miss"), "{}", page.text);
    (stack, proxy, page)
}

/// The writes of [`writes_that_never_reached_cosmos_keep_the_cached_pages`]: one document,
/// a batch, a delete by query string and by body.
async fn failed_writes(stack: &Stack) -> Vec<Reply> {
    let doc = json!({"id": "outage-1", "state": "Iowa", "city": "Nowhere"});
    let batch = json!([doc, {"id": "outage-2", "state": "Ohio", "city": "Elsewhere"}]);
    vec![
        stack.post("update", &doc.to_string()).await,
        stack.post("update", &batch.to_string()).await,
        stack.delete("update?id=outage-1&partitionKey=Iowa").await,
    ]
}

/// A write during a Cosmos outage used to invalidate the container even when it never left
/// the handler, so every instance's cached pages of it turned into 503s until Cosmos was back.
/// A connection refused (nothing listens at the endpoint) proves the write was not sent: the
/// pages stay, and the client still gets a 503 naming Cosmos.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_never_reached_cosmos_keep_the_cached_pages() {
    let (stack, proxy, page) = stack_behind_a_proxy().await;
    let generation = stack.generation();
    // Nothing listens at the endpoint any more: every connection is refused.
    drop(proxy);
    for reply in failed_writes(&stack).await {
        assert_eq!(reply.status, 503, "{}", reply.text);
        assert_eq!(
            reply.json()["error"]["code"],
            "unavailable",
            "{}",
            reply.text
        );
        assert_eq!(reply.header("x-cache-invalidation"), None, "{}", reply.text);
        assert!(
            !reply.text.contains("may still have been applied"),
            "{}",
            reply.text
        );
    }
    assert_eq!(
        stack.generation(),
        generation,
        "no write bumped the generation"
    );
    let hit = stack.get("query?state=Iowa").await;
    assert_eq!((hit.status, hit.cache()), (200, "hit"), "{}", hit.text);
    assert_eq!(hit.text, page.text);
    stack.shutdown().await;
}

/// The other side of the rule: a connection that Cosmos's side accepts and then closes may
/// have carried the write, so the container is invalidated (a stale read is worse than a
/// miss), and with Cosmos unreachable the page is then a 503, not the old rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_may_have_reached_cosmos_still_invalidates() {
    let (stack, proxy, _) = stack_behind_a_proxy().await;
    let (_, before) = stack.generation();
    proxy.set(Behaviour::Refuse);
    proxy.cut_all();
    let doc = json!({"id": "outage-3", "state": "Iowa", "city": "Maybe"});
    let reply = stack.post("update", &doc.to_string()).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    // The client is told the outcome is unknown, not that nothing happened.
    assert!(
        reply.text.contains("may still have been applied"),
        "{}",
        reply.text
    );
    let (_, after) = stack.generation();
    assert!(after > before, "generation {before:?} -> {after:?}");
    let read = stack.get("query?state=Iowa").await;
    assert_eq!(read.status, 503, "{}", read.text);
    stack.shutdown().await;
}

/// The wire side of the rule: a write Cosmos refuses before applying it (409, 412, 429 past
/// the throttling budget) leaves the pages alone; one Cosmos failed on (a 500) may have been
/// applied and invalidates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_cosmos_refused_keep_the_cached_pages() {
    let stack = Stack::start_with(
        Mode::Forwarding,
        true,
        &[("COSMOS_THROTTLE_BUDGET_MS", "200")],
    )
    .await;
    let page = stack.get("query?state=Iowa").await;
    assert_eq!((page.status, page.cache()), (200, "miss"), "{}", page.text);
    let doc = json!({"id": "refused-1", "state": "Iowa", "city": "Refused"}).to_string();
    for (status, answer) in [(409, 409), (412, 412), (429, 503)] {
        let (_, before) = stack.generation();
        stack
            .cosmos
            .fault(json!({"kind": "upsert", "count": 50, "status": status, "retryAfterMs": 10, "db": stack.database}))
            .await;
        let reply = stack.post("update", &doc).await;
        assert_eq!(reply.status, answer, "Cosmos {status}: {}", reply.text);
        stack.cosmos.clear_faults(&stack.database).await;
        assert_eq!(stack.generation().1, before, "Cosmos {status}: no bump");
        let hit = stack.get("query?state=Iowa").await;
        assert_eq!((hit.status, hit.cache()), (200, "hit"), "Cosmos {status}");
        assert_eq!(hit.text, page.text);
    }
    let (_, before) = stack.generation();
    stack
        .cosmos
        .fault(json!({"kind": "upsert", "count": 50, "status": 500, "db": stack.database}))
        .await;
    let reply = stack.post("update", &doc).await;
    assert_eq!(reply.status, 502, "{}", reply.text);
    stack.cosmos.clear_faults(&stack.database).await;
    assert!(
        stack.generation().1 > before,
        "a 500 may have been applied: bump"
    );
    let read = stack.get("query?state=Iowa").await;
    assert_eq!((read.status, read.cache()), (200, "miss"), "{}", read.text);
    stack.shutdown().await;
}

/// Runs `request` while Cosmos's answers are dropped, for 250 ms: its first attempt reaches
/// Cosmos (and is applied) well before it times out; a retry after that goes through.
async fn answers_lost_for_a_while<T>(proxy: &ChaosProxy, request: impl Future<Output = T>) -> T {
    proxy.set(Behaviour::DropAnswers);
    let restore = async {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        proxy.set(Behaviour::Pass);
    };
    let (reply, ()) = tokio::join!(request, restore);
    reply
}

/// Writes whose answer is lost after Cosmos applied them. A delete: the SDK's retry (deletes
/// are retried after an ambiguous failure) finds no document and answers 404. The 404 alone
/// reads "nothing was deleted" (and until this test, skipped the invalidation: the deleted
/// city stayed cached); the first attempt's record says it may have been, so the container is
/// invalidated. An upsert: the next read shows it, whatever the client was told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_whose_answer_was_lost_never_leave_old_data_cached() {
    let (mut stack, proxy) = services_behind_a_proxy(Mode::Forwarding).await;
    // A lost answer times out after 0.5 s instead of the SDK's default 6 s.
    stack.set_env(
        "AZURE_COSMOS_CONNECTION_POOL_MAX_DATAPLANE_REQUEST_TIMEOUT_MS",
        "500",
    );
    stack.start_handler().await;
    let page = stack.get("query?state=Iowa").await;
    assert_eq!((page.status, page.cache()), (200, "miss"), "{}", page.text);
    let id = page.json()["items"][0]["id"]
        .as_str()
        .expect("an Iowa city")
        .to_string();

    let path = format!("update?id={id}&partitionKey=Iowa");
    let reply = answers_lost_for_a_while(&proxy, stack.delete(&path)).await;
    println!(
        "delete with its answer lost: {} {}",
        reply.status, reply.text
    );
    assert!(
        [404, 503].contains(&reply.status),
        "a 404 (the retry found nothing) or a 503 (no retry): {}",
        reply.text
    );
    let after = stack.get("query?state=Iowa").await;
    assert_eq!(after.status, 200, "{}", after.text);
    assert_ne!(after.cache(), "hit", "the page cached before the delete");
    assert!(
        !after.text.contains(&format!("\"id\":\"{id}\"")),
        "{id} was deleted: {}",
        after.text
    );

    // The same for an upsert: whatever the client is told, the next read shows the write.
    let cached = stack.get("query?state=Iowa").await;
    assert_eq!(cached.cache(), "hit", "{}", cached.text);
    let doc = json!({"id": id, "state": "Iowa", "city": "Lost Answer"}).to_string();
    let reply = answers_lost_for_a_while(&proxy, stack.post("update", &doc)).await;
    println!(
        "upsert with its answer lost: {} {}",
        reply.status, reply.text
    );
    let after = stack.get("query?state=Iowa").await;
    assert_eq!(after.status, 200, "{}", after.text);
    assert!(after.text.contains("Lost Answer"), "{}", after.text);
    stack.shutdown().await;
}
