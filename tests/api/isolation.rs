//! Issue 8.5: environments that share one Redis never share cache entries. `defaultDatabase=`
//! in the StackExchange.Redis connection string selects the Redis database (it was ignored, so
//! staging served production's pages: stefanprodan/AspNetCoreRateLimit#288,
//! MichaCo/CacheManager#175), and keys are scoped by the Cosmos account as well as the database
//! and container, so two accounts with equal names do not meet even in one Redis database.

use crate::support::{Mode, Stack};

both_modes!(default_database_and_account_keep_environments_apart);

/// Keys of Redis database `db`.
fn keys_in(stack: &Stack, db: u8) -> Vec<String> {
    let mut connection = stack.redis.connection();
    redis::cmd("SELECT")
        .arg(db)
        .exec(&mut connection)
        .expect("SELECT");
    redis::cmd("KEYS")
        .arg("*")
        .query(&mut connection)
        .expect("KEYS")
}

async fn default_database_and_account_keep_environments_apart(mode: Mode) {
    let mut stack = Stack::start(mode).await;
    let port = stack.redis.port;
    // Production: the portal's string, database 0.
    stack.set_env(
        "REDIS_CONNECTION_STRING",
        &format!("127.0.0.1:{port},abortConnect=False"),
    );
    stack.start_handler().await;
    let first = stack.get("query?state=Iowa").await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.cache(), "miss");
    assert_eq!(stack.get("query?state=Iowa").await.cache(), "hit");
    let production_keys = keys_in(&stack, 0);
    assert!(!production_keys.is_empty());
    assert!(keys_in(&stack, 1).is_empty());

    // Staging: same Redis, defaultDatabase=1, same database and container names.
    stack.set_env(
        "REDIS_CONNECTION_STRING",
        &format!("127.0.0.1:{port},defaultDatabase=1,abortConnect=False"),
    );
    stack.start_handler().await;
    let staging = stack.get("query?state=Iowa").await;
    assert_eq!(staging.status, 200, "{}", staging.text);
    assert_eq!(
        staging.cache(),
        "miss",
        "staging must not read production's entries"
    );
    let staging_keys = keys_in(&stack, 1);
    assert!(
        !staging_keys.is_empty(),
        "staging's entries live in database 1"
    );
    assert_eq!(
        keys_in(&stack, 0),
        production_keys,
        "production's database untouched"
    );

    // Another account (same server reached under another host name), same Redis database 0,
    // same database and container names: its own keys, so a miss.
    let other_account = stack.cosmos.endpoint.replace("127.0.0.1", "localhost");
    stack.set_env("COSMOS_ENDPOINT", &other_account);
    stack.set_env(
        "REDIS_CONNECTION_STRING",
        &format!("127.0.0.1:{port},abortConnect=False"),
    );
    stack.start_handler().await;
    let other = stack.get("query?state=Iowa").await;
    assert_eq!(other.status, 200, "{}", other.text);
    assert_eq!(
        other.cache(),
        "miss",
        "another account must not read these entries"
    );
    let tags: std::collections::BTreeSet<String> = keys_in(&stack, 0)
        .iter()
        .filter_map(|k| Some(k.split_once('{')?.1.split_once('}')?.0.to_string()))
        .collect();
    assert_eq!(tags.len(), 2, "{tags:?}");
    assert!(tags.iter().any(|t| t.starts_with("localhost:")), "{tags:?}");
    assert!(tags.iter().any(|t| t.starts_with("127.0.0.1:")), "{tags:?}");

    // An option the handler does not implement stops it at start-up, naming the option.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .envs(stack.handler_env())
        .env(
            "REDIS_CONNECTION_STRING",
            format!("127.0.0.1:{port},password=hunter2,connectRetry=3"),
        )
        .output()
        .expect("run the handler");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("connectRetry"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    stack.shutdown().await;
}
