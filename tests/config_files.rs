//! The deployment files: `host.json` and both `function.json` files validate against the
//! public SchemaStore schemas (copies in `tests/schemas/`, see its README), and agree with the binary.

use std::path::PathBuf;

use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn load(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn schema(name: &str) -> Value {
    load(repo("tests/schemas").join(name))
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

#[test]
fn host_json_is_valid_and_names_the_binary() {
    let host = load(repo("host.json"));
    let validator = jsonschema::draft7::new(&schema("host.json")).expect("host.json schema");
    assert_eq!(errors(&validator, &host), Vec::<String>::new());
    assert_eq!(
        host["customHandler"]["description"]["defaultExecutablePath"], "handler",
        "the publish package puts the binary at the app root as `handler`"
    );
    assert_eq!(
        cosmos_cache_handler::route_prefix(&repo("")),
        host["extensions"]["http"]["routePrefix"]
            .as_str()
            .expect("routePrefix")
    );
}

#[test]
fn function_json_files_are_valid() {
    // function.json declares draft-04 but uses `const`; with draft-04 rules every binding
    // matches `sqlBinding` and `oneOf` fails (schemas/README.md), so validate with draft-07.
    let validator =
        jsonschema::draft7::new(&schema("function.json")).expect("function.json schema");
    for function in ["query", "update"] {
        let file = load(repo(function).join("function.json"));
        assert_eq!(
            errors(&validator, &file),
            Vec::<String>::new(),
            "{function}"
        );
        let bindings = file["bindings"].as_array().expect("bindings");
        assert_eq!(
            bindings.len(),
            2,
            "HTTP in + HTTP out qualifies for forwarding (protocol §1)"
        );
        assert_eq!(
            bindings[0]["name"],
            cosmos_cache_handler::protocol::HTTP_TRIGGER
        );
        assert_eq!(
            bindings[1]["name"],
            cosmos_cache_handler::protocol::HTTP_OUTPUT
        );
    }
    // The validator does reject a broken file.
    let broken = serde_json::json!({"bindings": [{"type": "httpTrigger", "direction": "sideways", "name": "req"}]});
    assert!(!validator.is_valid(&broken));
}

/// `invalidate/function.json`: a change-feed trigger with the Cosmos DB extension 4.x property
/// names (the SchemaStore schema accepts any property on an unknown binding type, so the names
/// are checked here against the extension's documented list:
/// <https://learn.microsoft.com/azure/azure-functions/functions-bindings-cosmosdb-v2-trigger#configuration>),
/// and a function-level retry policy the schema does check.
#[test]
fn invalidate_function_json_is_a_v4_change_feed_trigger() {
    let validator =
        jsonschema::draft7::new(&schema("function.json")).expect("function.json schema");
    let file = load(repo("invalidate/function.json"));
    assert_eq!(errors(&validator, &file), Vec::<String>::new());
    let bindings = file["bindings"].as_array().expect("bindings");
    assert_eq!(bindings.len(), 1, "a trigger and no output binding");
    let trigger = bindings[0].as_object().expect("a binding object");
    assert_eq!(trigger["type"], "cosmosDBTrigger");
    assert_eq!(trigger["direction"], "in");
    assert_eq!(
        trigger["name"],
        cosmos_cache_handler::routes::invalidate::BINDING,
        "the handler reads Data.<this name>"
    );
    // Extension 4.x names; the 3.x names would be silently ignored by the host.
    const V4: &[&str] = &[
        "type",
        "direction",
        "name",
        "connection",
        "databaseName",
        "containerName",
        "leaseConnection",
        "leaseDatabaseName",
        "leaseContainerName",
        "createLeaseContainerIfNotExists",
        "leasesContainerThroughput",
        "leaseContainerPrefix",
        "feedPollDelay",
        "leaseAcquireInterval",
        "leaseExpirationInterval",
        "leaseRenewInterval",
        "maxItemsPerInvocation",
        "startFromBeginning",
        "startFromTime",
        "preferredLocations",
    ];
    for key in trigger.keys() {
        assert!(V4.contains(&key.as_str()), "{key} is not a 4.x property");
    }
    for v3 in [
        "connectionStringSetting",
        "collectionName",
        "leaseCollectionName",
    ] {
        assert!(!trigger.contains_key(v3), "{v3} is the 3.x name");
    }
    // The monitored container comes from the same app settings the handler reads.
    assert_eq!(
        trigger["databaseName"],
        format!("%{}%", cosmos_cache_handler::config::names::COSMOS_DATABASE)
    );
    assert_eq!(
        trigger["containerName"],
        format!(
            "%{}%",
            cosmos_cache_handler::config::names::COSMOS_CONTAINER
        )
    );
    assert!(
        trigger["connection"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    assert!(
        trigger["leaseContainerName"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    assert!(trigger["leaseContainerPrefix"].is_string());
    assert!(trigger["createLeaseContainerIfNotExists"].is_boolean());
    assert_eq!(trigger["feedPollDelay"], 1000, "milliseconds");
    assert_eq!(trigger["startFromBeginning"], false);
    let retry = file["retry"]
        .as_object()
        .expect("a function-level retry policy");
    assert!(matches!(
        retry["strategy"].as_str(),
        Some("exponentialBackoff" | "fixedDelay")
    ));
    assert_eq!(
        retry["maxRetryCount"], -1,
        "a batch is never given up while Redis is down"
    );
    // The schema does check the retry policy: a broken one is refused.
    let mut broken = file.clone();
    broken["retry"]["minimumInterval"] = serde_json::json!("1 second");
    assert!(!validator.is_valid(&broken));
}

#[test]
fn local_settings_example_lists_every_setting() {
    let example = load(repo("local.settings.json.example"));
    let validator =
        jsonschema::draft4::new(&schema("local.settings.json")).expect("local.settings schema");
    assert_eq!(errors(&validator, &example), Vec::<String>::new());
    let values = example["Values"].as_object().expect("Values");
    for name in cosmos_cache_handler::config::names::USER_SETTINGS {
        assert!(
            values.contains_key(name),
            "{name} is missing from the example"
        );
    }
    // The example's values start the binary's configuration without errors.
    let settings = cosmos_cache_handler::config::Settings::from_lookup(|n| {
        values.get(n).and_then(Value::as_str).map(str::to_string)
    })
    .expect("the example's settings are valid");
    assert_eq!(settings.cosmos.database, "tutorial");
}
