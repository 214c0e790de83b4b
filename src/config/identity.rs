//! Keyless settings: Microsoft Entra ID (managed identity, or a developer's Azure CLI login) for
//! Cosmos DB and Redis, in the Functions host's identity-based connection form
//! `<CONNECTION>__<property>` (<https://learn.microsoft.com/azure/azure-functions/functions-reference#configure-an-identity-based-connection>),
//! so one set of settings also serves a `cosmosDBTrigger` or the Redis extension later.
//!
//! - Cosmos (connection `CosmosDB`): `CosmosDB__accountEndpoint` alone (no key) means Entra ID;
//!   `CosmosDB__clientId` selects a user-assigned identity; `CosmosDB__credential` is
//!   `managedidentity` (as the host accepts it) or `azurecli`.
//! - Redis (connection `Redis`, as the Functions Redis extension documents it):
//!   `Redis__redisHostName` (`<name>.<region>.redis.azure.net`, default port 10000, or
//!   `<name>.redis.cache.windows.net`, default port 6380, or `host:port`), `Redis__principalId`
//!   (the identity's object id, which Redis expects as the user name), optional
//!   `Redis__clientId`, `Redis__credential`, and `Redis__ssl=false` to turn TLS off (local runs).
//!
//! Without `<CONNECTION>__credential`, the credential is the managed identity when the App
//! Service managed-identity endpoint is present (`IDENTITY_ENDPOINT`, set by Azure Functions and
//! App Service), and the Azure CLI login otherwise (local development after `az login`).

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use super::{ConfigError, names};

/// Which Entra ID credential obtains the tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// The App Service / Functions managed identity (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`),
    /// or the VM's (IMDS) where that endpoint is absent.
    ManagedIdentity {
        /// Client id of a user-assigned identity; `None` = the system-assigned identity.
        client_id: Option<String>,
    },
    /// The developer's `az login` (`az account get-access-token`), for local runs.
    AzureCli,
}

impl CredentialKind {
    /// A short description for start-up logs (a client id is not a secret).
    pub fn describe(&self) -> String {
        match self {
            Self::ManagedIdentity { client_id: None } => "system-assigned managed identity".into(),
            Self::ManagedIdentity {
                client_id: Some(id),
            } => {
                format!("user-assigned managed identity (client id {id})")
            }
            Self::AzureCli => "Azure CLI login (developer credential)".into(),
        }
    }
}

/// Redis with Entra ID: the ACL user and the credential whose tokens are its password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisIdentity {
    /// `Redis__principalId`: the identity's object (principal) id, Redis's user name.
    pub principal_id: String,
    /// Where the tokens come from.
    pub credential: CredentialKind,
}

/// The identity-based properties of one connection, read by name.
struct Connection<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Connection<'_> {
    fn value(&self, name: &str) -> Option<String> {
        (self.get)(name).map(|v| v.trim().to_string())
    }

    /// `<C>__credential` and `<C>__clientId` → the credential.
    fn credential(
        &self,
        credential_name: &'static str,
        client_id_name: &'static str,
    ) -> Result<CredentialKind, ConfigError> {
        let client_id = self.value(client_id_name);
        if let Some(id) = &client_id
            && !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(ConfigError::new(
                client_id_name,
                "must be the client id (a GUID) of a user-assigned managed identity",
            ));
        }
        let explicit = self.value(credential_name).map(|v| v.to_ascii_lowercase());
        match explicit.as_deref() {
            Some("managedidentity") => Ok(CredentialKind::ManagedIdentity { client_id }),
            Some("azurecli") if client_id.is_some() => Err(ConfigError::new(
                client_id_name,
                format!(
                    "selects a user-assigned managed identity, but {credential_name} is azurecli \
                     (the Azure CLI login has no client id): remove one of them"
                ),
            )),
            Some("azurecli") => Ok(CredentialKind::AzureCli),
            Some(_) => Err(ConfigError::new(
                credential_name,
                "must be managedidentity or azurecli",
            )),
            // Functions and App Service set IDENTITY_ENDPOINT; a laptop does not.
            None if client_id.is_some() || (self.get)(names::IDENTITY_ENDPOINT).is_some() => {
                Ok(CredentialKind::ManagedIdentity { client_id })
            }
            None => Ok(CredentialKind::AzureCli),
        }
    }
}

/// `CosmosDB__accountEndpoint` and its credential, or `None` when no `CosmosDB__*` setting is
/// present.
///
/// # Errors
/// [`ConfigError`] naming the setting: a credential or client id without an endpoint, an
/// unknown credential, a client id that is not one.
pub(super) fn cosmos_identity_from(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(String, CredentialKind)>, ConfigError> {
    let c = Connection { get };
    let Some(endpoint) = c.value(names::COSMOS_IDENTITY_ENDPOINT) else {
        for other in [
            names::COSMOS_IDENTITY_CLIENT_ID,
            names::COSMOS_IDENTITY_CREDENTIAL,
        ] {
            if c.value(other).is_some() {
                return Err(ConfigError::new(
                    names::COSMOS_IDENTITY_ENDPOINT,
                    format!(
                        "is not set, but {other} is (keyless Cosmos DB needs the account endpoint)"
                    ),
                ));
            }
        }
        return Ok(None);
    };
    let credential = c.credential(
        names::COSMOS_IDENTITY_CREDENTIAL,
        names::COSMOS_IDENTITY_CLIENT_ID,
    )?;
    Ok(Some((endpoint, credential)))
}

/// The Redis target from `Redis__redisHostName`/`Redis__principalId`/..., or `None` when no
/// `Redis__*` setting is present. The connection info carries the user name and no password:
/// the password is a token, supplied per connection.
///
/// # Errors
/// [`ConfigError`] naming the setting at fault.
pub(super) fn redis_identity_from(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(ConnectionInfo, String, bool, RedisIdentity)>, ConfigError> {
    let c = Connection { get };
    let Some(host_name) = c.value(names::REDIS_IDENTITY_HOST) else {
        for other in [
            names::REDIS_IDENTITY_PRINCIPAL,
            names::REDIS_IDENTITY_CLIENT_ID,
            names::REDIS_IDENTITY_CREDENTIAL,
            names::REDIS_IDENTITY_SSL,
        ] {
            if c.value(other).is_some() {
                return Err(ConfigError::new(
                    names::REDIS_IDENTITY_HOST,
                    format!("is not set, but {other} is (keyless Redis needs the host name)"),
                ));
            }
        }
        return Ok(None);
    };
    let principal_id = c.value(names::REDIS_IDENTITY_PRINCIPAL).ok_or_else(|| {
        ConfigError::new(
            names::REDIS_IDENTITY_PRINCIPAL,
            "is not set: keyless Redis needs the identity's object (principal) id, which Redis \
             uses as the user name of its data access policy assignment",
        )
    })?;
    if !principal_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ConfigError::new(
            names::REDIS_IDENTITY_PRINCIPAL,
            "must be the identity's object id (a GUID)",
        ));
    }
    let tls = match c
        .value(names::REDIS_IDENTITY_SSL)
        .map(|v| v.to_ascii_lowercase())
    {
        None => true,
        Some(v) if v == "true" => true,
        Some(v) if v == "false" => false,
        Some(_) => {
            return Err(ConfigError::new(
                names::REDIS_IDENTITY_SSL,
                "must be true or false",
            ));
        }
    };
    let (host, port) =
        parse_host_name(&host_name).map_err(|p| ConfigError::new(names::REDIS_IDENTITY_HOST, p))?;
    let credential = c.credential(
        names::REDIS_IDENTITY_CREDENTIAL,
        names::REDIS_IDENTITY_CLIENT_ID,
    )?;
    let addr = if tls {
        ConnectionAddr::TcpTls {
            host: host.clone(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.clone(), port)
    };
    let info = addr
        .into_connection_info()
        .map_err(|_| ConfigError::new(names::REDIS_IDENTITY_HOST, "is not a usable address"))?
        .set_redis_settings(RedisConnectionInfo::default().set_username(principal_id.clone()));
    Ok(Some((
        info,
        format!("{host}:{port}"),
        tls,
        RedisIdentity {
            principal_id,
            credential,
        },
    )))
}

/// `Redis__redisHostName`: a host name with an optional `:port`. Azure's two host forms have
/// known ports (Azure Managed Redis listens on 10000, Azure Cache for Redis on 6380 for TLS);
/// any other host must name its port.
fn parse_host_name(value: &str) -> Result<(String, u16), String> {
    let host_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if value.is_empty() || !value.chars().all(host_chars) {
        return Err(
            "must be a host name (<name>.<region>.redis.azure.net, <name>.redis.cache.windows.net) \
             or host:port, without a scheme or credentials"
                .into(),
        );
    }
    let (host, port) = match value.rsplit_once(':') {
        Some((h, p)) => (
            h,
            Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or("has an invalid port in host:port")?,
            ),
        ),
        None => (value, None),
    };
    if host.is_empty() || host.contains(':') {
        return Err("has an empty or invalid host".into());
    }
    let lower = host.to_ascii_lowercase();
    let port = match port {
        Some(p) => p,
        None if lower.ends_with(".redis.azure.net") => 10_000,
        None if lower.ends_with(".redis.cache.windows.net") => 6_380,
        None => {
            return Err(
                "names a host that is neither *.redis.azure.net nor *.redis.cache.windows.net: \
                 give its port as host:port"
                    .into(),
            );
        }
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_host_names_get_their_ports() {
        assert_eq!(
            parse_host_name("myc.westeurope.redis.azure.net"),
            Ok(("myc.westeurope.redis.azure.net".into(), 10_000))
        );
        assert_eq!(
            parse_host_name("myc.redis.cache.windows.net"),
            Ok(("myc.redis.cache.windows.net".into(), 6_380))
        );
        assert_eq!(
            parse_host_name("127.0.0.1:6379"),
            Ok(("127.0.0.1".into(), 6_379))
        );
        for bad in [
            "localhost",
            "rediss://myc.redis.azure.net",
            "u:p@h:1",
            "h:0",
            "h:x",
            ":6379",
            "",
        ] {
            assert!(parse_host_name(bad).is_err(), "{bad}");
        }
    }
}
