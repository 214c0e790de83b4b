//! Unit tests of `src/routes/query_spec.rs`.

use super::*;

fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field_of(e: AppError) -> String {
    match e {
        AppError::BadRequest { field, .. } => field,
        other => panic!("expected BadRequest, got {other:?}"),
    }
}

#[test]
fn the_function_key_is_never_a_filter_in_any_spelling() {
    let plain = spec_from_query_string(&q(&[("state", "Ohio")])).expect("valid");
    for name in ["code", "Code", "CODE"] {
        let spec =
            spec_from_query_string(&q(&[("state", "Ohio"), (name, "secret-key")])).expect("valid");
        assert_eq!(spec, plain, "{name}");
    }
}

#[test]
fn get_builds_sorted_parameterized_sql_and_pins_partition() {
    let mut spec = spec_from_query_string(&q(&[
        ("state", "Texas"),
        ("city", "Austin"),
        ("code", "k"),
        ("maxItemCount", "5"),
    ]))
    .expect("valid");
    assert_eq!(
        spec.partition_key, None,
        "pinned only once the pk path is known"
    );
    pin_partition(&mut spec, "/state");
    assert_eq!(
        spec.text,
        "SELECT * FROM c WHERE c[\"city\"] = @f_city AND c[\"state\"] = @f_state"
    );
    assert_eq!(
        spec.parameters[0],
        ("@f_city".into(), Value::String("Austin".into()))
    );
    assert_eq!(spec.partition_key, Some(PkValue::Str("Texas".into())));
    assert_eq!(spec.max_item_count, 5);
    let mut all = spec_from_query_string(&q(&[])).expect("valid");
    pin_partition(&mut all, "/state");
    assert_eq!(all.text, "SELECT * FROM c");
    assert_eq!(all.partition_key, None);
}

#[test]
fn get_rejects_bad_names_and_sizes() {
    let bad =
        |pairs: &[(&str, &str)]| field_of(spec_from_query_string(&q(pairs)).expect_err("invalid"));
    assert_eq!(bad(&[("c.state", "x")]), "c.state");
    assert_eq!(bad(&[("maxItemCount", "0")]), "maxItemCount");
    assert_eq!(bad(&[("maxItemCount", "2000")]), "maxItemCount");
    assert_eq!(bad(&[("maxItemCount", "ten")]), "maxItemCount");
    assert_eq!(bad(&[("city", "a"), ("city", "b")]), "city");
}

#[test]
fn post_body_shape() {
    let spec = spec_from_body(
        br#"{"query":"SELECT * FROM c WHERE c.city = @c AND c.state = @s","parameters":[{"name":"@s","value":"Ohio"},{"name":"@c","value":"Columbus"}],"partitionKey":"Ohio","maxItemCount":7}"#,
    )
    .expect("valid");
    assert_eq!(spec.parameters[0].0, "@c", "sorted by name");
    assert_eq!(spec.partition_key, Some(PkValue::Str("Ohio".into())));
    assert_eq!(spec.max_item_count, 7);
    let bad = |body: &str| field_of(spec_from_body(body.as_bytes()).expect_err("invalid"));
    assert_eq!(bad("{"), "body");
    assert_eq!(bad(""), "body");
    assert_eq!(bad("[]"), "body");
    assert_eq!(bad(r#"{"parameters":[]}"#), "query");
    assert_eq!(
        bad(r#"{"query":"SELECT 1","parameters":[{"name":"x","value":1}]}"#),
        "parameters[0].name"
    );
    assert_eq!(
        bad(r#"{"query":"SELECT 1","parameters":[{"name":"@x"}]}"#),
        "parameters[0].value"
    );
    assert_eq!(
        bad(r#"{"query":"SELECT 1","maxItemCount":0}"#),
        "maxItemCount"
    );
    assert_eq!(
        bad(r#"{"query":"SELECT 1","partitionKey":{}}"#),
        "partitionKey"
    );
    assert_eq!(bad(r#"{"query":"SELECT 1","qeury":1}"#), "qeury");
    let long_key = format!(
        r#"{{"query":"SELECT 1","partitionKey":"{}"}}"#,
        "k".repeat(2049)
    );
    assert_eq!(bad(&long_key), "partitionKey");
}
