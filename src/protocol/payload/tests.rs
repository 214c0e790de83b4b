//! Unit tests of the invocation-payload adapter (`payload.rs`).

use super::*;

#[test]
fn lenient_query_shapes() {
    let object =
        br#"{"Data":{"req":{"Method":"get","Query":{"state":"Texas","n":5}}},"Metadata":{}}"#;
    let r = parse_invocation(Function::Query, object, None).expect("parses");
    assert_eq!(r.method, Method::GET);
    assert!(r.query.contains(&("n".into(), "5".into())));
    let string = br#"{"Data":{"req":{"Method":"GET","Query":"{\"state\":\"Ohio\"}"}}}"#;
    let r = parse_invocation(Function::Query, string, None).expect("parses");
    assert_eq!(r.query, vec![("state".to_string(), "Ohio".to_string())]);
    let url_only =
        br#"{"Data":{"req":{"Method":"GET","Url":"http://h/api/query?city=St.%20Louis"}}}"#;
    let r = parse_invocation(Function::Query, url_only, None).expect("parses");
    assert_eq!(r.query, vec![("city".to_string(), "St. Louis".to_string())]);
    assert!(r.body.is_empty());
}

#[test]
fn query_object_reads_as_a_json_map_would() {
    // The object form and the JSON-string form (older hosts) give the same pairs, and as
    // the `serde_json::Map` that used to read them would: by name, the last of a repeated
    // name winning (also when it is null), null left out, arrays joined.
    let object = r#"{"z":"1","a":[1,"x",null],"n":5,"b":true,"d":"first","d":null,"e":null,"e":"last","o":{"k":1}}"#;
    let as_object = format!(r#"{{"Data":{{"req":{{"Method":"GET","Query":{object}}}}}}}"#);
    let as_string = format!(
        r#"{{"Data":{{"req":{{"Method":"GET","Query":{}}}}}}}"#,
        serde_json::to_string(object).expect("a string")
    );
    let from_object = parse_invocation(Function::Query, as_object.as_bytes(), None);
    let from_string = parse_invocation(Function::Query, as_string.as_bytes(), None);
    let from_object = from_object.expect("parses").query;
    assert_eq!(from_object, from_string.expect("parses").query);
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        from_object,
        vec![
            pair("a", "1,x,null"),
            pair("b", "true"),
            pair("e", "last"),
            pair("n", "5"),
            pair("o", r#"{"k":1}"#),
            pair("z", "1"),
        ]
    );
}

#[test]
fn result_headers_are_one_object_content_type_first_then_by_name() {
    let mut response = ApiResponse::json(StatusCode::SERVICE_UNAVAILABLE, Bytes::from("{}"));
    response.cache = Some(crate::api::CacheOutcome::Miss);
    response.request_charge = Some(2.5);
    response.retry_after_secs = Some(3);
    response.invalidation = Some("pending");
    let out = invocation_result(&response, "query GET -> 503");
    let text = std::str::from_utf8(&out).expect("utf-8");
    assert_eq!(
        text,
        concat!(
            r#"{"Outputs":{"res":{"statusCode":"503","headers":{"Content-Type":"application/json","#,
            r#""retry-after":"3","x-cache":"miss","x-cache-invalidation":"pending","#,
            r#""x-ms-request-charge":"2.50"},"body":"{}"}},"Logs":["query GET -> 503"],"#,
            r#""ReturnValue":null}"#
        )
    );
    let plain = invocation_result(&ApiResponse::json(StatusCode::OK, Bytes::from("[]")), "");
    assert!(
        plain.starts_with(br#"{"Outputs":{"res":{"statusCode":"200","headers":{"Content-Type":"application/json"},"body":"[]"}}"#),
        "{}",
        String::from_utf8_lossy(&plain)
    );
}

#[test]
fn malformed_invocations_are_errors() {
    for bad in [
        &b"nope"[..],
        b"{}",
        br#"{"Data":{}}"#,
        br#"{"Data":{"req":{"Url":"x"}}}"#,
    ] {
        assert!(parse_invocation(Function::Query, bad, None).is_err());
    }
}

#[test]
fn shapes_the_typed_envelope_must_still_read_or_name() {
    let parse = |b: &[u8]| parse_invocation(Function::Query, b, None);
    // A renamed trigger binding, after a `req` that is not an object.
    let renamed = br#"{"Data":{"req":5,"request":{"Method":"GET","Query":{"city":"Waco"}}}}"#;
    let r = parse(renamed).expect("renamed binding");
    assert_eq!(r.query, vec![("city".to_string(), "Waco".to_string())]);
    // Whatever `Metadata` and `Identities` hold is skipped, not read.
    let odd = br#"{"Metadata":[1,{"x":null}],"Data":{"req":{"Method":"POST","Identities":7,"Body":"{}"}}}"#;
    assert_eq!(&parse(odd).expect("odd metadata").body[..], b"{}");
    // Base64 bodies still follow the content type.
    let binary = br#"{"Data":{"req":{"Method":"POST","Headers":{"Content-Type":["application/octet-stream"]},"Body":"e30="}}}"#;
    assert_eq!(&parse(binary).expect("binary").body[..], b"{}");
    // The messages name what is wrong.
    assert_eq!(
        parse(br#"{"Data":[]}"#).err().as_deref(),
        Some("no Data object")
    );
    assert_eq!(parse(b"[1,2]").err().as_deref(), Some("no Data object"));
    let twice = br#"{"Data":{"req":{"Method":"GET","Query":{},"Query":{}}}}"#;
    let message = parse(twice).err().unwrap_or_default();
    assert!(
        message.starts_with("Data.req: duplicate field `Query`"),
        "{message}"
    );
    assert_eq!(
        parse(br#"{"Data":{"other":{"x":1}}}"#).err().as_deref(),
        Some("no HTTP request in Data")
    );
    assert_eq!(
        parse(br#"{"Data":{"req":{"Method":7}}}"#).err().as_deref(),
        Some("Data.req.Method is missing or not a string")
    );
    // Escaped strings are read (owned, not borrowed) as well as plain ones.
    let escaped = br#"{"Data":{"req":{"Method":"G\u0045t","Url":"http://h/api/query?city=A%20b\u0026n=1","Query":null}}}"#;
    let r = parse(escaped).expect("escaped");
    assert_eq!(r.method, Method::GET);
    assert_eq!(
        r.query,
        vec![("city".into(), "A b".into()), ("n".into(), "1".into())]
    );
    // Query values of every JSON type; null drops the pair (order is not significant:
    // the route sorts the filters).
    let typed =
        br#"{"Data":{"req":{"Method":"GET","Query":{"z":"\"q\"","a":null,"b":[1,"x"],"c":true}}}}"#;
    let mut query = parse(typed).expect("typed").query;
    query.sort();
    assert_eq!(
        query,
        vec![
            ("b".to_string(), "1,x".to_string()),
            ("c".into(), "true".into()),
            ("z".into(), "\"q\"".into())
        ]
    );
    // A Url that is not a string is no query, not an error.
    let odd_url = br#"{"Data":{"req":{"Method":"GET","Url":{"x":[1]}}}}"#;
    assert!(parse(odd_url).expect("odd url").query.is_empty());
    assert_eq!(
        parse(br#"{"Data":{"req":{"Method":"GET","Query":5}}}"#)
            .err()
            .as_deref(),
        Some("Data.req.Query is neither an object nor a string")
    );
    assert_eq!(
        parse(br#"{"Data":{"req":{"Method":"GET","Query":"[1]"}}}"#)
            .err()
            .as_deref(),
        Some("Data.req.Query is a string but not a JSON object")
    );
    assert_eq!(
        parse(br#"{"Data":{"req":{"Method":"GE T"}}}"#)
            .err()
            .as_deref(),
        Some("Data.req.Method is not an HTTP method")
    );
    let truncated = parse(br#"{"Data":{"req":{"Method":"GET""#).expect_err("truncated");
    assert!(truncated.starts_with("body is not JSON"), "{truncated}");
}
