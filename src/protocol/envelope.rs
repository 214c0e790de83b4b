//! The invocation envelope as the handler reads it (§4): typed, borrowing serde structs that
//! pick `Data.req` (or a renamed HTTP binding) and the few fields used, and skip everything
//! else unread. `payload.rs` turns the result into an [`crate::api::ApiRequest`].

use serde_json::Value;

use super::HTTP_TRIGGER;

/// The parts of an invocation payload the handler reads. Typed rather than a `Value` tree so
/// that what it never reads (`Metadata`, which repeats the query and headers, and
/// `Data.req.Identities`) is skipped without being allocated: it was most of the parse, the
/// largest cost an invocation-payload hit has over a forwarded one.
#[derive(serde::Deserialize)]
pub(super) struct Envelope {
    #[serde(rename = "Data", default)]
    pub(super) data: Option<DataReq>,
}

/// The HTTP request in `Data`: `Data.req` when it is an object, else the first entry with a
/// `Method` (a renamed trigger binding still works).
pub(super) struct DataReq(pub(super) Option<HttpReq>);

/// `Data.req`, as lenient as §4 needs: every field may be absent, null or of an unexpected type
/// (checked where it is used).
#[derive(serde::Deserialize)]
pub(super) struct HttpReq {
    #[serde(rename = "Url", default)]
    pub(super) url: Option<Value>,
    #[serde(rename = "Method", default)]
    pub(super) method: Option<Value>,
    #[serde(rename = "Query", default)]
    pub(super) query: Option<QueryField>,
    #[serde(rename = "Headers", default)]
    pub(super) headers: Option<ObjectOrNot<ContentTypes>>,
    #[serde(rename = "Body", default)]
    pub(super) body: Option<Value>,
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
pub(super) struct ObjectOrNot<T>(pub(super) Option<T>);

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
pub(super) struct ContentTypes(Vec<String>);

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

impl ContentTypes {
    /// Whether one of these content types is a media type the host sends base64-encoded
    /// (§4.3): `application/octet-stream`, or any type containing `multipart`.
    pub(super) fn name_base64(&self) -> bool {
        self.0.iter().any(|t| {
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
}

/// `Data.req.Query` as sent: an object (read straight into pairs, without a `Value` tree or a
/// copy of its strings), a JSON string holding one (hosts before PR #6621), `null`, or
/// anything else (refused where it is used).
pub(super) enum QueryField {
    /// The object's entries as (name, value) pairs, by name as a `serde_json::Map` orders
    /// them, the last of a repeated name kept; values as [`query_value`] reads them.
    Pairs(Vec<(String, String)>),
    Text(String),
    Null,
    Other,
}

impl<'de> serde::Deserialize<'de> for QueryField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = QueryField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the Query object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<QueryField, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                // By name, the last of a repeated name kept (`null` included, which then
                // drops the name): reversed, a stable sort puts the last one first among
                // equals, and `dedup` keeps the first.
                entries.reverse();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                entries.dedup_by(|later, kept| later.0 == kept.0);
                let pairs = entries
                    .into_iter()
                    .filter_map(|(name, value)| query_value(value).map(|value| (name, value)))
                    .collect();
                Ok(QueryField::Pairs(pairs))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<QueryField, E> {
                Ok(QueryField::Text(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<QueryField, E> {
                Ok(QueryField::Text(v))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<QueryField, E> {
                Ok(QueryField::Null)
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<QueryField, E> {
                Ok(QueryField::Null)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<QueryField, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(QueryField::Other)
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<QueryField, E> {
                Ok(QueryField::Other)
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<QueryField, E> {
                Ok(QueryField::Other)
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<QueryField, E> {
                Ok(QueryField::Other)
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<QueryField, E> {
                Ok(QueryField::Other)
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

/// A `Query` value as a string: a string as it is, `null` left out, an array (which the host
/// never sends) joined with `,` as the host joins repeated keys (§4.3), anything else as its
/// JSON text.
fn query_value(value: Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s),
        Value::Null => None,
        Value::Array(items) => Some(
            items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => Some(other.to_string()),
    }
}
