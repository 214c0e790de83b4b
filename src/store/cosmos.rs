//! [`CosmosStore`]: the [`Store`] over one container with `azure_data_cosmos`.
//!
//! The client and the container are created lazily and retried on the next request when they
//! fail, so the handler answers the host's readiness probe before Cosmos is reachable and a
//! container created after start-up is picked up without a restart.
//!
//! Authentication is the account key, or Microsoft Entra ID tokens from a
//! [`TokenSource`] (which the SDK asks on every request; it answers from its cache).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::options::{OperationOptionsBuilder, ThrottlingRetryOptionsBuilder};
use azure_data_cosmos::{AccountEndpoint, AccountReference, CosmosClient, RoutingStrategy};
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::config::{CosmosAuth, CosmosSettings, names};
use crate::identity::TokenSource;

use super::failure::{container_missing, map_error, write_error};
use super::{
    PkValue, QueryPage, QuerySpec, Store, StoreError, WriteError, Written, normalize_etag,
};

/// The opened container: its client and its partition-key path.
pub(super) struct Container {
    pub(super) client: ContainerClient,
    pk_path: String,
}

/// How long a request waits for the client and the container to open on a fresh instance.
const OPEN_BUDGET: Duration = Duration::from_secs(20);

/// [`Store`] over one Cosmos DB container with `azure_data_cosmos`.
pub struct CosmosStore {
    pub(super) settings: CosmosSettings,
    throttle_budget: Duration,
    /// Entra ID tokens, when `settings.auth` is [`CosmosAuth::Identity`].
    token_source: Option<TokenSource>,
    client: OnceCell<CosmosClient>,
    container: OnceCell<Container>,
}

impl CosmosStore {
    /// A store for `settings.database`/`settings.container`. Nothing is contacted yet.
    /// `throttle_budget` bounds the SDK's waiting on 429 retries (it honours
    /// `x-ms-retry-after-ms`).
    pub fn new(settings: CosmosSettings, throttle_budget: Duration) -> Self {
        Self::with_token_source(settings, throttle_budget, None)
    }

    /// As [`CosmosStore::new`], authenticating with `token_source`'s Entra ID tokens when the
    /// settings select Entra ID (without a source such settings answer 503 on every call).
    pub fn with_token_source(
        settings: CosmosSettings,
        throttle_budget: Duration,
        token_source: Option<TokenSource>,
    ) -> Self {
        Self {
            settings,
            throttle_budget,
            token_source,
            client: OnceCell::new(),
            container: OnceCell::new(),
        }
    }

    /// [`Self::name_the_setting`] for a failed write.
    fn name_the_setting_of_write(&self, e: WriteError) -> WriteError {
        WriteError {
            error: self.name_the_setting(e.error),
            ..e
        }
    }

    /// Whether the store authenticates with Entra ID tokens rather than the account key.
    pub fn uses_entra_id(&self) -> bool {
        matches!(self.settings.auth, CosmosAuth::Identity(_))
    }

    /// Names the setting to check in a refused-credentials error (the SDK's 401/403): the key
    /// settings, or the identity's role assignment.
    pub(super) fn name_the_setting(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::CredentialsRefused { status, .. } => StoreError::CredentialsRefused {
                status,
                message: match &self.settings.auth {
                    CosmosAuth::Key(_) => format!(
                        "Cosmos DB refused the account key (HTTP {status}): check {} (or {} \
                         and {}); an account with local (key) authentication disabled accepts \
                         only Microsoft Entra ID: set {} instead",
                        names::COSMOS_CONNECTION_STRING,
                        names::COSMOS_ENDPOINT,
                        names::COSMOS_KEY,
                        names::COSMOS_IDENTITY_ENDPOINT
                    ),
                    CosmosAuth::Identity(kind) => format!(
                        "Cosmos DB refused the Microsoft Entra ID token of the {} (HTTP \
                         {status}): the identity of {} needs a Cosmos DB data-plane role \
                         assignment (Cosmos DB Built-in Data Contributor) on the account",
                        kind.describe(),
                        names::COSMOS_IDENTITY_ENDPOINT
                    ),
                },
            },
            other => other,
        }
    }

    /// The shared client, built on first use.
    ///
    /// # Errors
    /// `Unavailable` when the endpoint is invalid or the account cannot be reached.
    pub async fn client(&self) -> Result<&CosmosClient, StoreError> {
        self.client
            .get_or_try_init(|| async {
                let endpoint: AccountEndpoint = self.settings.endpoint.parse().map_err(|_| {
                    StoreError::Unavailable(
                        "the Cosmos DB endpoint setting is not a valid URL".into(),
                    )
                })?;
                let account = match (&self.settings.auth, &self.token_source) {
                    (CosmosAuth::Key(key), _) => {
                        AccountReference::with_authentication_key(endpoint, key.clone())
                    }
                    (CosmosAuth::Identity(_), Some(source)) => {
                        AccountReference::with_credential(endpoint, Arc::new(source.clone()))
                    }
                    (CosmosAuth::Identity(_), None) => {
                        return Err(StoreError::Unavailable(
                            "Cosmos DB is configured for Microsoft Entra ID but no token \
                             source was started"
                                .into(),
                        ));
                    }
                };
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

    /// The container, opened on first use. A request waits at most [`OPEN_BUDGET`] for it:
    /// against a black-holed endpoint one attempt of the SDK takes about a minute, and waiters
    /// queue behind each other on the cell, so without a bound the k-th request of a fresh
    /// instance answered after k minutes (past the Functions front end's 230 s).
    pub(super) async fn container(&self) -> Result<&Container, StoreError> {
        match tokio::time::timeout(OPEN_BUDGET, self.open_container()).await {
            Ok(opened) => opened,
            Err(_) => {
                tracing::warn!(
                    budget_ms = OPEN_BUDGET.as_millis() as u64,
                    "Cosmos DB did not answer while opening the container"
                );
                Err(StoreError::Unavailable(
                    "Cosmos DB is unreachable (no answer while opening the container)".into(),
                ))
            }
        }
    }

    async fn open_container(&self) -> Result<&Container, StoreError> {
        self.container
            .get_or_try_init(|| async {
                let client = self.client().await?;
                let db = client.database_client(self.settings.database.as_str());
                let container = db
                    .container_client(self.settings.container.as_str(), None)
                    .await
                    .map_err(|e| {
                        if e.status().is_not_found() {
                            container_missing(&self.settings)
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
                        StoreError::Unavailable("the container has no partition key path".into())
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
    async fn partition_key_path(&self) -> Result<String, StoreError> {
        self.container()
            .await
            .map(|c| c.pk_path.clone())
            .map_err(|e| self.name_the_setting(e))
    }

    async fn query(&self, spec: &QuerySpec) -> Result<QueryPage, StoreError> {
        self.query_page(spec)
            .await
            .map_err(|e| self.name_the_setting(e))
    }

    async fn upsert(&self, pk: &PkValue, id: &str, doc: &Value) -> Result<f64, StoreError> {
        self.upsert_versioned(pk, id, doc)
            .await
            .map(|w| w.request_charge)
            .map_err(|e| e.error)
    }

    async fn upsert_versioned(
        &self,
        pk: &PkValue,
        id: &str,
        doc: &Value,
    ) -> Result<Written, WriteError> {
        self.upsert_item(pk, id, doc)
            .await
            .map_err(|e| self.name_the_setting_of_write(e))
    }

    async fn delete(&self, pk: &PkValue, id: &str) -> Result<f64, WriteError> {
        self.delete_item(pk, id)
            .await
            .map_err(|e| self.name_the_setting_of_write(e))
    }
}

impl CosmosStore {
    async fn upsert_item(
        &self,
        pk: &PkValue,
        id: &str,
        doc: &Value,
    ) -> Result<Written, WriteError> {
        /// Only the version of the returned document (serde skips the rest unparsed).
        #[derive(serde::Deserialize)]
        struct Version {
            #[serde(rename = "_etag")]
            etag: Option<String>,
        }
        let container = &self.container().await?.client;
        let response = container
            .upsert_item(pk.to_cosmos()?, id, doc, None)
            .await
            .map_err(|e| write_error(&self.settings, &e, "upsert"))?;
        let request_charge = response
            .headers()
            .request_charge()
            .map_or(0.0, |c| c.value());
        // Cosmos DB sends the version as the `etag` header; the local test server only in the
        // returned document. A version we cannot read costs one extra invalidation later.
        let version = match response.headers().etag() {
            Some(etag) => Some(normalize_etag(etag.as_ref()).to_string()),
            None => response
                .into_model::<Version>()
                .ok()
                .and_then(|v| v.etag)
                .map(|e| normalize_etag(&e).to_string()),
        }
        .filter(|v| !v.is_empty());
        Ok(Written {
            request_charge,
            version,
        })
    }

    async fn delete_item(&self, pk: &PkValue, id: &str) -> Result<f64, WriteError> {
        let container = &self.container().await?.client;
        let response = container
            .delete_item(pk.to_cosmos()?, id, None)
            .await
            .map_err(|e| {
                if e.status().is_not_found() && e.is_from_wire() {
                    WriteError {
                        error: StoreError::NotFound(format!(
                            "no document with id {id:?} in that partition"
                        )),
                        // An earlier attempt that timed out may have deleted it.
                        maybe_applied: super::applied::may_have_been_applied(&e),
                    }
                } else {
                    write_error(&self.settings, &e, "delete")
                }
            })?;
        Ok(response
            .headers()
            .request_charge()
            .map_or(0.0, |c| c.value()))
    }
}
