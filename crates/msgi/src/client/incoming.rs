//! [`Incoming`]: the frames the server pushed, as a stream.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::sync::mpsc;

use msgi_proto::Frame;

/// Frames the server pushed. Made by [`Client::incoming`](super::Client::incoming).
#[derive(Debug)]
pub struct Incoming {
    pub(super) rx: mpsc::Receiver<Frame>,
    pub(super) held: Arc<AtomicUsize>,
}

impl Incoming {
    /// The next pushed frame; `None` once the client has stopped and every
    /// queued frame was taken.
    pub async fn recv(&mut self) -> Option<Frame> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        let frame = ready!(self.rx.poll_recv(cx));
        if let Some(frame) = &frame {
            self.held.fetch_sub(frame.wire_len(), Ordering::AcqRel);
        }
        Poll::Ready(frame)
    }
}

impl futures_util::Stream for Incoming {
    type Item = Frame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        self.poll_recv(cx)
    }
}
