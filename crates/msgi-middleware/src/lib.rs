//! Tower layers for [`msgi`]: compression, encryption, HMAC
//! authentication, per-request timeouts and rate limiting.
//!
//! Two kinds of layer, because two kinds of thing need wrapping:
//!
//! - **Wire transforms** ([`CompressionLayer`], [`EncryptionLayer`],
//!   [`HmacLayer`]) change the bytes of frames. They are layers over a
//!   *framing* ([`msgi::Framing`]) and each session runs its own copy, so
//!   they apply to every frame that crosses the wire, in both directions:
//!   requests and answers, but also pushes (broadcasts, sends to a session),
//!   one-way client frames and the session's own PONG, HEARTBEAT, ERROR and
//!   DISCONNECT. Client and server must stack the same transforms in the same
//!   order.
//! - **Request layers** ([`FrameTimeoutLayer`], [`RateLimitLayer`]) wrap the
//!   handler, a `Service<Frame, Response = Option<Frame>>`, and compose with
//!   tower's own (`ConcurrencyLimit`, `LoadShed`, `Buffer`, `Timeout`,
//!   `Retry`) in any order.
//!
//! ```
//! use std::time::Duration;
//! use msgi::{Frame, FrameCodec, Server};
//! use msgi_middleware::{EncryptionKey, HmacKeys, Limit, RateLimitLayer, RatePolicy, ServiceBuilderExt};
//! use tower::{service_fn, ServiceBuilder};
//!
//! // From the application down to the wire: compress, then encrypt, then sign.
//! let framing = ServiceBuilder::new()
//!     .compression(256)
//!     .encryption(EncryptionKey::new([7; 32]))
//!     .hmac(HmacKeys::new(1, b"signing key"))
//!     .service(FrameCodec::new());
//!
//! let handler = ServiceBuilder::new()
//!     .load_shed()
//!     .concurrency_limit(32)
//!     .frame_timeout(Duration::from_secs(2))
//!     .frame_rate_limit(RateLimitLayer::new(RatePolicy::Reject).per_session(Limit::frames(1000.0)?))
//!     .service(service_fn(|f: Frame| async move { Ok::<_, std::convert::Infallible>(Some(f)) }));
//!
//! let server = Server::builder().framing(framing).build()?;
//! # let _ = (server, handler);
//! # Ok::<(), msgi::ConfigError>(())
//! ```
//!
//! Serving [containers](msgi_container) (feature `container`): [`ContainerRouter`]
//! dispatches by message type, [`DeliverToTarget`] delivers by target id through the
//! registry (module [`container`]).
//!
//! One cargo feature per layer (`compression`, `encryption`, `hmac`,
//! `timeout`, `rate-limit`, `container`) and `full` (the default) for all.
#![deny(missing_docs)]

mod builder;
#[cfg(feature = "compression")]
pub mod compression;
#[cfg(feature = "container")]
pub mod container;
#[cfg(feature = "encryption")]
pub mod encryption;
#[cfg(feature = "hmac")]
pub mod hmac;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;
#[cfg(feature = "timeout")]
pub mod timeout;

pub use builder::ServiceBuilderExt;
#[cfg(feature = "compression")]
pub use compression::{Compression, CompressionError, CompressionLayer, Compressor};
#[cfg(feature = "container")]
pub use container::{ContainerRequest, ContainerRouter, DeliverToTarget, RouteError};
#[cfg(feature = "encryption")]
pub use encryption::{Encryption, EncryptionError, EncryptionKey, EncryptionLayer, Encryptor};
#[cfg(feature = "hmac")]
pub use hmac::{
    AuthenticatedKey, Authentication, Authenticator, HmacError, HmacKeys, HmacLayer, KeyRingError,
};
#[cfg(feature = "rate-limit")]
pub use rate_limit::{Limit, RateLimit, RateLimitLayer, RatePolicy};
#[cfg(feature = "timeout")]
pub use timeout::{FrameTimeout, FrameTimeoutLayer};

/// The README's examples (which use this crate and msgi), compiled as
/// doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
