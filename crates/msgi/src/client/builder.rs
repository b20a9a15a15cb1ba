//! [`ClientBuilder`] and [`Reconnect`]: the settings, checked when the
//! client connects, and opening one connection (connect plus handshake).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::ToSocketAddrs;
use tokio::sync::Semaphore;
use tower::Service;

use super::connector::{Connected, Connector, FnConnector, TcpConnector};
use super::{Client, ClientError};
use msgi_proto::session::Timers;
use msgi_proto::CORRELATED_HEADER_LEN;
use msgi_proto::{BoxError, ConfigError};
use msgi_proto::{FrameCodec, Framing, MakeFraming};

/// How to reconnect after the connection is lost: exponential backoff with
/// jitter, each delay drawn between half and all of the nominal one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reconnect {
    /// The first delay (default 100 ms). A zero delay (here or in
    /// `max_delay`) is refused when connecting unless `max_attempts` is set.
    pub initial_delay: Duration,
    /// The longest delay (default 10 s).
    pub max_delay: Duration,
    /// Factor between successive delays (default 2; must be finite and at
    /// least 1).
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
    /// The delay before attempt `attempt` (0-based), jitter included. Never
    /// panics: a nominal delay that is not a finite number of seconds is
    /// `max_delay`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal =
            self.initial_delay.as_secs_f64() * self.multiplier.powi(attempt.min(64) as i32);
        let capped = nominal.min(self.max_delay.as_secs_f64()).max(0.0);
        Duration::try_from_secs_f64(capped * (0.5 + fastrand::f64() * 0.5))
            .unwrap_or(self.max_delay)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(ConfigError::new(
                "reconnect",
                format!(
                    "multiplier must be a finite number >= 1, not {}",
                    self.multiplier
                ),
            ));
        }
        if (self.initial_delay.is_zero() || self.max_delay.is_zero()) && self.max_attempts.is_none()
        {
            return Err(ConfigError::new(
                "reconnect",
                "delays must be above zero when attempts are unlimited \
                 (a zero delay would retry in a tight loop)",
            ));
        }
        Ok(())
    }
}

/// Timeouts at least this long mean "never": no clock arithmetic is done
/// with them, so a huge setting cannot overflow.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub(super) fn finite(timeout: Option<Duration>) -> Option<Duration> {
    timeout.filter(|t| *t < NEVER)
}

/// Settings for a [`Client`]. Made by [`Client::builder`]; checked by
/// [`connect`](ClientBuilder::connect), which refuses a setting that cannot
/// work with [`ClientError::Config`].
#[derive(Debug, Clone)]
pub struct ClientBuilder<C = FrameCodec> {
    pub(super) framing: C,
    /// The value of the last [`ClientBuilder::max_frame_size`] call since
    /// the framing was chosen (already written into `framing`), kept to
    /// validate it.
    max_frame_size: Option<usize>,
    pub(super) connect_timeout: Duration,
    pub(super) client_id: Option<String>,
    nodelay: bool,
    pub(super) reconnect: Option<Reconnect>,
    heartbeat_interval: Option<Duration>,
    idle_timeout: Option<Duration>,
    pub(super) outbox: usize,
    pub(super) incoming: usize,
    pub(super) incoming_bytes: usize,
    pub(super) max_concurrent_requests: usize,
    pub(super) queue_timeout: Option<Duration>,
    pub(super) acknowledged: Option<(usize, usize)>,
    pub(super) recover_pushes: bool,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            framing: FrameCodec::new(),
            max_frame_size: None,
            connect_timeout: Duration::from_secs(5),
            client_id: None,
            nodelay: true,
            reconnect: None,
            heartbeat_interval: Some(Duration::from_secs(20)),
            idle_timeout: Some(Duration::from_secs(60)),
            outbox: 1024,
            incoming: 1024,
            incoming_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 1024,
            queue_timeout: Some(Duration::from_secs(10)),
            acknowledged: None,
            recover_pushes: false,
        }
    }
}

impl<C: MakeFraming + Clone + fmt::Debug> ClientBuilder<C> {
    /// Uses another framing, such as a codec under wire transforms
    /// ([`Wire`](crate::Wire), with those of `msgi-middleware`); it must
    /// match the server's. It is a [`MakeFraming`]: each connection,
    /// reconnections included, gets a framing of its own, made fresh
    /// ([`MakeFraming::make_framing`]). The codec keeps the limit it was
    /// made with (`FrameCodec::with_max_frame_size(64)` stays 64): this
    /// replaces an earlier
    /// [`max_frame_size`](ClientBuilder::max_frame_size) setting, so call
    /// `max_frame_size` after this to change it (the later call wins).
    pub fn framing<C2: MakeFraming + Clone + fmt::Debug>(self, framing: C2) -> ClientBuilder<C2> {
        ClientBuilder {
            framing,
            max_frame_size: None,
            connect_timeout: self.connect_timeout,
            client_id: self.client_id,
            nodelay: self.nodelay,
            reconnect: self.reconnect,
            heartbeat_interval: self.heartbeat_interval,
            idle_timeout: self.idle_timeout,
            outbox: self.outbox,
            incoming: self.incoming,
            incoming_bytes: self.incoming_bytes,
            max_concurrent_requests: self.max_concurrent_requests,
            queue_timeout: self.queue_timeout,
            acknowledged: self.acknowledged,
            recover_pushes: self.recover_pushes,
        }
    }

    /// Time allowed for connecting and the handshake (default 5 s; zero is
    /// refused; 100 years or more means never). Also bounds how long
    /// [`Client::close`] waits for queued bytes to be written.
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

    /// Largest frame accepted or sent, header included (default: the
    /// framing's own limit, 1 MiB for [`FrameCodec::new`]).
    ///
    /// The framing is the one source of truth for this limit: this writes
    /// `bytes` into the framing chosen so far (see
    /// [`Framing::set_max_frame_size`]); a later
    /// [`framing`](ClientBuilder::framing) call replaces it. Connecting
    /// refuses a value below the 14-byte correlated header or above what
    /// the 32-bit length field can carry.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.framing.codec_mut().set_max_frame_size(bytes);
        self.max_frame_size = Some(bytes);
        self
    }

    /// Send HEARTBEAT after this long without sending (default 20 s; zero
    /// is refused; `None` or 100 years or more means never).
    pub fn heartbeat_interval(mut self, interval: Option<Duration>) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Treat the connection as lost after this long without receiving
    /// (default 60 s; zero is refused; `None` or 100 years or more means
    /// never).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Capacity of the outbox, in frames (default 1024; zero is refused).
    pub fn outbox_capacity(mut self, frames: usize) -> Self {
        self.outbox = frames;
        self
    }

    /// Capacity of the queue of server-pushed frames, in frames (default
    /// 1024; zero is refused). It also bounds the frames a server may send
    /// before answering the handshake. See [`Client::incoming`] for what
    /// happens to a push that does not fit.
    pub fn incoming_capacity(mut self, frames: usize) -> Self {
        self.incoming = frames;
        self
    }

    /// Capacity of the queue of server-pushed frames, in bytes (wire size;
    /// default 4 MiB; zero is refused). A single push larger than this is
    /// still taken when the queue is empty. It also bounds the bytes a
    /// server may send before answering the handshake.
    pub fn incoming_bytes(mut self, bytes: usize) -> Self {
        self.incoming_bytes = bytes;
        self
    }

    /// Correlated calls reserved or in flight, at most (default 1024; zero
    /// is refused). At the limit, `poll_ready` and [`Client::call`] wait.
    pub fn max_concurrent_requests(mut self, calls: usize) -> Self {
        self.max_concurrent_requests = calls;
        self
    }

    /// How long a call waits for a connection while the client is
    /// disconnected (reconnecting) before it fails with
    /// [`ClientError::NotConnected`] without being sent (default 10 s;
    /// `None` waits as long as the client reconnects). The time runs from
    /// the call if it was made while disconnected (waiting for room in the
    /// outbox, or in it behind held one-way frames, included), else from
    /// when the task takes it off the outbox after the connection dropped.
    pub fn queue_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.queue_timeout = timeout;
        self
    }

    /// Acknowledged delivery (docs/RELIABILITY.md): the server acknowledges
    /// the one-way frames it handed to its application, and the client
    /// keeps every frame [`send`](Client::send) accepted until then, at
    /// most `frames` frames and `bytes` wire bytes (a frame into an empty
    /// window is always taken), and sends the unacknowledged ones again
    /// after a reconnect. The server drops the ones it already handed on,
    /// so its handler sees each frame once across reconnects to a live
    /// server (at least once if the server lost its state). A full window
    /// holds the outbox: `send` waits, [`Client::try_send`] fails with
    /// [`ClientError::OutboxFull`], [`Client::send_timeout`] fails at its
    /// deadline. Needs a [`client_id`](ClientBuilder::client_id) and a server
    /// with [`AckLayer`](crate::delivery::AckLayer); a server without it
    /// refuses (the connection is lost with
    /// `ConnectionError::DeliveryRefused`). Default: off (a one-way frame is
    /// at most once once its bytes are written).
    pub fn acknowledged(mut self, frames: usize, bytes: usize) -> Self {
        self.acknowledged = Some((frames, bytes));
        self
    }

    /// Push recovery, with [`acknowledged`](ClientBuilder::acknowledged)
    /// delivery (docs/RELIABILITY.md): the server keeps the pushes it made
    /// with [`AckStore::push`](crate::delivery::AckStore::push) for this
    /// client id until the client has them, and sends those it missed when
    /// it reconnects within the server's grace period; each reaches
    /// [`Client::incoming`] once. [`Client::recovered`] says whether the
    /// last reconnect found them kept, [`Client::missed_pushes`] how many
    /// the server said were lost. Default: off (a push to a client that is
    /// away is refused to the pusher). Needs `acknowledged`: the builder
    /// refuses it otherwise.
    pub fn recover_pushes(mut self, on: bool) -> Self {
        self.recover_pushes = on;
        self
    }

    /// Checks every setting; a bad one is a [`ConfigError`] naming it.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let frame_size = |setting: &'static str, bytes: usize| {
            if bytes < CORRELATED_HEADER_LEN || bytes > u32::MAX as usize {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "must be between {CORRELATED_HEADER_LEN} and {} bytes, not {bytes}",
                        u32::MAX
                    ),
                ));
            }
            Ok(())
        };
        if let Some(bytes) = self.max_frame_size {
            frame_size("max_frame_size", bytes)?;
        }
        // The framing's own limit (`FrameCodec::with_max_frame_size`) too;
        // a text framing (no header) only needs room for one byte.
        let codec = self.framing.codec();
        if codec.is_binary() {
            frame_size("framing", codec.max_frame_size())?;
        } else if codec.max_frame_size() == 0 {
            return Err(ConfigError::new(
                "framing",
                "maximum line must be at least 1",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::new("connect_timeout", "must be above zero"));
        }
        if self.heartbeat_interval.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new(
                "heartbeat_interval",
                "must be above zero (None disables it)",
            ));
        }
        if self.idle_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new(
                "idle_timeout",
                "must be above zero (None disables it)",
            ));
        }
        let counts = [
            ("outbox_capacity", self.outbox),
            ("incoming_capacity", self.incoming),
            ("incoming_bytes", self.incoming_bytes),
            ("max_concurrent_requests", self.max_concurrent_requests),
        ];
        for (setting, value) in counts {
            if value == 0 {
                return Err(ConfigError::new(setting, "must be at least 1"));
            }
        }
        // tokio's channels and semaphores refuse more than this.
        let most = Semaphore::MAX_PERMITS;
        for (setting, value) in [
            ("outbox_capacity", self.outbox),
            ("incoming_capacity", self.incoming),
            ("max_concurrent_requests", self.max_concurrent_requests),
        ] {
            if value > most {
                return Err(ConfigError::new(setting, format!("must be at most {most}")));
            }
        }
        if let Some(policy) = &self.reconnect {
            policy.validate()?;
        }
        Ok(())
    }

    /// Connects over TCP to `addr` (each address it resolves to is tried in
    /// turn; an error names the last one tried): [`TcpConnector`] with
    /// this builder's [`nodelay`](ClientBuilder::nodelay).
    pub async fn connect<A>(self, addr: A) -> Result<Client, ClientError>
    where
        A: ToSocketAddrs + Clone + Send + Sync + 'static,
    {
        let connector = TcpConnector::new().nodelay(self.nodelay);
        self.connect_with_connector(connector, addr).await
    }

    /// Connects with `connector`, a tower service that opens a transport to
    /// `target` (as hyper-util's and tonic's connectors do): it is made
    /// ready and called once per connection, again for each reconnect. Any
    /// transport works (TLS, Unix socket, in-memory pipe); a connector that
    /// runs a handshake answers an [`Accepted`](crate::Accepted) carrying
    /// what it established (see [`Connected`]). Its error, if
    /// not a [`ClientError`] already, becomes [`ClientError::Connect`] to
    /// `the transport` with the error as its source.
    pub async fn connect_with_connector<S, A>(
        self,
        connector: S,
        target: A,
    ) -> Result<Client, ClientError>
    where
        S: Service<A> + Send + 'static,
        S::Response: Connected,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        A: Clone + Send + 'static,
    {
        Client::start(self, Connector::new(connector, target)).await
    }

    /// Connects with `connector`, called again for each reconnect: any
    /// transport (TLS, Unix socket, in-memory pipe) works. The closure form
    /// of [`connect_with_connector`](ClientBuilder::connect_with_connector).
    pub async fn connect_with<T, F>(self, connector: F) -> Result<Client, ClientError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnMut() -> Pin<Box<dyn Future<Output = io::Result<T>> + Send>> + Send + 'static,
    {
        self.connect_with_connector(FnConnector(connector), ())
            .await
    }

    pub(super) fn timers(&self) -> Timers {
        Timers {
            idle_timeout: finite(self.idle_timeout),
            heartbeat_interval: finite(self.heartbeat_interval),
            handshake_timeout: None,
        }
    }
}
