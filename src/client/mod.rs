//! The client: one connection to a server, shared by every clone of a
//! [`Client`] handle.
//!
//! A background task owns the connection. Handles talk to it through one
//! bounded queue, the *outbox*: one-way [`send`](Client::send)s, correlated
//! calls (the [`Service`] implementation) and pings wait there in order.
//! With [`Reconnect`] set, a lost connection is re-established with
//! exponential backoff and jitter while the outbox holds what is sent in the
//! meantime. Nothing accepted into the outbox is dropped without a word:
//! correlated calls get an answer or a [`ClientError`]; one-way frames are
//! written, or handed back by [`Client::take_unsent`] once the client has
//! given up.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard, PollSender};
use tower::Service;

use crate::codec::{FrameCodec, Framing};
use crate::frame::{Frame, Kind, DEFAULT_MAX_FRAME_SIZE};
use crate::proto::{self, Expired, Inbound, Protocol, Role, Timers, WELCOME_PREFIX};
use crate::transform::Side;
use crate::transport::{Alarm, ReadError, Transport};

/// What went wrong for a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting (TCP connect plus handshake) took longer than the connect timeout.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The connection could not be opened.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The server refused the handshake.
    #[error("handshake refused: {0}")]
    Handshake(String),
    /// The server answered the request with an ERROR frame carrying this reason.
    #[error("server error: {0}")]
    Remote(String),
    /// The connection dropped while the request was in flight; it may or may
    /// not have been processed.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The outbox is full (only from [`Client::try_send`]).
    #[error("outbox full")]
    OutboxFull,
    /// The client is closed: closed by the application, or the connection
    /// was lost and reconnecting is off or gave up.
    #[error("client closed: {0}")]
    Closed(String),
}

/// How to reconnect after the connection is lost: exponential backoff with
/// jitter, each delay drawn between half and all of the nominal one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reconnect {
    /// The first delay (default 100 ms).
    pub initial_delay: Duration,
    /// The longest delay (default 10 s).
    pub max_delay: Duration,
    /// Factor between successive delays (default 2).
    pub multiplier: f64,
    /// Attempts before giving up; `None` tries for ever (default).
    pub max_attempts: Option<u32>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            multiplier: 2.0,
            max_attempts: None,
        }
    }
}

impl Reconnect {
    /// The delay before attempt `attempt` (0-based), jitter included.
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal =
            self.initial_delay.as_secs_f64() * self.multiplier.powi(attempt.min(64) as i32);
        let capped = nominal.min(self.max_delay.as_secs_f64()).max(0.0);
        Duration::from_secs_f64(capped * (0.5 + fastrand::f64() * 0.5))
    }
}

/// Settings for a [`Client`]. Made by [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder<C = FrameCodec> {
    framing: C,
    connect_timeout: Duration,
    client_id: Option<String>,
    nodelay: bool,
    reconnect: Option<Reconnect>,
    max_frame_size: usize,
    heartbeat_interval: Option<Duration>,
    idle_timeout: Option<Duration>,
    outbox: usize,
    incoming: usize,
    max_in_flight: usize,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            framing: FrameCodec::new(),
            connect_timeout: Duration::from_secs(5),
            client_id: None,
            nodelay: true,
            reconnect: None,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            heartbeat_interval: Some(Duration::from_secs(20)),
            idle_timeout: Some(Duration::from_secs(60)),
            outbox: 1024,
            incoming: 1024,
            max_in_flight: 1024,
        }
    }
}

type Connector<T> = Box<dyn FnMut() -> Pin<Box<dyn Future<Output = io::Result<T>> + Send>> + Send>;

impl<C: Framing + Clone + fmt::Debug + Sync> ClientBuilder<C> {
    /// Uses another framing, such as a stack of wire transforms from
    /// `msgi-middleware`; it must match the server's.
    pub fn framing<C2: Framing + Clone + fmt::Debug + Sync>(
        self,
        framing: C2,
    ) -> ClientBuilder<C2> {
        ClientBuilder {
            framing,
            connect_timeout: self.connect_timeout,
            client_id: self.client_id,
            nodelay: self.nodelay,
            reconnect: self.reconnect,
            max_frame_size: self.max_frame_size,
            heartbeat_interval: self.heartbeat_interval,
            idle_timeout: self.idle_timeout,
            outbox: self.outbox,
            incoming: self.incoming,
            max_in_flight: self.max_in_flight,
        }
    }

    /// Time allowed for connecting and the handshake (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Announce this client id in the handshake (default: none, the server
    /// uses the session id).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Set TCP_NODELAY on the socket (default true).
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// Reconnect after a lost connection with this policy (default: off).
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// Largest frame accepted or sent, header included (default 1 MiB).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Send HEARTBEAT after this long without sending (default 20 s).
    pub fn heartbeat_interval(mut self, interval: Option<Duration>) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Treat the connection as lost after this long without receiving
    /// (default 60 s).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Capacity of the outbox, in frames (default 1024).
    pub fn outbox_capacity(mut self, frames: usize) -> Self {
        self.outbox = frames.max(1);
        self
    }

    /// Capacity of the queue of server-pushed frames (default 1024).
    pub fn incoming_capacity(mut self, frames: usize) -> Self {
        self.incoming = frames.max(1);
        self
    }

    /// Correlated calls written and not yet answered, at most (default 1024).
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.max_in_flight = calls.max(1);
        self
    }

    /// Connects over TCP to `addr`.
    pub async fn connect<A>(self, addr: A) -> Result<Client, ClientError>
    where
        A: ToSocketAddrs + Clone + Send + Sync + 'static,
    {
        let nodelay = self.nodelay;
        self.connect_with(move || {
            let addr = addr.clone();
            Box::pin(async move {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(nodelay)?;
                Ok(stream)
            })
        })
        .await
    }

    /// Connects with `connector`, called again for each reconnect: any
    /// transport (TLS, Unix socket, in-memory pipe) works.
    pub async fn connect_with<T, F>(self, connector: F) -> Result<Client, ClientError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnMut() -> Pin<Box<dyn Future<Output = io::Result<T>> + Send>> + Send + 'static,
    {
        let mut connector: Connector<T> = Box::new(connector);
        let (transport, early) = self.open(&mut connector).await?;
        let (tx, rx) = mpsc::channel(self.outbox);
        let (incoming_tx, incoming_rx) = mpsc::channel(self.incoming);
        let (done_tx, done_rx) = watch::channel(None);
        let handles_gone = CancellationToken::new();
        let shared = Arc::new(Shared {
            in_flight: AtomicUsize::new(0),
            close_requested: CancellationToken::new(),
            incoming: Mutex::new(Some(Incoming { rx: incoming_rx })),
            incoming_taken: AtomicBool::new(false),
            unsent: Mutex::new(Vec::new()),
            done: done_rx,
        });
        let task = ClientTask {
            cfg: self,
            connector,
            rx,
            incoming: PollSender::new(incoming_tx),
            shared: shared.clone(),
            carry: early_carry(early),
            done: done_tx,
            handles_gone: handles_gone.clone(),
        };
        tokio::spawn(task.run(transport));
        Ok(Client {
            poll: PollSender::new(tx.clone()),
            tx,
            shared,
            alive: Arc::new(handles_gone.drop_guard()),
        })
    }

    fn timers(&self) -> Timers {
        Timers {
            idle_timeout: self.idle_timeout,
            heartbeat_interval: self.heartbeat_interval,
            handshake_timeout: None,
        }
    }

    /// Opens a connection and runs the handshake, within the connect timeout.
    /// Returns frames that arrived before the handshake's answer.
    async fn open<T>(
        &self,
        connector: &mut Connector<T>,
    ) -> Result<(Transport<T, C>, Vec<Frame>), ClientError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let opening = async {
            let io = connector()
                .await
                .map_err(|e| ClientError::Connect(e.to_string()))?;
            let mut framing = self.framing.clone();
            framing.set_max_frame_size(self.max_frame_size);
            framing.start_session(Side::Client);
            let mut transport = Transport::new(io, framing);
            let early = match &self.client_id {
                Some(id) => handshake(&mut transport, id).await?,
                None => Vec::new(),
            };
            Ok((transport, early))
        };
        tokio::time::timeout(self.connect_timeout, opening)
            .await
            .map_err(|_| ClientError::ConnectTimeout)?
    }
}

/// The request id of the handshake; calls use ids from 1.
const HANDSHAKE_ID: u32 = 0;

async fn handshake<T, C>(
    transport: &mut Transport<T, C>,
    client_id: &str,
) -> Result<Vec<Frame>, ClientError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    C: Framing,
{
    let lost = |e: &dyn fmt::Display| ClientError::Connect(e.to_string());
    transport
        .queue(proto::hello_frame(client_id).with_request_id(HANDSHAKE_ID))
        .map_err(|e| ClientError::Handshake(e.to_string()))?;
    std::future::poll_fn(|cx| transport.poll_write(cx))
        .await
        .map_err(|e| lost(&e))?;
    let mut early = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| transport.poll_frame(cx)).await;
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err(lost(&"connection closed during handshake")),
            Err(ReadError::Codec(e)) => return Err(lost(&e)),
            Err(ReadError::Reset(e)) => return Err(lost(&e)),
        };
        match (frame.kind(), frame.request_id()) {
            (Kind::CONTROL, Some(HANDSHAKE_ID))
                if frame.payload().starts_with(WELCOME_PREFIX.as_bytes()) =>
            {
                return Ok(early)
            }
            (Kind::ERROR, Some(HANDSHAKE_ID)) | (Kind::ERROR | Kind::DISCONNECT, None) => {
                return Err(ClientError::Handshake(frame.payload_text().into_owned()))
            }
            (Kind::HEARTBEAT | Kind::PONG, _) => {}
            _ => early.push(frame),
        }
    }
}

fn early_carry(early: Vec<Frame>) -> VecDeque<Pending> {
    early.into_iter().map(Pending::Push).collect()
}

/// Work the client task holds outside the outbox.
enum Pending {
    /// A server push not yet handed to [`Incoming`].
    Push(Frame),
    /// A one-way frame to (re)send first on the next connection.
    Resend(Frame),
}

enum Command {
    Send(Frame),
    Call(Frame, oneshot::Sender<Result<Frame, ClientError>>),
    Close,
}

struct Shared {
    in_flight: AtomicUsize,
    /// Set by [`Client::close`]: stops a reconnect loop.
    close_requested: CancellationToken,
    incoming: Mutex<Option<Incoming>>,
    incoming_taken: AtomicBool,
    unsent: Mutex<Vec<Frame>>,
    done: watch::Receiver<Option<ClientError>>,
}

/// A handle to a connection. Clones share the connection.
///
/// As a [`Service<Frame>`], a call sends the frame correlated (with a
/// fresh request id) and resolves to the server's answer; an ERROR answer
/// becomes [`ClientError::Remote`]. `poll_ready` reserves a place in the
/// outbox, so it is `Pending` while the outbox is full. [`tower::load::Load`]
/// reports the calls in flight, for load balancers.
pub struct Client {
    tx: mpsc::Sender<Command>,
    poll: PollSender<Command>,
    shared: Arc<Shared>,
    /// Cancels the task's reconnect wait when the last handle is dropped.
    alive: Arc<DropGuard>,
}

impl Clone for Client {
    fn clone(&self) -> Self {
        // The clone starts without the original's outbox reservation.
        Client {
            tx: self.tx.clone(),
            poll: PollSender::new(self.tx.clone()),
            shared: self.shared.clone(),
            alive: self.alive.clone(),
        }
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("in_flight", &self.shared.in_flight.load(Ordering::Relaxed))
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

    /// Sends a one-way frame (any request id is removed). Waits while the
    /// outbox is full; fails only if the client is closed.
    pub async fn send(&self, mut frame: Frame) -> Result<(), ClientError> {
        frame.set_request_id(None);
        self.tx
            .send(Command::Send(frame))
            .await
            .map_err(|_| self.closed_error())
    }

    /// Sends a one-way frame without waiting: [`ClientError::OutboxFull`]
    /// when the outbox is full.
    pub fn try_send(&self, mut frame: Frame) -> Result<(), ClientError> {
        frame.set_request_id(None);
        self.tx.try_send(Command::Send(frame)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ClientError::OutboxFull,
            mpsc::error::TrySendError::Closed(_) => self.closed_error(),
        })
    }

    /// Sends `frame` correlated and waits for the answer (the same as
    /// calling the client as a [`Service`]).
    pub async fn call(&self, frame: Frame) -> Result<Frame, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Call(frame, tx))
            .await
            .map_err(|_| self.closed_error())?;
        ResponseFuture::new(rx, &self.shared).await
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
    /// Pushes are queued (up to the incoming capacity) before the stream is
    /// taken, and dropped beyond it. Once it is taken, a full queue stops
    /// the client reading the connection until the stream is read again.
    pub fn incoming(&self) -> Option<Incoming> {
        let taken = self
            .shared
            .incoming
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if taken.is_some() {
            self.shared.incoming_taken.store(true, Ordering::Release);
        }
        taken
    }

    /// Closes the connection gracefully once everything sent before has
    /// been written, and waits until it is closed. Calls still waiting for
    /// an answer then fail with [`ClientError::ConnectionLost`]. If the
    /// client is reconnecting, it stops; what was queued is handed back by
    /// [`take_unsent`](Client::take_unsent).
    pub async fn close(&self) {
        self.shared.close_requested.cancel();
        // If the task is gone already there is nothing to close.
        let _ = self.tx.send(Command::Close).await;
        self.closed().await;
    }

    /// Waits until the client has stopped for good, and says why.
    pub async fn closed(&self) -> ClientError {
        let mut done = self.shared.done.clone();
        let reason = done
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| r.clone());
        reason.unwrap_or_else(|| ClientError::Closed("client task ended".into()))
    }

    /// True once the client has stopped for good.
    pub fn is_closed(&self) -> bool {
        self.shared.done.borrow().is_some()
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

    /// Correlated calls written and not yet answered, across all clones.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    fn closed_error(&self) -> ClientError {
        self.shared
            .done
            .borrow()
            .clone()
            .unwrap_or_else(|| ClientError::Closed("client task ended".into()))
    }
}

impl Service<Frame> for Client {
    type Response = Frame;
    type Error = ClientError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        self.poll.poll_reserve(cx).map_err(|_| self.closed_error())
    }

    fn call(&mut self, frame: Frame) -> ResponseFuture {
        let (tx, rx) = oneshot::channel();
        if self.poll.send_item(Command::Call(frame, tx)).is_err() {
            // Called without readiness, or closed meanwhile: the sender was
            // dropped, so the future reports the client closed.
            tracing::debug!("client called without a reserved outbox slot or after close");
        }
        ResponseFuture::new(rx, &self.shared)
    }
}

impl tower::load::Load for Client {
    type Metric = usize;

    fn load(&self) -> usize {
        self.in_flight()
    }
}

pin_project_lite::pin_project! {
    /// The answer to a correlated call.
    pub struct ResponseFuture {
        #[pin]
        rx: oneshot::Receiver<Result<Frame, ClientError>>,
        shared: Arc<Shared>,
        counted: bool,
    }

    impl PinnedDrop for ResponseFuture {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.counted {
                this.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl ResponseFuture {
    fn new(rx: oneshot::Receiver<Result<Frame, ClientError>>, shared: &Arc<Shared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        ResponseFuture {
            rx,
            shared: shared.clone(),
            counted: true,
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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.rx.poll(cx));
        if std::mem::take(this.counted) {
            this.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        Poll::Ready(match result {
            Ok(answer) => answer,
            Err(_) => {
                let reason = this.shared.done.borrow().clone();
                Err(reason.unwrap_or_else(|| ClientError::Closed("client task ended".into())))
            }
        })
    }
}

/// Frames the server pushed. Made by [`Client::incoming`].
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<Frame>,
}

impl Incoming {
    /// The next pushed frame; `None` once the client has stopped and every
    /// queued frame was taken.
    pub async fn recv(&mut self) -> Option<Frame> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for Incoming {
    type Item = Frame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        self.rx.poll_recv(cx)
    }
}

/// How a connection ended, for the client task.
enum LinkEnd {
    /// The application closed the client (or dropped every handle).
    Closed,
    /// The connection was lost; reconnect if allowed.
    Lost(String),
}

struct ClientTask<T, C> {
    cfg: ClientBuilder<C>,
    connector: Connector<T>,
    rx: mpsc::Receiver<Command>,
    incoming: PollSender<Frame>,
    shared: Arc<Shared>,
    carry: VecDeque<Pending>,
    done: watch::Sender<Option<ClientError>>,
    handles_gone: CancellationToken,
}

impl<T, C> ClientTask<T, C>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Framing + Clone + fmt::Debug + Sync,
{
    async fn run(mut self, first: Transport<T, C>) {
        let mut transport = first;
        let reason = loop {
            let mut link = Link::new(transport, self.cfg.timers(), self.cfg.max_in_flight);
            let end = std::future::poll_fn(|cx| {
                link.poll(
                    cx,
                    &mut self.rx,
                    &mut self.incoming,
                    &self.shared,
                    &mut self.carry,
                )
            })
            .await;
            link.fail_calls();
            let why = match end {
                LinkEnd::Closed => break ClientError::Closed("closed by the application".into()),
                LinkEnd::Lost(why) => why,
            };
            tracing::debug!(reason = %why, "connection lost");
            match self.reconnect(&why).await {
                Some(next) => transport = next,
                None => break ClientError::Closed(format!("connection lost: {why}")),
            }
        };
        self.finish(reason).await;
    }

    /// Tries to connect again under the reconnect policy. `None` when
    /// reconnecting is off, has given up, or every handle is gone.
    async fn reconnect(&mut self, why: &str) -> Option<Transport<T, C>> {
        let policy = self.cfg.reconnect?;
        let mut attempt = 0u32;
        loop {
            if policy.max_attempts.is_some_and(|max| attempt >= max) {
                tracing::debug!(attempts = attempt, last = %why, "giving up reconnecting");
                return None;
            }
            let delay = policy.delay(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                // Every handle dropped: nobody is left to send or receive.
                () = self.handles_gone.cancelled() => return None,
                () = self.shared.close_requested.cancelled() => return None,
            }
            match self.cfg.open(&mut self.connector).await {
                Ok((transport, early)) => {
                    self.carry.extend(early.into_iter().map(Pending::Push));
                    return Some(transport);
                }
                Err(ClientError::Handshake(reason)) => {
                    tracing::debug!(%reason, "handshake refused while reconnecting");
                }
                Err(e) => tracing::debug!(error = %e, attempt, "reconnect failed"),
            }
        }
    }

    /// Stops for good: returns unsent one-way frames to the application and
    /// fails everything else still queued.
    async fn finish(mut self, reason: ClientError) {
        let _ = self.done.send(Some(reason.clone()));
        self.rx.close();
        let mut unsent = Vec::new();
        for pending in self.carry.drain(..) {
            match pending {
                Pending::Resend(frame) => unsent.push(frame),
                Pending::Push(frame) => {
                    if let Some(sender) = self.incoming.get_ref() {
                        let _ = sender.try_send(frame);
                    }
                }
            }
        }
        while let Ok(command) = self.rx.try_recv() {
            match command {
                Command::Send(frame) => unsent.push(frame),
                Command::Call(_, reply) => {
                    let _ = reply.send(Err(reason.clone()));
                }
                Command::Close => {}
            }
        }
        if !unsent.is_empty() {
            tracing::debug!(count = unsent.len(), "one-way frames left unsent");
            self.shared
                .unsent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(unsent);
        }
    }
}

/// One connection's worth of client state.
struct Link<T, C> {
    transport: Transport<T, C>,
    proto: Protocol,
    calls: HashMap<u32, oneshot::Sender<Result<Frame, ClientError>>>,
    next_id: u32,
    /// One-way frames queued for writing with the stream offset where each
    /// ends; they are resent on the next connection if the write did not
    /// complete.
    unwritten: VecDeque<(u64, Frame)>,
    queued_bytes: u64,
    written_bytes: u64,
    alarm: Alarm,
    max_in_flight: usize,
    closing: bool,
    /// The reason of the last uncorrelated ERROR from the server.
    last_error: Option<String>,
}

/// Bytes queued for writing above which the client stops taking more from
/// the outbox until some are written.
const HIGH_WATER: usize = 256 * 1024;

impl<T, C> Link<T, C>
where
    T: AsyncRead + AsyncWrite + Unpin,
    C: Framing,
{
    fn new(transport: Transport<T, C>, timers: Timers, max_in_flight: usize) -> Self {
        let now = Instant::now();
        Link {
            transport,
            proto: Protocol::new(Role::Client, timers, true, now),
            calls: HashMap::new(),
            next_id: HANDSHAKE_ID + 1,
            unwritten: VecDeque::new(),
            queued_bytes: 0,
            written_bytes: 0,
            alarm: Alarm::new(),
            max_in_flight,
            closing: false,
            last_error: None,
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        rx: &mut mpsc::Receiver<Command>,
        incoming: &mut PollSender<Frame>,
        shared: &Shared,
        carry: &mut VecDeque<Pending>,
    ) -> Poll<LinkEnd> {
        for _ in 0..32 {
            let now = Instant::now();
            let mut progress = false;

            // Deliver held pushes first; while one is held, do not read.
            while let Some(Pending::Push(_)) = carry.front() {
                match deliver_push(cx, incoming, shared, carry) {
                    Poll::Ready(()) => progress = true,
                    Poll::Pending => break,
                }
            }
            // Frames left unwritten by the previous connection go first.
            while let Some(Pending::Resend(_)) = carry.front() {
                if let Some(Pending::Resend(frame)) = carry.pop_front() {
                    self.queue_one_way(frame);
                    progress = true;
                }
            }

            if !self.closing {
                while self.transport.pending_write() < HIGH_WATER
                    && self.calls.len() < self.max_in_flight
                {
                    match rx.poll_recv(cx) {
                        Poll::Ready(Some(Command::Send(frame))) => self.queue_one_way(frame),
                        Poll::Ready(Some(Command::Call(frame, reply))) => {
                            self.queue_call(frame, reply)
                        }
                        Poll::Ready(Some(Command::Close)) | Poll::Ready(None) => {
                            self.closing = true;
                            self.queue(Frame::disconnect("client closed"));
                            break;
                        }
                        Poll::Pending => break,
                    }
                    progress = true;
                }
            }

            if carry.is_empty() {
                match self.read(cx, now, carry) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(end)) => return Poll::Ready(end),
                    Poll::Pending => {}
                }
            }

            let flushed = match self.transport.poll_write(cx) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(e)) => return Poll::Ready(self.lost(e.to_string(), carry)),
                Poll::Pending => false,
            };
            let written = self.transport.take_written();
            if written > 0 {
                self.proto.on_sent(now);
                self.written_bytes += written as u64;
                while self
                    .unwritten
                    .front()
                    .is_some_and(|(end, _)| *end <= self.written_bytes)
                {
                    self.unwritten.pop_front();
                }
                progress = true;
            }
            if self.closing && flushed {
                let _ = self.transport.poll_shutdown(cx);
                return Poll::Ready(LinkEnd::Closed);
            }

            if let Some(deadline) = self.proto.next_deadline() {
                if deadline <= now {
                    match self.proto.on_timeout(now) {
                        Some(Expired::Heartbeat) => self.queue(Frame::heartbeat()),
                        Some(Expired::Idle) => {
                            return Poll::Ready(
                                self.lost("server silent for the idle timeout".into(), carry),
                            )
                        }
                        Some(_) | None => {}
                    }
                    progress = true;
                } else {
                    progress |= self.alarm.poll_at(deadline, cx);
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads and dispatches frames until the transport has nothing more or
    /// a push has to wait for the application.
    fn read(
        &mut self,
        cx: &mut Context<'_>,
        now: Instant,
        carry: &mut VecDeque<Pending>,
    ) -> Poll<Result<(), LinkEnd>> {
        let mut progress = false;
        while carry.is_empty() {
            let frame = match self.transport.poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(Ok(Some(frame))) => frame,
                Poll::Ready(Ok(None)) => {
                    let why = match self.last_error.take() {
                        Some(error) => format!("closed by server after ERROR {error:?}"),
                        None => "closed by server".into(),
                    };
                    return Poll::Ready(Err(self.lost(why, carry)));
                }
                Poll::Ready(Err(ReadError::Codec(e))) => {
                    let reason = e.to_string();
                    self.queue(Frame::error(reason.clone()));
                    // Best effort: the error frame may not get out.
                    let _ = self.transport.poll_write(cx);
                    return Poll::Ready(Err(
                        self.lost(format!("protocol violation by server: {reason}"), carry)
                    ));
                }
                Poll::Ready(Err(ReadError::Reset(why))) => {
                    return Poll::Ready(Err(self.lost(why, carry)))
                }
            };
            progress = true;
            match self.proto.on_frame(frame, now) {
                Inbound::Deliver(frame) | Inbound::Pong(frame) => {
                    let call = frame.request_id().and_then(|id| self.calls.remove(&id));
                    match call {
                        Some(reply) => {
                            let _ = reply.send(Ok(frame));
                        }
                        None if frame.kind() == Kind::PONG => {}
                        None => carry.push_back(Pending::Push(frame)),
                    }
                }
                Inbound::PeerError(frame) => {
                    let call = frame.request_id().and_then(|id| self.calls.remove(&id));
                    match call {
                        Some(reply) => {
                            let _ = reply
                                .send(Err(ClientError::Remote(frame.payload_text().into_owned())));
                        }
                        None => {
                            // Kept to explain a close that may follow
                            // (`server full`, a protocol violation).
                            self.last_error = Some(frame.payload_text().into_owned());
                            carry.push_back(Pending::Push(frame));
                        }
                    }
                }
                Inbound::Reply(frame) => self.queue(frame),
                Inbound::PeerDisconnect(why) => {
                    return Poll::Ready(
                        Err(self.lost(format!("server disconnected: {why}"), carry)),
                    )
                }
                Inbound::Violation(reason) => {
                    self.queue(Frame::error(reason.clone()));
                    let _ = self.transport.poll_write(cx);
                    return Poll::Ready(Err(
                        self.lost(format!("protocol violation by server: {reason}"), carry)
                    ));
                }
                Inbound::Hello { .. } | Inbound::Nothing => {}
            }
        }
        if progress {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn queue(&mut self, frame: Frame) {
        let len = frame.wire_len() as u64;
        if let Err(e) = self.transport.queue(frame) {
            tracing::warn!(error = %e, "frame not sent");
            return;
        }
        self.queued_bytes += len;
    }

    fn queue_one_way(&mut self, frame: Frame) {
        let len = frame.wire_len() as u64;
        if self.transport.queue(frame.clone()).is_err() {
            tracing::warn!(len, "one-way frame over the maximum frame size dropped");
            return;
        }
        self.queued_bytes += len;
        self.unwritten.push_back((self.queued_bytes, frame));
    }

    fn queue_call(&mut self, mut frame: Frame, reply: oneshot::Sender<Result<Frame, ClientError>>) {
        if reply.is_closed() {
            return; // the caller gave up before the call was sent
        }
        let id = loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(HANDSHAKE_ID + 1);
            if !self.calls.contains_key(&id) {
                break id;
            }
        };
        frame.set_request_id(Some(id));
        let len = frame.wire_len() as u64;
        match self.transport.queue(frame) {
            Ok(()) => {
                self.queued_bytes += len;
                self.calls.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(ClientError::Remote(format!("not sent: {e}"))));
            }
        }
    }

    /// Ends the link: one-way frames not fully written go back to the front
    /// of `carry` for the next connection.
    fn lost(&mut self, why: String, carry: &mut VecDeque<Pending>) -> LinkEnd {
        for (_, frame) in self.unwritten.drain(..).rev() {
            carry.push_front(Pending::Resend(frame));
        }
        LinkEnd::Lost(why)
    }

    /// Fails every call written on this connection and not yet answered.
    fn fail_calls(&mut self) {
        for (_, reply) in self.calls.drain() {
            let _ = reply.send(Err(ClientError::ConnectionLost(
                "connection dropped before the answer arrived".into(),
            )));
        }
    }
}

/// Hands the first held push to the application's queue.
fn deliver_push(
    cx: &mut Context<'_>,
    incoming: &mut PollSender<Frame>,
    shared: &Shared,
    carry: &mut VecDeque<Pending>,
) -> Poll<()> {
    if !shared.incoming_taken.load(Ordering::Acquire) {
        // Nobody reads yet: queue what fits, drop the rest.
        if let Some(Pending::Push(frame)) = carry.pop_front() {
            if let Some(sender) = incoming.get_ref() {
                if sender.try_send(frame).is_err() {
                    tracing::debug!("push dropped: incoming queue full and not taken");
                }
            }
        }
        return Poll::Ready(());
    }
    match incoming.poll_reserve(cx) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(reserved) => {
            if let Some(Pending::Push(frame)) = carry.pop_front() {
                if reserved.is_err() || incoming.send_item(frame).is_err() {
                    tracing::debug!("push dropped: incoming stream dropped");
                }
            }
            Poll::Ready(())
        }
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
