//! A TCP chaos proxy in front of a real server (as crates.io does for its database): it passes
//! bytes through, or cuts every connection (an idle close, as Azure Cache for Redis does after
//! 10 idle minutes), or turns into a black hole (connections open, nothing answers). It can
//! also switch its upstream while clients keep using its address, as Azure's endpoint does
//! when a replica is promoted ([`ChaosProxy::switch_upstream`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Forward both ways.
    Pass,
    /// Accept and read, never forward nor answer.
    BlackHole,
    /// Close every new connection at once, like a server that is down.
    Refuse,
}

/// A running proxy on 127.0.0.1. Stops when dropped.
pub struct ChaosProxy {
    /// The proxy's own port (clients connect here).
    pub port: u16,
    behaviour: Arc<Mutex<Behaviour>>,
    /// Where new connections go.
    upstream: Arc<Mutex<SocketAddr>>,
    /// Bumped to cut every open connection.
    cuts: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    /// Starts a proxy to `upstream` in [`Behaviour::Pass`].
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let behaviour = Arc::new(Mutex::new(Behaviour::Pass));
        let upstream = Arc::new(Mutex::new(upstream));
        let (cuts, _) = watch::channel(0u64);
        let task = {
            let behaviour = behaviour.clone();
            let upstream = upstream.clone();
            let cuts = cuts.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let behaviour = behaviour.clone();
                    let cut = cuts.subscribe();
                    let to = *upstream.lock().unwrap_or_else(|p| p.into_inner());
                    tokio::spawn(serve(client, to, behaviour, cut));
                }
            })
        };
        Self {
            port,
            behaviour,
            upstream,
            cuts,
            task,
        }
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Changes what the proxy does with bytes from now on (open connections included).
    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap_or_else(|p| p.into_inner()) = behaviour;
    }

    /// Sends new connections to `upstream` and closes every open one, so no client keeps
    /// talking to the old server (a failover behind one host name).
    pub fn switch_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = upstream;
        self.cut_all();
    }

    /// Closes every open connection, both sides.
    pub fn cut_all(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    mut cut: watch::Receiver<u64>,
) {
    if *behaviour.lock().unwrap_or_else(|p| p.into_inner()) == Behaviour::Refuse {
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let mut from_client = [0u8; 16 * 1024];
    let mut from_server = [0u8; 16 * 1024];
    // Checked again when bytes arrive: a read that was waiting when the black hole opened must
    // not forward what it got.
    let pass_now = || *behaviour.lock().unwrap_or_else(|p| p.into_inner()) == Behaviour::Pass;
    loop {
        let passing = pass_now();
        tokio::select! {
            _ = cut.changed() => return,
            read = client.read(&mut from_client) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if pass_now() && server.write_all(&from_client[..n]).await.is_err() {
                        return;
                    }
                }
            },
            read = server.read(&mut from_server), if passing => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if pass_now() && client.write_all(&from_server[..n]).await.is_err() {
                        return;
                    }
                }
            },
            // Re-check the behaviour now and then, so a black hole can open again.
            () = tokio::time::sleep(std::time::Duration::from_millis(20)), if !passing => {}
        }
    }
}
