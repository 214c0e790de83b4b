//! Redis down: answers keep coming from Cosmos (`x-cache: bypass`); after Redis is back, hits
//! resume and no stale page is served.

use std::time::{Duration, Instant};

use crate::support::{Mode, Stack};

both_modes!(redis_stopped_bypasses_then_recovers);

async fn redis_stopped_bypasses_then_recovers(mode: Mode) {
    let mut stack = Stack::start(mode).await;
    let first = stack.get("query?state=Idaho").await;
    assert_eq!(first.cache(), "miss", "{}", first.text);
    assert_eq!(stack.get("query?state=Idaho").await.cache(), "hit");

    stack.redis.kill();
    let down = stack.get("query?state=Idaho").await;
    assert_eq!(down.status, 200, "{}", down.text);
    assert_eq!(down.cache(), "bypass");
    assert_eq!(down.text, first.text);

    // A write while Redis is down succeeds; the invalidation is pending.
    let mut boise = first.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|c| c["city"] == "Boise City")
        .cloned()
        .expect("Boise City, Idaho is in the data set");
    boise["population"] = serde_json::json!(7);
    let update = stack.post("update", &boise.to_string()).await;
    assert_eq!(update.status, 200, "{}", update.text);
    assert_eq!(update.header("x-cache-invalidation"), Some("pending"));
    let during = stack.get("query?state=Idaho").await;
    assert_eq!(during.cache(), "bypass");

    stack.redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let reply = stack.get("query?state=Idaho").await;
        assert_eq!(reply.status, 200);
        let population = reply.json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|c| c["city"] == "Boise City")
            .map(|c| c["population"].clone());
        assert_eq!(population, Some(serde_json::json!(7)), "never the old data");
        seen.push(reply.cache().to_string());
        if reply.cache() == "hit" {
            break;
        }
        assert!(Instant::now() < deadline, "hits did not resume: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.shutdown().await;
}
