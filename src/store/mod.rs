//! Cosmos DB behind a small trait: the shapes the routes speak ([`QuerySpec`], [`QueryPage`],
//! [`PkValue`]), the [`Store`] trait and its error type [`StoreError`], which knows nothing of
//! HTTP (the routes map it, in `crate::error`).
//!
//! - `cosmos.rs`: [`CosmosStore`], the only code that uses `azure_data_cosmos` (pinned at
//!   `=1.0.0`: its API moved a lot between releases);
//! - `paging.rs`: whether a query has more pages, from the SDK's token;
//! - `failure.rs`: how an SDK error (status, sub-status, wire or client-side) becomes a
//!   [`StoreError`];
//! - `applied.rs`: whether a failed write may still have changed the container
//!   ([`WriteError::maybe_applied`]).

use async_trait::async_trait;
use serde_json::Value;

mod applied;
mod cosmos;
mod failure;
mod paging;
mod provision;
mod query;

pub use cosmos::CosmosStore;

/// What a Cosmos call can fail with, in terms of who can act on it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The client's input cannot be sent as given; `field` names it (`partitionKey`,
    /// `parameters`, `continuation`, `maxItemCount`, ...).
    #[error("{field}: {message}")]
    Input {
        /// The offending input.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Cosmos, or the SDK's query planner, refused the query; the message says what to change.
    #[error("query rejected by Cosmos DB: {0}")]
    Query(String),
    /// The document to delete does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Cosmos refused a write for a reason the client can act on (HTTP `status`: 400, 409, 412
    /// or 413); `message` is Cosmos's own.
    #[error("Cosmos DB refused the document: {message}")]
    Refused {
        /// The status Cosmos answered.
        status: u16,
        /// Cosmos's message.
        message: String,
    },
    /// Cosmos kept answering 429 past the retry budget.
    #[error("Cosmos DB is throttling requests")]
    Throttled {
        /// Seconds to wait, rounded up, at least 1.
        retry_after_secs: u64,
    },
    /// Retrying later can help: Cosmos unreachable, no Entra ID token yet, or the
    /// database/container missing (named).
    #[error("{0}")]
    Unavailable(String),
    /// Cosmos refused the handler's credentials (HTTP `status` 401 or 403, from the service):
    /// `message` names the settings to check (the key, or the identity's role assignment).
    #[error("{message}")]
    CredentialsRefused {
        /// The status Cosmos answered.
        status: u16,
        /// What to check, naming the settings (never their values).
        message: String,
    },
    /// Cosmos answered something the handler cannot use (a 5xx, an undecodable document).
    #[error("{0}")]
    BadGateway(String),
    /// A fault inside the SDK or the handler (logged where it happened).
    #[error("the Cosmos DB client failed inside the handler")]
    Internal,
}

impl StoreError {
    /// Shorthand for [`StoreError::Input`].
    pub fn input(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Input {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A partition-key value as the client gave it: Cosmos accepts strings, numbers and booleans.
#[derive(Debug, Clone, PartialEq)]
pub enum PkValue {
    /// A string key, e.g. `"Texas"`.
    Str(String),
    /// A numeric key.
    Num(f64),
    /// A boolean key.
    Bool(bool),
}

impl PkValue {
    /// Reads a partition-key value out of JSON; `None` for null, objects and arrays.
    pub fn from_json(v: &Value) -> Option<Self> {
        match v {
            Value::String(s) => Some(Self::Str(s.clone())),
            Value::Number(n) => n.as_f64().filter(|f| f.is_finite()).map(Self::Num),
            Value::Bool(b) => Some(Self::Bool(*b)),
            _ => None,
        }
    }

    /// The value as JSON (for cache keys).
    pub fn to_json(&self) -> Value {
        match self {
            Self::Str(s) => Value::String(s.clone()),
            Self::Num(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
            Self::Bool(b) => Value::Bool(*b),
        }
    }

    fn to_cosmos(&self) -> Result<azure_data_cosmos::PartitionKey, StoreError> {
        match self {
            Self::Str(s) => Ok(azure_data_cosmos::PartitionKey::from(s.clone())),
            Self::Bool(b) => Ok(azure_data_cosmos::PartitionKey::from(*b)),
            Self::Num(n) => azure_data_cosmos::PartitionKey::try_from(*n)
                .map_err(|_| StoreError::input("partitionKey", "is not a valid number")),
        }
    }
}

/// One page of a parameterized query, in the Cosmos REST query shape.
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySpec {
    /// SQL text, e.g. `SELECT * FROM c WHERE c.state = @state`.
    pub text: String,
    /// Parameters (`@name`, value), sorted by name so equal queries compare equal.
    pub parameters: Vec<(String, Value)>,
    /// Scope the query to one logical partition; `None` = cross-partition.
    pub partition_key: Option<PkValue>,
    /// Page size, 1–1000.
    pub max_item_count: u32,
    /// Continuation token from a previous page's response, opaque to us.
    pub continuation: Option<String>,
}

/// One page of results.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage {
    /// The documents (or projections) of this page.
    pub items: Vec<Value>,
    /// Token for the next page; `None` on the last page.
    pub continuation: Option<String>,
    /// Request units the page cost.
    pub request_charge: f64,
}

/// A failed write: what failed, and whether Cosmos DB may have applied it anyway.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteError {
    /// The failure, as any other store call reports it.
    pub error: StoreError,
    /// `false` only when every attempt provably left the container unchanged (never sent:
    /// connection refused, DNS failure; or refused by Cosmos with 400/409/412/413/429), so
    /// there is nothing to invalidate. `true` when in doubt (a timeout after sending, say).
    pub maybe_applied: bool,
}

/// An error raised before the write was attempted counts as "maybe applied" unless the code
/// says otherwise: the conservative reading (the caller invalidates).
impl From<StoreError> for WriteError {
    fn from(error: StoreError) -> Self {
        Self {
            error,
            maybe_applied: true,
        }
    }
}

/// An acknowledged write.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Request units the write cost.
    pub request_charge: f64,
    /// The document's new `_etag` (from the `etag` response header, or the returned body's
    /// `_etag` when the server sends no header), without surrounding quotes; the change feed
    /// delivers the document with the same `_etag`. `None` when Cosmos returned neither.
    pub version: Option<String>,
}

/// Strips the quotes Cosmos DB puts around an `_etag` (`"\"0000-...\""` in JSON, `"0000-..."` in
/// the header), so a header value and a body value of one version compare equal.
pub fn normalize_etag(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

/// What the routes need from the database. Implemented by [`CosmosStore`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The container's partition-key path, e.g. `/state` (read from the container).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when Cosmos or the container cannot be reached.
    async fn partition_key_path(&self) -> Result<String, StoreError>;

    /// Runs one page of a query.
    ///
    /// # Errors
    /// `BadQuery` (Cosmos 400), `Throttled` (429 past the retry budget), `Unavailable`.
    async fn query(&self, spec: &QuerySpec) -> Result<QueryPage, StoreError>;

    /// Creates or replaces one document; returns the request charge (RU).
    ///
    /// # Errors
    /// As [`Store::query`]; a document Cosmos refuses gives `BadRequest`.
    async fn upsert(&self, pk: &PkValue, id: &str, doc: &Value) -> Result<f64, StoreError>;

    /// As [`Store::upsert`], also returning the version Cosmos gave the document. The default
    /// knows no version (the change-feed function then treats the write as anyone else's).
    ///
    /// # Errors
    /// As [`Store::upsert`], with whether the failed write may have been applied (the default
    /// cannot tell: always `maybe_applied`).
    async fn upsert_versioned(
        &self,
        pk: &PkValue,
        id: &str,
        doc: &Value,
    ) -> Result<Written, WriteError> {
        Ok(Written {
            request_charge: self.upsert(pk, id, doc).await?,
            version: None,
        })
    }

    /// Deletes one document; returns the request charge (RU).
    ///
    /// # Errors
    /// `NotFound` when no document has this id in this partition; otherwise as
    /// above, with whether the failed delete may have been applied.
    async fn delete(&self, pk: &PkValue, id: &str) -> Result<f64, WriteError>;
}
