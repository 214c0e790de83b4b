//! Cosmos DB behind a small trait. This is the only file that uses `azure_data_cosmos`
//! (pinned at `=1.0.0`: its API moved a lot between releases), and the only place that turns
//! Cosmos errors into [`AppError`]s.
//!
//! The client and the container are created lazily and retried on the next request when they
//! fail, so the handler answers the host's readiness probe before Cosmos is reachable and a
//! container created after start-up is picked up without a restart.

use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::feed::ContinuationToken;
use azure_data_cosmos::options::{
    MaxItemCountHint, OperationOptionsBuilder, QueryOptions, ThrottlingRetryOptionsBuilder,
};
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, CosmosClient, CosmosError, FeedScope, PartitionKey, Query,
    RoutingStrategy,
};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::config::CosmosSettings;
use crate::error::AppError;

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

    fn to_cosmos(&self) -> Result<PartitionKey, AppError> {
        match self {
            Self::Str(s) => Ok(PartitionKey::from(s.clone())),
            Self::Bool(b) => Ok(PartitionKey::from(*b)),
            Self::Num(n) => PartitionKey::try_from(*n)
                .map_err(|_| AppError::bad_request("partitionKey", "is not a valid number")),
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

/// What the routes need from the database. Implemented by [`CosmosStore`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The container's partition-key path, e.g. `/state` (read from the container).
    ///
    /// # Errors
    /// [`AppError::Unavailable`] when Cosmos or the container cannot be reached.
    async fn partition_key_path(&self) -> Result<String, AppError>;

    /// Runs one page of a query.
    ///
    /// # Errors
    /// `BadQuery` (Cosmos 400), `Throttled` (429 past the retry budget), `Unavailable`.
    async fn query(&self, spec: &QuerySpec) -> Result<QueryPage, AppError>;

    /// Creates or replaces one document; returns the request charge (RU).
    ///
    /// # Errors
    /// As [`Store::query`]; a document Cosmos refuses gives `BadRequest`.
    async fn upsert(&self, pk: &PkValue, id: &str, doc: &Value) -> Result<f64, AppError>;

    /// Deletes one document; returns the request charge (RU).
    ///
    /// # Errors
    /// `NotFound` when no document has this id in this partition; otherwise as above.
    async fn delete(&self, pk: &PkValue, id: &str) -> Result<f64, AppError>;
}

struct Container {
    client: ContainerClient,
    pk_path: String,
}

/// [`Store`] over one Cosmos DB container with `azure_data_cosmos`.
pub struct CosmosStore {
    settings: CosmosSettings,
    throttle_budget: Duration,
    client: OnceCell<CosmosClient>,
    container: OnceCell<Container>,
}

impl CosmosStore {
    /// A store for `settings.database`/`settings.container`. Nothing is contacted yet.
    /// `throttle_budget` bounds the SDK's waiting on 429 retries (it honours
    /// `x-ms-retry-after-ms`).
    pub fn new(settings: CosmosSettings, throttle_budget: Duration) -> Self {
        Self {
            settings,
            throttle_budget,
            client: OnceCell::new(),
            container: OnceCell::new(),
        }
    }

    /// The shared client, built on first use.
    ///
    /// # Errors
    /// `Unavailable` when the endpoint is invalid or the account cannot be reached.
    pub async fn client(&self) -> Result<&CosmosClient, AppError> {
        self.client
            .get_or_try_init(|| async {
                let endpoint: AccountEndpoint = self.settings.endpoint.parse().map_err(|_| {
                    AppError::Unavailable(
                        "the Cosmos DB endpoint setting is not a valid URL".into(),
                    )
                })?;
                let account = AccountReference::with_authentication_key(
                    endpoint,
                    azure_core::credentials::Secret::from(self.settings.key.expose().to_string()),
                );
                let throttling = ThrottlingRetryOptionsBuilder::new()
                    .with_max_retry_wait_time(self.throttle_budget)
                    .build();
                let options = OperationOptionsBuilder::new()
                    .with_throttling_retry_options(throttling)
                    .build();
                CosmosClient::builder()
                    .with_default_operation_options(options)
                    .build(account, RoutingStrategy::PreferredRegions(Vec::new()))
                    .await
                    .map_err(|e| map_error(&e, "connect"))
            })
            .await
    }

    async fn container(&self) -> Result<&Container, AppError> {
        self.container
            .get_or_try_init(|| async {
                let client = self.client().await?;
                let db = client.database_client(self.settings.database.as_str());
                let container = db
                    .container_client(self.settings.container.as_str(), None)
                    .await
                    .map_err(|e| {
                        if e.status().is_not_found() {
                            self.container_missing()
                        } else {
                            map_error(&e, "open container")
                        }
                    })?;
                let properties = container
                    .read(None)
                    .await
                    .map_err(|e| map_error(&e, "read container"))?
                    .into_model()
                    .map_err(|e| map_error(&e, "read container"))?;
                let pk_path = properties
                    .partition_key
                    .paths()
                    .first()
                    .map(|p| p.to_string())
                    .ok_or_else(|| {
                        AppError::Unavailable("the container has no partition key path".into())
                    })?;
                Ok(Container {
                    client: container,
                    pk_path,
                })
            })
            .await
    }
}

#[async_trait]
impl Store for CosmosStore {
    async fn partition_key_path(&self) -> Result<String, AppError> {
        Ok(self.container().await?.pk_path.clone())
    }

    async fn query(&self, spec: &QuerySpec) -> Result<QueryPage, AppError> {
        let container = &self.container().await?.client;
        let mut query = Query::from(spec.text.as_str());
        for (name, value) in &spec.parameters {
            query = query
                .with_parameter(name.as_str(), value)
                .map_err(|_| AppError::bad_request("parameters", "a value cannot be encoded"))?;
        }
        let scope = match &spec.partition_key {
            Some(pk) => FeedScope::partition(pk.to_cosmos()?),
            None => FeedScope::full_container(),
        };
        let page_size = NonZeroU32::new(spec.max_item_count)
            .ok_or_else(|| AppError::bad_request("maxItemCount", "must be at least 1"))?;
        let mut options =
            QueryOptions::default().with_max_item_count(MaxItemCountHint::Limit(page_size));
        if let Some(token) = &spec.continuation {
            options =
                options.with_continuation_token(ContinuationToken::from_string(token.clone()));
        }
        let mut pages = container
            .query_items::<Value>(query, scope, Some(options))
            .await
            .map_err(|e| self.map_query_error(&e, spec))?
            .into_pages();
        let Some(page) = pages.next().await else {
            return Ok(QueryPage {
                items: Vec::new(),
                continuation: None,
                request_charge: 0.0,
            });
        };
        let page = page.map_err(|e| self.map_query_error(&e, spec))?;
        let request_charge = page.headers().request_charge().map_or(0.0, |c| c.value());
        // The server's own continuation says whether this partition range has more.
        // The SDK's token (which also encodes the query plan's position) is what resumes.
        let has_more = page.headers().continuation().is_some();
        let items = page.into_items();
        let continuation = if has_more {
            Some(
                pages
                    .to_continuation_token()
                    .map_err(|e| map_error(&e, "continuation"))?
                    .as_str()
                    .to_string(),
            )
        } else {
            None
        };
        Ok(QueryPage {
            items,
            continuation,
            request_charge,
        })
    }

    async fn upsert(&self, pk: &PkValue, id: &str, doc: &Value) -> Result<f64, AppError> {
        let container = &self.container().await?.client;
        let response = container
            .upsert_item(pk.to_cosmos()?, id, doc, None)
            .await
            .map_err(|e| self.map_write_error(&e, "upsert"))?;
        Ok(response
            .headers()
            .request_charge()
            .map_or(0.0, |c| c.value()))
    }

    async fn delete(&self, pk: &PkValue, id: &str) -> Result<f64, AppError> {
        let container = &self.container().await?.client;
        let response = container
            .delete_item(pk.to_cosmos()?, id, None)
            .await
            .map_err(|e| {
                if e.status().is_not_found() && e.is_from_wire() {
                    AppError::NotFound(format!("no document with id {id:?} in that partition"))
                } else {
                    self.map_write_error(&e, "delete")
                }
            })?;
        Ok(response
            .headers()
            .request_charge()
            .map_or(0.0, |c| c.value()))
    }
}

/// Cosmos's own message without the status prefix the SDK's `Display` adds.
fn cosmos_message(e: &CosmosError) -> String {
    let text = e.to_string();
    match text.split_once(": ") {
        Some((_, rest)) if !rest.is_empty() => rest.to_string(),
        _ => text,
    }
}

/// Maps an SDK error onto the client-facing error; logs the detail (never a key: the SDK's
/// one-line `Display` holds the status, sub-status and service message only).
fn map_error(e: &CosmosError, operation: &'static str) -> AppError {
    let status = e.status();
    tracing::warn!(operation, error = %e, "Cosmos DB call failed");
    if status.is_throttled() {
        let wait = e
            .response()
            .and_then(|r| r.headers().retry_after_ms)
            .map_or(Duration::from_secs(1), Duration::from_millis);
        return AppError::Throttled {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        };
    }
    if status.is_unauthorized() || status.is_forbidden() {
        return AppError::Unavailable("Cosmos DB refused the credentials".into());
    }
    if status.is_not_found() {
        return AppError::Unavailable("Cosmos DB resource not found".into());
    }
    let code = u16::from(status.status_code());
    if status.is_transient() || status.is_timeout() || code >= 500 || !e.is_from_wire() {
        return AppError::Unavailable("Cosmos DB is unreachable".into());
    }
    AppError::Internal
}

impl CosmosStore {
    fn container_missing(&self) -> AppError {
        AppError::Unavailable(format!(
            "Cosmos DB container {}/{} does not exist",
            self.settings.database, self.settings.container
        ))
    }

    fn map_query_error(&self, e: &CosmosError, spec: &QuerySpec) -> AppError {
        let status = e.status();
        if spec.continuation.is_some() {
            // A token the SDK cannot resume from (garbage, another query's, another scope's) is
            // a client-side error of the SDK (HTTP 400 or 500 without a wire response).
            let code = u16::from(status.status_code());
            let client_side = !e.is_from_wire() && (code == 400 || code == 500);
            let rejected = status.is_bad_request()
                && cosmos_message(e)
                    .to_ascii_lowercase()
                    .contains("continuation");
            if client_side || rejected {
                tracing::warn!(error = %e, "unusable continuation token");
                return AppError::bad_request(
                    "continuation",
                    "is not a continuation token of this query (use the `continuation` of the previous page, unchanged)",
                );
            }
        }
        if status.is_bad_request() && e.is_from_wire() {
            return AppError::BadQuery(cosmos_message(e));
        }
        if status.is_not_found() && e.is_from_wire() {
            return self.container_missing();
        }
        map_error(e, "query")
    }

    /// Cosmos refusals the client can act on keep their status; the rest as [`map_error`].
    fn map_write_error(&self, e: &CosmosError, operation: &'static str) -> AppError {
        let status = e.status();
        let code = u16::from(status.status_code());
        if e.is_from_wire() && matches!(code, 400 | 409 | 412 | 413) {
            tracing::warn!(operation, error = %e, "Cosmos DB refused the write");
            return AppError::Rejected {
                status: axum::http::StatusCode::from_u16(code)
                    .unwrap_or(axum::http::StatusCode::BAD_REQUEST),
                field: "body".into(),
                message: format!("Cosmos DB refused the document: {}", cosmos_message(e)),
            };
        }
        if status.is_not_found() && e.is_from_wire() {
            return self.container_missing();
        }
        map_error(e, operation)
    }

    /// Creates the database and the container (partition key `pk_path`) when missing. For the
    /// seeding command and tests; the handler itself never creates resources.
    ///
    /// # Errors
    /// `Unavailable` when Cosmos cannot be reached or refuses.
    pub async fn ensure_container(&self, pk_path: &str) -> Result<(), AppError> {
        use azure_data_cosmos::models::ContainerProperties;
        let client = self.client().await?;
        if let Err(e) = client
            .create_database(self.settings.database.as_str(), None)
            .await
            && !e.status().is_conflict()
        {
            return Err(map_error(&e, "create database"));
        }
        let db = client.database_client(self.settings.database.as_str());
        let properties =
            ContainerProperties::new(self.settings.container.clone(), pk_path.to_string().into());
        if let Err(e) = db.create_container(properties, None).await
            && !e.status().is_conflict()
        {
            return Err(map_error(&e, "create container"));
        }
        Ok(())
    }
}
