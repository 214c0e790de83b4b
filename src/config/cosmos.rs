//! The Cosmos DB account: endpoint and key (or the portal's connection string, or Microsoft
//! Entra ID through `CosmosDB__accountEndpoint`), database and container, and the scope that
//! names them.

use super::identity::{CredentialKind, cosmos_identity_from};
use super::{ConfigError, Secret, names};

/// How the handler authenticates to Cosmos DB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CosmosAuth {
    /// Account key (base64 text): `COSMOS_CONNECTION_STRING` or `COSMOS_KEY`.
    Key(Secret),
    /// Microsoft Entra ID tokens from this credential (`CosmosDB__accountEndpoint`). Needs a
    /// data-plane role assignment; cannot create databases or containers.
    Identity(CredentialKind),
}

/// Where and how to reach the Cosmos DB account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosmosSettings {
    /// Account endpoint, e.g. `https://<account>.documents.azure.com:443/`.
    pub endpoint: String,
    /// The account key, or the Entra ID credential.
    pub auth: CosmosAuth,
    /// Database name.
    pub database: String,
    /// Container name.
    pub container: String,
}

impl CosmosSettings {
    /// `<account host[:port]>/<database>/<container>`, host lower-cased: what identifies the
    /// container across deployments. Cache keys and continuation tokens are scoped by it, so
    /// two Cosmos accounts with the same database and container names never share cache
    /// entries, even in one Redis database. (The endpoint was checked to be a URL with a host at
    /// load time; an endpoint that somehow is not falls back to its text.)
    pub fn scope(&self) -> String {
        let account = url::Url::parse(&self.endpoint)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_ascii_lowercase();
                Some(match u.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| self.endpoint.clone());
        format!("{account}/{}/{}", self.database, self.container)
    }
}

/// Reads only the Cosmos settings (the seeding command needs no Redis), with the start-up
/// notices about them (see [`super::Settings::notices`]).
///
/// # Errors
/// [`ConfigError`] naming the first missing or malformed variable.
pub fn cosmos_from_env() -> Result<(CosmosSettings, Vec<String>), ConfigError> {
    let mut notices = Vec::new();
    let settings = cosmos_from(
        &|name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty()),
        &mut notices,
    )?;
    Ok((settings, notices))
}

pub(super) fn cosmos_from(
    get: &dyn Fn(&str) -> Option<String>,
    notices: &mut Vec<String>,
) -> Result<CosmosSettings, ConfigError> {
    if let Some((endpoint, credential)) = cosmos_identity_from(get)? {
        check_endpoint(&endpoint)
            .map_err(|p| ConfigError::new(names::COSMOS_IDENTITY_ENDPOINT, p))?;
        let ignored: Vec<&str> = [
            names::COSMOS_CONNECTION_STRING,
            names::COSMOS_ENDPOINT,
            names::COSMOS_KEY,
        ]
        .into_iter()
        .filter(|n| get(n).is_some())
        .collect();
        if !ignored.is_empty() {
            notices.push(format!(
                "both {} and {} are set: Cosmos DB uses Microsoft Entra ID ({}); {} ignored",
                names::COSMOS_IDENTITY_ENDPOINT,
                ignored.join(", "),
                credential.describe(),
                if ignored.len() == 1 {
                    "it is"
                } else {
                    "they are"
                },
            ));
        }
        let (database, container) = database_and_container(get)?;
        return Ok(CosmosSettings {
            endpoint,
            auth: CosmosAuth::Identity(credential),
            database,
            container,
        });
    }
    let (endpoint, key) = match get(names::COSMOS_CONNECTION_STRING) {
        Some(cs) => parse_cosmos_connection_string(&cs)
            .map_err(|p| ConfigError::new(names::COSMOS_CONNECTION_STRING, p))?,
        None => {
            let endpoint = get(names::COSMOS_ENDPOINT).ok_or_else(|| {
                ConfigError::new(
                    names::COSMOS_ENDPOINT,
                    "is not set (set COSMOS_CONNECTION_STRING, or COSMOS_ENDPOINT and COSMOS_KEY, \
                     or CosmosDB__accountEndpoint for Microsoft Entra ID)",
                )
            })?;
            let key = get(names::COSMOS_KEY)
                .ok_or_else(|| ConfigError::new(names::COSMOS_KEY, "is not set"))?;
            (endpoint, Secret::new(key))
        }
    };
    let from_connection_string = get(names::COSMOS_CONNECTION_STRING).is_some();
    let (endpoint_setting, key_setting) = if from_connection_string {
        (
            names::COSMOS_CONNECTION_STRING,
            names::COSMOS_CONNECTION_STRING,
        )
    } else {
        (names::COSMOS_ENDPOINT, names::COSMOS_KEY)
    };
    check_endpoint(&endpoint).map_err(|p| ConfigError::new(endpoint_setting, p))?;
    check_key(&key).map_err(|p| ConfigError::new(key_setting, p))?;
    let (database, container) = database_and_container(get)?;
    Ok(CosmosSettings {
        endpoint,
        auth: CosmosAuth::Key(key),
        database,
        container,
    })
}

fn database_and_container(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, String), ConfigError> {
    let database = get(names::COSMOS_DATABASE)
        .ok_or_else(|| ConfigError::new(names::COSMOS_DATABASE, "is not set"))?;
    let container = get(names::COSMOS_CONTAINER)
        .ok_or_else(|| ConfigError::new(names::COSMOS_CONTAINER, "is not set"))?;
    Ok((database, container))
}

/// The endpoint must be an `https://` URL (or `http://` for a local emulator) with a host and
/// no credentials in it (the SDK logs the endpoint).
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let url = url::Url::parse(endpoint)
        .map_err(|_| "the account endpoint is not a valid URL".to_string())?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(
            "the account endpoint must start with https:// (or http:// for a local emulator)"
                .into(),
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the account endpoint has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the account endpoint must not contain credentials".into());
    }
    Ok(())
}

/// Cosmos account keys are base64 (the portal shows 88 characters).
fn check_key(key: &Secret) -> Result<(), String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(key.secret().trim())
        .map(|_| ())
        .map_err(|_| "the account key is not base64".to_string())
}

/// Parses a Cosmos DB connection string as the Azure portal shows it
/// ("PRIMARY CONNECTION STRING"): `AccountEndpoint=https://x.documents.azure.com:443/;AccountKey=abc==;`.
/// Keys are case-insensitive; values may contain `=` (base64 padding); unknown keys are ignored.
///
/// # Errors
/// A description of the problem that never includes the key.
pub fn parse_cosmos_connection_string(s: &str) -> Result<(String, Secret), String> {
    let mut endpoint = None;
    let mut key = None;
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err("is not of the form AccountEndpoint=...;AccountKey=...;".into());
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "accountendpoint" => endpoint = Some(v.trim().to_string()),
            "accountkey" => key = Some(Secret::new(v.trim().to_string())),
            _ => {}
        }
    }
    match (endpoint, key) {
        (Some(e), Some(k)) if !e.is_empty() && !k.secret().is_empty() => Ok((e, k)),
        (None, _) | (Some(_), None) if s.is_empty() => Err("is empty".into()),
        (e, _) if e.as_deref().is_none_or(str::is_empty) => Err("has no AccountEndpoint".into()),
        _ => Err("has no AccountKey".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosmos_scope_names_the_account() {
        let settings = |endpoint: &str| CosmosSettings {
            endpoint: endpoint.into(),
            auth: CosmosAuth::Key(Secret::new("k")),
            database: "db".into(),
            container: "c".into(),
        };
        assert_eq!(
            settings("https://Prod.documents.azure.com:443/").scope(),
            "prod.documents.azure.com/db/c"
        );
        assert_eq!(
            settings("http://127.0.0.1:8081/").scope(),
            "127.0.0.1:8081/db/c"
        );
        assert_ne!(
            settings("https://prod.documents.azure.com:443/").scope(),
            settings("https://staging.documents.azure.com:443/").scope()
        );
    }
}
