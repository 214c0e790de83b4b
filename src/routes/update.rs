//! `update`: write to Cosmos, then invalidate the container's cached queries ("flush-on-write").
//!
//! - `POST` with one JSON document or an array of them (at most [`MAX_DOCUMENTS`]). Every
//!   document needs a string `id` and a value at the container's partition-key path; all are
//!   validated before any is written. Each is upserted; `200 {"upserted":n}`.
//! - `DELETE ?id=...&partitionKey=...` → `200 {"deleted":1}` or `404`.
//!
//! The invalidation runs only after Cosmos answered. It also runs when a write failed part-way:
//! a write that errored or timed out may still have been applied, and an extra miss is cheap.

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::api::{ApiRequest, ApiResponse};
use crate::cache::Invalidation;
use crate::error::AppError;
use crate::state::AppState;
use crate::store::PkValue;

/// Most documents one `POST` may carry.
pub const MAX_DOCUMENTS: usize = 1000;
/// Upserts in flight at once for one request.
const CONCURRENT_WRITES: usize = 8;

/// Serves one `update` request.
///
/// # Errors
/// `BadRequest` naming the index and field; `NotFound` for a missing document on delete;
/// store errors.
pub async fn handle(state: &AppState, req: &ApiRequest) -> Result<ApiResponse, AppError> {
    if req.method == Method::POST {
        upsert(state, req).await
    } else if req.method == Method::DELETE {
        delete(state, req).await
    } else {
        Err(AppError::MethodNotAllowed)
    }
}

/// A validated document ready to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// Its `id`.
    pub id: String,
    /// Its partition-key value.
    pub pk: PkValue,
    /// The whole document.
    pub doc: Value,
}

/// Validates a `POST` body against the partition-key path (`/state`, or nested `/a/b`).
///
/// # Errors
/// `BadRequest` whose field is `body`, `id`/`<pk>` for a single document, or `[i].id` /
/// `[i].<pk>` for an array; nothing is written when any document is invalid.
pub fn validate_documents(body: &[u8], pk_path: &str) -> Result<Vec<Write>, AppError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AppError::bad_request(
            "body",
            "expected a JSON document or an array of documents",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| AppError::bad_request("body", format!("is not valid JSON: {e}")))?;
    let (docs, indexed) = match value {
        Value::Array(docs) => (docs, true),
        doc @ Value::Object(_) => (vec![doc], false),
        _ => {
            return Err(AppError::bad_request(
                "body",
                "must be a JSON object or an array of objects",
            ));
        }
    };
    if docs.is_empty() {
        return Err(AppError::bad_request("body", "the array is empty"));
    }
    if docs.len() > MAX_DOCUMENTS {
        return Err(AppError::bad_request(
            "body",
            format!("at most {MAX_DOCUMENTS} documents per request"),
        ));
    }
    let segments: Vec<&str> = pk_path.trim_start_matches('/').split('/').collect();
    let pk_field = segments.join(".");
    let at = |i: usize, field: &str| {
        if indexed {
            format!("[{i}].{field}")
        } else {
            field.to_string()
        }
    };
    let mut writes = Vec::with_capacity(docs.len());
    for (i, doc) in docs.into_iter().enumerate() {
        if !doc.is_object() {
            let field = if indexed {
                format!("[{i}]")
            } else {
                "body".into()
            };
            return Err(AppError::bad_request(field, "must be a JSON object"));
        }
        let id = match doc.get("id") {
            Some(Value::String(id)) => id.clone(),
            Some(_) => return Err(AppError::bad_request(at(i, "id"), "must be a string")),
            None => return Err(AppError::bad_request(at(i, "id"), "is required")),
        };
        // Cosmos DB ids: at most 255 characters, and not '/', '\', '?', '#'
        // (https://learn.microsoft.com/azure/cosmos-db/concepts-limits#per-item-limits).
        if id.is_empty() || id.chars().count() > 255 || id.contains(['/', '\\', '?', '#']) {
            return Err(AppError::bad_request(
                at(i, "id"),
                "must be 1-255 characters without '/', '\\', '?' or '#'",
            ));
        }
        let mut pk_value = Some(&doc);
        for s in &segments {
            pk_value = pk_value.and_then(|v| v.get(*s));
        }
        let pk = match pk_value {
            None => {
                return Err(AppError::bad_request(
                    at(i, &pk_field),
                    format!("is required (the container's partition key is {pk_path})"),
                ));
            }
            Some(v) => PkValue::from_json(v).ok_or_else(|| {
                AppError::bad_request(at(i, &pk_field), "must be a string, number or boolean")
            })?,
        };
        writes.push(Write { id, pk, doc });
    }
    Ok(writes)
}

async fn upsert(state: &AppState, req: &ApiRequest) -> Result<ApiResponse, AppError> {
    let pk_path = state.store.partition_key_path().await?;
    let writes = validate_documents(&req.body, &pk_path)?;
    let count = writes.len();
    let result: Result<Vec<f64>, AppError> = futures::stream::iter(writes)
        .map(|w| {
            let store = state.store.clone();
            async move { store.upsert(&w.pk, &w.id, &w.doc).await }
        })
        .buffer_unordered(CONCURRENT_WRITES)
        .try_collect()
        .await;
    // Invalidate after Cosmos answered, whether or not every write succeeded.
    let invalidation = state.cache.invalidate().await;
    let charges = result?;
    let mut response = ApiResponse::json(
        StatusCode::OK,
        Bytes::from(json!({ "upserted": count }).to_string()),
    );
    response.request_charge = Some(charges.iter().sum());
    response.invalidation = Some(invalidation_header(invalidation));
    Ok(response)
}

async fn delete(state: &AppState, req: &ApiRequest) -> Result<ApiResponse, AppError> {
    let id = match req.query_param("id") {
        Some(id) if !id.is_empty() => id,
        _ => return Err(AppError::bad_request("id", "is required")),
    };
    let pk = match req.query_param("partitionKey") {
        Some(pk) => PkValue::Str(pk.to_string()),
        None => return Err(AppError::bad_request("partitionKey", "is required")),
    };
    let result = match state.store.delete(&pk, id).await {
        // Nothing was deleted, so nothing to invalidate.
        Err(e @ AppError::NotFound(_)) => return Err(e),
        other => other,
    };
    let invalidation = state.cache.invalidate().await;
    let charge = result?;
    let mut response = ApiResponse::json(
        StatusCode::OK,
        Bytes::from(json!({ "deleted": 1 }).to_string()),
    );
    response.request_charge = Some(charge);
    response.invalidation = Some(invalidation_header(invalidation));
    Ok(response)
}

fn invalidation_header(i: Invalidation) -> &'static str {
    match i {
        Invalidation::Done => "done",
        Invalidation::Pending => "pending",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(bad("\"x\""), "body");
    }

    #[test]
    fn nested_partition_key_paths() {
        let ok = validate_documents(br#"{"id":"a","addr":{"zip":"02134"}}"#, "/addr/zip")
            .expect("valid");
        assert_eq!(ok[0].pk, PkValue::Str("02134".into()));
        let e = validate_documents(br#"[{"id":"a","addr":{}}]"#, "/addr/zip").expect_err("bad");
        assert_eq!(field_of(e), "[0].addr.zip");
    }
}
