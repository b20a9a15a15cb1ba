//! How the client opens a transport, again for each reconnect.

use std::future::Future;
use std::pin::Pin;

use super::ClientError;

/// A transport being opened.
pub(super) type Connecting<T> = Pin<Box<dyn Future<Output = Result<T, ClientError>> + Send>>;

/// Opens one transport per call; called again for each reconnect.
pub(super) struct Connector<T>(Box<dyn FnMut() -> Connecting<T> + Send>);

impl<T> Connector<T> {
    pub(super) fn new(open: impl FnMut() -> Connecting<T> + Send + 'static) -> Self {
        Connector(Box::new(open))
    }

    pub(super) fn connect(&mut self) -> Connecting<T> {
        (self.0)()
    }
}
