//! What can go wrong for a client, with the causes kept as types.

use std::fmt;
use std::io;
use std::sync::Arc;

use msgi_proto::client::{ConnectionError, Violation};
use msgi_proto::CodecError;
use msgi_proto::ConfigError;

/// What went wrong for a client.
///
/// Causes are kept as types a caller can match (quinn's `ConnectionError`
/// is the model): why a connection ended is a
/// [`ConnectionError`](msgi_proto::client::ConnectionError), how the server
/// broke the protocol a [`Violation`](msgi_proto::client::Violation), why
/// the client stopped a [`CloseCause`]; underlying errors are
/// [`source`](std::error::Error::source)s (an [`io::Error`] for a failed
/// connect, a [`CodecError`] for a frame that could not be encoded or
/// decoded). `Display` never repeats the text of its source.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientError {
    /// A [`ClientBuilder`](crate::ClientBuilder) setting cannot work.
    Config(ConfigError),
    /// Connecting (TCP connect plus handshake) took longer than the connect timeout.
    ConnectTimeout,
    /// The connection could not be opened. `source` is the [`io::Error`],
    /// so a caller can match its [`kind`](io::Error::kind)
    /// (`ConnectionRefused`, ...).
    Connect {
        /// The address tried last (`127.0.0.1:7000`), or `the transport`
        /// for a connector given to
        /// [`connect_with`](crate::ClientBuilder::connect_with) or
        /// [`connect_with_connector`](crate::ClientBuilder::connect_with_connector).
        target: String,
        /// Why it failed.
        source: Arc<io::Error>,
    },
    /// The server refused the handshake, with this reason (escaped, capped).
    Handshake(String),
    /// The server answered the request with an ERROR frame carrying this
    /// reason (escaped, capped).
    Remote(String),
    /// The frame could not be encoded (too large for the framing's maximum
    /// frame size, or a wire transform refused it): it was not sent, and
    /// nothing else on the connection was disturbed.
    Encode(Arc<CodecError>),
    /// The server broke the protocol towards this client (an answer of a
    /// kind that cannot answer, too many frames before WELCOME, ...).
    Protocol(Violation),
    /// The connection ended while the request was in flight (it may or may
    /// not have been processed), or during the handshake; why.
    ConnectionLost(ConnectionError),
    /// The call waited longer than the queue timeout
    /// ([`ClientBuilder::queue_timeout`](crate::ClientBuilder::queue_timeout))
    /// for a connection; it was not sent.
    NotConnected,
    /// [`Service::call`](tower::Service::call) without a successful
    /// `poll_ready` just before (nothing was sent), or a response future
    /// polled again after it completed.
    NotReady,
    /// The outbox is full (only from [`Client::try_send`](crate::Client::try_send)).
    OutboxFull,
    /// The client is closed, and why.
    Closed(CloseCause),
}

/// Why a client stopped for good.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CloseCause {
    /// The application called [`Client::close`](crate::Client::close).
    Application,
    /// Every handle was dropped and no answer was outstanding.
    HandlesDropped,
    /// The connection ended, and reconnecting is off or gave up.
    Lost(ConnectionError),
    /// The client's task ended without saying why (the runtime shut down).
    TaskEnded,
}

impl CloseCause {
    /// A short label from a bounded set (for metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            CloseCause::Application => "application",
            CloseCause::HandlesDropped => "handles_dropped",
            CloseCause::Lost(_) => "connection_lost",
            CloseCause::TaskEnded => "task_ended",
        }
    }
}

impl fmt::Display for CloseCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseCause::Application => f.write_str("closed by the application"),
            CloseCause::HandlesDropped => f.write_str("every handle was dropped"),
            CloseCause::Lost(e) => write!(f, "connection lost: {e}"),
            CloseCause::TaskEnded => f.write_str("client task ended"),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Config(e) => fmt::Display::fmt(e, f),
            ClientError::ConnectTimeout => f.write_str("connect timed out"),
            // The io::Error is the source: printed by whoever walks the chain, not twice.
            ClientError::Connect { target, .. } => write!(f, "could not connect to {target}"),
            ClientError::Handshake(reason) => write!(f, "handshake refused: {reason}"),
            ClientError::Remote(reason) => write!(f, "server error: {reason}"),
            ClientError::Encode(_) => f.write_str("frame not sent: it could not be encoded"),
            ClientError::Protocol(what) => write!(f, "protocol violation by the server: {what}"),
            ClientError::ConnectionLost(why) => write!(f, "connection lost: {why}"),
            ClientError::NotConnected => {
                f.write_str("not connected within the queue timeout; the call was not sent")
            }
            ClientError::NotReady => {
                f.write_str("called without readiness (poll_ready must return Ready(Ok) first)")
            }
            ClientError::OutboxFull => f.write_str("outbox full"),
            ClientError::Closed(why) => write!(f, "client closed: {why}"),
        }
    }
}

impl std::error::Error for ClientError {
    /// The [`io::Error`] itself for `Connect` (not the `Arc` around it, so
    /// `downcast_ref::<io::Error>()` works), the [`CodecError`] for `Encode`;
    /// for the typed causes whose text `Display` already includes, their
    /// own source (a [`CodecError`]'s behind an undecodable frame).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Config(e) => e.source(),
            ClientError::Connect { source, .. } => Some(&**source),
            ClientError::Encode(e) => Some(&**e),
            ClientError::Protocol(v) => std::error::Error::source(v),
            ClientError::ConnectionLost(e) | ClientError::Closed(CloseCause::Lost(e)) => {
                std::error::Error::source(e)
            }
            _ => None,
        }
    }
}

/// Equal when the variant and its text are equal; causes compare by what
/// can be compared (an [`io::Error`] by its kind, the rest by message).
impl PartialEq for ClientError {
    fn eq(&self, other: &ClientError) -> bool {
        use ClientError::*;
        match (self, other) {
            (Config(a), Config(b)) => a == b,
            (ConnectTimeout, ConnectTimeout)
            | (NotConnected, NotConnected)
            | (NotReady, NotReady)
            | (OutboxFull, OutboxFull) => true,
            (
                Connect { target, source },
                Connect {
                    target: other_target,
                    source: other_source,
                },
            ) => target == other_target && source.kind() == other_source.kind(),
            (Encode(a), Encode(b)) => a.to_string() == b.to_string(),
            (Handshake(a), Handshake(b)) | (Remote(a), Remote(b)) => a == b,
            (Protocol(_), Protocol(_))
            | (ConnectionLost(_), ConnectionLost(_))
            | (Closed(_), Closed(_)) => self.to_string() == other.to_string(),
            _ => false,
        }
    }
}

impl Eq for ClientError {}

impl From<ConfigError> for ClientError {
    fn from(e: ConfigError) -> ClientError {
        ClientError::Config(e)
    }
}

impl ClientError {
    /// The I/O error behind a failed connect, if that is what this is.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            ClientError::Connect { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Why the connection ended, if that is what this is (a call lost with
    /// its connection, or a client stopped because it was lost).
    pub fn connection_error(&self) -> Option<&ConnectionError> {
        match self {
            ClientError::ConnectionLost(e) | ClientError::Closed(CloseCause::Lost(e)) => Some(e),
            _ => None,
        }
    }

    /// How the server broke the protocol, if that is what this is, directly
    /// or as the reason its connection ended (bad magic:
    /// `Violation::Codec` holding [`CodecError::BadMagic`]).
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            ClientError::Protocol(v) => Some(v),
            _ => self.connection_error().and_then(ConnectionError::violation),
        }
    }

    pub(crate) fn connect(target: impl fmt::Display, source: io::Error) -> ClientError {
        ClientError::Connect {
            target: target.to_string(),
            source: Arc::new(source),
        }
    }
}
