//! Which layer refused a request: a marker for counting rejections.

/// A layer that answered a request itself, refusing it, instead of
/// passing it on: put in the extensions of the ERROR frame it answers with
/// (extensions never reach the wire), so a layer above it can count
/// rejections by layer (`msgi-metrics` does). Only the refusing answer
/// carries it, so a layer above looks only at ERROR answers.
///
/// tower's own layers refuse with an error instead
/// (`tower::load_shed::error::Overloaded`, `tower::timeout::error::Elapsed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refused {
    /// [`RateLimit`](crate::RateLimit) under [`RatePolicy::Reject`](crate::RatePolicy::Reject): ERROR `rate limited`.
    RateLimit,
    /// [`FrameTimeout`](crate::FrameTimeout): ERROR `timed out after N ms`.
    Timeout,
}

impl Refused {
    /// A bounded, metrics-safe label: `rate_limit`, `timeout`.
    pub fn label(self) -> &'static str {
        match self {
            Refused::RateLimit => "rate_limit",
            Refused::Timeout => "timeout",
        }
    }
}
