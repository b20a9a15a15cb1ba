//! The server: accepts connections, runs one session per connection against
//! the user's service, and shuts down gracefully.
//!
//! The handler is a [`tower::Service<Frame>`] whose response is
//! `Option<Frame>`: `Some` is the answer, `None` means "nothing to send".
//! For a correlated request the answer gets the request's id; `None` or an
//! error becomes an ERROR frame with that id, so each correlated request
//! gets exactly one answer.

use std::collections::HashMap;
use std::fmt;
use std::future::{self, Future};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tower::make::{MakeService, Shared};
use tower::Service;
use tracing::Instrument;

use crate::driver::{Driver, SessionConfig};
use crate::registry::Registry;
use crate::session::{CloseReason, OutboxLimits, PeerAddr, Session};
use crate::BoxError;
use msgi_proto::session::Timers;
use msgi_proto::ConfigError;
use msgi_proto::Side;
use msgi_proto::{Frame, CORRELATED_HEADER_LEN};
use msgi_proto::{FrameCodec, Framing, MakeFraming};

/// A source of connections for [`Server::serve`].
///
/// Implemented for tokio's TCP and Unix listeners; implement it for any
/// other transport (TLS acceptors, in-memory pipes).
///
/// # Errors and the accept loop
///
/// An error that means the listener is gone ends `serve` with that error:
/// one of kind [`io::ErrorKind::NotConnected`] (what an implementation
/// returns when its source of connections has closed for good), or an OS
/// error saying the descriptor is not a listening socket (`EBADF`,
/// `ENOTSOCK`, `EINVAL`, `EFAULT`, and their Winsock equivalents).
///
/// One connection's trouble is logged at debug level and the next accept
/// starts at once, with no back-off: an error of kind
/// [`ConnectionAborted`](io::ErrorKind::ConnectionAborted),
/// [`ConnectionReset`](io::ErrorKind::ConnectionReset) or
/// [`ConnectionRefused`](io::ErrorKind::ConnectionRefused) (`ECONNABORTED`
/// and `EPROTO` from `accept` included), so a peer that keeps failing its
/// connections cannot slow down anyone else's. An implementation that fails
/// one connection (a TLS acceptor whose handshake failed for one client)
/// should say so with one of these kinds.
///
/// Any other error (out of descriptors or memory: `EMFILE`, `ENFILE`,
/// `ENOBUFS`, `ENOMEM`; or an error that cannot be classified) is logged
/// and retried after a back-off that starts at 1 ms and doubles up to 1 s
/// while such errors continue, so the loop never spins on a lasting
/// error; a successful accept resets it.
///
/// # Slow accepts
///
/// `serve` awaits one `accept` at a time: whatever `accept` waits for (a
/// TLS handshake, a proxy header) holds back every later connection, so a
/// peer that is slow to finish its handshake stalls everyone's accepts.
/// Keep `accept` to taking the connection; a handshake belongs after it,
/// on the connection's own task: for now, return an [`Io`](Listener::Io)
/// that completes its handshake on its first read or write (the session's
/// task drives it); a per-connection step in the server is planned.
pub trait Listener: Send + 'static {
    /// The connection type.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, PeerAddr)>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, PeerAddr)> {
        let (stream, addr) = TcpListener::accept(self).await?;
        // Answers are written as soon as they are ready; Nagle would hold
        // small ones back for the peer's delayed ACK. A failure here is the
        // connection's (the peer already reset it), never the listener's:
        // it must not look like an accept error.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %addr, "set_nodelay failed");
        }
        Ok((stream, PeerAddr::Tcp(addr)))
    }
}

#[cfg(unix)]
impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, PeerAddr)> {
        let (stream, _) = tokio::net::UnixListener::accept(self).await?;
        Ok((stream, PeerAddr::Unix))
    }
}

/// Default of [`Builder::max_concurrent_request_bytes`]: 4 MiB.
const DEFAULT_MAX_CONCURRENT_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Default of [`Builder::outbound_queue_bytes`]: 4 MiB.
const DEFAULT_OUTBOUND_QUEUE_BYTES: usize = 4 * 1024 * 1024;

type ConnectHook = Arc<dyn Fn(&Session) + Send + Sync>;
type DisconnectHook = Arc<dyn Fn(&Session, &CloseReason) + Send + Sync>;

/// Settings for a [`Server`]. Made by [`Server::builder`].
pub struct Builder<C = FrameCodec> {
    codec: C,
    max_connections: usize,
    /// The value of the last [`Builder::max_frame_size`] call since the
    /// framing was chosen (already written into `codec`), kept to validate it.
    max_frame_size: Option<usize>,
    idle_timeout: Option<Duration>,
    heartbeat_interval: Option<Duration>,
    handshake_timeout: Option<Duration>,
    max_concurrent_requests: usize,
    max_concurrent_request_bytes: usize,
    outbound_queue: usize,
    outbound_queue_bytes: usize,
    drain_deadline: Duration,
    max_connections_per_ip: Option<usize>,
    on_connect: Option<ConnectHook>,
    on_disconnect: Option<DisconnectHook>,
    registry: Option<Registry>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            codec: FrameCodec::new(),
            max_connections: 10_000,
            max_frame_size: None,
            idle_timeout: Some(Duration::from_secs(60)),
            heartbeat_interval: Some(Duration::from_secs(20)),
            handshake_timeout: Some(Duration::from_secs(10)),
            max_concurrent_requests: 64,
            max_concurrent_request_bytes: DEFAULT_MAX_CONCURRENT_REQUEST_BYTES,
            outbound_queue: 1024,
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            drain_deadline: Duration::from_secs(5),
            max_connections_per_ip: None,
            on_connect: None,
            on_disconnect: None,
            registry: None,
        }
    }
}

impl<C: MakeFraming> Builder<C> {
    /// Most sessions at once (default 10,000; at least 1). A connection
    /// beyond it gets ERROR `server full` and is closed; existing sessions
    /// are untouched.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Largest frame accepted or sent, header included (default: the
    /// framing's own limit, 1 MiB for [`FrameCodec::new`]).
    ///
    /// The framing is the one source of truth for this limit: this writes
    /// `bytes` into the framing chosen so far (see [`Framing::set_max_frame_size`]).
    /// A later [`framing`](Builder::framing) call replaces the framing and
    /// with it this setting, so the later of the two calls wins. [`build`]
    /// refuses a value below the 14-byte correlated header or above what the
    /// 32-bit length field can carry.
    ///
    /// [`build`]: Builder::build
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.codec.codec_mut().set_max_frame_size(bytes);
        self.max_frame_size = Some(bytes);
        self
    }

    /// Close a session that has sent nothing for this long, with DISCONNECT
    /// `idle timeout` (default 60 s; `None` disables; zero is refused by
    /// [`build`](Builder::build); a duration too large to add to the clock
    /// means never).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Send HEARTBEAT when nothing was sent to a peer for this long
    /// (default 20 s; `None` disables; zero is refused by
    /// [`build`](Builder::build)).
    pub fn heartbeat_interval(mut self, interval: Option<Duration>) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Close a connection whose first frame has not arrived within this long,
    /// with DISCONNECT `handshake timeout` (default 10 s; `None` disables;
    /// zero is refused by [`build`](Builder::build)).
    pub fn handshake_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Requests one session may have in the service at once (default 64;
    /// at least 1). At the limit the session stops reading until one
    /// finishes.
    pub fn max_concurrent_requests(mut self, n: usize) -> Self {
        self.max_concurrent_requests = n;
        self
    }

    /// Payload bytes that one session's requests may hold in the service
    /// at once, counted after decoding (so after decompression) from when a
    /// request is read until it is answered (default 4 MiB; at least 1). At
    /// or above it the session stops reading until answers free some, as at
    /// `max_concurrent_requests`. The check is made before each read, so a
    /// session holds at most this plus one request: a request larger than
    /// the budget is still served.
    pub fn max_concurrent_request_bytes(mut self, bytes: usize) -> Self {
        self.max_concurrent_request_bytes = bytes;
        self
    }

    /// Frames that may wait in one session's outbox (default 1024; at
    /// least 1). A push to a full outbox closes that session as a slow
    /// consumer.
    pub fn outbound_queue(mut self, frames: usize) -> Self {
        self.outbound_queue = frames;
        self
    }

    /// Bytes that may wait in one session's outbox, each frame counting its
    /// payload plus 14 bytes (default 4 MiB; at least 1). A push that would
    /// go beyond it closes that session as a slow consumer, as a push beyond
    /// `outbound_queue` does; a push into an empty outbox is always taken.
    pub fn outbound_queue_bytes(mut self, bytes: usize) -> Self {
        self.outbound_queue_bytes = bytes;
        self
    }

    /// How long a closing session may take to answer what it received and
    /// flush its output (default 5 s). Zero closes at once, without
    /// waiting for answers; a duration too large to add to the clock means
    /// no deadline.
    pub fn drain_deadline(mut self, deadline: Duration) -> Self {
        self.drain_deadline = deadline;
        self
    }

    /// Most sessions at once from one IP address (default `None`: no limit
    /// but [`max_connections`](Builder::max_connections); `Some(0)` is
    /// refused by [`build`](Builder::build)). A connection beyond it gets
    /// ERROR `too many connections from this address` and is closed; the
    /// count is released when a session ends. IPv4-mapped IPv6 addresses
    /// count as their IPv4 address. Peers without an IP address (Unix
    /// sockets, in-memory pipes) are not limited by it.
    pub fn max_connections_per_ip(mut self, limit: Option<usize>) -> Self {
        self.max_connections_per_ip = limit;
        self
    }

    /// Runs when a session starts, before its first frame is read.
    pub fn on_connect(mut self, hook: impl Fn(&Session) + Send + Sync + 'static) -> Self {
        self.on_connect = Some(Arc::new(hook));
        self
    }

    /// Runs exactly once when a session ends, with the reason, after it has
    /// left the registry.
    pub fn on_disconnect(
        mut self,
        hook: impl Fn(&Session, &CloseReason) + Send + Sync + 'static,
    ) -> Self {
        self.on_disconnect = Some(Arc::new(hook));
        self
    }

    /// The registry the server's sessions join (default: a new
    /// [`Registry::new`], of this server alone). Give the same registry to
    /// several servers (a TCP one and a WebSocket one) so that their
    /// sessions share client ids, sends and broadcasts; each server's
    /// shutdown closes only its own sessions.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Uses another byte framing, such as [`LineCodec`](crate::LineCodec) or
    /// a codec under wire transforms ([`Wire`](crate::Wire)), with the limit
    /// its codec was made with (`FrameCodec::with_max_frame_size(64)` serves
    /// with 64, `LineCodec::with_max_line(80)` with 80). It is a
    /// [`MakeFraming`]: each accepted session gets a framing of its own,
    /// made fresh ([`MakeFraming::make_framing`]).
    ///
    /// This replaces an earlier [`max_frame_size`](Builder::max_frame_size)
    /// setting (it was written into the old framing); call `max_frame_size`
    /// after this to change the new framing's limit: the later call wins.
    pub fn framing<C2: MakeFraming>(self, codec: C2) -> Builder<C2> {
        Builder {
            codec,
            max_connections: self.max_connections,
            max_frame_size: None,
            idle_timeout: self.idle_timeout,
            heartbeat_interval: self.heartbeat_interval,
            handshake_timeout: self.handshake_timeout,
            max_concurrent_requests: self.max_concurrent_requests,
            max_concurrent_request_bytes: self.max_concurrent_request_bytes,
            outbound_queue: self.outbound_queue,
            outbound_queue_bytes: self.outbound_queue_bytes,
            drain_deadline: self.drain_deadline,
            max_connections_per_ip: self.max_connections_per_ip,
            on_connect: self.on_connect,
            on_disconnect: self.on_disconnect,
            registry: self.registry,
        }
    }

    /// Checks every setting and builds the server.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting that cannot work: a count
    /// of zero, a zero timeout or interval (use `None` to disable one), a
    /// maximum frame size outside `14..=4 GiB - 1` (the correlated header up
    /// to what the 32-bit length field can carry; for a text framing, a
    /// maximum line of zero), or a count beyond what the server can track.
    pub fn build(self) -> Result<Server<C>, ConfigError> {
        self.validate()?;
        let codec = self.codec;
        // The codec's limit stands; each session's transforms are told it
        // when they are made.
        let max_frame_size = codec.codec().max_frame_size();
        // Pushes too large for the framing are refused by `Session::send`.
        let max_frame_len = u32::try_from(codec.max_sendable()).unwrap_or(u32::MAX);
        Ok(Server {
            codec,
            max_connections: self.max_connections,
            session: Arc::new(SessionConfig::new(
                Timers {
                    idle_timeout: self.idle_timeout,
                    heartbeat_interval: self.heartbeat_interval,
                    handshake_timeout: self.handshake_timeout,
                },
                self.max_concurrent_requests,
                self.max_concurrent_request_bytes,
                self.drain_deadline,
                max_frame_size.max(64 * 1024),
            )?),
            // `validate` keeps the counts within u32; no frame on the MSGI
            // wire is longer than u32::MAX bytes.
            outbox: Arc::new(OutboxLimits {
                frames: u32::try_from(self.outbound_queue).unwrap_or(u32::MAX),
                bytes: u32::try_from(self.outbound_queue_bytes).unwrap_or(u32::MAX),
                max_frame_len,
            }),
            common: Arc::new(Common {
                on_connect: self.on_connect,
                on_disconnect: self.on_disconnect,
                per_ip: self.max_connections_per_ip.map(|max| PerIp {
                    max,
                    counts: Mutex::new(HashMap::new()),
                }),
            }),
            registry: self.registry.unwrap_or_default(),
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let at_least_one = |setting: &'static str, n: usize| {
            if n == 0 {
                Err(ConfigError::new(setting, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        at_least_one("max_connections", self.max_connections)?;
        if self.max_connections > Semaphore::MAX_PERMITS {
            return Err(ConfigError::new(
                "max_connections",
                format_args!("must be at most {}", Semaphore::MAX_PERMITS),
            ));
        }
        at_least_one("max_concurrent_requests", self.max_concurrent_requests)?;
        at_least_one("outbound_queue", self.outbound_queue)?;
        at_least_one(
            "max_concurrent_request_bytes",
            self.max_concurrent_request_bytes,
        )?;
        at_least_one("outbound_queue_bytes", self.outbound_queue_bytes)?;
        // Kept per session in 32 bits (every byte of a session counts).
        for (setting, n) in [
            ("outbound_queue", self.outbound_queue),
            ("outbound_queue_bytes", self.outbound_queue_bytes),
        ] {
            if u32::try_from(n).is_err() {
                return Err(ConfigError::new(
                    setting,
                    format_args!("must be at most {}", u32::MAX),
                ));
            }
        }
        if let Some(n) = self.max_connections_per_ip {
            at_least_one("max_connections_per_ip", n)?;
        }
        if let Some(requested) = self.max_frame_size {
            check_frame_size("max_frame_size", requested, self.codec.codec().is_binary())?;
        }
        let codec = self.codec.codec();
        check_frame_size("framing", codec.max_frame_size(), codec.is_binary())?;
        let not_zero = |setting: &'static str, d: Option<Duration>| {
            if d == Some(Duration::ZERO) {
                Err(ConfigError::new(
                    setting,
                    "must not be zero (use None to disable it)",
                ))
            } else {
                Ok(())
            }
        };
        not_zero("idle_timeout", self.idle_timeout)?;
        not_zero("heartbeat_interval", self.heartbeat_interval)?;
        not_zero("handshake_timeout", self.handshake_timeout)?;
        Ok(())
    }
}

/// The largest frame the 32-bit length field can describe.
const MAX_WIRE_FRAME: u64 = u32::MAX as u64;

/// Checks a maximum frame size (or, for a text framing, a maximum line).
fn check_frame_size(setting: &'static str, max: usize, binary: bool) -> Result<(), ConfigError> {
    if binary && max < CORRELATED_HEADER_LEN {
        return Err(ConfigError::new(
            setting,
            format_args!(
                "maximum frame size {max} is below the {CORRELATED_HEADER_LEN}-byte correlated header"
            ),
        ));
    }
    if !binary && max == 0 {
        return Err(ConfigError::new(setting, "maximum line must be at least 1"));
    }
    if binary && max as u64 > MAX_WIRE_FRAME {
        return Err(ConfigError::new(
            setting,
            format_args!(
                "maximum frame size {max} is above {MAX_WIRE_FRAME}, the most the 32-bit length field can carry"
            ),
        ));
    }
    Ok(())
}

impl<C> fmt::Debug for Builder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("max_connections", &self.max_connections)
            .field("max_frame_size", &self.max_frame_size)
            .field("idle_timeout", &self.idle_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field(
                "max_concurrent_request_bytes",
                &self.max_concurrent_request_bytes,
            )
            .field("outbound_queue", &self.outbound_queue)
            .field("outbound_queue_bytes", &self.outbound_queue_bytes)
            .field("drain_deadline", &self.drain_deadline)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .finish_non_exhaustive()
    }
}

/// What every session of a server shares (one `Arc` per session, not a
/// copy of each part).
struct Common {
    on_connect: Option<ConnectHook>,
    on_disconnect: Option<DisconnectHook>,
    per_ip: Option<PerIp>,
}

/// Live sessions per peer IP address, for `max_connections_per_ip`. Taken
/// at accept and at session end only, never per frame. An address leaves
/// the map when its last session ends, so it holds at most one entry per
/// live session.
struct PerIp {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn counts(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map stays consistent even if a holder panicked: every update
        // is a single insert, increment or removal.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more session from `ip`; false (and nothing counted) at the limit.
    fn try_acquire(&self, ip: IpAddr) -> bool {
        let mut counts = self.counts();
        match counts.get_mut(&ip) {
            Some(n) if *n >= self.max => false,
            Some(n) => {
                *n += 1;
                true
            }
            None => {
                counts.insert(ip, 1);
                true
            }
        }
    }

    fn release(&self, ip: IpAddr) {
        let mut counts = self.counts();
        if let Some(n) = counts.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&ip);
            }
        }
    }
}

/// The address a per-IP limit counts a peer under, if it has one.
fn limited_ip(remote: &PeerAddr) -> Option<IpAddr> {
    match remote {
        PeerAddr::Tcp(addr) => Some(addr.ip().to_canonical()),
        _ => None,
    }
}

/// An MSGI server.
///
/// ```no_run
/// use msgi::{Frame, Server};
/// use tower::service_fn;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:7000").await?;
/// let echo = service_fn(|frame: Frame| async move {
///     Ok::<_, std::convert::Infallible>(Some(frame))
/// });
/// Server::builder().build()?.serve(listener, echo).await?;
/// # Ok(())
/// # }
/// ```
pub struct Server<C = FrameCodec> {
    codec: C,
    max_connections: usize,
    /// Shared by the server's sessions: one pointer in each, not a copy.
    session: Arc<SessionConfig>,
    outbox: Arc<OutboxLimits>,
    common: Arc<Common>,
    registry: Registry,
}

impl Server {
    /// Settings for a new server, with the defaults listed on each setter.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<C> fmt::Debug for Server<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("max_connections", &self.max_connections)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// Concurrent rejections ("server full") being written at once; beyond
/// this, extra connections are closed without a word.
const MAX_REJECTIONS: usize = 64;

/// The most a farewell (a rejection, or the DISCONNECT of a session closed
/// before its service was made) waits for the peer to read it and close.
const LINGER: Duration = Duration::from_secs(1);

/// The first and the longest wait after a failed accept.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(1);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The ERROR reason for a connection over `max_connections`.
const SERVER_FULL: &str = "server full: too many connections";
/// The ERROR reason for a connection over `max_connections_per_ip`.
const TOO_MANY_FROM_ADDRESS: &str = "too many connections from this address";

impl<C: MakeFraming> Server<C> {
    /// The registry of this server's sessions; hold a clone in handlers.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Serves `service` (cloned for each session) until the listener is
    /// gone (see [`Listener`] for which accept errors end it).
    pub async fn serve<L, S>(self, listener: L, service: S) -> io::Result<()>
    where
        L: Listener,
        S: Service<Frame, Response = Option<Frame>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.serve_with_shutdown(listener, service, future::pending())
            .await
    }

    /// Serves `service` (cloned for each session) until `shutdown` completes,
    /// then shuts down gracefully: no new connections, every session gets
    /// DISCONNECT `server shutdown` after its accepted requests are
    /// answered, and this returns once every session has ended: within
    /// the drain deadline after `shutdown` completes (see
    /// [`serve_make_with_shutdown`](Server::serve_make_with_shutdown)).
    pub async fn serve_with_shutdown<L, S, F>(
        self,
        listener: L,
        service: S,
        shutdown: F,
    ) -> io::Result<()>
    where
        L: Listener,
        S: Service<Frame, Response = Option<Frame>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        F: Future<Output = ()> + Send,
    {
        self.serve_make_with_shutdown(listener, Shared::new(service), shutdown)
            .await
    }

    /// Like [`serve_with_shutdown`](Server::serve_with_shutdown), but makes a
    /// new service for each session from its [`Session`] handle: per-session
    /// state lives in the service itself.
    ///
    /// The drain deadline bounds the whole shutdown: a connection waiting
    /// for the make-service to become ready gets DISCONNECT `server
    /// shutdown` instead, and a session whose service is still being made
    /// stops waiting for it, says DISCONNECT `server shutdown` and closes
    /// (it has read nothing, so nothing is owed an answer).
    ///
    /// # Errors
    ///
    /// The listener's error when it is gone (see [`Listener`]), or the
    /// make-service's `poll_ready` error. Other accept errors are retried.
    pub async fn serve_make_with_shutdown<L, M, F>(
        self,
        mut listener: L,
        mut make: M,
        shutdown: F,
    ) -> io::Result<()>
    where
        L: Listener,
        M: MakeService<Session, Frame, Response = Option<Frame>> + Send,
        M::Service: Send + 'static,
        M::Error: Into<BoxError>,
        <M::Service as Service<Frame>>::Future: Send + 'static,
        M::MakeError: Into<BoxError> + 'static,
        M::Future: Send + 'static,
        F: Future<Output = ()> + Send,
    {
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let rejections = Arc::new(Semaphore::new(MAX_REJECTIONS));
        // A farewell never outlasts the drain deadline, so neither can one
        // still being written when shutdown starts.
        let linger = LINGER.min(self.session.drain_timeout());
        // (A closure holding `&self.codec` would make this future need `C: Sync`.)
        macro_rules! farewell {
            ($io:expr, $frame:expr) => {
                say_farewell($io, $frame, &rejections, &self.codec, &tracker, linger)
            };
        }
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let mut shutdown = std::pin::pin!(shutdown);
        let mut result = Ok(());
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            let (io, remote) = match accepted {
                Ok(conn) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    conn
                }
                Err(e) if listener_gone(&e) => {
                    tracing::error!(error = %e, "listener failed; stopping");
                    result = Err(e);
                    break;
                }
                Err(e) if is_connection_error(&e) => {
                    // One connection's trouble: the next one must not wait
                    // for it. (The yield keeps a listener that fails at once
                    // for ever from starving its thread.)
                    tracing::debug!(error = %e, "connection failed before it was accepted");
                    tokio::task::yield_now().await;
                    continue;
                }
                Err(e) => {
                    // Out of descriptors or memory, or an error we cannot
                    // tell apart from a lasting one: wait instead of
                    // spinning, then go on.
                    tracing::warn!(error = %e, ?backoff, "accept failed; retrying");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                farewell!(io, Frame::error(SERVER_FULL));
                continue;
            };
            // Counted here, released by the session's guard when it ends (or
            // below, if it never starts).
            let per_ip = self.common.per_ip.as_ref();
            let ip = per_ip.and(limited_ip(&remote));
            if let (Some(per_ip), Some(ip)) = (per_ip, ip) {
                if !per_ip.try_acquire(ip) {
                    farewell!(io, Frame::error(TOO_MANY_FROM_ADDRESS));
                    continue;
                }
            }
            let uncount = || {
                if let (Some(per_ip), Some(ip)) = (per_ip, ip) {
                    per_ip.release(ip);
                }
            };
            let ready = tokio::select! {
                () = &mut shutdown => {
                    uncount();
                    farewell!(io, Frame::disconnect(CloseReason::ServerShutdown.to_string()));
                    break;
                }
                ready = std::future::poll_fn(|cx| make.poll_ready(cx)) => ready,
            };
            if let Err(e) = ready {
                uncount();
                let e: BoxError = e.into();
                tracing::error!(error = %e, "make-service failed; stopping");
                result = Err(io::Error::other(e));
                break;
            }
            let session = self.registry.register(remote, self.outbox.clone());
            let making = make.make_service(session.clone());
            let span = tracing::debug_span!("session", id = %session.id(), remote = %session.remote_addr());
            let codec = self.codec.make_framing(Side::Server);
            let task = run_session(
                io,
                codec,
                making,
                SessionGuard {
                    session,
                    registry: self.registry.clone(),
                    common: self.common.clone(),
                    reason: None,
                    _permit: permit,
                },
                self.session.clone(),
            );
            tracker.spawn(task.instrument(span));
        }
        drop(listener);
        self.registry
            .close_served_with(&self.outbox, CloseReason::ServerShutdown);
        tracker.close();
        tracker.wait().await;
        result
    }
}

/// True when an accept error is one connection's trouble, not the
/// listener's (see [`Listener`]): the accept loop goes on at once. The kinds
/// hyper and axum retry at once, and `EPROTO` (a protocol error on the
/// incoming connection, BSD and macOS).
fn is_connection_error(e: &io::Error) -> bool {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return true;
    }
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(libc::EPROTO)
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// True when an accept error means the listener itself is gone (see
/// [`Listener`]).
fn listener_gone(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::NotConnected {
        return true;
    }
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    #[cfg(unix)]
    {
        matches!(
            code,
            libc::EBADF | libc::ENOTSOCK | libc::EINVAL | libc::EFAULT
        )
    }
    #[cfg(windows)]
    {
        // WSAEBADF, WSAEFAULT, WSAEINVAL, WSAENOTSOCK.
        matches!(code, 10009 | 10014 | 10022 | 10038)
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = code;
        false
    }
}

/// Writes one last frame (ERROR `server full`, DISCONNECT `server
/// shutdown`) to a connection that gets no session, in a task of its own so
/// the accept loop goes on at once. Beyond [`MAX_REJECTIONS`] at once, the
/// connection is closed without a word.
fn say_farewell<T, C>(
    io: T,
    frame: Frame,
    rejections: &Arc<Semaphore>,
    codec: &C,
    tracker: &TaskTracker,
    linger: Duration,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: MakeFraming,
{
    let Ok(permit) = rejections.clone().try_acquire_owned() else {
        return;
    };
    let mut bytes = BytesMut::new();
    let mut codec = codec.make_framing(Side::Server);
    if codec.encode(frame, &mut bytes).is_err() {
        return;
    }
    tracker.spawn(async move {
        let _permit = permit;
        write_and_close(io, bytes, linger).await;
    });
}

/// Writes `bytes`, closes the write side, then reads until the peer closes
/// so unread input cannot turn our close into a reset that destroys the
/// bytes in flight; all of it within `linger`.
async fn write_and_close<T>(mut io: T, bytes: BytesMut, linger: Duration)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let farewell = async {
        io.write_all(&bytes).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 1024];
        while io.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    // `timeout` treats a deadline too far to compute as none.
    let _ = tokio::time::timeout(linger, farewell).await;
}

/// Leaves the registry, releases the per-IP count and runs the disconnect
/// hook exactly once, when the session task ends, however it ends (a
/// panicking handler included).
struct SessionGuard {
    session: Session,
    registry: Registry,
    /// Every session with an IP address holds a place in the per-IP count
    /// when that limit is on (it was taken before the session started).
    common: Arc<Common>,
    reason: Option<CloseReason>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.registry.remove(&self.session);
        if let (Some(per_ip), Some(ip)) =
            (&self.common.per_ip, limited_ip(self.session.remote_addr()))
        {
            per_ip.release(ip);
        }
        let reason = self.reason.take().unwrap_or(CloseReason::Aborted);
        tracing::debug!(%reason, "session ended");
        // After the hook, which may still read the session's data, and
        // even if the hook panics.
        let _release = Release(&self.session);
        if let Some(hook) = &self.common.on_disconnect {
            hook(&self.session, &reason);
        }
    }
}

/// Releases a session's pushes and data when dropped, unwinding included.
struct Release<'a>(&'a Session);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

pin_project_lite::pin_project! {
    /// One session's task: make its service, then drive it. Written out by
    /// hand rather than as an `async fn` so the connection and codec are
    /// stored once (an `async fn` keeps its arguments beside the futures it
    /// awaits); an idle session's task is what its memory mostly is.
    struct SessionTask<T, C, F, S>
    where
        S: Service<Frame>,
    {
        guard: SessionGuard,
        #[pin]
        state: TaskState<T, C, F, S>,
    }
}

pin_project_lite::pin_project! {
    #[project = TaskStateProj]
    enum TaskState<T, C, F, S>
    where
        S: Service<Frame>,
    {
        Making {
            #[pin]
            making: F,
            io: Option<T>,
            codec: Option<C>,
            cfg: Arc<SessionConfig>,
            connected: bool,
        },
        Running {
            driver: Driver<T, C, S>,
        },
        // Closed before its service was made: the last words, boxed (rare,
        // and it keeps this variant smaller than the others).
        Closing {
            farewell: Pin<Box<dyn Future<Output = ()> + Send>>,
        },
    }
}

fn run_session<T, C, F, S>(
    io: T,
    codec: C,
    making: F,
    guard: SessionGuard,
    cfg: Arc<SessionConfig>,
) -> SessionTask<T, C, F, S>
where
    S: Service<Frame>,
{
    SessionTask {
        guard,
        state: TaskState::Making {
            making,
            io: Some(io),
            codec: Some(codec),
            cfg,
            connected: false,
        },
    }
}

impl<T, C, F, S, E> Future for SessionTask<T, C, F, S>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Framing,
    F: Future<Output = Result<S, E>>,
    E: Into<BoxError>,
    S: Service<Frame, Response = Option<Frame>>,
    S::Error: Into<BoxError>,
{
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                TaskStateProj::Making {
                    making,
                    io,
                    codec,
                    cfg,
                    connected,
                } => {
                    if !*connected {
                        *connected = true;
                        if let Some(hook) = &this.guard.common.on_connect {
                            hook(&this.guard.session);
                        }
                    }
                    // A close (shutdown, the application) must not wait for a
                    // make-service that may never finish.
                    this.guard.session.register(cx);
                    if let Some(reason) = this.guard.session.closing() {
                        if reason == CloseReason::SlowConsumer {
                            // As a running session does: close at once, writing nothing.
                            this.guard.reason = Some(reason);
                            return Poll::Ready(());
                        }
                        let (Some(io), Some(mut codec)) = (io.take(), codec.take()) else {
                            return Poll::Ready(());
                        };
                        // Pushes taken so far (the connect hook's welcome)
                        // got `Ok`: they go out before the DISCONNECT, through
                        // the session's framing, as a running session's do.
                        this.guard.session.seal_outbox();
                        let mut bytes = BytesMut::new();
                        let guard = &*this.guard;
                        guard.session.drain_outbox(|frame| {
                            if let Err(e) = codec.encode(frame, &mut bytes) {
                                tracing::warn!(session = %guard.session.id(), error = %e, "pushed frame could not be encoded; dropped");
                            }
                            true
                        });
                        let farewell = this.guard.session.farewell(&reason);
                        let _ = codec.encode(farewell, &mut bytes);
                        let linger = LINGER.min(cfg.drain_timeout());
                        this.guard.reason = Some(reason);
                        this.state.set(TaskState::Closing {
                            farewell: Box::pin(write_and_close(io, bytes, linger)),
                        });
                        continue;
                    }
                    let service = match std::task::ready!(making.poll(cx)) {
                        Ok(service) => service,
                        Err(e) => {
                            let e: BoxError = e.into();
                            this.guard.reason = Some(CloseReason::ServiceFailed(e.to_string()));
                            return Poll::Ready(());
                        }
                    };
                    let (Some(io), Some(codec)) = (io.take(), codec.take()) else {
                        // Only reachable if polled again after completing.
                        return Poll::Ready(());
                    };
                    let driver = Driver::new(
                        io,
                        codec,
                        service,
                        this.guard.session.clone(),
                        this.guard.registry.clone(),
                        cfg.clone(),
                    );
                    this.state.set(TaskState::Running { driver });
                }
                TaskStateProj::Running { driver } => {
                    let reason = std::task::ready!(driver.poll(cx));
                    this.guard.reason = Some(reason);
                    return Poll::Ready(());
                }
                TaskStateProj::Closing { farewell } => {
                    std::task::ready!(farewell.as_mut().poll(cx));
                    return Poll::Ready(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msgi_proto::LineCodec;

    fn refused<C: MakeFraming>(builder: Builder<C>) -> ConfigError {
        match builder.build() {
            Ok(_) => panic!("settings accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert!(Server::builder().build().is_ok());
        assert!(Server::builder().framing(LineCodec::new()).build().is_ok());
    }

    #[test]
    fn counts_of_zero_are_refused() {
        let e = refused(Server::builder().max_connections(0));
        assert_eq!(e.setting(), "max_connections");
        assert_eq!(e.reason(), "must be at least 1");
        let e = refused(Server::builder().max_concurrent_requests(0));
        assert_eq!(e.setting(), "max_concurrent_requests");
        let e = refused(Server::builder().outbound_queue(0));
        assert_eq!(e.setting(), "outbound_queue");
        let e = refused(Server::builder().max_connections_per_ip(Some(0)));
        assert_eq!(e.setting(), "max_connections_per_ip");
        assert!(Server::builder()
            .max_connections_per_ip(Some(1))
            .build()
            .is_ok());
    }

    #[test]
    fn more_connections_than_a_semaphore_holds_are_refused() {
        let e = refused(Server::builder().max_connections(usize::MAX));
        assert_eq!(e.setting(), "max_connections");
        assert!(Server::builder()
            .max_connections(Semaphore::MAX_PERMITS)
            .build()
            .is_ok());
    }

    #[test]
    fn frame_size_below_the_correlated_header_is_refused() {
        let e = refused(Server::builder().max_frame_size(CORRELATED_HEADER_LEN - 1));
        assert_eq!(e.setting(), "max_frame_size");
        assert!(e.reason().contains("correlated header"), "{e}");
        assert!(Server::builder()
            .max_frame_size(CORRELATED_HEADER_LEN)
            .build()
            .is_ok());
        // A codec's own limit is kept as given and checked here too (it
        // used to be raised to 14 without a word).
        let e = refused(Server::builder().framing(FrameCodec::with_max_frame_size(5)));
        assert_eq!(e.setting(), "framing");
    }

    #[test]
    fn frame_size_beyond_the_length_field_is_refused() {
        let too_big = usize::try_from(MAX_WIRE_FRAME + 1).unwrap_or(usize::MAX);
        let e = refused(Server::builder().max_frame_size(too_big));
        assert_eq!(e.setting(), "max_frame_size");
        assert!(e.reason().contains("32-bit length field"), "{e}");
        if too_big != usize::MAX || MAX_WIRE_FRAME < usize::MAX as u64 {
            let e = refused(Server::builder().framing(FrameCodec::with_max_frame_size(too_big)));
            assert_eq!(e.setting(), "framing");
        }
        let e = refused(
            Server::builder()
                .framing(LineCodec::new())
                .max_frame_size(0),
        );
        assert_eq!(e.setting(), "max_frame_size");
        let e = refused(Server::builder().framing(LineCodec::with_max_line(0)));
        assert_eq!(e.setting(), "framing");
    }

    #[test]
    fn zero_durations_are_refused() {
        let zero = Some(Duration::ZERO);
        let e = refused(Server::builder().idle_timeout(zero));
        assert_eq!(e.setting(), "idle_timeout");
        let e = refused(Server::builder().heartbeat_interval(zero));
        assert_eq!(e.setting(), "heartbeat_interval");
        let e = refused(Server::builder().handshake_timeout(zero));
        assert_eq!(e.setting(), "handshake_timeout");
        // Disabled, or huge: fine (huge means never).
        assert!(Server::builder()
            .idle_timeout(None)
            .heartbeat_interval(Some(Duration::MAX))
            .handshake_timeout(Some(Duration::MAX))
            .drain_deadline(Duration::MAX)
            .build()
            .is_ok());
    }

    #[test]
    fn per_ip_counts_are_released_and_forgotten() {
        let per_ip = PerIp {
            max: 2,
            counts: Mutex::new(HashMap::new()),
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([0; 4]));
        let b: IpAddr = "10.0.0.2".parse().unwrap_or(IpAddr::from([0; 4]));
        assert!(per_ip.try_acquire(a));
        assert!(per_ip.try_acquire(a));
        assert!(!per_ip.try_acquire(a), "third from one address");
        assert!(per_ip.try_acquire(b), "other addresses are not affected");
        per_ip.release(a);
        assert!(per_ip.try_acquire(a));
        for _ in 0..2 {
            per_ip.release(a);
        }
        per_ip.release(b);
        assert!(per_ip.counts().is_empty(), "no entry outlives its sessions");
    }

    #[test]
    fn mapped_ipv6_counts_as_ipv4() {
        let v4: std::net::SocketAddr = "10.0.0.1:1".parse().unwrap_or(([0; 4], 0).into());
        let mapped: std::net::SocketAddr =
            "[::ffff:10.0.0.1]:2".parse().unwrap_or(([0; 4], 0).into());
        assert_eq!(
            limited_ip(&PeerAddr::Tcp(v4)),
            limited_ip(&PeerAddr::Tcp(mapped))
        );
        assert_eq!(limited_ip(&PeerAddr::Unix), None);
    }

    #[cfg(unix)]
    #[test]
    fn accept_errors_are_classified() {
        let os = io::Error::from_raw_os_error;
        for code in [libc::EBADF, libc::ENOTSOCK, libc::EINVAL, libc::EFAULT] {
            assert!(listener_gone(&os(code)), "{code}");
        }
        assert!(listener_gone(&io::Error::from(io::ErrorKind::NotConnected)));
        for code in [libc::ECONNABORTED, libc::EPROTO, libc::ECONNRESET] {
            assert!(is_connection_error(&os(code)), "{code}");
            assert!(!listener_gone(&os(code)), "{code}");
        }
        for kind in [
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionRefused,
        ] {
            assert!(is_connection_error(&kind.into()), "{kind:?}");
        }
        // Backed off: resources, and whatever cannot be classified.
        for code in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EPERM,
            libc::ENETDOWN,
            libc::EHOSTUNREACH,
            libc::EOPNOTSUPP,
        ] {
            assert!(!listener_gone(&os(code)), "{code}");
            assert!(!is_connection_error(&os(code)), "{code}");
        }
        let custom = io::Error::other("a custom listener's trouble");
        assert!(!listener_gone(&custom));
        assert!(!is_connection_error(&custom));
    }

    #[test]
    fn the_framing_keeps_its_own_limit() {
        let server = Server::builder()
            .framing(FrameCodec::with_max_frame_size(64))
            .build()
            .expect("valid settings");
        assert_eq!(server.codec.max_frame_size(), 64);
        assert_eq!(server.session.high_water(), 64 * 1024);
        let server = Server::builder()
            .framing(LineCodec::with_max_line(80))
            .build()
            .expect("valid settings");
        assert_eq!(server.codec.max_frame_size(), 80);
    }

    /// Remembers the limit it was told, as the decompressor does.
    struct Told(usize);

    #[derive(Debug, Clone)]
    struct MakeTold;

    impl crate::MakeTransform for MakeTold {
        type Transform = Told;

        fn make_transform(&self, params: crate::SessionParams) -> Told {
            Told(params.max_frame_size)
        }
    }

    impl crate::FrameTransform for Told {
        fn set_max_frame_size(&mut self, max: usize) {
            self.0 = max;
        }

        fn decode(&mut self, frame: Frame) -> Result<Frame, BoxError> {
            Ok(frame)
        }

        fn encode(&self, frame: Frame) -> Result<Frame, BoxError> {
            Ok(frame)
        }
    }

    #[test]
    fn transforms_learn_the_framings_limit() {
        let wire = crate::Wire::new(FrameCodec::with_max_frame_size(64)).transform(MakeTold);
        let server = Server::builder()
            .framing(wire.clone())
            .build()
            .expect("valid settings");
        let session = server.codec.make_framing(Side::Server);
        assert_eq!(session.transform().0, 64);
        assert_eq!(session.max_frame_size(), 64);
        let server = Server::builder()
            .framing(wire)
            .max_frame_size(100)
            .build()
            .expect("valid settings");
        assert_eq!(server.codec.make_framing(Side::Server).transform().0, 100);
    }

    #[test]
    fn the_later_of_max_frame_size_and_framing_wins() {
        let server = Server::builder()
            .max_frame_size(100)
            .framing(FrameCodec::with_max_frame_size(64))
            .build()
            .expect("valid settings");
        assert_eq!(server.codec.max_frame_size(), 64);
        let server = Server::builder()
            .framing(FrameCodec::with_max_frame_size(64))
            .max_frame_size(2 * 1024 * 1024)
            .build()
            .expect("valid settings");
        assert_eq!(server.codec.max_frame_size(), 2 * 1024 * 1024);
        assert_eq!(server.session.high_water(), 2 * 1024 * 1024);
    }
}
