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
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tower::Service;
use tracing::Instrument;

use crate::accept::{Accepted, ConnectInfo, NoHandshake};
use crate::driver::{Driver, SessionConfig};
use crate::observer::{Observer, Rejection};
use crate::registry::Registry;
use crate::serve::{MakeSessionService, Serve};
use crate::session::{CloseReason, OutboxLimits, Session};
use crate::transport::{IntoTransport, Transport};
use crate::BoxError;
use msgi_proto::session::Timers;
use msgi_proto::ConfigError;
use msgi_proto::{Frame, CORRELATED_HEADER_LEN};
use msgi_proto::{FrameCodec, Framing, MakeFraming};
use msgi_proto::{SessionKeys, Side};

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
/// # Fast accepts
///
/// `accept` should only take the connection: the server awaits one
/// `accept` at a time, so whatever it waits for holds back every later
/// connection. A handshake (TLS, a proxy header) belongs in the server's
/// accept step ([`Builder::accept`]), which runs in the connection's own
/// task, under the connection cap and the handshake timeout.
pub trait Listener: Send + 'static {
    /// The connection type, as accepted (before the server's accept step).
    type Io: Send + 'static;

    /// Waits for the next connection: the raw io and what is known about
    /// the peer (its address).
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, ConnectInfo)>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, ConnectInfo)> {
        let (stream, addr) = TcpListener::accept(self).await?;
        // Answers are written as soon as they are ready; Nagle would hold
        // small ones back for the peer's delayed ACK. A failure here is the
        // connection's (the peer already reset it), never the listener's:
        // it must not look like an accept error.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %addr, "set_nodelay failed");
        }
        Ok((stream, ConnectInfo::from_peer_addr(addr)))
    }
}

#[cfg(unix)]
impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, ConnectInfo)> {
        let (stream, addr) = tokio::net::UnixListener::accept(self).await?;
        let mut info = ConnectInfo::new();
        info.insert(addr);
        Ok((stream, info))
    }
}

/// Default of [`Builder::max_concurrent_request_bytes`]: 4 MiB.
const DEFAULT_MAX_CONCURRENT_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Default of [`Builder::outbox_bytes`]: 4 MiB.
pub(crate) const DEFAULT_OUTBOX_BYTES: usize = 4 * 1024 * 1024;
/// Default of [`Builder::outbox_capacity`]: 1024 frames.
pub(crate) const DEFAULT_OUTBOX_CAPACITY: usize = 1024;

type ConnectHook = Arc<dyn Fn(&Session) + Send + Sync>;
type DisconnectHook = Arc<dyn Fn(&Session, &CloseReason) + Send + Sync>;

/// Settings for a [`Server`]. Made by [`Server::builder`].
pub struct Builder<C = FrameCodec, A = NoHandshake> {
    codec: C,
    accept: A,
    max_connections: usize,
    /// The value of the last [`Builder::max_frame_size`] call since the
    /// framing was chosen (already written into `codec`), kept to validate it.
    max_frame_size: Option<usize>,
    idle_timeout: Option<Duration>,
    heartbeat_interval: Option<Duration>,
    handshake_timeout: Option<Duration>,
    max_concurrent_requests: usize,
    max_concurrent_request_bytes: usize,
    outbox_capacity: usize,
    outbox_bytes: usize,
    drain_timeout: Duration,
    max_connections_per_ip: Option<usize>,
    on_connect: Option<ConnectHook>,
    on_disconnect: Option<DisconnectHook>,
    observer: Option<Arc<dyn Observer>>,
    registry: Option<Registry>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            codec: FrameCodec::new(),
            accept: NoHandshake,
            max_connections: 10_000,
            max_frame_size: None,
            idle_timeout: Some(Duration::from_secs(60)),
            heartbeat_interval: Some(Duration::from_secs(20)),
            handshake_timeout: Some(Duration::from_secs(10)),
            max_concurrent_requests: 64,
            max_concurrent_request_bytes: DEFAULT_MAX_CONCURRENT_REQUEST_BYTES,
            outbox_capacity: DEFAULT_OUTBOX_CAPACITY,
            outbox_bytes: DEFAULT_OUTBOX_BYTES,
            drain_timeout: Duration::from_secs(5),
            max_connections_per_ip: None,
            on_connect: None,
            on_disconnect: None,
            observer: None,
            registry: None,
        }
    }
}

impl<C: MakeFraming, A> Builder<C, A> {
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
    pub fn outbox_capacity(mut self, frames: usize) -> Self {
        self.outbox_capacity = frames;
        self
    }

    /// Bytes that may wait in one session's outbox, each frame counting its
    /// payload plus 14 bytes (default 4 MiB; at least 1). A push that would
    /// go beyond it closes that session as a slow consumer, as a push beyond
    /// `outbox_capacity` does; a push into an empty outbox is always taken.
    pub fn outbox_bytes(mut self, bytes: usize) -> Self {
        self.outbox_bytes = bytes;
        self
    }

    /// How long a closing session may take to answer what it received and
    /// flush its output (default 5 s). Zero closes at once, without
    /// waiting for answers; a duration too large to add to the clock means
    /// no deadline.
    pub fn drain_timeout(mut self, deadline: Duration) -> Self {
        self.drain_timeout = deadline;
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

    /// Tells `observer` what the runtime sees (see [`Observer`]): sessions
    /// opened and closed (with the reason), rejected connections (with why).
    /// Without one (the default), each report is a branch not taken.
    pub fn observer(mut self, observer: impl Observer) -> Self {
        self.observer = Some(Arc::new(observer));
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

    /// Runs `step` on each accepted connection, inside the connection's own
    /// task, before its session starts: a `tower::Service` from
    /// [`Accepted<L::Io>`](Accepted) (the raw io from
    /// [`Listener::accept`] and its [`ConnectInfo`]) to an `Accepted` of
    /// what the session runs on (a TLS stream, wrapped in
    /// [`Plain`](crate::Plain) if this crate does not know its type), adding
    /// to the info what it learns (peer certificates, SNI, ALPN). The
    /// default, [`NoHandshake`], passes the connection on as it is.
    ///
    /// The step runs under the connection cap (it holds a place in
    /// `max_connections`) and the handshake timeout (past it the connection
    /// is dropped and reported as [`Rejection::AcceptTimeout`]), is dropped
    /// at shutdown, and never holds back another connection: the accept
    /// loop only asks its `poll_ready` and calls it. A step that fails ends
    /// that connection only ([`Rejection::AcceptFailed`]).
    pub fn accept<A2>(self, step: A2) -> Builder<C, A2> {
        Builder {
            codec: self.codec,
            accept: step,
            max_connections: self.max_connections,
            max_frame_size: self.max_frame_size,
            idle_timeout: self.idle_timeout,
            heartbeat_interval: self.heartbeat_interval,
            handshake_timeout: self.handshake_timeout,
            max_concurrent_requests: self.max_concurrent_requests,
            max_concurrent_request_bytes: self.max_concurrent_request_bytes,
            outbox_capacity: self.outbox_capacity,
            outbox_bytes: self.outbox_bytes,
            drain_timeout: self.drain_timeout,
            max_connections_per_ip: self.max_connections_per_ip,
            on_connect: self.on_connect,
            on_disconnect: self.on_disconnect,
            observer: self.observer,
            registry: self.registry,
        }
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
    pub fn framing<C2: MakeFraming>(self, codec: C2) -> Builder<C2, A> {
        Builder {
            codec,
            accept: self.accept,
            max_connections: self.max_connections,
            max_frame_size: None,
            idle_timeout: self.idle_timeout,
            heartbeat_interval: self.heartbeat_interval,
            handshake_timeout: self.handshake_timeout,
            max_concurrent_requests: self.max_concurrent_requests,
            max_concurrent_request_bytes: self.max_concurrent_request_bytes,
            outbox_capacity: self.outbox_capacity,
            outbox_bytes: self.outbox_bytes,
            drain_timeout: self.drain_timeout,
            max_connections_per_ip: self.max_connections_per_ip,
            on_connect: self.on_connect,
            on_disconnect: self.on_disconnect,
            observer: self.observer,
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
    pub fn build(self) -> Result<Server<C, A>, ConfigError> {
        self.validate()?;
        let codec = self.codec;
        // The codec's limit stands; each session's transforms are told it
        // when they are made.
        let max_frame_size = codec.codec().max_frame_size();
        // Pushes too large for the framing are refused by `Session::send`.
        let max_frame_len = u32::try_from(codec.max_sendable()).unwrap_or(u32::MAX);
        Ok(Server {
            codec,
            accept: self.accept,
            session: Arc::new(SessionConfig::new(
                Timers {
                    idle_timeout: self.idle_timeout,
                    heartbeat_interval: self.heartbeat_interval,
                    handshake_timeout: self.handshake_timeout,
                },
                self.max_concurrent_requests,
                self.max_concurrent_request_bytes,
                self.drain_timeout,
                max_frame_size.max(64 * 1024),
            )?),
            // `validate` keeps the counts within u32; no frame on the MSGI
            // wire is longer than u32::MAX bytes.
            outbox: Arc::new(OutboxLimits {
                frames: u32::try_from(self.outbox_capacity).unwrap_or(u32::MAX),
                bytes: u32::try_from(self.outbox_bytes).unwrap_or(u32::MAX),
                max_frame_len,
            }),
            common: Arc::new(Common {
                on_connect: self.on_connect,
                on_disconnect: self.on_disconnect,
                observer: self.observer,
                per_ip: self.max_connections_per_ip.map(|max| PerIp {
                    max,
                    counts: Mutex::new(HashMap::new()),
                }),
                max_connections: self.max_connections,
                permits: Arc::new(Semaphore::new(self.max_connections)),
                rejections: Arc::new(Semaphore::new(MAX_REJECTIONS)),
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                serving: AtomicBool::new(false),
                handshake_timeout: self.handshake_timeout,
                linger: LINGER.min(self.drain_timeout),
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
        at_least_one("outbox_capacity", self.outbox_capacity)?;
        at_least_one(
            "max_concurrent_request_bytes",
            self.max_concurrent_request_bytes,
        )?;
        at_least_one("outbox_bytes", self.outbox_bytes)?;
        // Kept per session in 32 bits (every byte of a session counts).
        for (setting, n) in [
            ("outbox_capacity", self.outbox_capacity),
            ("outbox_bytes", self.outbox_bytes),
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

impl<C, A> fmt::Debug for Builder<C, A> {
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
            .field("outbox_capacity", &self.outbox_capacity)
            .field("outbox_bytes", &self.outbox_bytes)
            .field("drain_timeout", &self.drain_timeout)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .finish_non_exhaustive()
    }
}

/// What every session of a server shares (one `Arc` per session, not a
/// copy of each part), and what `serve` and `serve_connection` share.
struct Common {
    on_connect: Option<ConnectHook>,
    on_disconnect: Option<DisconnectHook>,
    observer: Option<Arc<dyn Observer>>,
    per_ip: Option<PerIp>,
    max_connections: usize,
    /// Places for connections: one per connection from accept (its accept
    /// step included) to the end of its session.
    permits: Arc<Semaphore>,
    /// Rejections being written at once.
    rejections: Arc<Semaphore>,
    /// Every connection's task (`serve`'s and `serve_connection`'s).
    tracker: TaskTracker,
    /// Cancelled when the server shuts down: accept steps are dropped and
    /// later sessions close at once.
    shutdown: CancellationToken,
    /// A `serve` loop has started (one per server).
    serving: AtomicBool,
    handshake_timeout: Option<Duration>,
    /// How long a farewell written outside a session may take.
    linger: Duration,
}

impl Common {
    fn rejected(&self, rejection: Rejection) {
        if let Some(observer) = &self.observer {
            observer.connection_rejected(rejection);
        }
    }
}

/// Live sessions per peer IP address, for `max_connections_per_ip`. Taken
/// when a session starts and at its end only, never per frame. An address
/// leaves the map when its last session ends, so it holds at most one
/// entry per live session.
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
fn limited_ip(info: Option<std::net::SocketAddr>) -> Option<IpAddr> {
    info.map(|addr| addr.ip().to_canonical())
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
/// let ctrl_c = async { let _ = tokio::signal::ctrl_c().await; };
/// Server::builder()
///     .build()?
///     .serve(listener, echo)
///     .with_graceful_shutdown(ctrl_c)
///     .await?;
/// # Ok(())
/// # }
/// ```
///
/// A `Server` is a cheap clone (its parts are shared): keep one to call
/// [`serve_connection`](Server::serve_connection) from an HTTP server's
/// upgrade while another serves a listener; they share the registry, the
/// hooks, the connection cap and shutdown.
pub struct Server<C = FrameCodec, A = NoHandshake> {
    codec: C,
    accept: A,
    /// Shared by the server's sessions: one pointer in each, not a copy.
    session: Arc<SessionConfig>,
    outbox: Arc<OutboxLimits>,
    common: Arc<Common>,
    registry: Registry,
}

impl<C: Clone, A: Clone> Clone for Server<C, A> {
    fn clone(&self) -> Self {
        Server {
            codec: self.codec.clone(),
            accept: self.accept.clone(),
            session: self.session.clone(),
            outbox: self.outbox.clone(),
            common: self.common.clone(),
            registry: self.registry.clone(),
        }
    }
}

impl Server {
    /// Settings for a new server, with the defaults listed on each setter.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<C, A> fmt::Debug for Server<C, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("max_connections", &self.common.max_connections)
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

impl<C, A> Server<C, A> {
    /// The registry of this server's sessions; hold a clone in handlers.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }
}

impl<C, A> Server<C, A>
where
    C: MakeFraming,
{
    /// Serves `service` on `listener`: a handler `Service<Frame>` (cloned
    /// for each session), or a make-service wrapped in
    /// [`PerSession`](crate::PerSession) (see [`MakeSessionService`]). The
    /// returned [`Serve`] runs until the listener is gone (see [`Listener`]
    /// for which accept errors end it); add a shutdown signal with
    /// [`Serve::with_graceful_shutdown`].
    ///
    /// Each accepted connection gets a task at once: the accept loop never
    /// waits for one connection's handshake, its accept step or its
    /// service. A connection over `max_connections` gets ERROR `server
    /// full` (through the accept step, so a TLS client can read it) and is
    /// closed.
    pub fn serve<L, M, Io>(self, listener: L, make: M) -> Serve
    where
        L: Listener,
        A: Service<Accepted<L::Io>, Response = Accepted<Io>> + Send + 'static,
        Io: IntoTransport<C::Framing>,
        A::Error: Into<BoxError>,
        A::Future: Send + 'static,
        M: MakeSessionService,
    {
        Serve::new(Box::new(move |signal| {
            Box::pin(self.accept_loop(listener, make, signal))
        }))
    }

    /// Runs one session on `io`, an already accepted (and handshaken)
    /// connection, in hyper's `serve_connection` manner: for embedding msgi
    /// in another server (a WebSocket upgrade hands over its stream or a
    /// message transport here). `io` is a byte stream framed by the
    /// server's framing, or a [`Transport`] (see [`IntoTransport`]); `info`
    /// is what the session's [`connect_info`](Session::connect_info) finds.
    ///
    /// The session joins this server: its registry, its hooks and observer,
    /// its connection cap (beyond it, ERROR `server full` and the future
    /// ends), its per-IP limit, and its shutdown (a graceful shutdown of
    /// this server's [`serve`](Server::serve) closes this session too and
    /// waits for it; after shutdown this says DISCONNECT `server shutdown`
    /// at once). The future completes when the session has ended (the
    /// disconnect hook has run). The server's accept step is not run.
    pub fn serve_connection<I, M>(
        &self,
        io: I,
        info: ConnectInfo,
        make: M,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        I: IntoTransport<C::Framing>,
        M: MakeSessionService,
    {
        let common = self.common.clone();
        let work = match common.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let accepted = std::future::ready(Ok(Accepted::new(io, info)));
                Ok(self.session_task(accepted, make, permit))
            }
            Err(_) => {
                let codec = self.codec.make_framing(Side::Server);
                Err((io, codec))
            }
        };
        let tracker = common.tracker.clone();
        tracker.track_future(async move {
            match work {
                Ok(task) => task.instrument(session_span()).await,
                Err((io, codec)) => {
                    common.rejected(Rejection::ServerFull);
                    let last = Some(Frame::error(SERVER_FULL));
                    say_last(io.into_transport(codec), last, common.linger).await;
                }
            }
        })
    }

    fn session_task<AF, Io, M>(
        &self,
        accepting: AF,
        make: M,
        permit: OwnedSemaphorePermit,
    ) -> SessionTask<AF, M, C::Framing, <Io as IntoTransport<C::Framing>>::Transport>
    where
        AF: Future<Output = Result<Accepted<Io>, BoxError>>,
        Io: IntoTransport<C::Framing>,
        M: MakeSessionService,
    {
        let codec = self.codec.make_framing(Side::Server);
        SessionTask {
            guard: SessionGuard {
                session: None,
                registry: self.registry.clone(),
                common: self.common.clone(),
                reason: None,
                _permit: permit,
            },
            state: TaskState::Accepting {
                accepting,
                deadline: self
                    .common
                    .handshake_timeout
                    .and_then(|t| tokio::time::Instant::now().checked_add(t))
                    .map(tokio::time::sleep_until),
                shutdown: self.common.shutdown.clone().cancelled_owned(),
                make: Some(make),
                codec: Some(codec),
                cfg: self.session.clone(),
                outbox: self.outbox.clone(),
            },
        }
    }

    async fn accept_loop<L, M, Io>(
        mut self,
        mut listener: L,
        make: M,
        shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> io::Result<()>
    where
        L: Listener,
        A: Service<Accepted<L::Io>, Response = Accepted<Io>> + Send + 'static,
        Io: IntoTransport<C::Framing>,
        A::Error: Into<BoxError>,
        A::Future: Send + 'static,
        M: MakeSessionService,
    {
        self.common.serving.store(true, Ordering::Relaxed);
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let mut shutdown = shutdown;
        let mut result = Ok(());
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                () = self.common.shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (io, info) = match accepted {
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
            let ready = tokio::select! {
                () = &mut shutdown => break,
                ready = std::future::poll_fn(|cx| self.accept.poll_ready(cx)) => ready,
            };
            if let Err(e) = ready {
                let e: BoxError = e.into();
                tracing::error!(error = %e, "accept step failed; stopping");
                result = Err(io::Error::other(e));
                break;
            }
            let accepting = Accepting {
                fut: self.accept.call(Accepted::new(io, info)),
            };
            let span = session_span();
            match self.common.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let task = self.session_task(accepting, make.clone(), permit);
                    self.common.tracker.spawn(task.instrument(span));
                }
                Err(_) => self.reject_full(accepting),
            }
        }
        drop(listener);
        shut_down(&self.common, &self.registry, &self.outbox).await;
        result
    }

    /// Writes ERROR `server full` to a connection over `max_connections`,
    /// after its accept step (so a TLS client can read it), in a task of its
    /// own; beyond [`MAX_REJECTIONS`] at once, or if the accept step does not
    /// finish within the linger time, the connection is closed without a
    /// word.
    fn reject_full<AF, Io>(&self, accepting: AF)
    where
        AF: Future<Output = Result<Accepted<Io>, BoxError>> + Send + 'static,
        Io: IntoTransport<C::Framing>,
    {
        self.common.rejected(Rejection::ServerFull);
        let Ok(permit) = self.common.rejections.clone().try_acquire_owned() else {
            return;
        };
        let codec = self.codec.make_framing(Side::Server);
        let linger = self.common.linger;
        self.common.tracker.spawn(async move {
            let _permit = permit;
            let Ok(Ok(incoming)) = tokio::time::timeout(linger, accepting).await else {
                return;
            };
            let (io, mut info) = incoming.into_parts();
            let mut codec = codec;
            if let Some(keys) = info.remove::<SessionKeys>() {
                codec.set_session_keys(&keys);
            }
            say_last(
                io.into_transport(codec),
                Some(Frame::error(SERVER_FULL)),
                linger,
            )
            .await;
        });
    }
}

/// Shuts a server down: stops accept steps, asks every session to close,
/// and waits for every connection's task.
async fn shut_down(common: &Common, registry: &Registry, outbox: &Arc<OutboxLimits>) {
    common.shutdown.cancel();
    // This server's sessions only: a registry may be shared.
    registry.close_served_with(outbox, CloseReason::ServerShutdown);
    common.tracker.close();
    common.tracker.wait().await;
}

pin_project_lite::pin_project! {
    /// An accept step's future, its error boxed.
    struct Accepting<F> {
        #[pin]
        fut: F,
    }
}

impl<F, Io, E> Future for Accepting<F>
where
    F: Future<Output = Result<Accepted<Io>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Accepted<Io>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().fut.poll(cx).map_err(Into::into)
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

/// Writes what `transport` has queued and `last`, closes the write side,
/// then reads until the peer closes so unread input cannot turn our close
/// into a reset that destroys the bytes in flight; all of it within
/// `linger`. For connections that get no session, or whose session ends
/// before its service was made.
async fn say_last<X: Transport>(mut transport: X, last: Option<Frame>, linger: Duration) {
    if let Some(frame) = last {
        if transport.queue(frame).is_err() {
            return;
        }
    }
    let farewell = async {
        std::future::poll_fn(|cx| transport.poll_write(cx)).await?;
        std::future::poll_fn(|cx| transport.poll_shutdown(cx)).await?;
        std::future::poll_fn(|cx| transport.poll_discard(cx)).await;
        Ok::<_, io::Error>(())
    };
    // `timeout` treats a deadline too far to compute as none.
    let _ = tokio::time::timeout(linger, farewell).await;
}

/// The span of one connection's task (DEBUG: what a session logs carries
/// it when `msgi::server` is at DEBUG): the session's `id`, `peer` and
/// `transport` are recorded once it has a session, its `client` id once
/// announced (HELLO accepted). Per-request spans (DEBUG, `msgi::driver`)
/// are its children. Not INFO: a formatting subscriber keeps about 400
/// bytes per live span, which would put an idle session over its 2 KiB
/// (`msgi bench idle` at `RUST_LOG=info`: 2,281 B, against 1,876 B).
fn session_span() -> tracing::Span {
    tracing::debug_span!(
        "session",
        id = tracing::field::Empty,
        client = tracing::field::Empty,
        peer = tracing::field::Empty,
        transport = tracing::field::Empty,
    )
}

/// A bounded name of the session's transport, for its span: `websocket`
/// when the WebSocket accept step made it, `tcp` for a peer with a socket
/// address, `unix` for a Unix socket, else `stream` (a stream given to
/// `serve_connection` without either). TLS, an accept step, is not told.
fn transport_name(session: &Session) -> &'static str {
    #[cfg(feature = "websocket")]
    if session
        .connect_info::<crate::ws::WebSocketRequest>()
        .is_some()
    {
        return "websocket";
    }
    if session.peer_addr().is_some() {
        return "tcp";
    }
    #[cfg(unix)]
    if session
        .connect_info::<tokio::net::unix::SocketAddr>()
        .is_some()
    {
        return "unix";
    }
    "stream"
}

/// Holds a connection's place under `max_connections` for its whole task;
/// once it has a session, leaves the registry, releases the per-IP count
/// and runs the observer and the disconnect hook exactly once, when the
/// task ends, however it ends (a panicking handler included).
struct SessionGuard {
    session: Option<Session>,
    registry: Registry,
    common: Arc<Common>,
    reason: Option<CloseReason>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        self.registry.remove(&session);
        // A session exists only once its place in the per-IP count was
        // taken (for a peer with an IP address, when that limit is on).
        if let (Some(per_ip), Some(ip)) = (&self.common.per_ip, limited_ip(session.peer_addr())) {
            per_ip.release(ip);
        }
        let reason = self.reason.take().unwrap_or(CloseReason::Aborted);
        tracing::debug!(%reason, "session ended");
        // After the hook, which may still read the session's data, and
        // even if the hook panics.
        let _release = Release(&session);
        if let Some(observer) = &self.common.observer {
            observer.session_closed(&session, &reason);
        }
        if let Some(hook) = &self.common.on_disconnect {
            hook(&session, &reason);
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
    /// One connection's task: its accept step, then its service made, then
    /// its session driven. Written out by hand rather than as an `async fn`
    /// so the connection and codec are stored once (an `async fn` keeps its
    /// arguments beside the futures it awaits); an idle session's task is
    /// what its memory mostly is.
    struct SessionTask<AF, M, C, X>
    where
        M: MakeSessionService,
    {
        guard: SessionGuard,
        #[pin]
        state: TaskState<AF, M, C, X>,
    }
}

pin_project_lite::pin_project! {
    #[project = TaskStateProj]
    enum TaskState<AF, M, C, X>
    where
        M: MakeSessionService,
    {
        // The accept step, under the handshake timeout and shutdown.
        Accepting {
            #[pin]
            accepting: AF,
            #[pin]
            deadline: Option<tokio::time::Sleep>,
            #[pin]
            shutdown: WaitForCancellationFutureOwned,
            make: Option<M>,
            codec: Option<C>,
            cfg: Arc<SessionConfig>,
            outbox: Arc<OutboxLimits>,
        },
        // The session exists; its service is being made.
        Making {
            make: M,
            #[pin]
            making: Option<M::MakeFuture>,
            transport: Option<X>,
            cfg: Arc<SessionConfig>,
        },
        Running {
            driver: Driver<X, M::Service>,
        },
        // Closed before its service was made, or refused: the last words,
        // boxed (rare, and it keeps this variant smaller than the others).
        Closing {
            farewell: Pin<Box<dyn Future<Output = ()> + Send>>,
        },
    }
}

impl<AF, Io, M, C> Future for SessionTask<AF, M, C, Io::Transport>
where
    AF: Future<Output = Result<Accepted<Io>, BoxError>>,
    Io: IntoTransport<C>,
    M: MakeSessionService,
    C: Framing,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            let guard = &mut *this.guard;
            let common = &*guard.common;
            match this.state.as_mut().project() {
                TaskStateProj::Accepting {
                    accepting,
                    deadline,
                    shutdown,
                    make,
                    codec,
                    cfg,
                    outbox,
                } => {
                    let incoming = match accepting.poll(cx) {
                        Poll::Ready(Ok(incoming)) => incoming,
                        Poll::Ready(Err(e)) => {
                            tracing::debug!(error = %e, "accept step failed");
                            common.rejected(Rejection::AcceptFailed);
                            return Poll::Ready(());
                        }
                        Poll::Pending => {
                            if shutdown.poll(cx).is_ready() {
                                common.rejected(Rejection::ServerShutdown);
                                return Poll::Ready(());
                            }
                            if deadline.as_pin_mut().is_some_and(|d| d.poll(cx).is_ready()) {
                                tracing::debug!("accept step timed out");
                                common.rejected(Rejection::AcceptTimeout);
                                return Poll::Ready(());
                            }
                            return Poll::Pending;
                        }
                    };
                    let (Some(codec), Some(make)) = (codec.take(), make.take()) else {
                        // Only reachable if polled again after completing.
                        return Poll::Ready(());
                    };
                    let (io, mut info) = incoming.into_parts();
                    let mut codec = codec;
                    // Keys from the accept step (a pre-shared-key handshake)
                    // go to the transforms, not into the session's info.
                    if let Some(keys) = info.remove::<SessionKeys>() {
                        codec.set_session_keys(&keys);
                    }
                    let transport = io.into_transport(codec);
                    if let (Some(per_ip), Some(ip)) = (&common.per_ip, limited_ip(info.peer_addr()))
                    {
                        if !per_ip.try_acquire(ip) {
                            common.rejected(Rejection::TooManyFromAddress);
                            let last = Some(Frame::error(TOO_MANY_FROM_ADDRESS));
                            let farewell = Box::pin(say_last(transport, last, common.linger));
                            this.state.set(TaskState::Closing { farewell });
                            continue;
                        }
                    }
                    let session = guard.registry.register(info, outbox.clone());
                    // Registered after `shutdown` asked every session to
                    // close: close this one too (the registry's lock orders
                    // the two).
                    if common.shutdown.is_cancelled() {
                        session.close_with(CloseReason::ServerShutdown);
                    }
                    let span = tracing::Span::current();
                    if !span.is_disabled() {
                        span.record("id", tracing::field::display(session.id()));
                        if let Some(addr) = session.peer_addr() {
                            span.record("peer", tracing::field::display(addr));
                        }
                        span.record("transport", transport_name(&session));
                    }
                    guard.session = Some(session.clone());
                    if let Some(observer) = &common.observer {
                        observer.session_opened(&session);
                    }
                    if let Some(hook) = &common.on_connect {
                        hook(&session);
                    }
                    let cfg = cfg.clone();
                    this.state.set(TaskState::Making {
                        make,
                        making: None,
                        transport: Some(transport),
                        cfg,
                    });
                }
                TaskStateProj::Making {
                    make,
                    mut making,
                    transport,
                    cfg,
                } => {
                    let Some(session) = guard.session.clone() else {
                        return Poll::Ready(());
                    };
                    // A close (shutdown, the application) must not wait for a
                    // make-service that may never finish.
                    session.register(cx);
                    if let Some(reason) = session.closing() {
                        if reason == CloseReason::SlowConsumer {
                            // As a running session does: close at once, writing nothing.
                            guard.reason = Some(reason);
                            return Poll::Ready(());
                        }
                        let Some(mut transport) = transport.take() else {
                            return Poll::Ready(());
                        };
                        // Pushes taken so far (the connect hook's welcome)
                        // got `Ok`: they go out before the DISCONNECT, through
                        // the session's transport, as a running session's do.
                        session.seal_outbox();
                        session.drain_outbox(|frame| {
                            if let Err(e) = transport.queue(frame) {
                                tracing::warn!(session = %session.id(), error = %e, "pushed frame could not be encoded; dropped");
                            }
                            true
                        });
                        let last = Some(session.farewell(&reason));
                        let linger = LINGER.min(cfg.drain_timeout());
                        guard.reason = Some(reason);
                        let farewell = Box::pin(say_last(transport, last, linger));
                        this.state.set(TaskState::Closing { farewell });
                        continue;
                    }
                    if making.is_none() {
                        match make.poll_ready(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Err(e)) => {
                                guard.reason = Some(CloseReason::ServiceFailed(e.to_string()));
                                return Poll::Ready(());
                            }
                            Poll::Ready(Ok(())) => making.set(Some(make.make(session.clone()))),
                        }
                    }
                    let Some(fut) = making.as_mut().as_pin_mut() else {
                        return Poll::Ready(());
                    };
                    let service = match std::task::ready!(fut.poll(cx)) {
                        Ok(service) => service,
                        Err(e) => {
                            guard.reason = Some(CloseReason::ServiceFailed(e.to_string()));
                            return Poll::Ready(());
                        }
                    };
                    let Some(transport) = transport.take() else {
                        // Only reachable if polled again after completing.
                        return Poll::Ready(());
                    };
                    let driver = Driver::new(
                        transport,
                        service,
                        session,
                        guard.registry.clone(),
                        cfg.clone(),
                        guard.common.observer.clone(),
                    );
                    this.state.set(TaskState::Running { driver });
                }
                TaskStateProj::Running { driver } => {
                    let reason = std::task::ready!(driver.poll(cx));
                    guard.reason = Some(reason);
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
        let e = refused(Server::builder().outbox_capacity(0));
        assert_eq!(e.setting(), "outbox_capacity");
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
            .drain_timeout(Duration::MAX)
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
        assert_eq!(limited_ip(Some(v4)), limited_ip(Some(mapped)));
        assert_eq!(limited_ip(None), None);
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
