//! `update`: writes reach Cosmos and the next `query` sees them.

use crate::support::{Mode, Stack};

both_modes!(
    update_then_query_shows_change,
    batch_upsert_and_delete,
    invalid_batch_writes_nothing
);

async fn update_then_query_shows_change(mode: Mode) {
    let stack = Stack::start(mode).await;
    let before = stack.get("query?city=Austin&state=Texas").await;
    assert_eq!(before.status, 200, "{}", before.text);
    let austin = before.json()["items"][0].clone();
    assert_eq!(austin["city"], "Austin");
    assert_ne!(austin["population"], 1234);
    assert_eq!(
        stack.get("query?city=Austin&state=Texas").await.cache(),
        "hit"
    );

    let mut changed = austin.clone();
    changed["population"] = serde_json::json!(1234);
    let update = stack.post("update", &changed.to_string()).await;
    assert_eq!(update.status, 200, "{}", update.text);
    assert_eq!(update.json(), serde_json::json!({"upserted": 1}));
    assert_eq!(update.header("x-cache-invalidation"), Some("done"));

    let after = stack.get("query?city=Austin&state=Texas").await;
    assert_eq!(after.status, 200);
    assert_eq!(
        after.cache(),
        "miss",
        "the write invalidated the cached page"
    );
    assert_eq!(after.json()["items"][0]["population"], 1234);
    // Other cached queries of the container were invalidated too (generation bump).
    stack.shutdown().await;
}

async fn batch_upsert_and_delete(mode: Mode) {
    let stack = Stack::start(mode).await;
    let empty = stack.get("query?state=Atlantis").await;
    assert_eq!(empty.json()["count"], 0);
    assert_eq!(
        stack.get("query?state=Atlantis").await.cache(),
        "hit",
        "an empty result is cached like any other"
    );
    let docs = r#"[{"id":"poseidonis-atlantis","city":"Poseidonis","state":"Atlantis","population":3},
                   {"id":"ys-atlantis","city":"Ys","state":"Atlantis","population":2},
                   {"id":"vineta-atlantis","city":"Vineta","state":"Atlantis","population":1}]"#;
    let upserted = stack.post("update", docs).await;
    assert_eq!(upserted.status, 200, "{}", upserted.text);
    assert_eq!(upserted.json()["upserted"], 3);
    let three = stack.get("query?state=Atlantis").await;
    assert_eq!(three.cache(), "miss");
    assert_eq!(three.json()["count"], 3);

    let deleted = stack
        .delete("update?id=ys-atlantis&partitionKey=Atlantis")
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    assert_eq!(deleted.json(), serde_json::json!({"deleted": 1}));
    let two = stack.get("query?state=Atlantis").await;
    assert_eq!(two.cache(), "miss");
    let body = two.json();
    let mut ids: Vec<&str> = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().unwrap_or_default())
        .collect();
    ids.sort();
    assert_eq!(ids, ["poseidonis-atlantis", "vineta-atlantis"]);

    let again = stack
        .delete("update?id=ys-atlantis&partitionKey=Atlantis")
        .await;
    assert_eq!(again.status, 404, "{}", again.text);
    assert_eq!(again.json()["error"]["code"], "not_found");
    stack.shutdown().await;
}

async fn invalid_batch_writes_nothing(mode: Mode) {
    let stack = Stack::start(mode).await;
    let upserts_before = stack.cosmos_stats().await["upserts"].clone();
    let bad = stack
        .post(
            "update",
            r#"[{"id":"valid-nowhere","state":"Nowhere"},{"state":"Nowhere"}]"#,
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(bad.error_field(), "[1].id");
    assert_eq!(stack.cosmos_stats().await["upserts"], upserts_before);
    assert_eq!(stack.get("query?state=Nowhere").await.json()["count"], 0);
    stack.shutdown().await;
}

/// Sends `doc` to `update` at `base` while Cosmos takes 1.5 s to apply it, and gives up after
/// 0.3 s, as a client's or the host's timeout does.
async fn write_and_go_away(stack: &Stack, base: &str, doc: &serde_json::Value) {
    stack
        .cosmos
        .fault(serde_json::json!({"kind": "upsert", "count": 1, "delayMs": 1500, "db": stack.database}))
        .await;
    let sent = reqwest::Client::new()
        .post(format!("{base}/api/update"))
        .timeout(std::time::Duration::from_millis(300))
        .body(doc.to_string())
        .send()
        .await;
    assert!(
        sent.as_ref().is_err_and(reqwest::Error::is_timeout),
        "{sent:?}"
    );
}

/// A write runs to its invalidation even when its caller goes away mid-write (a client timeout,
/// the host's `functionTimeout`): the server drops the request's future, and a write Cosmos
/// applied afterwards used to leave the old pages cached until their TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_invalidated_even_when_its_caller_goes_away() {
    let stack = Stack::start(Mode::Forwarding).await;
    let page = stack.get("query?state=Iowa").await;
    assert_eq!(page.status, 200, "{}", page.text);
    let id = page.json()["items"][0]["id"]
        .as_str()
        .expect("an Iowa city")
        .to_string();
    assert_eq!(stack.get("query?state=Iowa").await.cache(), "hit");
    let doc = serde_json::json!({"id": id, "state": "Iowa", "city": "Caller Gone"});
    let handler = format!("http://127.0.0.1:{}", stack.handler_port());
    write_and_go_away(&stack, &handler, &doc).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
    loop {
        let read = stack.get("query?state=Iowa").await;
        assert_eq!(read.status, 200, "{}", read.text);
        if read.text.contains("Caller Gone") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "6 s after the write, the page is still the old one ({})",
            read.cache()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stack.shutdown().await;
}

/// The same, when the handler is stopped (SIGTERM: a scale-in, a deployment) right after the
/// caller went away: shutdown waits for the write and its invalidation. It used to return at
/// once (no connection open any more) and the process exited with the write's task, so a
/// write Cosmos applied left every instance's old page cached until its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_write_whose_caller_went_away() {
    let stack = Stack::services(Mode::Forwarding, true, &[]);
    let settings = stack.settings();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        cosmos_cache_handler::run(listener, &settings, root, async {
            let _ = stopped.await;
        })
        .await
    });
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/api/query?state=Iowa");
    let page = http.get(&url).send().await.expect("query");
    let page: serde_json::Value = page.json().await.expect("JSON page");
    let id = page["items"][0]["id"].as_str().expect("an Iowa city");
    let (_, before) = stack.generation();
    // The caller gives up on the write, then the handler is told to stop.
    let doc = serde_json::json!({"id": id, "state": "Iowa", "city": "Stopped Midway"});
    write_and_go_away(&stack, &format!("http://{addr}"), &doc).await;
    let _ = stop.send(());
    let started = std::time::Instant::now();
    server.await.expect("joins").expect("serves and stops");
    let (_, after) = stack.generation();
    println!("shutdown took {:?}", started.elapsed());
    assert!(
        after > before,
        "run returned before the write's invalidation: generation {before:?} -> {after:?}"
    );
    stack.shutdown().await;
}
