//! The connection itself: one auto-reconnecting `ConnectionManager` to a single endpoint, or
//! the redis crate's async cluster client, behind one `ConnectionLike` type, and how to
//! (re)create it. The guard around it (timeout, breaker) is `guard.rs`.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::entra::EntraCredentials;

/// One shared, auto-reconnecting connection: to a single Redis endpoint, or to a Redis Cluster
/// (OSS cluster protocol: Azure Managed Redis with the OSS clustering policy, Premium clustered
/// caches). Both speak every command the cache sends; keys of one container share a hash tag,
/// so its scripts touch a single slot.
#[derive(Clone)]
pub enum RedisConn {
    /// `redis::aio::ConnectionManager`.
    Single(ConnectionManager),
    /// `redis::cluster_async::ClusterConnection`.
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// How to (re)create the connection.
pub(super) enum Connector {
    /// One endpoint, with the Entra ID credentials its connections open with.
    Single(Box<redis::Client>, Option<EntraCredentials>),
    /// A cluster, from its seed node.
    Cluster(Box<ClusterClient>),
}

/// A new lazily connecting connection: nothing is contacted until the first command.
pub(super) fn connect(connector: &Connector, timeout: Duration) -> Result<RedisConn, String> {
    match connector {
        Connector::Single(client, entra) => {
            let mut config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            if let Some(credentials) = entra {
                config = config.set_credentials_provider(credentials.clone());
            }
            ConnectionManager::new_lazy_with_config(redis::Client::clone(client), config)
                .map(RedisConn::Single)
                .map_err(|e| format!("cannot create the Redis connection manager: {:?}", e.kind()))
        }
        Connector::Cluster(client) => {
            let config = ClusterConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout);
            Ok(RedisConn::Cluster(
                client.get_pending_async_connection_with_config(config),
            ))
        }
    }
}
