//! The client: one connection to a server, shared by every clone of a
//! [`Client`] handle.
//!
//! A background task owns the connection. Handles talk to it through one
//! bounded queue, the *outbox*: one-way [`send`](Client::send)s and
//! correlated calls (the [`Service`] implementation, [`Client::call`],
//! [`Client::ping`]) wait there in order. With [`Reconnect`] set, a lost
//! connection is re-established with exponential backoff and jitter; what
//! is sent in the meantime waits (calls at most the queue timeout).
//! Correlated calls get an answer or a [`ClientError`]; one-way frames are
//! written, or handed back by [`Client::take_unsent`] once the client has
//! given up (two exceptions, logged: a frame a wire transform refuses when
//! it is written for another reason than its size, and frames still queued
//! when every handle is gone, with nobody left to hand them to). Written is
//! not delivered: there are no acknowledgements.

mod builder;
mod connection;
mod connector;
mod error;
mod gate;

pub use builder::{ClientBuilder, Reconnect};
pub use error::ClientError;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::ToSocketAddrs;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, PollSender, ReusableBoxFuture};
use tower::Service;

use connection::{ClientTask, Command, Reply, Stamp};
use connector::Connector;
use gate::{CallGate, GateClosed};
use msgi_proto::Frame;
use msgi_proto::{CodecError, Framing};

/// The connection state handles see.
#[derive(Debug, Clone)]
enum Status {
    /// Connecting again after a lost connection.
    Connecting,
    Connected,
    /// Stopped for good, and why.
    Done(ClientError),
}

const CONNECTING: u8 = 0;
const CONNECTED: u8 = 1;
const DONE: u8 = 2;

/// What the handles and the connection task share.
struct Shared {
    /// The status as a number, read on every `poll_ready`.
    state: AtomicU8,
    /// The status, to wait for a change.
    status: watch::Sender<Status>,
    /// Why the client stopped, set as it starts stopping: before the outbox
    /// is closed (so a refused sender learns why), and before the status
    /// says `Done` (which comes last, once unsent frames can be taken).
    stop_reason: std::sync::OnceLock<ClientError>,
    /// One place per call reserved or in flight (`max_in_flight`).
    calls: CallGate,
    /// Frames larger than this ([`Frame::wire_len`]) are refused by `send`
    /// before they are queued: the framing's [`Framing::max_encoded_len`],
    /// its maximum frame size less what its transforms may add.
    max_sendable: usize,
    /// How long a call may wait for a connection (`None`: for ever).
    queue_timeout: Option<Duration>,
    /// Set by [`Client::close`].
    close_requested: CancellationToken,
    /// Wakes the connection task: a close request, an abandoned call.
    task_waker: AtomicWaker,
    /// A caller dropped an answer it was waiting for.
    abandoned: AtomicBool,
    incoming: Mutex<Option<Incoming>>,
    /// Wire bytes of the pushes queued for [`Incoming`].
    incoming_held: Arc<AtomicUsize>,
    pushes_dropped: AtomicU64,
    unsent: Mutex<Vec<Frame>>,
}

impl Shared {
    fn set_status(&self, status: Status) {
        let state = match status {
            Status::Connecting => CONNECTING,
            Status::Connected => CONNECTED,
            Status::Done(_) => DONE,
        };
        if let Status::Done(reason) = &status {
            let _ = self.stop_reason.set(reason.clone());
        }
        // The number first: whoever the status change wakes sees it.
        self.state.store(state, Ordering::Release);
        self.status.send_replace(status);
    }

    fn done_reason(&self) -> Option<ClientError> {
        self.stop_reason.get().cloned()
    }

    fn closed_error(&self) -> ClientError {
        self.done_reason()
            .unwrap_or_else(|| ClientError::Closed("client task ended".into()))
    }
}

/// Marks the client stopped if its task ends without saying why (the
/// runtime shut down), so that nothing waits for it for ever.
struct DoneGuard(Arc<Shared>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if self.0.state.load(Ordering::Acquire) != DONE {
            let _ = self
                .0
                .stop_reason
                .set(ClientError::Closed("client task ended".into()));
            self.0.set_status(Status::Done(self.0.closed_error()));
        }
        self.0.calls.close();
    }
}

/// A handle to a connection. Clones share the connection.
///
/// # Sending
///
/// - [`send`](Client::send) queues a one-way frame in the outbox and returns
///   once it is queued: `Ok(())` means accepted, not delivered. An accepted
///   frame is written (if its connection drops before all of its bytes were
///   written, it is written again first on the next connection), or handed
///   back by [`take_unsent`](Client::take_unsent) once the client stops for
///   good. A frame the framing could not send for its size (over
///   [`Framing::max_encoded_len`]) is refused at once with
///   [`ClientError::Encode`]; one that a wire transform refuses for another
///   reason when it is written is dropped with a warning in the log. There is no acknowledgement: a frame written
///   just before a connection drops may or may not have been processed.
/// - A call ([`Service::call`], [`call`](Client::call),
///   [`ping`](Client::ping)) resolves to the server's answer, or to a
///   [`ClientError`]: `Remote` for an ERROR answer, `ConnectionLost` if the
///   connection dropped after it was written (it may or may not have been
///   processed), `NotConnected` if it waited longer than the queue timeout
///   for a connection (not sent), `Encode` if it could not be encoded (not
///   sent). A caller may drop its future at any time (a timeout): the call
///   is forgotten at once and frees its place.
/// - [`close`](Client::close) writes what the outbox holds, then DISCONNECT.
///
/// # Readiness and load
///
/// `poll_ready` is `Ready(Ok)` only when the client is connected, fewer than
/// `max_in_flight` calls are reserved or in flight, and a place in the
/// outbox is reserved. It is `Pending` while the client is connecting again
/// (woken when connected) and while `max_in_flight` calls are outstanding
/// (woken when one finishes or is dropped), and `Ready(Err)` once the client
/// has stopped for good. [`tower::load::Load`] is the number of calls
/// reserved or in flight while connected, and `usize::MAX` while connecting
/// or stopped, so a balancer never prefers a dead endpoint.
///
/// `call` must follow a successful `poll_ready` (as tower requires);
/// otherwise it sends nothing and its future fails with
/// [`ClientError::NotReady`].
///
/// # Lifetime
///
/// The connection lives while a handle exists or an answer is outstanding:
/// `Client::connect(addr).await?.oneshot(frame)` gets its answer. When the
/// last handle is dropped and no call waits, the client closes as
/// [`close`](Client::close) does.
pub struct Client {
    tx: mpsc::Sender<Command>,
    poll: PollSender<Command>,
    /// `poll_ready` took a place in the call limit (given back on drop).
    slot: bool,
    /// `poll_ready` returned `Ready(Ok)`: a permit and an outbox place are
    /// held for the next `call`.
    reserved: bool,
    /// Waits for the status to leave `Connecting` (only while it is).
    wait: Option<ReusableBoxFuture<'static, ()>>,
    waiting: bool,
    /// Waits for a place in the call limit (only at the limit); dropped
    /// with the handle, which leaves nothing in the gate.
    slot_wait: Option<ReusableBoxFuture<'static, Result<(), GateClosed>>>,
    taking: bool,
    shared: Arc<Shared>,
}

impl Clone for Client {
    fn clone(&self) -> Self {
        // The clone starts without the original's reservation.
        Client::handle(self.tx.clone(), self.shared.clone())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.slot {
            self.shared.calls.give_back();
        }
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("in_flight", &self.in_flight())
            .field("connected", &self.is_connected())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Client {
    /// Connects over TCP with the default settings.
    pub async fn connect<A>(addr: A) -> Result<Client, ClientError>
    where
        A: ToSocketAddrs + Clone + Send + Sync + 'static,
    {
        ClientBuilder::default().connect(addr).await
    }

    /// Settings for a new client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    async fn start<T, C>(
        cfg: ClientBuilder<C>,
        connector: Connector<T>,
    ) -> Result<Client, ClientError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        C: Framing + Clone + fmt::Debug + Sync,
    {
        cfg.validate()?;
        let (tx, rx) = mpsc::channel(cfg.outbox);
        let (incoming_tx, incoming_rx) = mpsc::channel(cfg.incoming);
        let incoming_held = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            state: AtomicU8::new(CONNECTING),
            status: watch::Sender::new(Status::Connecting),
            stop_reason: std::sync::OnceLock::new(),
            calls: CallGate::new(cfg.max_in_flight),
            max_sendable: cfg.framing.max_encoded_len(),
            queue_timeout: builder::finite(cfg.queue_timeout),
            close_requested: CancellationToken::new(),
            task_waker: AtomicWaker::new(),
            abandoned: AtomicBool::new(false),
            incoming: Mutex::new(Some(Incoming {
                rx: incoming_rx,
                held: incoming_held.clone(),
            })),
            incoming_held,
            pushes_dropped: AtomicU64::new(0),
            unsent: Mutex::new(Vec::new()),
        });
        let mut task = ClientTask::new(cfg, connector, rx, incoming_tx, shared.clone());
        task.first_connection().await?;
        tokio::spawn(task.run());
        Ok(Client::handle(tx, shared))
    }

    fn handle(tx: mpsc::Sender<Command>, shared: Arc<Shared>) -> Client {
        Client {
            poll: PollSender::new(tx.clone()),
            tx,
            slot: false,
            reserved: false,
            wait: None,
            waiting: false,
            slot_wait: None,
            taking: false,
            shared,
        }
    }

    /// Sends a one-way frame (any request id is removed). Waits while the
    /// outbox is full. Fails with [`ClientError::Encode`] if the frame is
    /// larger than the framing can ever send
    /// ([`Framing::max_encoded_len`]: the maximum frame size less what its
    /// wire transforms may add), with nothing queued, and with
    /// [`ClientError::Closed`] once the client is closed.
    pub async fn send(&self, mut frame: Frame) -> Result<(), ClientError> {
        frame.set_request_id(None);
        self.check_size(&frame)?;
        self.tx
            .send(Command::Send(frame))
            .await
            .map_err(|_| self.shared.closed_error())
    }

    /// Sends a one-way frame without waiting: [`ClientError::OutboxFull`]
    /// when the outbox is full; otherwise as [`send`](Client::send).
    pub fn try_send(&self, mut frame: Frame) -> Result<(), ClientError> {
        frame.set_request_id(None);
        self.check_size(&frame)?;
        self.tx.try_send(Command::Send(frame)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ClientError::OutboxFull,
            mpsc::error::TrySendError::Closed(_) => self.shared.closed_error(),
        })
    }

    fn check_size(&self, frame: &Frame) -> Result<(), ClientError> {
        let max = self.shared.max_sendable;
        if frame.wire_len() > max {
            return Err(ClientError::Encode(Arc::new(CodecError::FrameTooLarge {
                length: frame.wire_len() as u64,
                max,
            })));
        }
        Ok(())
    }

    /// Sends `frame` correlated and waits for the answer (see the type's
    /// documentation for what each outcome means). Waits first while
    /// `max_in_flight` calls are outstanding and while the outbox is full;
    /// unlike `poll_ready` it does not wait for a connection: a call queued
    /// while the client is connecting again waits at most the queue timeout.
    pub async fn call(&self, frame: Frame) -> Result<Frame, ClientError> {
        self.shared
            .calls
            .take()
            .await
            .map_err(|_| self.shared.closed_error())?;
        let (tx, rx) = oneshot::channel();
        // Owns the place from here: given back however this ends.
        let answer = ResponseFuture::new(rx, &self.shared);
        // Made while not connected: the queue timeout runs from now, also
        // while the call waits for room in the outbox or in it, behind
        // one-way frames the task holds (one atomic load when connected).
        let stamp = match self.shared.state.load(Ordering::Acquire) {
            CONNECTED => None,
            _ => self
                .shared
                .queue_timeout
                .and_then(|t| crate::transport::now().checked_add(t))
                .map(Stamp::new),
        };
        let Some(stamp) = stamp else {
            self.tx
                .send(Command::Call(frame, Reply(tx), None))
                .await
                .map_err(|_| self.shared.closed_error())?;
            return answer.await;
        };
        let deadline = stamp.deadline;
        let queued = tokio::time::timeout_at(
            Instant::from_std(deadline),
            self.tx
                .send(Command::Call(frame, Reply(tx), Some(stamp.clone()))),
        );
        match queued.await {
            Err(_) => return Err(ClientError::NotConnected),
            Ok(sent) => sent.map_err(|_| self.shared.closed_error())?,
        }
        tokio::pin!(answer);
        tokio::select! {
            result = &mut answer => result,
            () = tokio::time::sleep_until(Instant::from_std(deadline)) => {
                if stamp.withdraw() {
                    // Still in the outbox: never sent, and the task drops
                    // it when it gets to it.
                    Err(ClientError::NotConnected)
                } else {
                    // The task has it and answers it.
                    answer.await
                }
            }
        }
    }

    /// Sends a PING and returns the round-trip time once the PONG is back.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        self.call(Frame::ping(bytes::Bytes::new())).await?;
        Ok(start.elapsed())
    }

    /// The stream of frames the server pushes (uncorrelated frames and
    /// ERRORs without a request id). Returns `None` after the first call.
    ///
    /// Pushes never hold up answers: the client never stops reading the
    /// connection for them. They are queued, whether the stream was taken
    /// yet or not, up to the incoming capacity in frames
    /// ([`ClientBuilder::incoming_capacity`], default 1024) and in bytes
    /// ([`ClientBuilder::incoming_bytes`], default 4 MiB); a push that does
    /// not fit, or arrives after the stream was dropped, is dropped and
    /// counted by [`pushes_dropped`](Client::pushes_dropped).
    pub fn incoming(&self) -> Option<Incoming> {
        self.shared
            .incoming
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Pushes dropped because the incoming queue was full or its stream
    /// dropped, since the client connected.
    pub fn pushes_dropped(&self) -> u64 {
        self.shared.pushes_dropped.load(Ordering::Relaxed)
    }

    /// Closes the client gracefully and waits until it is closed.
    ///
    /// The close starts when this is called, not when the future is first
    /// polled, and dropping the future does not stop it. One-way frames
    /// already in the outbox are written, then DISCONNECT, within the
    /// connect timeout; calls not yet written fail with
    /// [`ClientError::Closed`] unsent; calls written and still waiting for
    /// an answer fail with [`ClientError::ConnectionLost`]. If the client
    /// is connecting again, it stops at once (a connect attempt under way
    /// is abandoned); what was queued is handed back by
    /// [`take_unsent`](Client::take_unsent).
    pub fn close(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.close_requested.cancel();
        self.shared.task_waker.wake();
        let mut status = self.shared.status.subscribe();
        async move {
            let _ = status
                .wait_for(|s| matches!(s, Status::Done(_)))
                .await
                .map(|_| ());
        }
    }

    /// Waits until the client has stopped for good, and says why.
    pub async fn closed(&self) -> ClientError {
        let mut status = self.shared.status.subscribe();
        let _ = status.wait_for(|s| matches!(s, Status::Done(_))).await;
        self.shared.closed_error()
    }

    /// True once the client has stopped for good.
    pub fn is_closed(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == DONE
    }

    /// True while a connection is up (false while connecting again and
    /// once stopped).
    pub fn is_connected(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == CONNECTED
    }

    /// One-way frames that were accepted but never written because the
    /// client stopped (reconnecting off or given up). Each is returned once.
    pub fn take_unsent(&self) -> Vec<Frame> {
        std::mem::take(
            &mut *self
                .shared
                .unsent
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Correlated calls reserved (by `poll_ready`) or in flight, across all
    /// clones.
    pub fn in_flight(&self) -> usize {
        self.shared.calls.used()
    }

    /// Takes a place in the call limit: at once below it, else through a
    /// wait kept across polls.
    fn poll_slot(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GateClosed>> {
        if !self.taking {
            if let Some(taken) = self.shared.calls.try_take() {
                return Poll::Ready(taken);
            }
            let shared = self.shared.clone();
            let take = async move { shared.calls.take().await };
            match &mut self.slot_wait {
                Some(wait) => wait.set(take),
                None => self.slot_wait = Some(ReusableBoxFuture::new(take)),
            }
            self.taking = true;
        }
        let taken = match &mut self.slot_wait {
            Some(wait) => ready!(wait.poll(cx)),
            None => Err(GateClosed),
        };
        self.taking = false;
        Poll::Ready(taken)
    }

    /// Waits until the status is no longer `Connecting`.
    fn poll_connected(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.waiting {
            let mut status = self.shared.status.subscribe();
            let changed = async move {
                let _ = status
                    .wait_for(|s| !matches!(s, Status::Connecting))
                    .await
                    .map(|_| ());
            };
            match &mut self.wait {
                Some(wait) => wait.set(changed),
                None => self.wait = Some(ReusableBoxFuture::new(changed)),
            }
            self.waiting = true;
        }
        if let Some(wait) = &mut self.wait {
            ready!(wait.poll(cx));
        }
        self.waiting = false;
        Poll::Ready(())
    }
}

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
        if !std::mem::take(&mut self.reserved) {
            return ResponseFuture::failed(ClientError::NotReady, &self.shared);
        }
        // The place taken by `poll_ready` moves into the answer.
        self.slot = false;
        let (tx, rx) = oneshot::channel();
        // Closed meanwhile: the sender is dropped and the future reports
        // why the client stopped.
        let _ = self.poll.send_item(Command::Call(frame, Reply(tx), None));
        ResponseFuture::new(rx, &self.shared)
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
    fn new(rx: oneshot::Receiver<Result<Frame, ClientError>>, shared: &Arc<Shared>) -> Self {
        ResponseFuture {
            state: Answer::Waiting(rx),
            shared: shared.clone(),
        }
    }

    fn failed(error: ClientError, shared: &Arc<Shared>) -> Self {
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
            Answer::Done => {
                return Poll::Ready(Err(ClientError::Closed(
                    "answer polled after completion".into(),
                )))
            }
        };
        self.state = Answer::Done;
        self.shared.calls.give_back();
        Poll::Ready(match result {
            Ok(answer) => answer,
            Err(_) => Err(self.shared.closed_error()),
        })
    }
}

/// Frames the server pushed. Made by [`Client::incoming`].
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<Frame>,
    held: Arc<AtomicUsize>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let policy = Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_attempts: None,
        };
        for _ in 0..100 {
            let d0 = policy.delay(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d3 = policy.delay(3);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800));
            let d20 = policy.delay(20);
            assert!(d20 >= Duration::from_millis(500) && d20 <= Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod assertions {
    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_are_send_and_sync() {
        send_sync::<super::Client>();
        send_sync::<super::ResponseFuture>();
        send_sync::<super::Incoming>();
        send_sync::<super::ClientError>();
    }
}
