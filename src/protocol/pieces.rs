//! A response body sent as the pieces it was built from, without joining them into one buffer.
//!
//! Why: an invocation-payload answer is the page's escaped form (up to the near cache's page
//! size, 15–25 KB for a 100-row page) between a few hundred bytes of envelope. Joined, every
//! hit allocated and copied the page once more; as pieces, the escaped form the near cache
//! keeps is shared (a reference count), and hyper writes the pieces with one vectored write.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Data frames, in order, of an exactly known total length (so the response carries a
/// `Content-Length`, as a single-buffer body does, not chunked framing).
pub(super) struct Pieces {
    pieces: VecDeque<Bytes>,
    remaining: u64,
}

impl Pieces {
    pub(super) fn new(pieces: impl IntoIterator<Item = Bytes>) -> Self {
        let pieces: VecDeque<Bytes> = pieces.into_iter().filter(|p| !p.is_empty()).collect();
        let remaining = pieces.iter().map(|p| p.len() as u64).sum();
        Self { pieces, remaining }
    }
}

impl Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.pieces.pop_front();
        if let Some(piece) = &next {
            self.remaining -= piece.len() as u64;
        }
        Poll::Ready(next.map(|piece| Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn yields_the_pieces_in_order_with_their_exact_length() {
        let body = Pieces::new([
            Bytes::from_static(b"{\"a\":"),
            Bytes::new(),
            Bytes::from_static(b"\"x\""),
            Bytes::from_static(b"}"),
        ]);
        assert_eq!(body.size_hint().exact(), Some(9));
        let collected = body.collect().await.expect("infallible").to_bytes();
        assert_eq!(&collected[..], b"{\"a\":\"x\"}");
    }
}
