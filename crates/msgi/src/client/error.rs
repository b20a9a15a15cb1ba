//! What can go wrong for a client, with the causes kept.

use std::fmt;
use std::io;
use std::sync::Arc;

use msgi_proto::CodecError;
use msgi_proto::ConfigError;

/// What went wrong for a client.
///
/// Causes are kept as [`source`](std::error::Error::source)s (an
/// [`io::Error`] for a failed connect, a [`CodecError`] for a frame that
/// could not be encoded); `Display` never repeats the text of its source.
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
        /// [`connect_with`](crate::ClientBuilder::connect_with).
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
    Protocol(String),
    /// The connection dropped while the request was in flight; it may or may
    /// not have been processed.
    ConnectionLost(String),
    /// The call waited longer than the queue timeout
    /// ([`ClientBuilder::queue_timeout`](crate::ClientBuilder::queue_timeout))
    /// for a connection; it was not sent.
    NotConnected,
    /// [`Service::call`](tower::Service::call) without a successful
    /// `poll_ready` just before; nothing was sent.
    NotReady,
    /// The outbox is full (only from [`Client::try_send`](crate::Client::try_send)).
    OutboxFull,
    /// The client is closed: closed by the application, or the connection
    /// was lost and reconnecting is off or gave up.
    Closed(String),
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
    /// `downcast_ref::<io::Error>()` works), the [`CodecError`] for `Encode`.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Config(e) => e.source(),
            ClientError::Connect { source, .. } => Some(&**source),
            ClientError::Encode(e) => Some(&**e),
            _ => None,
        }
    }
}

/// Equal when the variant and its text are equal; causes compare by what
/// can be compared (an [`io::Error`] by its kind, a [`CodecError`] by its
/// message).
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
            (Handshake(a), Handshake(b))
            | (Remote(a), Remote(b))
            | (Protocol(a), Protocol(b))
            | (ConnectionLost(a), ConnectionLost(b))
            | (Closed(a), Closed(b)) => a == b,
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

    pub(crate) fn connect(target: impl fmt::Display, source: io::Error) -> ClientError {
        ClientError::Connect {
            target: target.to_string(),
            source: Arc::new(source),
        }
    }
}
