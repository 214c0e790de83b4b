//! Which node the tracking connection goes to. With one endpoint, that endpoint. In a cluster
//! (`REDIS_CLUSTER=true`), the primary that owns the container's slot: with `BCAST`, a node
//! pushes invalidations only for the keys *it* holds, so tracking on any other node would hear
//! nothing. The generation key and every page of a container share one hash tag, hence one
//! slot and one owner.
//!
//! The owner is found the way the cluster protocol tells a client: ask the configured node
//! about the generation key and follow `MOVED <slot> <host>:<port>`
//! (<https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#moved-redirection>).
//! After a failover or a resharding the old owner answers the heartbeat (`EXISTS <gen key>`)
//! with `MOVED` too, which ends tracking there and starts it again on the new owner.

use redis::{ConnectionAddr, ConnectionInfo};

/// Redirects followed before giving up on one attempt (a slot in migration can bounce).
const MAX_REDIRECTS: usize = 3;

/// The client of the node that answers for `gen_key` without a redirect, found from `seed`
/// (each redirect target gets the seed's TLS settings and credentials). Probed on a plain
/// connection, so dropping it sends no disconnection to the tracking state.
///
/// # Errors
/// The probe's Redis error (I/O, refusal), or a `MOVED` whose address cannot be parsed, or
/// one that still redirects after [`MAX_REDIRECTS`] hops.
pub(super) async fn slot_owner(
    seed: &redis::Client,
    gen_key: &str,
    timeout: std::time::Duration,
) -> Result<redis::Client, redis::RedisError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut client = seed.clone();
    for _ in 0..=MAX_REDIRECTS {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let probe: Result<i64, redis::RedisError> = redis::cmd("EXISTS")
            .arg(gen_key)
            .query_async(&mut conn)
            .await;
        match probe {
            Ok(_) => return Ok(client),
            Err(e) => {
                let Some((addr, _slot)) = e.redirect_node() else {
                    return Err(e);
                };
                let info = redirected(client.get_connection_info(), addr).ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "unreadable MOVED address",
                        addr.to_string(),
                    ))
                })?;
                client = redis::Client::open(info)?;
            }
        }
    }
    Err(redis::RedisError::from((
        redis::ErrorKind::Client,
        "too many MOVED redirects for the generation key",
    )))
}

/// `from` pointed at `addr` (`host:port`; an empty host means "the host you asked", as the
/// cluster spec allows), keeping its TLS settings and credentials. `None` when `addr` has no
/// readable port or `from` is a Unix socket.
fn redirected(from: &ConnectionInfo, addr: &str) -> Option<ConnectionInfo> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let new_addr = match from.addr() {
        ConnectionAddr::Tcp(seed_host, _) => {
            ConnectionAddr::Tcp(pick(host, seed_host).to_string(), port)
        }
        ConnectionAddr::TcpTls {
            host: seed_host,
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: pick(host, seed_host).to_string(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => return None,
    };
    Some(from.clone().set_addr(new_addr))
}

fn pick<'a>(redirect_host: &'a str, seed_host: &'a str) -> &'a str {
    if redirect_host.is_empty() {
        seed_host
    } else {
        redirect_host
    }
}

#[cfg(test)]
mod tests {
    use redis::IntoConnectionInfo;

    use super::*;

    #[test]
    fn a_redirect_keeps_tls_and_credentials_and_fills_an_empty_host() {
        let seed = "rediss://user:secret@cache.example.net:10000"
            .into_connection_info()
            .expect("url");
        let moved = redirected(&seed, "10.0.0.7:8501").expect("redirect");
        match moved.addr() {
            ConnectionAddr::TcpTls { host, port, .. } => {
                assert_eq!((host.as_str(), *port), ("10.0.0.7", 8501));
            }
            other => panic!("lost TLS: {other:?}"),
        }
        assert_eq!(moved.redis_settings().username(), Some("user"));
        assert_eq!(moved.redis_settings().password(), Some("secret"));

        let plain = "redis://127.0.0.1:7000"
            .into_connection_info()
            .expect("url");
        let same_host = redirected(&plain, ":7002").expect("redirect");
        assert_eq!(
            same_host.addr(),
            &ConnectionAddr::Tcp("127.0.0.1".into(), 7002)
        );
        let v6 = redirected(&plain, "[::1]:7003").expect("redirect");
        assert_eq!(v6.addr(), &ConnectionAddr::Tcp("::1".into(), 7003));
        assert!(redirected(&plain, "no-port").is_none());
        assert!(redirected(&plain, "host:99999").is_none());
    }
}
