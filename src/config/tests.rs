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
    assert!(matches!(&s.cosmos.auth, CosmosAuth::Key(k) if k.secret() == "c2VjcmV0/+k="));
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

fn keyless() -> HashMap<&'static str, String> {
    let mut env = base();
    env.remove(names::REDIS);
    env.remove(names::COSMOS_CONNECTION_STRING);
    env.insert(
        names::COSMOS_IDENTITY_ENDPOINT,
        "https://acct.documents.azure.com:443/".into(),
    );
    env.insert(
        names::REDIS_IDENTITY_HOST,
        "myc.westeurope.redis.azure.net".into(),
    );
    env.insert(
        names::REDIS_IDENTITY_PRINCIPAL,
        "0a1b2c3d-0000-4000-8000-000000000001".into(),
    );
    env
}

#[test]
fn identity_based_connections_select_entra_id() {
    // No IDENTITY_ENDPOINT (not in Azure): the developer's Azure CLI login.
    let s = load(&keyless()).expect("keyless settings");
    assert_eq!(
        s.cosmos.auth,
        CosmosAuth::Identity(CredentialKind::AzureCli)
    );
    assert_eq!(s.cosmos.endpoint, "https://acct.documents.azure.com:443/");
    let id = s.redis.identity.as_ref().expect("redis identity");
    assert_eq!(id.principal_id, "0a1b2c3d-0000-4000-8000-000000000001");
    assert_eq!(
        s.redis.info.redis_settings().username(),
        Some("0a1b2c3d-0000-4000-8000-000000000001")
    );
    assert_eq!(s.redis.info.redis_settings().password(), None);
    assert_eq!(s.redis.display_addr, "myc.westeurope.redis.azure.net:10000");
    assert!(s.redis.tls);
    assert!(s.notices.is_empty(), "{:?}", s.notices);

    // In Azure (IDENTITY_ENDPOINT set by the platform): the managed identity; a client id
    // selects a user-assigned one; ssl=false and host:port for local runs.
    let mut env = keyless();
    env.insert(
        names::IDENTITY_ENDPOINT,
        "http://127.0.0.1:41000/msi".into(),
    );
    env.insert(
        names::COSMOS_IDENTITY_CLIENT_ID,
        "11111111-2222-3333-4444-555555555555".into(),
    );
    env.insert(names::REDIS_IDENTITY_HOST, "127.0.0.1:6390".into());
    env.insert(names::REDIS_IDENTITY_SSL, "false".into());
    let s = load(&env).expect("managed identity");
    assert_eq!(
        s.cosmos.auth,
        CosmosAuth::Identity(CredentialKind::ManagedIdentity {
            client_id: Some("11111111-2222-3333-4444-555555555555".into())
        })
    );
    assert_eq!(
        s.redis.identity.map(|i| i.credential),
        Some(CredentialKind::ManagedIdentity { client_id: None })
    );
    assert_eq!(s.redis.display_addr, "127.0.0.1:6390");
    assert!(!s.redis.tls);

    // `credential=managedidentity`, as the Functions host accepts it, without the endpoint.
    let mut env = keyless();
    env.insert(names::COSMOS_IDENTITY_CREDENTIAL, "ManagedIdentity".into());
    let s = load(&env).expect("explicit credential");
    assert_eq!(
        s.cosmos.auth,
        CosmosAuth::Identity(CredentialKind::ManagedIdentity { client_id: None })
    );
    // Cache-for-Redis host names default to 6380.
    let mut env = keyless();
    env.insert(
        names::REDIS_IDENTITY_HOST,
        "myc.redis.cache.windows.net".into(),
    );
    assert_eq!(
        load(&env).expect("acr").redis.display_addr,
        "myc.redis.cache.windows.net:6380"
    );
}

#[test]
fn both_forms_set_say_which_is_used_without_values() {
    let mut env = keyless();
    env.insert(names::REDIS, "h:6380,password=hunter2redis,ssl=True".into());
    env.insert(
        names::COSMOS_CONNECTION_STRING,
        "AccountEndpoint=https://acct.documents.azure.com:443/;AccountKey=aHVudGVyMg==;".into(),
    );
    let s = load(&env).expect("both forms");
    assert!(s.redis.identity.is_some());
    assert!(matches!(s.cosmos.auth, CosmosAuth::Identity(_)));
    assert_eq!(s.notices.len(), 2, "{:?}", s.notices);
    let all = s.notices.join("\n");
    assert!(all.contains("REDIS_CONNECTION_STRING is ignored"), "{all}");
    assert!(all.contains("COSMOS_CONNECTION_STRING"), "{all}");
    for secret in ["hunter2redis", "aHVudGVyMg==", "acct.documents"] {
        assert!(!all.contains(secret), "{all}");
    }
}

#[test]
fn bad_keyless_combinations_name_the_setting() {
    let cases: [(&str, &str, &str); 10] = [
        // (setting to add, its value, the setting the error must name)
        (
            names::COSMOS_IDENTITY_CREDENTIAL,
            "password",
            names::COSMOS_IDENTITY_CREDENTIAL,
        ),
        (
            names::COSMOS_IDENTITY_CLIENT_ID,
            "not a guid!",
            names::COSMOS_IDENTITY_CLIENT_ID,
        ),
        (names::REDIS_IDENTITY_SSL, "yes", names::REDIS_IDENTITY_SSL),
        (
            names::REDIS_IDENTITY_HOST,
            "rediss://u:hunter2@h:6380",
            names::REDIS_IDENTITY_HOST,
        ),
        (
            names::REDIS_IDENTITY_HOST,
            "localhost",
            names::REDIS_IDENTITY_HOST,
        ),
        (
            names::REDIS_IDENTITY_HOST,
            "h:99999",
            names::REDIS_IDENTITY_HOST,
        ),
        (
            names::REDIS_IDENTITY_PRINCIPAL,
            "x y",
            names::REDIS_IDENTITY_PRINCIPAL,
        ),
        (
            names::REDIS_IDENTITY_CREDENTIAL,
            "key",
            names::REDIS_IDENTITY_CREDENTIAL,
        ),
        (
            names::COSMOS_IDENTITY_ENDPOINT,
            "acct.documents.azure.com",
            names::COSMOS_IDENTITY_ENDPOINT,
        ),
        (
            names::COSMOS_IDENTITY_ENDPOINT,
            "https://u:hunter2@acct/",
            names::COSMOS_IDENTITY_ENDPOINT,
        ),
    ];
    for (name, value, named) in cases {
        let mut env = keyless();
        env.insert(name, value.into());
        let e = load(&env).expect_err(value);
        assert_eq!(e.name, named, "{name}={value}: {e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
    // A user-assigned client id with the Azure CLI credential.
    let mut env = keyless();
    env.insert(names::COSMOS_IDENTITY_CREDENTIAL, "azurecli".into());
    env.insert(
        names::COSMOS_IDENTITY_CLIENT_ID,
        "11111111-2222-3333-4444-555555555555".into(),
    );
    assert_eq!(
        load(&env).expect_err("cli + client id").name,
        names::COSMOS_IDENTITY_CLIENT_ID
    );
    // Half of a keyless configuration names the missing half.
    let mut env = keyless();
    env.remove(names::REDIS_IDENTITY_PRINCIPAL);
    assert_eq!(
        load(&env).expect_err("no principal").name,
        names::REDIS_IDENTITY_PRINCIPAL
    );
    let mut env = keyless();
    env.remove(names::REDIS_IDENTITY_HOST);
    assert_eq!(
        load(&env).expect_err("no host").name,
        names::REDIS_IDENTITY_HOST
    );
    let mut env = keyless();
    env.remove(names::COSMOS_IDENTITY_ENDPOINT);
    env.insert(
        names::COSMOS_IDENTITY_CLIENT_ID,
        "11111111-2222-3333-4444-555555555555".into(),
    );
    assert_eq!(
        load(&env).expect_err("no endpoint").name,
        names::COSMOS_IDENTITY_ENDPOINT
    );
    // Neither Redis form.
    let mut env = keyless();
    env.remove(names::REDIS_IDENTITY_HOST);
    env.remove(names::REDIS_IDENTITY_PRINCIPAL);
    let e = load(&env).expect_err("no redis");
    assert_eq!(e.name, names::REDIS);
    assert!(e.problem.contains(names::REDIS_IDENTITY_HOST), "{e}");
}

#[test]
fn secret_debug_is_redacted() {
    let s = load(&base()).expect("valid");
    let printed = format!("{s:?}");
    assert!(!printed.contains("c2VjcmV0"), "{printed}");
}

#[test]
fn log_format_in_any_case_and_azure_default() {
    let with = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(super::json_logs(with(&[("LOG_FORMAT", "JSON")])), Ok(true));
    assert_eq!(
        super::json_logs(with(&[("LOG_FORMAT", " Text ")])),
        Ok(false)
    );
    assert!(super::json_logs(with(&[("LOG_FORMAT", "xml")])).is_err());
    assert_eq!(super::json_logs(with(&[])), Ok(false));
    assert_eq!(
        super::json_logs(with(&[("WEBSITE_INSTANCE_ID", "abc")])),
        Ok(true)
    );
}
