//! Microsoft Entra ID tokens for keyless Cosmos DB and Redis.
//!
//! - this file: the credential a [`CredentialKind`] names (`azure_identity` 1.0:
//!   `ManagedIdentityCredential`, which reads `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` as Azure
//!   Functions on Linux provides them, or `AzureCliCredential` for local development) and the
//!   token scopes;
//! - `source.rs`: [`TokenSource`], one scope's token kept fresh by a background loop that
//!   never gives up, which both clients read (Cosmos through its `TokenCredential` impl, Redis
//!   through `crate::cache`'s credentials provider).

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_identity::{
    AzureCliCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
};

use crate::config::CredentialKind;

mod source;
mod token;

pub use source::{RefreshPolicy, Token, TokenSource};

/// The scope of Azure Cache for Redis and Azure Managed Redis tokens
/// (<https://learn.microsoft.com/azure/azure-cache-for-redis/cache-azure-active-directory-for-authentication>).
pub const REDIS_SCOPE: &str = "https://redis.azure.com/.default";

/// The scope `azure_data_cosmos_driver` 1.0.0 asks every credential for
/// (`driver/transport/authorization_policy.rs`, `COSMOS_AAD_SCOPE`).
pub const COSMOS_SCOPE: &str = "https://cosmos.azure.com/.default";

/// [`credential`] for `kind`, refreshed by a [`TokenSource`] for `scope` with the default
/// [`RefreshPolicy`]. Needs a Tokio runtime.
///
/// # Errors
/// As [`credential`], or outside a runtime.
pub fn start_source(
    label: &'static str,
    scope: &str,
    kind: &CredentialKind,
) -> Result<TokenSource, String> {
    TokenSource::start(label, scope, credential(kind)?, RefreshPolicy::default())
}

/// The `azure_identity` credential for `kind`.
///
/// Its own HTTP retries are off: [`TokenSource`] retries forever with backoff and jitter,
/// and a pipeline retrying inside one attempt would only hold that attempt up.
///
/// # Errors
/// The credential cannot be built (e.g. a managed identity where the platform offers none);
/// the text names the problem, never a secret.
pub fn credential(kind: &CredentialKind) -> Result<Arc<dyn TokenCredential>, String> {
    match kind {
        CredentialKind::ManagedIdentity { client_id } => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                client_options: azure_core::http::ClientOptions {
                    retry: azure_core::http::RetryOptions::none(),
                    ..Default::default()
                },
            };
            ManagedIdentityCredential::new(Some(options))
                .map(|c| c as Arc<dyn TokenCredential>)
                .map_err(|e| format!("managed identity unavailable: {e}"))
        }
        CredentialKind::AzureCli => AzureCliCredential::new(None)
            .map(|c| c as Arc<dyn TokenCredential>)
            .map_err(|e| format!("Azure CLI credential unavailable: {e}")),
    }
}
