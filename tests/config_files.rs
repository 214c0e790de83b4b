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
