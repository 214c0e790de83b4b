//! A TCP chaos proxy in front of a real server (as crates.io does for its database): it passes
//! bytes through, or delays them (a slow path), or cuts every connection (an idle close, as
//! Azure Cache for Redis does after 10 idle minutes), or turns into a black hole (connections
//! open, nothing answers). It can also switch its upstream while clients keep using its
//! address, as Azure's endpoint does when a replica is promoted
//! ([`ChaosProxy::switch_upstream`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Forward both ways.
    Pass,
    /// Accept and read, never forward nor answer.
    BlackHole,
    /// Close every new connection at once, like a server that is down.
    Refuse,
    /// Forward the client's bytes; read the server's and drop them: an answer lost on the way
    /// back, after the server acted on the request.
    DropAnswers,
    /// Forward both ways, every chunk this long after it arrived (order kept): a slow path,
    /// such as a congested link or a far region.
    Delay(Duration),
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
    client: TcpStream,
    upstream: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    mut cut: watch::Receiver<u64>,
) {
    if now(&behaviour) == Behaviour::Refuse {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (from_client, to_client) = client.into_split();
    let (from_server, to_server) = server.into_split();
    // Either direction ending (a close, an error) closes both, as a proxy that lost one side
    // does; so does a cut. Dropping the halves closes the sockets.
    tokio::select! {
        _ = cut.changed() => {}
        () = pump(from_client, to_server, behaviour.clone(), Direction::ToServer) => {}
        () = pump(from_server, to_client, behaviour, Direction::ToClient) => {}
    }
}

fn now(behaviour: &Mutex<Behaviour>) -> Behaviour {
    *behaviour.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the server's side of open connections is read under `behaviour` (in a black hole
/// its bytes wait in the socket).
fn forwards(behaviour: Behaviour) -> bool {
    matches!(
        behaviour,
        Behaviour::Pass | Behaviour::Delay(_) | Behaviour::DropAnswers
    )
}

/// Which way a [`pump`] moves bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

/// Moves bytes one way. The behaviour is read when a chunk arrives: passed at once, delayed
/// (a queue of chunks with their due time, written in arrival order by one writer, so a delay
/// is latency, not a throughput cap, and order is kept when the delay changes), or dropped in
/// a black hole. While a black hole is open the server is not read at all (its bytes wait in
/// the socket), the client is read and its bytes dropped, as a network that loses them would.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    behaviour: Arc<Mutex<Behaviour>>,
    direction: Direction,
) {
    let (queue, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if direction == Direction::ToClient && !forwards(now(&behaviour)) {
                // Re-check now and then, so the black hole can close again.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Checked when the bytes arrive: a read that was waiting when the black hole
            // opened must not forward what it got.
            let at = match now(&behaviour) {
                Behaviour::Pass => Instant::now(),
                Behaviour::DropAnswers if direction == Direction::ToClient => continue,
                Behaviour::DropAnswers => Instant::now(),
                Behaviour::Delay(by) => Instant::now() + by,
                // `Refuse` only turns new connections away: open ones go silent.
                Behaviour::BlackHole | Behaviour::Refuse => continue,
            };
            if queue.send((at, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    let write = async move {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at.into()).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    // The read side ending drops the queue: what is due is still written, then the writer ends.
    tokio::join!(read, write);
}
