//! Unit tests of `src/routes/update.rs`.

use super::*;

/// Validates a `POST` body against the partition-key path (`/state`, or nested `/a/b`).
///
/// # Errors
/// `BadRequest` whose field is `body`, `id`/`<pk>` for a single document, or `[i].id` /
/// `[i].<pk>` for an array; nothing is written when any document is invalid.
fn validate_documents(body: &[u8], pk_path: &str) -> Result<Vec<Write>, AppError> {
    let (docs, indexed) = parse_batch(body)?;
    super::validate_documents(docs, indexed, pk_path)
}

#[test]
fn ids_that_would_alter_a_request_path_are_refused() {
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "a\\b",
        "a?b",
        "a#b",
        "tab\tx",
        "nl\n",
        &"x".repeat(256),
    ] {
        assert!(check_id(bad).is_err(), "{bad:?}");
    }
    for ok in ["austin-texas", "São Paulo", "a.b", "...", &"x".repeat(255)] {
        assert!(check_id(ok).is_ok(), "{ok:?}");
    }
}

fn field_of(e: AppError) -> String {
    match e {
        AppError::BadRequest { field, .. } => field,
        other => panic!("expected BadRequest, got {other:?}"),
    }
}

#[test]
fn validates_every_document_before_writing() {
    let ok = validate_documents(
        br#"[{"id":"a","state":"Texas"},{"id":"b","state":"Ohio","n":1}]"#,
        "/state",
    )
    .expect("valid");
    assert_eq!(ok.len(), 2);
    assert_eq!(ok[1].pk, PkValue::Str("Ohio".into()));
    let bad =
        |body: &str| field_of(validate_documents(body.as_bytes(), "/state").expect_err("bad"));
    assert_eq!(bad(r#"[{"id":"a","state":"T"},{"state":"T"}]"#), "[1].id");
    assert_eq!(bad(r#"[{"id":"a","state":"T"},{"id":"b"}]"#), "[1].state");
    assert_eq!(bad(r#"{"id":"a"}"#), "state");
    assert_eq!(bad(r#"{"id":7,"state":"T"}"#), "id");
    assert_eq!(bad(r#"{"id":"a/b","state":"T"}"#), "id");
    assert_eq!(bad(r#"{"id":"a","state":null}"#), "state");
    assert_eq!(bad("not json"), "body");
    assert_eq!(bad("[]"), "body");
    assert_eq!(bad("[1]"), "[0]");
    let long_key = format!(
        r#"[{{"id":"a","state":"T"}},{{"id":"b","state":"{}"}}]"#,
        "k".repeat(2049)
    );
    assert_eq!(bad(&long_key), "[1].state");
    assert_eq!(bad("\"x\""), "body");
    assert_eq!(
        bad(r#"[{"id":"a","state":"T"},{"id":"a","state":"T"}]"#),
        "[1].id"
    );
    assert_eq!(bad(r#"{"id":"..","state":"T"}"#), "id");
}

#[test]
fn nested_partition_key_paths() {
    let ok =
        validate_documents(br#"{"id":"a","addr":{"zip":"02134"}}"#, "/addr/zip").expect("valid");
    assert_eq!(ok[0].pk, PkValue::Str("02134".into()));
    let e = validate_documents(br#"[{"id":"a","addr":{}}]"#, "/addr/zip").expect_err("bad");
    assert_eq!(field_of(e), "[0].addr.zip");
}
