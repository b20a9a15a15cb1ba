//! `ServiceBuilderExt`: this crate's service layers as `ServiceBuilder` methods.

use tower::ServiceBuilder;

mod sealed {
    pub trait Sealed<L> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// Adds this crate's **service** layers to [`ServiceBuilder`]: they wrap
/// the handler, a `Service<Frame, Response = Option<Frame>>`, in any order
/// with tower's own layers.
///
/// Wire transforms are not services and are not here: they are stacked
/// over a codec with [`Wire`](msgi::Wire) and [`WireExt`](crate::WireExt).
/// Mixing the two does not compile, where the mistake is made:
///
/// ```compile_fail,E0599
/// use std::time::Duration;
/// use msgi::FrameCodec;
/// use msgi_middleware::{ServiceBuilderExt, WireExt};
/// use tower::ServiceBuilder;
///
/// // No `deflate` (or `encrypt`, `sign`) on a ServiceBuilder.
/// let framing = ServiceBuilder::new()
///     .deflate(256)
///     .frame_timeout(Duration::from_secs(1))
///     .service(FrameCodec::new());
/// ```
///
/// ```compile_fail,E0599
/// use std::time::Duration;
/// use msgi::{FrameCodec, Wire};
/// use msgi_middleware::{ServiceBuilderExt, WireExt};
///
/// // No `frame_timeout` on a Wire.
/// let framing = Wire::new(FrameCodec::new())
///     .deflate(256)
///     .frame_timeout(Duration::from_secs(1));
/// ```
///
/// ```compile_fail,E0277
/// use std::time::Duration;
/// use msgi::{FrameCodec, Server};
/// use msgi_middleware::ServiceBuilderExt;
/// use tower::ServiceBuilder;
///
/// // A service stack is not a framing: refused by `framing(..)`, with a
/// // note pointing to `msgi::Wire`.
/// let stack = ServiceBuilder::new()
///     .frame_timeout(Duration::from_secs(1))
///     .service(FrameCodec::new());
/// let server = Server::builder().framing(stack);
/// ```
///
/// Each of the three differs from this, which compiles, by the one mistake:
///
/// ```
/// use std::time::Duration;
/// use msgi::{Frame, FrameCodec, Server, Wire};
/// use msgi_middleware::{ServiceBuilderExt, WireExt};
/// use tower::{service_fn, ServiceBuilder};
///
/// let framing = Wire::new(FrameCodec::new()).deflate(256);
/// let handler = ServiceBuilder::new()
///     .frame_timeout(Duration::from_secs(1))
///     .service(service_fn(|f: Frame| async move { Ok::<_, std::convert::Infallible>(Some(f)) }));
/// let server = Server::builder().framing(framing).build()?;
/// # let _ = (server, handler);
/// # Ok::<(), msgi::ConfigError>(())
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Answers requests slower than `timeout` with ERROR, keeping the request id.
    #[cfg(feature = "timeout")]
    fn frame_timeout(
        self,
        timeout: std::time::Duration,
    ) -> ServiceBuilder<tower::layer::util::Stack<crate::FrameTimeoutLayer, L>>;

    /// Limits frames and bytes per second.
    ///
    /// Named apart from tower's inherent `ServiceBuilder::rate_limit`, which
    /// would otherwise shadow it (as `frame_timeout` is named apart from
    /// `timeout`).
    #[cfg(feature = "rate-limit")]
    fn frame_rate_limit(
        self,
        layer: crate::RateLimitLayer,
    ) -> ServiceBuilder<tower::layer::util::Stack<crate::RateLimitLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "timeout")]
    fn frame_timeout(
        self,
        timeout: std::time::Duration,
    ) -> ServiceBuilder<tower::layer::util::Stack<crate::FrameTimeoutLayer, L>> {
        self.layer(crate::FrameTimeoutLayer::new(timeout))
    }

    #[cfg(feature = "rate-limit")]
    fn frame_rate_limit(
        self,
        layer: crate::RateLimitLayer,
    ) -> ServiceBuilder<tower::layer::util::Stack<crate::RateLimitLayer, L>> {
        self.layer(layer)
    }
}
