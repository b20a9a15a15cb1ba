//! What can go wrong on the way to an upstream.

use std::net::SocketAddr;
use std::time::Duration;

use msgi::ClientError;

/// Why a request did not get an upstream's answer.
///
/// A server answers a correlated request that ends in one of these with an
/// ERROR frame carrying its text (and the request id). An upstream's own
/// ERROR answer is not one of these: it passes through as that ERROR frame.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No upstream was ready within the bounded wait (all down, none
    /// configured, or all saturated).
    #[error("no upstream ready within {0:?}")]
    NoUpstream(Duration),
    /// The upstream chosen for this request (by its key) went down before
    /// the request could be sent; nothing was sent.
    #[error("upstream {0} is down")]
    Down(SocketAddr),
    /// The upstream's client failed: the connection was lost with the
    /// request in flight (it may or may not have been processed), the call
    /// could not be sent, ...
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl Error {
    /// True when the request may be sent again elsewhere without having
    /// been processed twice *if it is idempotent*: the upstream died with it
    /// in flight, or it was never sent.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Down(_) => true,
            Error::Client(e) => matches!(
                e,
                ClientError::ConnectionLost(_)
                    | ClientError::NotConnected
                    | ClientError::Closed(_)
                    | ClientError::NotReady
            ),
            Error::NoUpstream(_) => false,
        }
    }
}
