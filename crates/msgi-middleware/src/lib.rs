//! Middleware for [`msgi`]: wire transforms (compression, encryption, HMAC
//! authentication) and service layers (per-request timeouts, rate
//! limiting).
//!
//! Two kinds of thing, with a builder each, because two kinds of thing need
//! wrapping:
//!
//! - **Wire transforms** ([`Deflate`], [`Encrypt`], [`Sign`]) change the
//!   bytes of frames. They are not tower layers: they are stacked over a
//!   codec with [`msgi::Wire`] (the [`WireExt`] methods `deflate`, `encrypt`,
//!   `sign`), and each is a factory ([`msgi::MakeTransform`]) that makes a
//!   fresh transform ([`DeflateSession`], [`EncryptSession`], [`SignSession`])
//!   for every session, reconnections included. Installed in the framing,
//!   they apply to every frame that crosses the wire, in both directions:
//!   requests and answers, but also pushes (broadcasts, sends to a session),
//!   one-way client frames and the session's own PONG, HEARTBEAT, ERROR and
//!   DISCONNECT. Client and server must stack the same transforms in the same
//!   order. [`Encrypt`] and [`Sign`] take their keys from the pre-shared-key
//!   handshake ([`psk`]), fresh for each connection and direction.
//! - **Service layers** ([`FrameTimeoutLayer`], [`RateLimitLayer`]) wrap the
//!   handler, a `Service<Frame, Response = Option<Frame>>`, and compose with
//!   tower's own (`ConcurrencyLimit`, `LoadShed`, `Buffer`, `Timeout`,
//!   `Retry`) in any order, in a `tower::ServiceBuilder` ([`ServiceBuilderExt`]
//!   adds these, and only these).
//!
//! ```
//! use std::time::Duration;
//! use msgi::{Frame, FrameCodec, Server, Wire};
//! use msgi_middleware::{
//!     Limit, PresharedKeys, Psk, RateLimitLayer, RatePolicy, ServiceBuilderExt, WireExt,
//! };
//! use tower::{service_fn, ServiceBuilder};
//!
//! // From the application down to the wire: compress, then encrypt, then sign,
//! // under keys the pre-shared-key handshake derives for each connection.
//! let framing = Wire::new(FrameCodec::new()).deflate(256).encrypt().sign();
//! let psk = Psk::new(PresharedKeys::new(1, &[7; 32]), &framing);
//!
//! let handler = ServiceBuilder::new()
//!     .load_shed()
//!     .concurrency_limit(32)
//!     .frame_timeout(Duration::from_secs(2))
//!     .frame_rate_limit(RateLimitLayer::new(RatePolicy::Reject).per_session(Limit::frames(1000.0)?))
//!     .service(service_fn(|f: Frame| async move { Ok::<_, std::convert::Infallible>(Some(f)) }));
//!
//! let server = Server::builder().framing(framing).accept(psk.acceptor()).build()?;
//! # let _ = (server, handler);
//! # Ok::<(), msgi::ConfigError>(())
//! ```
//!
//! Serving [containers](msgi_container) (feature `container`): [`ContainerRouter`]
//! dispatches by message type, [`DeliverToTarget`] delivers by target id through the
//! registry (module [`container`]).
//!
//! ## Names
//!
//! The wire transforms are named for what they do to a frame (`Deflate`,
//! `Encrypt`, `Sign`), with `…Session` for one session's state, as a rustls
//! `ServerConfig` makes a `ServerConnection`. They are not called
//! `CompressionLayer` and the like: to every tower-http user that name means
//! a `tower::Layer` compressing HTTP bodies around a service, and these are
//! neither layers nor services.
//!
//! One cargo feature per transform or layer (`compression`, `encryption`,
//! `hmac`, `timeout`, `rate-limit`, `container`; `psk`, the handshake, comes
//! with the two that need it) and `full` (the default) for all.
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
#[cfg(feature = "psk")]
pub mod psk;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;
mod refused;
#[cfg(feature = "timeout")]
pub mod timeout;
mod wire;

pub use builder::ServiceBuilderExt;
#[cfg(feature = "compression")]
pub use compression::{Deflate, DeflateError, DeflateSession};
#[cfg(feature = "container")]
pub use container::{ContainerRequest, ContainerRouter, DeliverToTarget, RouteError};
#[cfg(feature = "encryption")]
pub use encryption::{Encrypt, EncryptError, EncryptSession};
#[cfg(feature = "hmac")]
pub use hmac::{Sign, SignError, SignSession};
#[cfg(feature = "psk")]
pub use psk::{AuthenticatedKey, PresharedKeys, Psk, PskError};
#[cfg(feature = "rate-limit")]
pub use rate_limit::{Limit, RateLimit, RateLimitLayer, RatePolicy};
pub use refused::Refused;
#[cfg(feature = "timeout")]
pub use timeout::{FrameTimeout, FrameTimeoutLayer};
pub use wire::WireExt;

/// The README's examples (which use this crate and msgi), compiled as
/// doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
