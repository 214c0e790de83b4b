//! Creating the database and the container, for `handler seed` and the tests (the handler
//! itself never creates resources).

use super::StoreError;
use super::cosmos::CosmosStore;
use super::failure::map_error;
use crate::config::names;

impl CosmosStore {
    /// Creates the database and the container (partition key `pk_path`) when missing. For the
    /// seeding command and tests; the handler itself never creates resources.
    ///
    /// With Entra ID, nothing can be created: Cosmos DB's data-plane roles do not cover
    /// databases and containers (those are control-plane operations, for Azure Resource
    /// Manager: portal, `az`, Bicep). The container must exist already; this checks that it
    /// does and says how to create it when it does not.
    ///
    /// # Errors
    /// `Unavailable` when Cosmos cannot be reached or refuses, or (Entra ID) the container is
    /// missing.
    pub async fn ensure_container(&self, pk_path: &str) -> Result<(), StoreError> {
        use azure_data_cosmos::models::ContainerProperties;
        if self.uses_entra_id() {
            return match self.container().await {
                Ok(_) => Ok(()),
                Err(StoreError::Unavailable(m)) if m.contains("does not exist") => {
                    Err(StoreError::Unavailable(format!(
                        "{m}, and Microsoft Entra ID tokens cannot create databases or \
                         containers ({} uses the data plane only). Create them with the \
                         control plane first, e.g. `az cosmosdb sql database create -a <account> \
                         -g <group> -n {db}` and `az cosmosdb sql container create -a <account> \
                         -g <group> -d {db} -n {container} -p {pk_path}`, or seed once with a key \
                         (COSMOS_CONNECTION_STRING) where the account allows keys",
                        names::COSMOS_IDENTITY_ENDPOINT,
                        db = self.settings.database,
                        container = self.settings.container,
                    )))
                }
                Err(e) => Err(self.name_the_setting(e)),
            };
        }
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
