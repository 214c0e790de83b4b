//! `invalidate`: the change-feed function (`invalidate/function.json`, a `cosmosDBTrigger`).
//!
//! The host calls `POST /invalidate` with the invocation payload (non-HTTP triggers always use
//! it, whatever `enableForwardingHttpRequest` says: protocol §1) carrying one batch of changed
//! documents under `Data.documents`. Each batch moves the container's generation once, unless
//! it is made only of writes `update` already invalidated (see `cache/change_feed.rs`).
//!
//! - Redis took it (or there was nothing to do): `200 {"Outputs":{},"Logs":[...],
//!   "ReturnValue":null}`; the host then moves its checkpoint past the batch.
//! - Redis did not take it: `503` with a JSON error. A non-2xx fails the invocation (§5.1), so
//!   the function's `retry` policy re-delivers the same batch instead of moving the checkpoint.
//! - An empty batch: a logged no-op `200`.
//! - A batch that cannot be read (a document nested deeper than the JSON parser's limit, a lone
//!   UTF-16 surrogate, an unexpected shape) may hold changes we cannot see: it bumps like any
//!   other batch. A needless bump costs one miss; skipping it would leave pages stale until
//!   their TTL.

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::cache::FeedInvalidation;
use crate::state::AppState;
use crate::store::normalize_etag;

/// Name of the trigger binding in `invalidate/function.json`: the key under `Data`.
pub const BINDING: &str = "documents";

/// How many JSON string layers are peeled off the batch at most (the host sends two).
const MAX_ENCODING_LAYERS: usize = 4;

/// What one invocation carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// `count` changed documents (at least one). `versions` holds each one's `_etag` (quotes
    /// stripped), or is `None` when some change has none (it cannot be recognised as our own).
    Changes {
        /// Number of changes.
        count: usize,
        /// Their versions, when every change has one.
        versions: Option<Vec<String>>,
    },
    /// An empty array (or `null`): nothing changed.
    Empty,
    /// Not a batch; the text says why (it never quotes the payload).
    Malformed(String),
}

/// Reads the batch out of an invocation body, leniently. `Data.documents` may be:
/// - double-encoded: a JSON string whose content is a JSON string holding the array (what a
///   capture of the real host shows for custom handlers);
/// - single-encoded: a JSON string holding the array (what the custom-handler docs show);
/// - the array itself.
///
/// When `Data` has no `documents` but exactly one entry, that entry is the batch (a renamed
/// binding).
pub fn parse_batch(body: &[u8]) -> Batch {
    let envelope: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Batch::Malformed(format!("the body is not JSON ({e})")),
    };
    let Some(data) = envelope.get("Data").and_then(Value::as_object) else {
        return Batch::Malformed("no Data object".into());
    };
    let raw = match data.get(BINDING) {
        Some(v) => v,
        None if data.len() == 1 => data.values().next().unwrap_or(&Value::Null),
        None => return Batch::Malformed(format!("no Data.{BINDING}")),
    };
    let mut value = std::borrow::Cow::Borrowed(raw);
    for _ in 0..MAX_ENCODING_LAYERS {
        let Value::String(text) = value.as_ref() else {
            break;
        };
        match serde_json::from_str::<Value>(text) {
            Ok(inner) => value = std::borrow::Cow::Owned(inner),
            Err(_) => {
                return Batch::Malformed(format!("Data.{BINDING} is a string but not JSON"));
            }
        }
    }
    let items = match value.as_ref() {
        Value::Array(items) => items,
        Value::Null => return Batch::Empty,
        Value::String(_) => {
            return Batch::Malformed(format!("Data.{BINDING} is encoded too many times"));
        }
        _ => return Batch::Malformed(format!("Data.{BINDING} is not an array")),
    };
    if items.is_empty() {
        return Batch::Empty;
    }
    let versions = items
        .iter()
        .map(|item| {
            item.get("_etag")
                .and_then(Value::as_str)
                .map(normalize_etag)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        })
        .collect::<Option<Vec<String>>>();
    Batch::Changes {
        count: items.len(),
        versions,
    }
}

/// `POST /invalidate`: one change-feed batch (see the module docs).
pub async fn invocation(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let batch = match body {
        Ok(body) => parse_batch(&body),
        // Larger than the envelope limit: certainly changes, none readable. Bump.
        Err(_) => Batch::Malformed("larger than the handler's request limit".into()),
    };
    // `changes` is how the log lines and `Logs` describe the batch.
    let (count, changes, versions) = match batch {
        Batch::Changes { count, versions } => (count, format!("{count} change(s)"), versions),
        Batch::Empty => return result(200, "invalidate: empty batch, nothing to do"),
        Batch::Malformed(why) => {
            tracing::warn!(reason = %why, "change-feed batch not readable: invalidating anyway");
            (0, format!("an unreadable batch ({why})"), None)
        }
    };
    match state.cache.invalidate_changes(versions.as_deref()).await {
        Ok(FeedInvalidation::Bumped) => {
            tracing::info!(changes = count, "change feed: cache invalidated");
            result(200, &format!("invalidate: {changes}, cache invalidated"))
        }
        Ok(FeedInvalidation::OwnWrites) => result(
            200,
            &format!("invalidate: {changes}, all written through update: no bump"),
        ),
        Err(e) => {
            tracing::warn!(changes = count, error = %e, "change feed: invalidation failed; the host retries the batch");
            let body = json!({"error": {
                "code": "redis_unavailable",
                "message": format!("{e}; the batch must be retried"),
            }});
            json_response(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
        }
    }
}

/// The invocation result `{"Outputs":{},"Logs":[line],"ReturnValue":null}` (§5) with `status`.
fn result(status: u16, line: &str) -> Response {
    let body = json!({"Outputs": {}, "Logs": [line], "ReturnValue": null});
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        body.to_string(),
    )
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(documents: Value) -> Vec<u8> {
        json!({"Data": {"documents": documents}, "Metadata": {}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn reads_every_encoding_of_the_array() {
        let array = json!([{"id": "a", "_etag": "\"0000-1\""}, {"id": "b", "_etag": "e2"}]);
        let single = Value::String(array.to_string());
        let double = Value::String(single.to_string());
        let expected = Batch::Changes {
            count: 2,
            versions: Some(vec!["0000-1".into(), "e2".into()]),
        };
        for shape in [array, single, double] {
            assert_eq!(parse_batch(&envelope(shape)), expected);
        }
    }

    #[test]
    fn a_change_without_a_version_cannot_be_skipped() {
        let batch = parse_batch(&envelope(
            json!([{"id": "a", "_etag": "x"}, {"id": "b"}, 7]),
        ));
        assert_eq!(
            batch,
            Batch::Changes {
                count: 3,
                versions: None
            }
        );
    }

    #[test]
    fn empty_and_malformed_batches() {
        assert_eq!(parse_batch(&envelope(json!([]))), Batch::Empty);
        assert_eq!(parse_batch(&envelope(json!("[]"))), Batch::Empty);
        assert_eq!(parse_batch(&envelope(Value::Null)), Batch::Empty);
        for bad in [
            &b"nope"[..],
            b"{}",
            br#"{"Data":{"a":1,"b":2}}"#,
            br#"{"Data":{"documents":"[1,"}}"#,
            br#"{"Data":{"documents":{"id":"a"}}}"#,
        ] {
            assert!(
                matches!(parse_batch(bad), Batch::Malformed(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A renamed binding: the only entry of Data.
        let renamed = br#"{"Data":{"changes":"[{\"_etag\":\"v\"}]"}}"#;
        assert_eq!(
            parse_batch(renamed),
            Batch::Changes {
                count: 1,
                versions: Some(vec!["v".into()])
            }
        );
    }
}
