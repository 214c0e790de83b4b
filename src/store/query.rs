//! One page of a query: the SDK's pager driven for a single answer, and its continuation
//! token (see `paging.rs`).

use std::num::NonZeroU32;

use azure_data_cosmos::FeedScope;
use azure_data_cosmos::Query;
use azure_data_cosmos::feed::ContinuationToken;
use azure_data_cosmos::options::{MaxItemCountHint, QueryOptions};
use futures::StreamExt;
use serde_json::Value;

use super::cosmos::CosmosStore;
use super::failure::{map_error, query_error, sub_status, substatus};
use super::paging::next_page_token;
use super::{QueryPage, QuerySpec, StoreError};

/// Pages of a client-buffered query (see [`CosmosStore::query`]) drained into one answer
/// beyond the first before the query is refused as unpageable.
const BUFFERED_PAGES_PER_ANSWER: usize = 16;

impl CosmosStore {
    pub(super) async fn query_page(&self, spec: &QuerySpec) -> Result<QueryPage, StoreError> {
        let container = &self.container().await?.client;
        let mut query = Query::from(spec.text.as_str());
        for (name, value) in &spec.parameters {
            query = query
                .with_parameter(name.as_str(), value)
                .map_err(|_| StoreError::input("parameters", "a value cannot be encoded"))?;
        }
        let scope = match &spec.partition_key {
            Some(pk) => FeedScope::partition(pk.to_cosmos()?),
            None => FeedScope::full_container(),
        };
        let page_size = NonZeroU32::new(spec.max_item_count)
            .ok_or_else(|| StoreError::input("maxItemCount", "must be at least 1"))?;
        let mut options =
            QueryOptions::default().with_max_item_count(MaxItemCountHint::Limit(page_size));
        if let Some(token) = &spec.continuation {
            options =
                options.with_continuation_token(ContinuationToken::from_string(token.clone()));
        }
        let mut pages = container
            .query_items::<Value>(query, scope, Some(options))
            .await
            .map_err(|e| query_error(&self.settings, &e, spec))?
            .into_pages();
        let mut items = Vec::new();
        let mut request_charge = 0.0;
        // One SDK page per request, except for the SDK's client-buffered stages (cross-partition
        // DISTINCT, non-streaming ORDER BY): they cannot mint a token mid-way (20124), but their
        // remaining pages are already in memory, so a few more are drained into this answer.
        for _ in 0..=BUFFERED_PAGES_PER_ANSWER {
            let Some(page) = pages.next().await else {
                return Ok(QueryPage {
                    items,
                    continuation: None,
                    request_charge,
                });
            };
            let page = page.map_err(|e| query_error(&self.settings, &e, spec))?;
            request_charge += page.headers().request_charge().map_or(0.0, |c| c.value());
            items.extend(page.into_items());
            match pages.to_continuation_token() {
                Ok(token) => {
                    return Ok(QueryPage {
                        items,
                        continuation: next_page_token(token.as_str()),
                        request_charge,
                    });
                }
                Err(e) if sub_status(&e) == Some(substatus::BUFFERED_CONTINUATION_UNSUPPORTED) => {}
                Err(e) => return Err(map_error(&e, "continuation")),
            }
        }
        Err(StoreError::Query(format!(
            "the Cosmos SDK evaluates this query on the client (cross-partition DISTINCT, or \
             ORDER BY without a streaming plan) and cannot hand out a continuation token for it: \
             its result does not fit in {} pages of maxItemCount {}. Raise maxItemCount, bound \
             the query with TOP n, or scope it to one partition with partitionKey",
            BUFFERED_PAGES_PER_ANSWER + 1,
            spec.max_item_count
        )))
    }
}
