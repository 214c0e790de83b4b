//! `query`: cache-aside read.
//!
//! - `GET ?<field>=<value>&...`: equality on top-level fields, ANDed, values compared as
//!   strings. Reserved: `maxItemCount` (1–1000, default 100), `continuation`, `partitionKey`,
//!   `code` (the function key, never a filter). A filter on the container's partition-key field
//!   also scopes the query to that partition (cheaper in RU than a cross-partition query).
//! - `POST` with `{"query":"SELECT ...","parameters":[{"name":"@x","value":...}],
//!   "partitionKey":...,"maxItemCount":n,"continuation":"..."}` (the Cosmos REST query shape).
//!
//! Response `200 {"items":[...],"count":n,"continuation":"..."|null}` with `x-cache`. Whole
//! documents come without `_rid`, `_self`, `_attachments` (see [`STORAGE_PROPERTIES`]).
//! `continuation` is bound to its query ([`crate::continuation`]): send it back unchanged, with
//! the same query, parameters and partition key (the page size may change).

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::api::{ApiRequest, ApiResponse};
use crate::cache::{Filled, query_hash};
use crate::error::AppError;
use crate::routes::query_memo::Resolved;
pub use crate::routes::query_spec::{
    DEFAULT_MAX_ITEM_COUNT, MAX_ITEM_COUNT, MAX_PARTITION_KEY_BYTES, MAX_QUERY_BYTES,
    MAX_QUERY_OPERATORS, RESERVED, pin_partition, spec_from_body, spec_from_query_string,
};
use crate::routes::query_spec::{GET_KEY_PREFIX, check_nesting};
use crate::state::AppState;
use crate::store::QuerySpec;

/// Serves one `query` request.
///
/// # Errors
/// `BadRequest` naming the field; store errors (`BadQuery`, `Throttled`, `Unavailable`).
pub async fn handle(state: &AppState, req: &ApiRequest) -> Result<ApiResponse, AppError> {
    let get = req.method == Method::GET;
    if get && let Some(resolved) = state.queries.get(&req.query) {
        return serve(state, &resolved, None).await;
    }
    // Validate first: bad input is a 400 even while Cosmos is unreachable.
    let client_spec = if get {
        spec_from_query_string(&req.query)?
    } else if req.method == Method::POST {
        spec_from_body(&req.body)?
    } else {
        return Err(AppError::MethodNotAllowed { allow: "GET, POST" });
    };
    check_nesting(&client_spec.text)?;
    // The cache key is the client's request as sent. Pinning a GET to the partition of its
    // partition-key filter changes how Cosmos is asked, not the rows, so the container's
    // partition-key path is needed only on a miss: a hit needs nothing from Cosmos, even on
    // a fresh instance while Cosmos is unreachable.
    let pin = get && client_spec.partition_key.is_none();
    // A pinned GET and a POST of the same text and parameters return the same rows, but the
    // SDK's tokens of a single-partition and of a cross-partition query are not
    // interchangeable: each form gets its own cache entries and tokens, or a page cached by
    // one would hand the other a token it cannot resume.
    let mut key_spec = client_spec;
    if pin {
        key_spec.text.insert_str(0, GET_KEY_PREFIX);
    }
    // A token from another query (or garbage) is refused before anything is looked up or
    // cached; what Cosmos resumes from is the SDK token inside it.
    let sdk_continuation = key_spec
        .continuation
        .as_deref()
        .map(|token| state.tokens.open(&key_spec, token))
        .transpose()?;
    let resolved = Arc::new(Resolved {
        hash: query_hash(&key_spec),
        // Shared with the fill, which runs only on a miss: a hit copies no part of the query.
        key_spec: Arc::new(key_spec),
        pin,
    });
    if get && sdk_continuation.is_none() {
        state.queries.insert(&req.query, resolved.clone());
    }
    serve(state, &resolved, sdk_continuation).await
}

/// Serves a resolved query from the cache, filling it from Cosmos (from `sdk_continuation`,
/// the SDK's token inside the client's, when given) on a miss.
async fn serve(
    state: &AppState,
    resolved: &Resolved,
    sdk_continuation: Option<String>,
) -> Result<ApiResponse, AppError> {
    let (bound_to, pin) = (resolved.key_spec.clone(), resolved.pin);
    let store = state.store.clone();
    let tokens = state.tokens.clone();
    let served = state
        .cache
        .get_or_fill(resolved.hash, move || async move {
            // What Cosmos is asked: the client's query, the SDK's own continuation token.
            let mut store_spec = QuerySpec::clone(&bound_to);
            store_spec.continuation = sdk_continuation;
            if pin {
                store_spec.text.drain(..GET_KEY_PREFIX.len());
                pin_partition(&mut store_spec, &store.partition_key_path().await?);
            }
            let page = store.query(&store_spec).await?;
            let continuation = page.continuation.map(|sdk| tokens.seal(&bound_to, &sdk));
            let items: Vec<Value> = page
                .items
                .into_iter()
                .map(without_storage_properties)
                .collect();
            let body = json!({
                "items": items,
                "count": items.len(),
                "continuation": continuation,
            });
            Ok(Filled {
                body: Bytes::from(body.to_string()),
                request_charge: page.request_charge,
            })
        })
        .await?;
    let mut response = ApiResponse::json(StatusCode::OK, served.body);
    response.cache = Some(served.outcome);
    response.request_charge = served.request_charge;
    response.escaped = served.escaped;
    Ok(response)
}

/// System properties Cosmos adds to every stored document that describe its storage, not its
/// data: resource id, self link, attachments link. `_etag` (for optimistic concurrency) and
/// `_ts` (last write, epoch seconds) are kept.
pub const STORAGE_PROPERTIES: [&str; 3] = ["_rid", "_self", "_attachments"];

/// Removes [`STORAGE_PROPERTIES`] from a whole stored document (an object carrying `_rid`,
/// `_self` and `_etag`); projections (`SELECT c.id ...`, `SELECT VALUE ...`) are left as they
/// are, so a query that names `c._rid` still gets it.
fn without_storage_properties(item: Value) -> Value {
    match item {
        Value::Object(mut doc)
            if ["_rid", "_self", "_etag"]
                .iter()
                .all(|k| doc.contains_key(*k)) =>
        {
            for key in STORAGE_PROPERTIES {
                doc.remove(key);
            }
            Value::Object(doc)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn whole_documents_lose_storage_properties_only() {
        let doc = json!({"id":"a","_rid":"r","_self":"s","_etag":"e","_ts":1,"_attachments":"x"});
        assert_eq!(
            without_storage_properties(doc),
            json!({"id":"a","_etag":"e","_ts":1})
        );
        let projection = json!({"id":"a","_rid":"r"});
        assert_eq!(without_storage_properties(projection.clone()), projection);
        assert_eq!(without_storage_properties(json!(3)), json!(3));
    }
}
