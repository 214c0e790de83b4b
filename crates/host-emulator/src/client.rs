//! The HTTP client towards the handler (hyper, one connection per request, no redirects).

use crate::request::{HandlerRequest, HandlerResponse};
use axum::body::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use std::convert::Infallible;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

#[derive(Debug)]
pub(crate) enum SendError {
    /// TCP connect failed (the host's SocketException).
    Connect(std::io::Error),
    /// Connected, but the HTTP exchange failed.
    Http(String),
    /// No complete response in time.
    Timeout,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect failed: {e}"),
            SendError::Http(e) => write!(f, "HTTP exchange failed: {e}"),
            SendError::Timeout => f.write_str("timed out"),
        }
    }
}

pub(crate) async fn send_to_handler(
    req: &HandlerRequest,
    timeout: Option<Duration>,
) -> Result<HandlerResponse, SendError> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, req.port))
            .await
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .title_case_headers(true)
            .handshake::<_, BoxBody<Bytes, Infallible>>(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let body: BoxBody<Bytes, Infallible> = if req.chunked {
            let frames =
                futures::stream::iter(vec![Ok::<_, Infallible>(Frame::data(req.body.clone()))]);
            BoxBody::new(StreamBody::new(frames))
        } else {
            BoxBody::new(Full::new(req.body.clone()))
        };
        let mut builder = hyper::Request::builder()
            .method(req.method.clone())
            .uri(req.path_and_query.as_str());
        if let Some(h) = builder.headers_mut() {
            h.extend(req.headers.clone());
        }
        let request = builder
            .body(body)
            .map_err(|e| SendError::Http(format!("invalid request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| SendError::Http(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| SendError::Http(format!("reading the response body: {e}")))?
            .to_bytes();
        let reason = parts
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
        Ok(HandlerResponse {
            status: parts.status,
            reason,
            headers: parts.headers,
            body,
        })
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, exchange)
            .await
            .unwrap_or(Err(SendError::Timeout)),
        None => exchange.await,
    }
}
