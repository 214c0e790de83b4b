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
                let account =
                    AccountReference::with_authentication_key(endpoint, self.settings.key.clone());
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
            let page = page.map_err(|e| self.map_query_error(&e, spec))?;
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
        Err(AppError::BadQuery(format!(
            "the Cosmos SDK evaluates this query on the client (cross-partition DISTINCT, or \
             ORDER BY without a streaming plan) and cannot hand out a continuation token for it: \
             its result does not fit in {} pages of maxItemCount {}. Raise maxItemCount, bound \
             the query with TOP n, or scope it to one partition with partitionKey",
            BUFFERED_PAGES_PER_ANSWER + 1,
            spec.max_item_count
        )))
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

/// Pages of a client-buffered query (see [`CosmosStore::query`]) drained into one answer
/// beyond the first before the query is refused as unpageable.
const BUFFERED_PAGES_PER_ANSWER: usize = 16;

/// The continuation to hand out after a page: `None` once the SDK's pipeline is drained.
///
/// Why not the page's `x-ms-continuation` header: the SDK plans ORDER BY, TOP, OFFSET/LIMIT,
/// aggregates and DISTINCT across partitions on the client, and those pages carry no server
/// header although more pages remain (cf. Azure/azure-sdk-for-js#12308). The SDK's own token
/// (`c1.` + base64url JSON, `azure_data_cosmos_driver` 1.0.0 `models/continuation_token.rs`)
/// records the whole pipeline; its root is `{"kind":"drained"}` when nothing is left.
/// A token in any other form (an opaque server token) means more pages.
fn next_page_token(sdk_token: &str) -> Option<String> {
    (!sdk_token_is_drained(sdk_token)).then(|| sdk_token.to_string())
}

fn sdk_token_is_drained(sdk_token: &str) -> bool {
    use base64::Engine as _;
    let Some(body) = sdk_token.strip_prefix("c1.") else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .ok()
        .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
        .is_some_and(|state| state.pointer("/root/kind") == Some(&Value::from("drained")))
}

/// Cosmos sub-status codes the mapping needs. Numbers from `azure_data_cosmos_driver` 1.0.0
/// `src/error/status_codes.rs` (client-side, HTTP 400/500 without a wire response) and the
/// Cosmos REST sub-status table (wire).
mod substatus {
    /// 500, client-side: a response (or token) body the SDK cannot deserialize.
    pub const BODY_UNDECODABLE: u16 = 20020;
    /// Client-side transport failures: connect, I/O, DNS, body read, timeout.
    pub const TRANSPORT: std::ops::RangeInclusive<u16> = 20010..=20015;
    /// 400, client-side: a buffered stage cannot mint a continuation token mid-way.
    pub const BUFFERED_CONTINUATION_UNSUPPORTED: u16 = 20124;
    /// 400/500, client-side: a continuation token whose state the SDK cannot resume from
    /// (another query shape, a partition layout that changed, an ORDER BY state it cannot read).
    pub const CONTINUATION_UNUSABLE: [u16; 8] =
        [20116, 20117, 20203, 20204, 20205, 20213, 20214, 20216];
    /// 400, client-side: a partition-key value the SDK refuses.
    pub const PARTITION_KEY: [u16; 5] = [20100, 20101, 20102, 20103, 20127];
}

fn sub_status(e: &CosmosError) -> Option<u16> {
    e.status().sub_status().map(|s| s.value())
}

/// What a client must change when the SDK refuses a query shape before sending it (client-side
/// HTTP 400), or the gateway refuses to serve it across partitions (wire 400/1004). `None` for
/// other sub-statuses.
fn query_refusal(sub_status: u16) -> Option<&'static str> {
    Some(match sub_status {
        20113 => {
            "the Cosmos SDK cannot run this query across partitions (a feature its query \
             planner does not support); scope it to one partition with partitionKey, or simplify it"
        }
        20114 => "TOP, OFFSET and LIMIT take a non-negative whole number",
        20115 => {
            "ORDER BY and GROUP BY across partitions must name a property path (c.population), \
             not a computed expression; scope the query with partitionKey to use an expression"
        }
        20118 => "the query fans out to more partitions than the SDK allows; give partitionKey",
        20119 => "ORDER BY across partitions cannot sort on an array or object value",
        20123 => "DISTINCT on values nested this deeply is not supported",
        20125 | 20126 => {
            "the Cosmos SDK must buffer this whole query on the client (cross-partition \
             DISTINCT, or ORDER BY without a streaming plan) and needs a bounded window: add \
             TOP n (or OFFSET/LIMIT), or scope the query to one partition with partitionKey"
        }
        1004 => {
            "Cosmos DB cannot serve this query across partitions (an aggregate or clause without \
             a cross-partition plan); scope it to one partition with partitionKey"
        }
        _ => return None,
    })
}

/// The facts of an SDK error that decide the client's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Failure {
    status: u16,
    sub_status: Option<u16>,
    /// Cosmos answered (a wire response), as opposed to an error raised inside the SDK.
    from_wire: bool,
    retry_after_ms: Option<u64>,
}

impl Failure {
    fn of(e: &CosmosError) -> Self {
        Self {
            status: u16::from(e.status().status_code()),
            sub_status: sub_status(e),
            from_wire: e.is_from_wire(),
            retry_after_ms: e.response().and_then(|r| r.headers().retry_after_ms),
        }
    }

    /// The answer for a failure no operation-specific rule claimed.
    ///
    /// 503 only where retrying later can help (throttling, transport, a Cosmos 503/408/410);
    /// 502 where Cosmos answered something the handler cannot use (a 5xx, an undecodable body);
    /// 500 for a fault inside the handler or the SDK.
    fn classify(self) -> AppError {
        let Self {
            status,
            sub_status,
            from_wire,
            retry_after_ms,
        } = self;
        if status == 429 {
            let wait = retry_after_ms.map_or(Duration::from_secs(1), Duration::from_millis);
            return AppError::Throttled {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            };
        }
        if status == 401 || status == 403 {
            return AppError::Unavailable(format!(
                "Cosmos DB refused the handler's credentials (HTTP {status}): check the account \
                 key or the identity's data-plane role"
            ));
        }
        if !from_wire && sub_status == Some(substatus::BODY_UNDECODABLE) {
            return AppError::BadGateway(
                "Cosmos DB returned a document the handler cannot decode (not valid JSON for \
                 the SDK, e.g. a lone UTF-16 surrogate such as \"\\ud800\" written by a \
                 JavaScript client); fix or delete that document"
                    .into(),
            );
        }
        let transport = sub_status.is_some_and(|s| substatus::TRANSPORT.contains(&s));
        if matches!(status, 408 | 410 | 449 | 503) || (!from_wire && transport) {
            return AppError::Unavailable("Cosmos DB is unreachable".into());
        }
        if from_wire && status >= 500 {
            return AppError::BadGateway(format!("Cosmos DB answered HTTP {status}"));
        }
        if status == 404 {
            return AppError::Unavailable("Cosmos DB resource not found".into());
        }
        AppError::Internal
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
    tracing::warn!(operation, error = %e, "Cosmos DB call failed");
    Failure::of(e).classify()
}

impl CosmosStore {
    fn container_missing(&self) -> AppError {
        AppError::Unavailable(format!(
            "Cosmos DB container {}/{} does not exist",
            self.settings.database, self.settings.container
        ))
    }

    fn map_query_error(&self, e: &CosmosError, spec: &QuerySpec) -> AppError {
        let failure = Failure::of(e);
        if let Some(sub) = failure.sub_status {
            if spec.continuation.is_some() && substatus::CONTINUATION_UNUSABLE.contains(&sub) {
                tracing::warn!(error = %e, "unusable continuation token");
                return AppError::bad_request(
                    "continuation",
                    "can no longer resume this query (the container's partitions changed, or \
                     the token is from another query); start again without continuation",
                );
            }
            if substatus::PARTITION_KEY.contains(&sub) && !failure.from_wire {
                return AppError::bad_request("partitionKey", cosmos_message(e));
            }
            if failure.status == 400
                && let Some(reason) = query_refusal(sub)
            {
                tracing::info!(error = %e, "query refused");
                return AppError::BadQuery(reason.into());
            }
        }
        if spec.continuation.is_some()
            && failure.status == 400
            && cosmos_message(e)
                .to_ascii_lowercase()
                .contains("continuation")
        {
            tracing::warn!(error = %e, "continuation token refused");
            return AppError::bad_request(
                "continuation",
                "is not a continuation token of this query (use the `continuation` of the previous page, unchanged)",
            );
        }
        if failure.status == 400 && (failure.from_wire || failure.sub_status.is_none()) {
            return AppError::BadQuery(cosmos_message(e));
        }
        if failure.status == 404 && failure.from_wire {
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

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn token(json: &str) -> String {
        format!(
            "c1.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    #[test]
    fn only_a_drained_pipeline_ends_the_paging() {
        let drained = token(r#"{"op":"Query","rid":"r","root":{"kind":"drained"}}"#);
        assert_eq!(next_page_token(&drained), None);
        let ordered = token(
            r#"{"op":"Query","rid":"r","root":{"kind":"sequential_drain","left_most_undrained_epk":"05C1"}}"#,
        );
        assert_eq!(next_page_token(&ordered).as_deref(), Some(ordered.as_str()));
        // An opaque server token, or a c1 token that does not decode, means "more".
        assert!(next_page_token("+RID:~abc#RT:1").is_some());
        assert!(next_page_token("c1.@@@").is_some());
    }

    fn failure(status: u16, sub_status: Option<u16>, from_wire: bool) -> Failure {
        Failure {
            status,
            sub_status,
            from_wire,
            retry_after_ms: None,
        }
    }

    #[test]
    fn each_failure_class_has_its_own_answer() {
        let cases = [
            // (status, sub-status, from the wire) -> (HTTP status, code)
            ((429, Some(3200), true), (503, "throttled")),
            ((401, None, true), (503, "unavailable")),
            ((403, Some(5301), true), (503, "unavailable")),
            ((500, Some(20020), false), (502, "bad_gateway")),
            ((503, Some(20010), false), (503, "unavailable")),
            ((500, Some(20013), false), (503, "unavailable")),
            ((503, None, true), (503, "unavailable")),
            ((408, None, true), (503, "unavailable")),
            ((500, None, true), (502, "bad_gateway")),
            ((502, None, true), (502, "bad_gateway")),
            ((404, Some(1003), true), (503, "unavailable")),
            ((500, Some(20207), false), (500, "internal")),
        ];
        for ((status, sub, wire), (want_status, want_code)) in cases {
            let e = failure(status, sub, wire).classify();
            assert_eq!(
                (e.status().as_u16(), e.code()),
                (want_status, want_code),
                "{status}/{sub:?} wire={wire}"
            );
        }
        let throttled = Failure {
            retry_after_ms: Some(2_500),
            ..failure(429, None, true)
        };
        assert!(matches!(
            throttled.classify(),
            AppError::Throttled {
                retry_after_secs: 3
            }
        ));
    }

    #[test]
    fn refused_query_shapes_say_what_to_change() {
        for sub in [20113, 20114, 20115, 20118, 20119, 20123, 20125, 20126, 1004] {
            let reason = query_refusal(sub).expect("a refusal");
            assert!(!reason.contains("unreachable"), "{sub}: {reason}");
        }
        assert!(query_refusal(20125).is_some_and(|r| r.contains("TOP n")));
        assert_eq!(query_refusal(20020), None);
        assert_eq!(query_refusal(20010), None);
    }
}
