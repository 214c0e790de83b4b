//! Invocation-payload mode (§4, §5): `POST /{FunctionName}` with `{"Data":{"req":{...}},
//! "Metadata":{...}}` in, `{"Outputs":{"res":{...}},"Logs":[...],"ReturnValue":null}` out.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{
    BODY_LIMIT, ENVELOPE_LIMIT, HTTP_TRIGGER, function_and_body, invocation_id, json_response, run,
};
use crate::api::{ApiRequest, ApiResponse, Function};
use crate::error::AppError;
use crate::state::AppState;

/// Invocation-payload mode (§4, §5).
pub(super) async fn invocation(
    State(state): State<AppState>,
    Path(function): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (function, body) = match function_and_body(&function, body, ENVELOPE_LIMIT) {
        Ok(found) => found,
        Err(e) => return e.into_api_response().into_http(),
    };
    let request = match parse_invocation(function, &body, invocation_id(&headers)) {
        Ok(r) => r,
        Err(message) => {
            tracing::warn!(function = function.name(), %message, "malformed invocation payload");
            // A non-2xx fails the invocation (§5.1).
            let body = json!({ "error": { "code": "bad_invocation", "message": message } });
            return json_response(StatusCode::BAD_REQUEST, Bytes::from(body.to_string()));
        }
    };
    let (response, log_line) = if request.body.len() > BODY_LIMIT {
        let response = AppError::PayloadTooLarge {
            limit_bytes: BODY_LIMIT,
        }
        .into_api_response();
        (
            response,
            format!("{} -> 413 body too large", function.name()),
        )
    } else {
        let (response, line) = run(&state, &request, "payload").await;
        (response, line.unwrap_or_default())
    };
    json_response(
        StatusCode::OK,
        Bytes::from(invocation_result(&response, &log_line)),
    )
}

/// The `{Outputs, Logs, ReturnValue}` envelope of §5 for `response`, serialized. `statusCode`
/// is a string and `body` is the already-serialized JSON text as a JSON string, so the host
/// writes it verbatim (§5.4). Written piece by piece so that the body's escaped form, when the
/// near cache keeps one ([`ApiResponse::escaped`]), is copied in rather than escaped again.
pub fn invocation_result(response: &ApiResponse, log_line: &str) -> Vec<u8> {
    let body = match &response.escaped {
        Some(escaped) => escaped.literal(&response.body),
        None => crate::api::escape(&response.body),
    };
    let mut headers = std::collections::BTreeMap::new();
    headers.insert("Content-Type", "application/json".to_string());
    headers.extend(response.extra_headers());
    let mut out = Vec::with_capacity(body.len() + log_line.len() + 256);
    // Writing strings and a map of strings into a Vec cannot fail. Key order as in §5.2's
    // example: `Outputs` (`res`: `statusCode`, `headers`, `body`), `Logs`, `ReturnValue`.
    out.extend_from_slice(br#"{"Outputs":{"res":{"statusCode":"#);
    let _ = serde_json::to_writer(&mut out, response.status.as_str());
    out.extend_from_slice(br#","headers":"#);
    let _ = serde_json::to_writer(&mut out, &headers);
    out.extend_from_slice(br#","body":"#);
    out.extend_from_slice(&body);
    out.extend_from_slice(br#"}},"Logs":"#);
    let _ = serde_json::to_writer(&mut out, &[log_line]);
    out.extend_from_slice(br#","ReturnValue":null}"#);
    out
}

/// The parts of an invocation payload the handler reads. Typed rather than a `Value` tree so
/// that what it never reads (`Metadata`, which repeats the query and headers, and
/// `Data.req.Identities`) is skipped without being allocated: it was most of the parse, the
/// largest cost an invocation-payload hit has over a forwarded one.
#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(rename = "Data", default)]
    data: Option<DataReq>,
}

/// The HTTP request in `Data`: `Data.req` when it is an object, else the first entry with a
/// `Method` (a renamed trigger binding still works).
struct DataReq(Option<HttpReq>);

/// `Data.req`, as lenient as §4 needs: every field may be absent, null or of an unexpected type
/// (checked where it is used).
#[derive(serde::Deserialize)]
struct HttpReq {
    #[serde(rename = "Url", default)]
    url: Option<Value>,
    #[serde(rename = "Method", default)]
    method: Option<Value>,
    #[serde(rename = "Query", default)]
    query: Option<Value>,
    #[serde(rename = "Headers", default)]
    headers: Option<ObjectOrNot<ContentTypes>>,
    #[serde(rename = "Body", default)]
    body: Option<Value>,
}

impl<'de> serde::Deserialize<'de> for DataReq {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = DataReq;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the Data object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<DataReq, A::Error> {
                let (mut req, mut other) = (None, None);
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let value: Value = if key == HTTP_TRIGGER && req.is_none() {
                        match map.next_value::<ObjectOrNot<HttpReq>>()? {
                            ObjectOrNot(Some(r)) => {
                                req = Some(r);
                                continue;
                            }
                            ObjectOrNot(None) => continue,
                        }
                    } else {
                        map.next_value()?
                    };
                    if other.is_none() && value.get("Method").is_some() {
                        other = Some(value);
                    }
                }
                Ok(DataReq(req.or_else(|| {
                    other.and_then(|v| serde_json::from_value::<HttpReq>(v).ok())
                })))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// A `T` read from the value when it is an object; `None` (the value skipped unread) for
/// anything else.
struct ObjectOrNot<T>(Option<T>);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for ObjectOrNot<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = ObjectOrNot<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| ObjectOrNot(Some(t)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(ObjectOrNot(None))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(ObjectOrNot(None))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ObjectOrNot(None))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ObjectOrNot(None))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ObjectOrNot(None))
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(ObjectOrNot(None))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(ObjectOrNot(None))
            }
        }
        deserializer.deserialize_any(Visit(std::marker::PhantomData))
    }
}

/// The `Content-Type` values of `Data.req.Headers` (any case; a list or one string), the only
/// header the handler reads from the payload; the others are skipped unread.
#[derive(Default)]
struct ContentTypes(Vec<String>);

impl<'de> serde::Deserialize<'de> for ContentTypes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ContentTypes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the Headers object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ContentTypes, A::Error> {
                let mut types = Vec::new();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if !key.eq_ignore_ascii_case("content-type") {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    }
                    match map.next_value::<Value>()? {
                        Value::Array(values) => {
                            types.extend(values.into_iter().filter_map(|v| match v {
                                Value::String(s) => Some(s),
                                _ => None,
                            }))
                        }
                        Value::String(s) => types.push(s),
                        _ => {}
                    }
                }
                Ok(ContentTypes(types))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// Why `body` is not a readable invocation: not JSON at all, or JSON of the wrong shape.
fn invocation_error(body: &[u8], e: &serde_json::Error) -> String {
    if e.is_data() && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        // Valid JSON, wrong shape: `Data` (or the whole body) is not an object.
        "no Data object".into()
    } else {
        format!("body is not JSON: {e}")
    }
}

/// Reads the client request out of an invocation payload, leniently as §4 says: `Query` may
/// be an object or a JSON string (before host PR #6621), values may be non-strings, `Body` may
/// be absent (no Content-Length) or null; only `Method` is required.
///
/// # Errors
/// A message when the body is not an invocation with a `Data.req` HTTP request.
pub fn parse_invocation(
    function: Function,
    body: &[u8],
    invocation_id: Option<String>,
) -> Result<ApiRequest, String> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| invocation_error(body, &e))?;
    let req = envelope
        .data
        .ok_or("no Data object")?
        .0
        .ok_or("no HTTP request in Data")?;
    let method = match &req.method {
        Some(Value::String(m)) => m.as_str(),
        _ => return Err("Data.req.Method is missing or not a string".into()),
    };
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| "Data.req.Method is not an HTTP method".to_string())?;
    let query = match &req.query {
        None | Some(Value::Null) => query_from_url(req.url.as_ref().and_then(Value::as_str)),
        Some(Value::Object(map)) => object_pairs(map),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => object_pairs(&map),
            _ => return Err("Data.req.Query is a string but not a JSON object".into()),
        },
        Some(_) => return Err("Data.req.Query is neither an object nor a string".into()),
    };
    let body = match req.body {
        None | Some(Value::Null) => Bytes::new(),
        // §4.3: application/octet-stream and multipart bodies arrive base64-encoded.
        Some(Value::String(s))
            if req
                .headers
                .and_then(|h| h.0)
                .is_some_and(|types| is_base64_media_type(&types.0)) =>
        {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(Bytes::from)
                .map_err(|_| "Data.req.Body is not base64 although the content type is binary")?
        }
        Some(Value::String(s)) => Bytes::from(s),
        // Not what the host sends (§4.3: Body is text), but unambiguous.
        Some(other) => Bytes::from(other.to_string()),
    };
    Ok(ApiRequest {
        function,
        method,
        query,
        body,
        invocation_id,
    })
}

/// Whether one of `Data.req.Headers`' content types is a media type the host sends
/// base64-encoded (§4.3): `application/octet-stream`, or any type containing `multipart`.
fn is_base64_media_type(types: &[String]) -> bool {
    types.iter().any(|t| {
        // The host decides by the media type alone, before any `;` parameter
        // (`text/plain; boundary=multipart` is text).
        let media = t
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        media == "application/octet-stream" || media.contains("multipart")
    })
}

/// Query values as strings; an array (which the host never sends) is joined with `,` as the
/// host joins repeated keys (§4.3).
fn object_pairs(map: &Map<String, Value>) -> Vec<(String, String)> {
    map.iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k.clone(), s.clone())),
            Value::Null => None,
            Value::Array(items) => Some((
                k.clone(),
                items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(","),
            )),
            other => Some((k.clone(), other.to_string())),
        })
        .collect()
}

fn query_from_url(url: Option<&str>) -> Vec<(String, String)> {
    url.and_then(|u| u.split_once('?'))
        .map(|(_, q)| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
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
        assert_eq!(
            parse(br#"{"Data":{"other":{"x":1}}}"#).err().as_deref(),
            Some("no HTTP request in Data")
        );
        assert_eq!(
            parse(br#"{"Data":{"req":{"Method":7}}}"#).err().as_deref(),
            Some("Data.req.Method is missing or not a string")
        );
        let truncated = parse(br#"{"Data":{"req":{"Method":"GET""#).expect_err("truncated");
        assert!(truncated.starts_with("body is not JSON"), "{truncated}");
    }
}
