//! The [`Service`] side of a [`Client`]: readiness, load, and the
//! [`ResponseFuture`] a call returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::sync::oneshot;
use tower::Service;

use super::connection::{Command, Reply};
use super::handle::Client;
use super::{ClientError, Shared, CONNECTED, DONE};
use msgi_proto::Frame;

impl Service<Frame> for Client {
    type Response = Frame;
    type Error = ClientError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        if self.reserved {
            return Poll::Ready(Ok(()));
        }
        loop {
            match self.shared.state.load(Ordering::Acquire) {
                CONNECTED => break,
                DONE => return Poll::Ready(Err(self.shared.closed_error())),
                _ => ready!(self.poll_connected(cx)),
            }
        }
        if !self.slot {
            if ready!(self.poll_slot(cx)).is_err() {
                return Poll::Ready(Err(self.shared.closed_error()));
            }
            self.slot = true;
        }
        if ready!(self.poll.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(self.shared.closed_error()));
        }
        self.reserved = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, frame: Frame) -> ResponseFuture {
        self.call_reserved(frame, false)
    }
}

impl Client {
    /// A call after `poll_ready`; with `raw`, an ERROR answer is the
    /// answer (for [`Forward`](super::Forward)).
    pub(super) fn call_reserved(&mut self, frame: Frame, raw: bool) -> ResponseFuture {
        if !std::mem::take(&mut self.reserved) {
            return ResponseFuture::failed(ClientError::NotReady, &self.shared);
        }
        // The place taken by `poll_ready` moves into the answer.
        self.slot = false;
        let (tx, rx) = oneshot::channel();
        // Closed meanwhile: the sender is dropped and the future reports
        // why the client stopped.
        let _ = self
            .poll
            .send_item(Command::Call(frame, Reply::new(tx, raw), None));
        ResponseFuture::new(rx, &self.shared)
    }

    /// A one-way frame in the outbox place `poll_ready` reserved (the call
    /// place stays with the handle for the next request).
    pub(super) fn send_reserved(&mut self, mut frame: Frame) -> Result<(), ClientError> {
        if !self.reserved {
            return Err(ClientError::NotReady);
        }
        frame.set_request_id(None);
        self.check_size(&frame)?;
        self.reserved = false;
        self.poll
            .send_item(Command::Send(frame))
            .map_err(|_| self.shared.closed_error())
    }
}

impl tower::load::Load for Client {
    type Metric = usize;

    /// Calls reserved or in flight while connected; `usize::MAX` while
    /// connecting again or stopped.
    fn load(&self) -> usize {
        if self.is_connected() {
            self.in_flight()
        } else {
            usize::MAX
        }
    }
}

/// The answer to a correlated call. Dropping it before the answer abandons
/// the call: its place is freed at once and a late answer is discarded.
pub struct ResponseFuture {
    state: Answer,
    shared: Arc<Shared>,
}

enum Answer {
    /// Waiting for the answer; holds a place in the call limit.
    Waiting(oneshot::Receiver<Result<Frame, ClientError>>),
    Failed(ClientError),
    Done,
}

impl ResponseFuture {
    /// Takes over a place already taken in the call limit.
    pub(super) fn new(
        rx: oneshot::Receiver<Result<Frame, ClientError>>,
        shared: &Arc<Shared>,
    ) -> Self {
        ResponseFuture {
            state: Answer::Waiting(rx),
            shared: shared.clone(),
        }
    }

    pub(super) fn failed(error: ClientError, shared: &Arc<Shared>) -> Self {
        ResponseFuture {
            state: Answer::Failed(error),
            shared: shared.clone(),
        }
    }
}

impl Drop for ResponseFuture {
    fn drop(&mut self) {
        if let Answer::Waiting(rx) = &mut self.state {
            // Closed before the task is told, so that it finds the call
            // abandoned when it looks.
            rx.close();
            self.shared.abandoned.store(true, Ordering::Release);
            self.shared.task_waker.wake();
            self.shared.calls.give_back();
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Frame, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match &mut self.state {
            Answer::Waiting(rx) => ready!(Pin::new(rx).poll(cx)),
            Answer::Failed(_) => match std::mem::replace(&mut self.state, Answer::Done) {
                Answer::Failed(error) => return Poll::Ready(Err(error)),
                _ => return Poll::Ready(Err(ClientError::NotReady)),
            },
            // Polled after completion: a caller's mistake, not the client's.
            Answer::Done => return Poll::Ready(Err(ClientError::NotReady)),
        };
        self.state = Answer::Done;
        self.shared.calls.give_back();
        Poll::Ready(match result {
            Ok(answer) => answer,
            Err(_) => Err(self.shared.closed_error()),
        })
    }
}
