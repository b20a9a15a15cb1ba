//! [`Client`]: the handle applications hold, and what it does itself
//! (queueing in the outbox, the call limit, waiting for the end).

use std::fmt;
use std::future::Future;
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

use super::builder::{self, ClientBuilder};
use super::connection::{ClientTask, Command, Reply, Stamp};
use super::connector::Connector;
use super::gate::{CallGate, GateClosed};
use super::incoming::Incoming;
use super::service::ResponseFuture;
use super::{ClientError, Shared, Status, CONNECTED, CONNECTING, DONE};
use msgi_proto::CodecError;
use msgi_proto::Frame;

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
///   [`MakeFraming::max_sendable`](crate::MakeFraming::max_sendable)) is refused at once with
///   [`ClientError::Encode`]; one that a wire transform refuses for another
///   reason when it is written is dropped with a warning in the log. There is no acknowledgement: a frame written
///   just before a connection drops may or may not have been processed.
/// - A call ([`Service::call`](tower::Service::call), [`call`](Client::call),
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
/// `max_concurrent_requests` calls are reserved or in flight, and a place in the
/// outbox is reserved. It is `Pending` while the client is connecting again
/// (woken when connected) and while `max_concurrent_requests` calls are outstanding
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
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) poll: PollSender<Command>,
    /// `poll_ready` took a place in the call limit (given back on drop).
    pub(super) slot: bool,
    /// `poll_ready` returned `Ready(Ok)`: a permit and an outbox place are
    /// held for the next `call`.
    pub(super) reserved: bool,
    /// Waits for the status to leave `Connecting` (only while it is).
    pub(super) wait: Option<ReusableBoxFuture<'static, ()>>,
    pub(super) waiting: bool,
    /// Waits for a place in the call limit (only at the limit); dropped
    /// with the handle, which leaves nothing in the gate.
    pub(super) slot_wait: Option<ReusableBoxFuture<'static, Result<(), GateClosed>>>,
    pub(super) taking: bool,
    pub(super) shared: Arc<Shared>,
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

    pub(super) async fn start<T, C>(
        cfg: ClientBuilder<C>,
        connector: Connector<T>,
    ) -> Result<Client, ClientError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        C: msgi_proto::MakeFraming + Clone + fmt::Debug,
    {
        cfg.validate()?;
        let config = super::connection::machine_config(&cfg)?;
        let (tx, rx) = mpsc::channel(cfg.outbox);
        let (incoming_tx, incoming_rx) = mpsc::channel(cfg.incoming);
        let incoming_held = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            state: AtomicU8::new(CONNECTING),
            status: watch::Sender::new(Status::Connecting),
            stop_reason: std::sync::OnceLock::new(),
            calls: CallGate::new(cfg.max_concurrent_requests),
            max_sendable: cfg.framing.max_sendable(),
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
            recovered: AtomicBool::new(false),
            missed_pushes: AtomicU64::new(0),
            fresh_resumes: AtomicU64::new(0),
            unsent: Mutex::new(Vec::new()),
            acks: watch::Sender::new((0, 0, 0)),
            acknowledged: cfg.acknowledged.is_some(),
            sends_queued: AtomicU64::new(0),
            connect_info: Mutex::new(Arc::default()),
        });
        let mut task = ClientTask::new(cfg, connector, config, rx, incoming_tx, shared.clone());
        task.first_connection().await?;
        tokio::spawn(task.run());
        Ok(Client::handle(tx, shared))
    }

    pub(super) fn handle(tx: mpsc::Sender<Command>, shared: Arc<Shared>) -> Client {
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
    /// ([`MakeFraming::max_sendable`](crate::MakeFraming::max_sendable): the maximum frame size less what its
    /// wire transforms may add), with nothing queued, and with
    /// [`ClientError::Closed`] once the client is closed.
    pub async fn send(&self, mut frame: Frame) -> Result<(), ClientError> {
        frame.set_request_id(None);
        self.check_size(&frame)?;
        self.tx
            .send(Command::Send(frame))
            .await
            .map_err(|_| self.shared.closed_error())?;
        self.shared.sends_queued.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Sends a one-way frame without waiting: [`ClientError::OutboxFull`]
    /// when the outbox is full; otherwise as [`send`](Client::send).
    pub fn try_send(&self, mut frame: Frame) -> Result<(), ClientError> {
        frame.set_request_id(None);
        self.check_size(&frame)?;
        self.tx
            .try_send(Command::Send(frame))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ClientError::OutboxFull,
                mpsc::error::TrySendError::Closed(_) => self.shared.closed_error(),
            })?;
        self.shared.sends_queued.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    pub(super) fn check_size(&self, frame: &Frame) -> Result<(), ClientError> {
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
    /// `max_concurrent_requests` calls are outstanding and while the outbox is full;
    /// unlike `poll_ready` it does not wait for a connection: a call queued
    /// while the client is connecting again waits at most the queue timeout.
    pub async fn call(&self, frame: Frame) -> Result<Frame, ClientError> {
        self.call_with(frame, false).await
    }

    /// [`call`](Client::call) for a request the server may run twice: if
    /// the connection is lost after it was written and before its answer
    /// (the server may or may not have received it), it is sent again on
    /// the next connection instead of failing with
    /// [`ClientError::ConnectionLost`]. It still resolves with the answer,
    /// a typed error (a client that stops, or does not reconnect, fails it
    /// as `call` does; held while reconnecting, it waits at most the queue
    /// timeout), or the caller's own deadline (dropping the future forgets
    /// it). Use it only for requests whose repetition is harmless (reads,
    /// requests carrying their own deduplication key).
    pub async fn call_idempotent(&self, frame: Frame) -> Result<Frame, ClientError> {
        self.call_with(frame, true).await
    }

    async fn call_with(&self, frame: Frame, idempotent: bool) -> Result<Frame, ClientError> {
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
                .send(Command::Call(
                    frame,
                    Reply::new(tx, false).idempotent(idempotent),
                    None,
                ))
                .await
                .map_err(|_| self.shared.closed_error())?;
            return answer.await;
        };
        let deadline = stamp.deadline;
        let queued = tokio::time::timeout_at(
            Instant::from_std(deadline),
            self.tx.send(Command::Call(
                frame,
                Reply::new(tx, false).idempotent(idempotent),
                Some(stamp.clone()),
            )),
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

    /// With [`ClientBuilder::recover_pushes`]: whether the server said, at
    /// the last (re)connection, that it had kept this client id's pushes
    /// while it was away (false on a first connection, after the server's
    /// grace period, or from a server without push recovery), as of the
    /// task's last wake-up.
    pub fn recovered(&self) -> bool {
        self.shared.recovered.load(Ordering::Acquire)
    }

    /// With [`ClientBuilder::recover_pushes`]: pushes the server said it
    /// lost for this client id (accepted and dropped: at the end of its
    /// grace period, or with its place given to another client id; a push
    /// refused, its buffer full, was told to its pusher instead), since the
    /// client started.
    /// Pushes dropped by this client's own full incoming queue are
    /// [`pushes_dropped`](Client::pushes_dropped).
    pub fn missed_pushes(&self) -> u64 {
        self.shared.missed_pushes.load(Ordering::Acquire)
    }

    /// With [`ClientBuilder::recover_pushes`]: how many (re)connections
    /// the server answered `fresh` (nothing kept for this client id: the
    /// first connection, its grace period passed, a server that lost its
    /// store in a crash or restart), since the client started. Each one
    /// after the first is a point where pushes may have been lost without
    /// a count ([`missed_pushes`](Client::missed_pushes) counts only what
    /// a server that kept the client id dropped).
    pub fn fresh_resumes(&self) -> u64 {
        self.shared.fresh_resumes.load(Ordering::Acquire)
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

    /// What the connector recorded about the latest connection, kept while
    /// the client connects again and replaced once it has: under TLS
    /// (`msgi_tls::TlsConnector`) the server's verified certificate chain,
    /// the server name and the ALPN protocol as a `msgi_tls::TlsInfo`
    /// (`client.connect_info().get::<TlsInfo>()`). Empty for a connector
    /// that answers a bare byte stream (plain TCP). The pre-shared-key
    /// handshake's session keys are taken out before it is kept here.
    pub fn connect_info(&self) -> Arc<crate::ConnectInfo> {
        self.shared
            .connect_info
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// True while a connection is up (false while connecting again and
    /// once stopped).
    pub fn is_connected(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == CONNECTED
    }

    /// With acknowledged delivery, one-way frames kept until the server
    /// acknowledges them (sent or not), as of the task's last wake-up; 0
    /// otherwise.
    pub fn unacknowledged(&self) -> usize {
        self.shared.acks.borrow().1
    }

    /// With acknowledged delivery, how many one-way frames the server has
    /// acknowledged since the client started (their sequence numbers run
    /// from 1); 0 otherwise.
    pub fn acknowledged(&self) -> u64 {
        self.shared.acks.borrow().0
    }

    /// With acknowledged delivery, waits until the server has acknowledged
    /// every one-way frame accepted so far (bound it with a timeout).
    /// Returns at once without acknowledged delivery, and with the client's
    /// stop reason if it stops first.
    pub async fn wait_acknowledged(&self) -> Result<(), ClientError> {
        if !self.shared.acknowledged {
            return Ok(());
        }
        // Every send accepted before this call, taken by the task and
        // acknowledged.
        let target = self.shared.sends_queued.load(Ordering::Acquire);
        let mut acks = self.shared.acks.subscribe();
        let mut status = self.shared.status.subscribe();
        loop {
            let (_, unacked, taken) = *acks.borrow_and_update();
            if taken >= target && unacked == 0 {
                return Ok(());
            }
            if self.is_closed() {
                return Err(self.shared.closed_error());
            }
            tokio::select! {
                changed = acks.changed() => {
                    if changed.is_err() {
                        return Err(self.shared.closed_error());
                    }
                }
                _ = status.changed() => {}
            }
        }
    }

    /// Sends a one-way frame, waiting at most `timeout` for room in the
    /// outbox (which a full acknowledgement window holds):
    /// [`ClientError::OutboxFull`] at the deadline, with nothing queued;
    /// otherwise as [`send`](Client::send).
    pub async fn send_timeout(
        &self,
        mut frame: Frame,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        frame.set_request_id(None);
        self.check_size(&frame)?;
        match self.tx.send_timeout(Command::Send(frame), timeout).await {
            Ok(()) => {
                self.shared.sends_queued.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(ClientError::OutboxFull),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(self.shared.closed_error()),
        }
    }

    /// One-way frames that were accepted but never written because the
    /// client stopped (reconnecting off or given up); with acknowledged
    /// delivery, every frame not acknowledged (written or not: the server
    /// may or may not have taken it). Each is returned once.
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
    pub(super) fn poll_slot(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GateClosed>> {
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
    pub(super) fn poll_connected(&mut self, cx: &mut Context<'_>) -> Poll<()> {
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
