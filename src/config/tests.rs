//! Unit tests of `src/config/mod.rs`.

use super::*;
use std::collections::HashMap;

fn base() -> HashMap<&'static str, String> {
    HashMap::from([
        (names::REDIS, "redis://127.0.0.1:6379".to_string()),
        (
            names::COSMOS_CONNECTION_STRING,
            "AccountEndpoint=https://acct.documents.azure.com:443/;AccountKey=c2VjcmV0/+k=;"
                .to_string(),
        ),
        (names::COSMOS_DATABASE, "tutorial".to_string()),
        (names::COSMOS_CONTAINER, "us_cities".to_string()),
    ])
}

fn load(env: &HashMap<&'static str, String>) -> Result<Settings, ConfigError> {
    Settings::from_lookup(|n| env.get(n).cloned())
}

#[test]
fn portal_cosmos_connection_string_keeps_padding() {
    let s = load(&base()).expect("valid settings");
    assert_eq!(s.cosmos.endpoint, "https://acct.documents.azure.com:443/");
    assert_eq!(s.cosmos.key.secret(), "c2VjcmV0/+k=");
    assert_eq!(s.cache.ttl, Duration::from_secs(300));
    assert_eq!(s.port, 3000);
}

#[test]
fn malformed_settings_name_the_variable_and_hide_the_value() {
    let mut env = base();
    env.insert(names::REDIS, "h:notaport,password=hunter2secret".into());
    let e = load(&env).expect_err("bad port");
    assert_eq!(e.name, names::REDIS);
    assert!(!e.to_string().contains("hunter2secret"), "{e}");

    let mut env = base();
    env.insert(
        names::COSMOS_CONNECTION_STRING,
        "AccountKey=topsecretkey==".into(),
    );
    let e = load(&env).expect_err("no endpoint");
    assert_eq!(e.name, names::COSMOS_CONNECTION_STRING);
    assert!(!e.to_string().contains("topsecretkey"), "{e}");

    let mut env = base();
    env.remove(names::COSMOS_CONNECTION_STRING);
    assert_eq!(
        load(&env).expect_err("missing").name,
        names::COSMOS_ENDPOINT
    );
    env.insert(names::COSMOS_ENDPOINT, "http://127.0.0.1:8081".into());
    assert_eq!(load(&env).expect_err("missing key").name, names::COSMOS_KEY);

    let mut env = base();
    env.insert(names::CACHE_TTL_SECONDS, "0".into());
    assert_eq!(
        load(&env).expect_err("ttl 0").name,
        names::CACHE_TTL_SECONDS
    );

    let mut env = base();
    env.remove(names::REDIS);
    assert_eq!(load(&env).expect_err("no redis").name, names::REDIS);

    // A URL with the wrong scheme is not mistaken for host:port (and never echoed).
    for wrong in [
        "redis:/:hunter2@127.0.0.1:6379",
        "http://:hunter2@h:6379",
        "h:6379/0",
    ] {
        let mut env = base();
        env.insert(names::REDIS, wrong.into());
        let e = load(&env).expect_err("wrong scheme");
        assert_eq!(e.name, names::REDIS);
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
    for (name, value) in [
        (
            names::COSMOS_CONNECTION_STRING,
            "AccountEndpoint=https://;AccountKey=a2V5;",
        ),
        (
            names::COSMOS_CONNECTION_STRING,
            "AccountEndpoint=https://u:hunter2@h/;AccountKey=a2V5;",
        ),
        (
            names::COSMOS_CONNECTION_STRING,
            "AccountEndpoint=https://h/;AccountKey=not-b64!!;",
        ),
        (names::PORT, "0"),
        (names::REDIS_CLUSTER, "yes"),
    ] {
        let mut env = base();
        env.insert(name, value.into());
        let e = load(&env).expect_err(value);
        assert_eq!(e.name, name, "{value}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}

#[test]
fn secret_debug_is_redacted() {
    let s = load(&base()).expect("valid");
    let printed = format!("{s:?}");
    assert!(!printed.contains("c2VjcmV0"), "{printed}");
}
