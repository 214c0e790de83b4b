//! A real `redis-server` that authenticates like Azure's Entra ID-enabled caches: the ACL user
//! named after the identity's object id has the currently valid tokens as its passwords, the
//! `default` user is off, and a connection still authenticated with an expired token is
//! closed (Azure closes such connections; Redis itself would keep them).
//!
//! - The token rotation hooks into the local managed-identity endpoint
//!   ([`crate::identity::IdentityEndpoint::set_issue_hook`]): each Redis token is added
//!   (`ACL SETUSER <id> >token`) before the endpoint hands it out, and removed
//!   (`ACL SETUSER <id> <token`) when it expires; older tokens stay valid until their expiry.
//! - Per-connection tracking needs to know which token each connection last authenticated
//!   with, which Redis does not tell (`CLIENT LIST` has no such field), so clients connect
//!   through a small loopback proxy that reads the RESP commands they send (`AUTH user pass`,
//!   `HELLO 3 AUTH user pass`), forwards every byte unchanged, and closes a connection the
//!   moment the token it last authenticated with expires.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::identity::{IdentityEndpoint, Issued};
use crate::redis_server::RedisServer;

/// The resource of Redis tokens (the scope without `/.default`).
pub const REDIS_RESOURCE: &str = "https://redis.azure.com";

/// What the proxy saw on one client connection.
#[derive(Debug, Clone)]
pub struct ConnRecord {
    /// When the client connected.
    pub opened: Instant,
    /// When it sent each accepted `AUTH` (the first one opens the session).
    pub auths: Vec<Instant>,
    /// Expiry of the token it last authenticated with.
    pub token_expiry: Option<SystemTime>,
    /// When the connection ended, if it did.
    pub closed: Option<Instant>,
    /// Closed by the proxy because its token expired.
    pub killed_expired: bool,
}

type TrackedConn = (ConnRecord, Option<watch::Sender<bool>>);

/// A parsed command: the bytes it took and its arguments.
type Parsed = (usize, Vec<Vec<u8>>);

#[derive(Default)]
struct Tracker {
    tokens: Mutex<HashMap<String, SystemTime>>,
    /// Each connection's record and the switch that closes it.
    conns: Mutex<HashMap<u64, TrackedConn>>,
    next_id: AtomicU64,
    expired_kills: AtomicU64,
    /// While `Some`, new tokens are held back here instead of reaching the ACL (so a client's
    /// re-AUTH with them fails).
    held: Mutex<Option<Vec<Issued>>>,
}

/// Adds `token` to `principal`'s ACL passwords on the server behind `admin` (as Azure accepts
/// a newly issued Entra ID token).
pub async fn allow_token(
    admin: &mut redis::aio::MultiplexedConnection,
    principal: &str,
    token: &str,
) {
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(principal)
        .arg(format!(">{token}"))
        .query_async::<()>(admin)
        .await
        .expect("ACL SETUSER >token");
}

async fn add_token(
    tracker: &Tracker,
    principal: &str,
    admin: &mut redis::aio::MultiplexedConnection,
    issued: Issued,
) {
    allow_token(admin, principal, &issued.token).await;
    tracker
        .tokens
        .lock()
        .expect("lock")
        .insert(issued.token, issued.expires_at);
}

/// The server, its rotation and its proxy. Stops when dropped.
pub struct EntraRedis {
    /// The real server (its `default` user is off: use [`EntraRedis::admin`]).
    pub server: RedisServer,
    /// The ACL user, the identity's object id.
    pub principal: String,
    /// Port of the tracking proxy: what the handler connects to.
    pub proxy_port: u16,
    admin_password: String,
    admin_async: redis::aio::MultiplexedConnection,
    tracker: Arc<Tracker>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for EntraRedis {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl EntraRedis {
    /// Starts `redis-server`, creates the user `principal` (no password until a token is
    /// issued) and an admin user for the test, turns `default` off, and rotates the user's
    /// passwords with the tokens `endpoint` issues for Redis.
    pub async fn start(endpoint: &IdentityEndpoint, principal: &str) -> Self {
        let server = RedisServer::start();
        let admin_password = format!("admin-{:016x}", rand::random::<u64>());
        {
            let mut c = server.connection();
            let mut acl = |args: &[&str]| {
                redis::cmd("ACL")
                    .arg("SETUSER")
                    .arg(args)
                    .query::<()>(&mut c)
                    .unwrap_or_else(|e| panic!("ACL SETUSER {:?}: {e}", args.first()));
            };
            acl(&[
                "rig",
                "on",
                &format!(">{admin_password}"),
                "~*",
                "&*",
                "+@all",
            ]);
            acl(&[principal, "on", "resetpass", "~*", "&*", "+@all"]);
            acl(&["default", "off"]);
        }
        let tracker = Arc::new(Tracker::default());
        let admin_url = format!("redis://rig:{admin_password}@127.0.0.1:{}", server.port);
        let admin = redis::Client::open(admin_url.as_str())
            .expect("admin client")
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection");
        // Add each Redis token before the endpoint hands it out.
        {
            let tracker = tracker.clone();
            let principal = principal.to_string();
            let admin = admin.clone();
            endpoint.set_issue_hook(Arc::new(move |issued: Issued| {
                let tracker = tracker.clone();
                let principal = principal.clone();
                let mut admin = admin.clone();
                Box::pin(async move {
                    if issued.resource != REDIS_RESOURCE {
                        return;
                    }
                    if let Some(held) = tracker.held.lock().expect("lock").as_mut() {
                        held.push(issued);
                        return;
                    }
                    add_token(&tracker, &principal, &mut admin, issued).await;
                })
            }));
        }
        let expiry = tokio::spawn(expire_loop(
            tracker.clone(),
            principal.to_string(),
            admin.clone(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy_port = listener.local_addr().expect("addr").port();
        let proxy = tokio::spawn(proxy_loop(
            listener,
            server.port,
            tracker.clone(),
            principal.to_string(),
        ));
        Self {
            server,
            principal: principal.to_string(),
            proxy_port,
            admin_password,
            admin_async: admin,
            tracker,
            tasks: vec![expiry, proxy],
        }
    }

    /// A connection as the admin user (for `CLIENT LIST`, keys, `INFO`).
    pub fn admin(&self) -> redis::Connection {
        redis::Client::open(format!(
            "redis://rig:{}@127.0.0.1:{}",
            self.admin_password, self.server.port
        ))
        .and_then(|c| c.get_connection())
        .expect("admin connection")
    }

    /// `CLIENT LIST` lines of the identity's user.
    pub fn identity_clients(&self) -> Vec<String> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut self.admin())
            .expect("CLIENT LIST");
        list.lines()
            .filter(|l| l.contains(&format!(" user={} ", self.principal)))
            .map(str::to_string)
            .collect()
    }

    /// Holds back new tokens from the ACL (a client's re-AUTH with them fails) until
    /// [`EntraRedis::release_tokens`].
    pub fn hold_tokens(&self) {
        *self.tracker.held.lock().expect("lock") = Some(Vec::new());
    }

    /// Adds the held-back tokens (those still valid) to the ACL and stops holding.
    pub async fn release_tokens(&self) {
        let held = self
            .tracker
            .held
            .lock()
            .expect("lock")
            .take()
            .unwrap_or_default();
        let mut admin = self.admin_async.clone();
        for issued in held.into_iter().filter(Issued::is_valid) {
            add_token(&self.tracker, &self.principal, &mut admin, issued).await;
        }
    }

    /// Connections closed because their token expired.
    pub fn expired_kills(&self) -> u64 {
        self.tracker.expired_kills.load(Ordering::Relaxed)
    }

    /// Every connection the proxy has seen.
    pub fn connections(&self) -> Vec<ConnRecord> {
        self.tracker
            .conns
            .lock()
            .expect("lock")
            .values()
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Redis tokens currently valid (accepted as passwords).
    pub fn valid_tokens(&self) -> usize {
        self.tracker.tokens.lock().expect("lock").len()
    }
}

/// Every 20 ms: drops expired tokens from the ACL and closes connections whose token expired.
async fn expire_loop(
    tracker: Arc<Tracker>,
    principal: String,
    mut admin: redis::aio::MultiplexedConnection,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let now = SystemTime::now();
        let expired: Vec<String> = {
            let mut tokens = tracker.tokens.lock().expect("lock");
            let gone: Vec<String> = tokens
                .iter()
                .filter(|(_, e)| **e <= now)
                .map(|(t, _)| t.clone())
                .collect();
            for t in &gone {
                tokens.remove(t);
            }
            gone
        };
        for token in expired {
            let _ = redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&principal)
                .arg(format!("<{token}"))
                .query_async::<()>(&mut admin)
                .await;
        }
        let mut conns = tracker.conns.lock().expect("lock");
        for (record, kill) in conns.values_mut() {
            if record.closed.is_none()
                && record.token_expiry.is_some_and(|e| e <= now)
                && let Some(kill) = kill.take()
            {
                record.killed_expired = true;
                record.closed = Some(Instant::now());
                tracker.expired_kills.fetch_add(1, Ordering::Relaxed);
                let _ = kill.send(true);
            }
        }
    }
}

async fn proxy_loop(
    listener: TcpListener,
    upstream: u16,
    tracker: Arc<Tracker>,
    principal: String,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
            continue;
        };
        let id = tracker.next_id.fetch_add(1, Ordering::Relaxed);
        let (kill_tx, mut kill_rx) = watch::channel(false);
        tracker.conns.lock().expect("lock").insert(
            id,
            (
                ConnRecord {
                    opened: Instant::now(),
                    auths: Vec::new(),
                    token_expiry: None,
                    closed: None,
                    killed_expired: false,
                },
                Some(kill_tx),
            ),
        );
        let tracker = tracker.clone();
        let principal = principal.clone();
        tokio::spawn(async move {
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let upward = async {
                let mut chunk = vec![0u8; 16 * 1024];
                let mut pending: Vec<u8> = Vec::new();
                let mut parsing = true;
                loop {
                    let n = match client_read.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if parsing {
                        pending.extend_from_slice(&chunk[..n]);
                        loop {
                            match parse_command(&pending) {
                                Ok(Some((used, args))) => {
                                    note_auth(&tracker, id, &principal, &args);
                                    pending.drain(..used);
                                }
                                Ok(None) => break,
                                Err(()) => {
                                    parsing = false;
                                    pending.clear();
                                    break;
                                }
                            }
                        }
                    }
                    if server_write.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                }
            };
            let downward = async {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            };
            tokio::select! {
                () = upward => {}
                () = downward => {}
                _ = kill_rx.wait_for(|k| *k) => {}
            }
            if let Some((record, _)) = tracker.conns.lock().expect("lock").get_mut(&id)
                && record.closed.is_none()
            {
                record.closed = Some(Instant::now());
            }
        });
    }
}

/// Records an `AUTH <principal> <token>` (or `HELLO .. AUTH <principal> <token>`) whose token
/// is valid: the server accepts exactly those (a failed AUTH leaves the session as it was).
fn note_auth(tracker: &Tracker, id: u64, principal: &str, args: &[Vec<u8>]) {
    let upper = |i: usize| {
        args.get(i)
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
    };
    let (user, pass) = match upper(0).as_deref() {
        Some("AUTH") if args.len() == 3 => (&args[1], &args[2]),
        Some("HELLO") => match (2..args.len()).find(|&i| upper(i).as_deref() == Some("AUTH")) {
            Some(i) if i + 2 < args.len() => (&args[i + 1], &args[i + 2]),
            _ => return,
        },
        _ => return,
    };
    if user.as_slice() != principal.as_bytes() {
        return;
    }
    let token = String::from_utf8_lossy(pass).into_owned();
    let Some(expiry) = tracker.tokens.lock().expect("lock").get(&token).copied() else {
        return;
    };
    if let Some((record, _)) = tracker.conns.lock().expect("lock").get_mut(&id) {
        record.auths.push(Instant::now());
        record.token_expiry = Some(expiry);
    }
}

/// One RESP array of bulk strings (what clients send) from the start of `buf`: the bytes it
/// takes and its elements; `Ok(None)` when incomplete; `Err` for anything else (inline
/// commands: tracking stops, forwarding goes on).
fn parse_command(buf: &[u8]) -> Result<Option<Parsed>, ()> {
    fn line(buf: &[u8], from: usize) -> Option<(usize, &[u8])> {
        let end = buf[from..].windows(2).position(|w| w == b"\r\n")? + from;
        Some((end + 2, &buf[from..end]))
    }
    let number = |b: &[u8]| -> Result<usize, ()> {
        std::str::from_utf8(b)
            .map_err(|_| ())?
            .parse()
            .map_err(|_| ())
    };
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return Err(());
    }
    let Some((mut pos, head)) = line(buf, 1) else {
        return Ok(None);
    };
    let count = number(head)?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return Err(());
        }
        let Some((start, len)) = line(buf, pos + 1) else {
            return Ok(None);
        };
        let len = number(len)?;
        if start + len + 2 > buf.len() {
            return Ok(None);
        }
        args.push(buf[start..start + len].to_vec());
        pos = start + len + 2;
    }
    Ok(Some((pos, args)))
}
