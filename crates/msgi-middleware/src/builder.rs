//! `ServiceBuilderExt`: the layers of this crate as `ServiceBuilder` methods.

use tower::ServiceBuilder;

mod sealed {
    pub trait Sealed<L> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// Adds this crate's layers to [`ServiceBuilder`].
///
/// The wire transforms (`compression`, `encryption`, `hmac`) build a
/// *framing*: finish them with `.service(FrameCodec::new())` and give the
/// result to `Server::builder().framing(..)` and `Client::builder().framing(..)`.
/// The first one added is nearest the application, the last nearest the wire.
/// The request layers (`frame_timeout`, `rate_limit`) wrap the handler, in
/// any order with tower's own layers.
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Compresses payloads of at least `threshold` bytes.
    #[cfg(feature = "compression")]
    fn compression(
        self,
        threshold: usize,
    ) -> ServiceBuilder<tower::layer::util::Stack<crate::CompressionLayer, L>>;

    /// Encrypts every frame with `key`.
    #[cfg(feature = "encryption")]
    fn encryption(
        self,
        key: crate::EncryptionKey,
    ) -> ServiceBuilder<tower::layer::util::Stack<crate::EncryptionLayer, L>>;

    /// Authenticates every frame with the keys in `keys`.
    #[cfg(feature = "hmac")]
    fn hmac(
        self,
        keys: crate::HmacKeys,
    ) -> ServiceBuilder<tower::layer::util::Stack<crate::HmacLayer, L>>;

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
    #[cfg(feature = "compression")]
    fn compression(
        self,
        threshold: usize,
    ) -> ServiceBuilder<tower::layer::util::Stack<crate::CompressionLayer, L>> {
        self.layer(crate::CompressionLayer::new().threshold(threshold))
    }

    #[cfg(feature = "encryption")]
    fn encryption(
        self,
        key: crate::EncryptionKey,
    ) -> ServiceBuilder<tower::layer::util::Stack<crate::EncryptionLayer, L>> {
        self.layer(crate::EncryptionLayer::new(key))
    }

    #[cfg(feature = "hmac")]
    fn hmac(
        self,
        keys: crate::HmacKeys,
    ) -> ServiceBuilder<tower::layer::util::Stack<crate::HmacLayer, L>> {
        self.layer(crate::HmacLayer::new(keys))
    }

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
