//! Issue 8.4: the host's router accepts a trailing slash (`/api/query/`) and forwards the
//! original path (cf. Azure/azure-functions-host#969); function names match case-insensitively.

use serde_json::json;

use crate::support::{Mode, Stack};

both_modes!(trailing_slash_and_case_reach_the_function);

async fn trailing_slash_and_case_reach_the_function(mode: Mode) {
    let stack = Stack::start(mode).await;
    let plain = stack.get("query?state=Texas&maxItemCount=1000").await;
    assert_eq!(plain.status, 200, "{}", plain.text);
    let slash = stack.get("query/?state=Texas&maxItemCount=1000").await;
    assert_eq!(slash.status, 200, "{}", slash.text);
    assert_eq!(slash.json()["count"], plain.json()["count"]);
    assert_eq!(slash.cache(), "hit", "the same query, the same cache entry");
    let upper = stack.get("QUERY/?state=Texas&maxItemCount=1000").await;
    assert_eq!(upper.status, 200, "{}", upper.text);

    let austin = stack.get("query/?state=Texas&city=Austin").await.json()["items"][0].clone();
    let mut changed = austin.clone();
    changed["population"] = json!(4321);
    let update = stack.post("update/", &changed.to_string()).await;
    assert_eq!(update.status, 200, "{}", update.text);
    assert_eq!(update.json(), json!({"upserted": 1}));
    let after = stack.get("query?state=Texas&city=Austin").await;
    assert_eq!(after.json()["items"][0]["population"], 4321);

    // Two slashes are not the host's trailing slash: still no such function.
    assert_eq!(stack.get("query//?state=Texas").await.status, 404);
    stack.shutdown().await;
}
