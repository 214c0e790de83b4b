//! `update`: write to Cosmos, then invalidate the container's cached queries ("flush-on-write").
//!
//! - `POST` with one JSON document or an array of them (at most [`MAX_DOCUMENTS`]). Every
//!   document needs a string `id` and a value at the container's partition-key path; all are
//!   validated before any is written. Each is upserted; `200 {"upserted":n}`.
//! - `DELETE ?id=...&partitionKey=...` → `200 {"deleted":1}` or `404`.
//!
//! The invalidation runs only after Cosmos answered. It also runs when a write failed part-way:
//! a write that errored or timed out may still have been applied, and an extra miss is cheap.
//! It is skipped only when no write can have changed the container
//! ([`crate::store::WriteError::maybe_applied`]): during a Cosmos outage the cached pages are
//! all the instances can serve.

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::api::{ApiRequest, ApiResponse};
use crate::cache::Invalidation;
use crate::error::AppError;
use crate::routes::query::MAX_PARTITION_KEY_BYTES;
use crate::state::AppState;
use crate::store::PkValue;
use crate::store::WriteError;
use crate::store::Written;

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
        Err(AppError::MethodNotAllowed {
            allow: "POST, DELETE",
        })
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

/// The documents of a `POST` body with their ids, and whether it was an array: the checks
/// that need no partition-key path (JSON, shape, count, each document an object with a valid
/// `id`), so the client's own mistakes are a 400 even while Cosmos DB, which names the path,
/// is unreachable.
///
/// # Errors
/// `BadRequest` whose field is `body`, `id` for a single document, or `[i]` / `[i].id` for an
/// array.
fn parse_batch(body: &[u8]) -> Result<(Vec<(String, Value)>, bool), AppError> {
    let value = super::json_body(body, "a JSON document or an array of documents")?;
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
    let mut with_ids = Vec::with_capacity(docs.len());
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
            Some(_) => {
                return Err(AppError::bad_request(
                    field_at(indexed, i, "id"),
                    "must be a string",
                ));
            }
            None => {
                return Err(AppError::bad_request(
                    field_at(indexed, i, "id"),
                    "is required",
                ));
            }
        };
        check_id(&id).map_err(|m| AppError::bad_request(field_at(indexed, i, "id"), m))?;
        with_ids.push((id, doc));
    }
    Ok((with_ids, indexed))
}

/// The field of document `i` an error names: `[i].<field>` in an array, `<field>` alone.
fn field_at(indexed: bool, i: usize, field: &str) -> String {
    if indexed {
        format!("[{i}].{field}")
    } else {
        field.to_string()
    }
}

/// Checks each document's value at the partition-key path (`pk_path`: `/state`, or nested
/// `/a/b`) and that no two documents are the same one; `docs` as [`parse_batch`] returned them.
///
/// # Errors
/// `BadRequest` whose field is `<pk>` / `id` for a single document, or `[i].<pk>` / `[i].id`
/// for an array; nothing is written when any document is invalid.
fn validate_documents(
    docs: Vec<(String, Value)>,
    indexed: bool,
    pk_path: &str,
) -> Result<Vec<Write>, AppError> {
    let segments: Vec<&str> = pk_path.trim_start_matches('/').split('/').collect();
    let pk_field = segments.join(".");
    let at = |i: usize, field: &str| field_at(indexed, i, field);
    let mut writes = Vec::with_capacity(docs.len());
    for (i, (id, doc)) in docs.into_iter().enumerate() {
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
            Some(Value::String(key)) if key.len() > MAX_PARTITION_KEY_BYTES => {
                // Cosmos would refuse it mid-batch, after earlier documents were written.
                return Err(AppError::bad_request(
                    at(i, &pk_field),
                    format!("is longer than {MAX_PARTITION_KEY_BYTES} bytes"),
                ));
            }
            Some(v) => PkValue::from_json(v).ok_or_else(|| {
                AppError::bad_request(at(i, &pk_field), "must be a string, number or boolean")
            })?,
        };
        if let Some(j) = writes.iter().position(|w: &Write| w.id == id && w.pk == pk) {
            // Concurrent upserts of one document would race: which one wins is undefined.
            return Err(AppError::bad_request(
                at(i, "id"),
                format!("repeats document [{j}] (same id and partition key)"),
            ));
        }
        writes.push(Write { id, pk, doc });
    }
    Ok(writes)
}

/// Cosmos DB ids: 1-255 characters, none of `/ \ ? #`
/// (<https://learn.microsoft.com/azure/cosmos-db/concepts-limits#per-item-limits>); we also
/// refuse `.`, `..` and control characters, which would alter the request path of a point
/// operation (the SDK puts the id in the URL).
///
/// # Errors
/// What is wrong with the id.
pub fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty()
        || id.chars().count() > 255
        || id.contains(['/', '\\', '?', '#'])
        || id.chars().any(char::is_control)
        || id == "."
        || id == ".."
    {
        return Err(
            "must be 1-255 characters without '/', '\\', '?', '#' or control characters, and not '.' or '..'",
        );
    }
    Ok(())
}

async fn upsert(state: &AppState, req: &ApiRequest) -> Result<ApiResponse, AppError> {
    let (docs, indexed) = parse_batch(&req.body)?;
    let pk_path = state.store.partition_key_path().await?;
    let writes = validate_documents(docs, indexed, &pk_path)?;
    let total = writes.len();
    let single = !indexed;
    let results: Vec<(usize, Result<Written, WriteError>)> =
        futures::stream::iter(writes.into_iter().enumerate())
            .map(|(i, w)| {
                let store = state.store.clone();
                async move { (i, store.upsert_versioned(&w.pk, &w.id, &w.doc).await) }
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
    // Invalidate after Cosmos answered, whether or not every write succeeded: a write that
    // errored or timed out may still have been applied. Only when no write can have changed
    // the container (each failed before reaching Cosmos, or was refused by it) are the cached
    // pages left alone: during a Cosmos outage they are all the instances can serve.
    let changed = results
        .iter()
        .any(|(_, r)| r.as_ref().map_or_else(|e| e.maybe_applied, |_| true));
    // The versions of the acknowledged writes are recorded with the bump, so the change-feed
    // function does not bump for them again.
    let versions: Vec<String> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().and_then(|w| w.version.clone()))
        .collect();
    let invalidation = if changed {
        Some(state.cache.invalidate_writes(&versions).await)
    } else {
        None
    };
    let written = results.iter().filter(|(_, r)| r.is_ok()).count();
    let charge: f64 = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|w| w.request_charge))
        .sum();
    let first_error = results
        .into_iter()
        .filter_map(|(i, r)| r.err().map(|e| (i, failed_write(e))))
        .min_by_key(|(i, _)| *i);
    if let Some((i, cause)) = first_error {
        let cause = match cause {
            AppError::Rejected {
                status, message, ..
            } => AppError::Rejected {
                status,
                field: if single {
                    "body".into()
                } else {
                    format!("[{i}]")
                },
                message,
            },
            other => other,
        };
        if written == 0 && single {
            return Err(cause);
        }
        return Err(AppError::PartialWrite {
            cause: Box::new(cause),
            written,
            total,
        });
    }
    let mut response = ApiResponse::json(
        StatusCode::OK,
        Bytes::from(json!({ "upserted": total }).to_string()),
    );
    response.request_charge = Some(charge);
    response.invalidation = invalidation.map(invalidation_header);
    Ok(response)
}

/// `DELETE ?id=...&partitionKey=...` (a string partition key), or a JSON body
/// `{"id":"...","partitionKey":<string|number|boolean>}` for keys of other types.
fn delete_target(req: &ApiRequest) -> Result<(String, PkValue), AppError> {
    if req.query_param("id").is_none() && !req.body.iter().all(u8::is_ascii_whitespace) {
        let body: Value = serde_json::from_slice(&req.body)
            .map_err(|e| AppError::bad_request("body", format!("is not valid JSON: {e}")))?;
        let id = match body.get("id") {
            Some(Value::String(id)) => id.clone(),
            _ => return Err(AppError::bad_request("id", "is required (a string)")),
        };
        let pk = body
            .get("partitionKey")
            .and_then(PkValue::from_json)
            .ok_or_else(|| {
                AppError::bad_request("partitionKey", "is required (a string, number or boolean)")
            })?;
        return Ok((id, pk));
    }
    let id = match req.query_param("id") {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => return Err(AppError::bad_request("id", "is required")),
    };
    let pk = match req.query_param("partitionKey") {
        Some(pk) => PkValue::Str(pk.to_string()),
        None => return Err(AppError::bad_request("partitionKey", "is required")),
    };
    Ok((id, pk))
}

async fn delete(state: &AppState, req: &ApiRequest) -> Result<ApiResponse, AppError> {
    let (id, pk) = delete_target(req)?;
    check_id(&id).map_err(|m| AppError::bad_request("id", m))?;
    let result = state.store.delete(&pk, &id).await;
    let invalidation = match &result {
        // Nothing was deleted (no such document, and no earlier attempt could have deleted it;
        // or the delete never reached Cosmos): the cached pages still hold.
        Err(e) if !e.maybe_applied => None,
        _ => Some(state.cache.invalidate().await),
    };
    let charge = result.map_err(failed_write)?;
    let mut response = ApiResponse::json(
        StatusCode::OK,
        Bytes::from(json!({ "deleted": 1 }).to_string()),
    );
    response.request_charge = Some(charge);
    response.invalidation = invalidation.map(invalidation_header);
    Ok(response)
}

/// The client's error for a failed write, saying so when it may still have been applied
/// (the client must not read "unavailable" as "nothing happened").
fn failed_write(e: WriteError) -> AppError {
    match AppError::from(e.error) {
        AppError::Unavailable(message) if e.maybe_applied => AppError::Unavailable(format!(
            "{message} (the write may still have been applied, so the cached pages were \
             invalidated)"
        )),
        other => other,
    }
}

fn invalidation_header(i: Invalidation) -> &'static str {
    match i {
        Invalidation::Done => "done",
        Invalidation::Pending => "pending",
    }
}

#[cfg(test)]
mod tests;
