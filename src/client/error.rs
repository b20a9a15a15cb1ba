//! What can go wrong for a client, with the causes kept.

use std::fmt;
use std::io;
use std::sync::Arc;

use crate::codec::CodecError;
use crate::config::ConfigError;

/// What went wrong for a client.
///
/// Causes are kept as [`source`](std::error::Error::source)s (an
/// [`io::Error`] for a failed connect, a [`CodecError`] for a frame that
/// could not be encoded); `Display` never repeats the text of its source.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A [`ClientBuilder`](crate::ClientBuilder) setting cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Connecting (TCP connect plus handshake) took longer than the connect timeout.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The connection could not be opened. `source` is the [`io::Error`],
    /// so a caller can match its [`kind`](io::Error::kind)
    /// (`ConnectionRefused`, ...).
    #[error("connecting to {target}: {}", .source.kind())]
    Connect {
        /// The address tried last (`127.0.0.1:7000`), or `the transport`
        /// for a connector given to
        /// [`connect_with`](crate::ClientBuilder::connect_with).
        target: String,
        /// Why it failed.
        #[source]
        source: Arc<io::Error>,
    },
    /// The server refused the handshake, with this reason (escaped, capped).
    #[error("handshake refused: {0}")]
    Handshake(String),
    /// The server answered the request with an ERROR frame carrying this
    /// reason (escaped, capped).
    #[error("server error: {0}")]
    Remote(String),
    /// The frame could not be encoded (too large for the framing's maximum
    /// frame size, or a wire transform refused it): it was not sent, and
    /// nothing else on the connection was disturbed.
    #[error("frame not sent: it could not be encoded")]
    Encode(#[source] Arc<CodecError>),
    /// The server broke the protocol towards this client (an answer of a
    /// kind that cannot answer, too many frames before WELCOME, ...).
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// The connection dropped while the request was in flight; it may or may
    /// not have been processed.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The call waited longer than the queue timeout
    /// ([`ClientBuilder::queue_timeout`](crate::ClientBuilder::queue_timeout))
    /// for a connection; it was not sent.
    #[error("not connected within the queue timeout; the call was not sent")]
    NotConnected,
    /// [`Service::call`](tower::Service::call) without a successful
    /// `poll_ready` just before; nothing was sent.
    #[error("called without readiness (poll_ready must return Ready(Ok) first)")]
    NotReady,
    /// The outbox is full (only from [`Client::try_send`](crate::Client::try_send)).
    #[error("outbox full")]
    OutboxFull,
    /// The client is closed: closed by the application, or the connection
    /// was lost and reconnecting is off or gave up.
    #[error("client closed: {0}")]
    Closed(String),
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
