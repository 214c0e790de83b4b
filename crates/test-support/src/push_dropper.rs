//! A Redis proxy that answers every command but swallows RESP3 push frames (`>`): a stand-in
//! for a server or middlebox that accepts `CLIENT TRACKING` yet never delivers an invalidation.
//! Client-to-server bytes pass verbatim; server-to-client bytes are cut into top-level RESP3
//! frames (<https://github.com/redis/redis-specification/blob/master/protocol/RESP3.md>) and
//! every push frame is dropped.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy on 127.0.0.1. Stops when dropped.
pub struct PushDropper {
    /// The proxy's own port.
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl PushDropper {
    /// Starts a proxy to the Redis at `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, upstream));
            }
        });
        Self { port, task }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PushDropper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while let Ok(n) = server_read.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(len) = frame_len(&buf[at..]) {
            if buf[at] != b'>' {
                out.extend_from_slice(&buf[at..at + len]);
            }
            at += len;
        }
        buf.drain(..at);
        if !out.is_empty() && client_write.write_all(&out).await.is_err() {
            break;
        }
    }
    up.abort();
}

/// The length of the complete RESP3 frame at the start of `buf`, or `None` if it is not all
/// there yet.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let header = std::str::from_utf8(&buf[1..line_end]).ok()?;
    let after = line_end + 2;
    match *buf.first()? {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Some(after),
        b'$' | b'!' | b'=' => {
            let len: i64 = header.parse().ok()?;
            if len < 0 {
                return Some(after);
            }
            let end = after + len as usize + 2;
            (buf.len() >= end).then_some(end)
        }
        kind @ (b'*' | b'~' | b'>' | b'%' | b'|') => {
            let count: i64 = header.parse().ok()?;
            let elements = if kind == b'%' || kind == b'|' {
                count * 2
            } else {
                count
            };
            let mut at = after;
            for _ in 0..elements.max(0) {
                at += frame_len(&buf[at..])?;
            }
            // An attribute precedes the value it describes.
            if kind == b'|' {
                at += frame_len(&buf[at..])?;
            }
            Some(at)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::frame_len;

    #[test]
    fn frames_are_cut_whole() {
        let three = b">3\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nabc\r\n_\r\n";
        assert_eq!(frame_len(three), Some(three.len()));
        assert_eq!(frame_len(b">2\r\n$10\r\ninvalid"), None);
        let push = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nabc\r\n+OK\r\n";
        assert_eq!(frame_len(push), Some(push.len() - 5));
        assert_eq!(frame_len(b"%1\r\n+a\r\n:1\r\n"), Some(12));
        assert_eq!(frame_len(b"$5\r\nhel"), None);
        assert_eq!(frame_len(b"$-1\r\n"), Some(5));
    }
}
