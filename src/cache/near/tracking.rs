//! The near cache's tracking connection: RESP3, `CLIENT TRACKING ON BCAST PREFIX <gen key>` on
//! the node that holds the generation key (see `target.rs`), a heartbeat every
//! [`HEARTBEAT_INTERVAL`], and a fresh start after any failure (see the parent module for why
//! this keeps L1 correct).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo};

use super::{HEARTBEAT_BOUND, HEARTBEAT_INTERVAL, State, target};

/// Longest pause between two attempts to re-establish tracking.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);

/// Why tracking could not be started on a connection.
enum TrackError {
    /// The server refuses RESP3 or `CLIENT TRACKING` (too old, or an ACL forbids it).
    Unsupported(String),
    /// Anything else (unreachable, timeout): retried.
    Transient(String),
}

/// The tracking task: connect with RESP3, `CLIENT TRACKING ON BCAST PREFIX <gen key>`, then
/// ping every [`HEARTBEAT_INTERVAL`]; on any failure drop L1 and start again. Ends when the
/// cache is dropped or the server cannot track.
pub(super) async fn track(state: Weak<State>, client: redis::Client, gen_key: String) {
    let mut delay = Duration::from_millis(50);
    loop {
        let Some(s) = state.upgrade() else { return };
        match start_tracking(&s, &client, &gen_key).await {
            Ok(mut conn) => {
                delay = Duration::from_millis(50);
                s.stats.tracking_starts.fetch_add(1, Ordering::Relaxed);
                drop(s);
                heartbeat(&state, &mut conn, &gen_key).await;
                let Some(s) = state.upgrade() else { return };
                s.lose_tracking();
                s.stats.tracking_losses.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrackError::Unsupported(reason)) => {
                s.unsupported.store(true, Ordering::Release);
                tracing::warn!(%reason, "near cache off: this Redis cannot track the generation key (RESP3 CLIENT TRACKING)");
                return;
            }
            Err(TrackError::Transient(reason)) => {
                drop(s);
                tracing::debug!(%reason, "near cache: tracking not established; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RECONNECT_MAX_DELAY);
            }
        }
    }
}

/// One tracking connection to the generation key's node, with tracking on.
async fn start_tracking(
    s: &Arc<State>,
    seed: &redis::Client,
    gen_key: &str,
) -> Result<MultiplexedConnection, TrackError> {
    let client = target::slot_owner(seed, gen_key, HEARTBEAT_BOUND * 4)
        .await
        .map_err(|e| classify(&e))?;
    let weak = Arc::downgrade(s);
    let sender = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
        if let Some(s) = weak.upgrade() {
            s.on_push(&push);
        }
        Ok(())
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(HEARTBEAT_BOUND * 4))
        .set_response_timeout(Some(HEARTBEAT_BOUND))
        .set_push_sender(sender);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| classify(&e))?;
    let sent_ms = s.now_ms();
    let tracking: Result<(), redis::RedisError> = redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(gen_key)
        .query_async(&mut conn)
        .await;
    tracking.map_err(|e| classify(&e))?;
    probe_pushes(s, &mut conn, gen_key).await?;
    // Entries filled before tracking started may predate writes nobody told us about.
    s.epoch.fetch_add(1, Ordering::AcqRel);
    s.pages.clear();
    s.fresh_as_of_ms.store(sent_ms, Ordering::Release);
    Ok(conn)
}

/// Sends `EXISTS <gen key>` every [`HEARTBEAT_INTERVAL`] until one fails, times out or is
/// redirected, or the connection reports a disconnection. `EXISTS` rather than `PING`: in a
/// cluster, a node that no longer owns the slot (failover, resharding) answers it with
/// `MOVED`, which ends tracking there; ordered after earlier pushes just as a `PONG` is.
async fn heartbeat(state: &Weak<State>, conn: &mut MultiplexedConnection, gen_key: &str) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(s) = state.upgrade() else { return };
        tokio::select! {
            _ = tick.tick() => {}
            () = s.disconnected.notified() => return,
        }
        let sent_ms = s.now_ms();
        // `query_async`, not `req_packed_command`: the latter hands back a `MOVED` as a value.
        let ping = tokio::time::timeout(
            HEARTBEAT_BOUND,
            redis::cmd("EXISTS").arg(gen_key).query_async::<i64>(conn),
        )
        .await;
        match ping {
            Ok(Ok(_)) => {
                // Only move forward: a slow PONG must not overwrite a later one.
                s.fresh_as_of_ms.fetch_max(sent_ms, Ordering::AcqRel);
                if s.fresh_as_of_ms.load(Ordering::Acquire) == u64::MAX {
                    return;
                }
            }
            Ok(Err(e)) if e.redirect_node().is_some() => {
                tracing::info!("near cache: the generation key's slot moved; tracking follows it");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "near cache: tracking connection failed; L1 dropped");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    bound_ms = HEARTBEAT_BOUND.as_millis() as u64,
                    "near cache: tracking connection silent; L1 dropped"
                );
                return;
            }
        }
    }
}

fn classify(e: &redis::RedisError) -> TrackError {
    let text = e.to_string();
    // A refusal by the server that retrying will not change: an old server without HELLO 3,
    // an ACL without `CLIENT TRACKING`, a server that does not know the command. Any other
    // error (I/O, timeouts, `max number of clients reached`) may pass: retry.
    let refused = match e.kind() {
        redis::ErrorKind::RESP3NotSupported
        | redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => true,
        redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
            text.to_ascii_lowercase().contains("unknown")
        }
        _ => false,
    };
    if refused {
        TrackError::Unsupported(text)
    } else {
        TrackError::Transient(text)
    }
}

/// Checks that invalidation pushes actually arrive before L1 trusts them: writes a short-lived
/// probe key under the tracked prefix on the tracking connection itself (without `NOLOOP`, a
/// client is told of its own writes), then sends `EXISTS`, whose reply comes after that push.
/// A server or proxy that accepts `CLIENT TRACKING` but never delivers pushes (one that does
/// not forward RESP3 push frames, say) would otherwise pass every heartbeat while L1 went
/// stale; it is refused as unsupported instead. The probe key shares the generation key's hash
/// tag (same slot) and expires after 10 s; other instances drop their L1 once for it.
async fn probe_pushes(
    s: &Arc<State>,
    conn: &mut MultiplexedConnection,
    gen_key: &str,
) -> Result<(), TrackError> {
    let before = s.stats.pushes.load(Ordering::Acquire);
    let probe = format!("{gen_key}:probe");
    let set: Result<(), redis::RedisError> = redis::cmd("SET")
        .arg(&probe)
        .arg(rand::random::<u64>())
        .arg("PX")
        .arg(10_000)
        .query_async(conn)
        .await;
    set.map_err(|e| classify(&e))?;
    let barrier: Result<i64, redis::RedisError> =
        redis::cmd("EXISTS").arg(&probe).query_async(conn).await;
    barrier.map_err(|e| classify(&e))?;
    if s.stats.pushes.load(Ordering::Acquire) == before {
        return Err(TrackError::Unsupported(
            "CLIENT TRACKING was accepted, but no invalidation push arrived for a probe write"
                .into(),
        ));
    }
    Ok(())
}
