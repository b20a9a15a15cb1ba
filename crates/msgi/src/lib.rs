//! High-performance framed TCP messaging on tokio and tower.
//!
//! # Start here
//!
//! msgi speaks the MSGI wire format ([`guide::protocol`]): every connection
//! is a stream of [`Frame`]s handled by a [`tower::Service<Frame>`] that you
//! write. The [`Server`] runs one session per connection with heartbeats,
//! idle timeouts, bounded queues and graceful shutdown; the [`Registry`]
//! pushes to one session or all of them; the [`Client`] sends one-way
//! frames, makes correlated calls as a tower service, receives server pushes
//! and reconnects with backoff.
//!
//! | you want | start with |
//! |---|---|
//! | a server | [`Server::builder`], a `tower::service_fn` handler, the example below |
//! | to push to sessions (chat, presence, live updates) | [`Registry`], [`Session`] (in each request's [`Extensions`]) |
//! | a client | [`Client::connect`], [`ClientBuilder`] |
//! | browsers as clients (MSGI over WebSocket, feature `websocket`) | `msgi::ws` |
//! | compression, encryption, HMAC, timeouts, rate limits | the `msgi-middleware` crate |
//! | the wire and session rules without I/O (fuzzing, other runtimes) | [`proto`] (the `msgi-proto` crate) |
//! | how it is built, memory bounds, where each rule lives | [`guide::architecture`] |
//! | figures, and how they were measured | [`guide::benchmarks`] |
//!
//! ```no_run
//! use msgi::{Client, Frame, Server};
//! use tower::{service_fn, ServiceExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let echo = service_fn(|frame: Frame| async move {
//!     Ok::<_, std::convert::Infallible>(Some(frame))
//! });
//! tokio::spawn(Server::builder().build()?.serve(listener, echo));
//!
//! let client = Client::connect(addr).await?;
//! let answer = client.clone().oneshot(Frame::data("hello")).await?;
//! assert_eq!(answer.payload(), "hello");
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod accept;
mod client;
mod codec;
pub mod delivery;
mod driver;
mod observer;
mod registry;
mod serve;
mod server;
mod session;
mod transport;
#[cfg(feature = "websocket")]
#[cfg_attr(docsrs, doc(cfg(feature = "websocket")))]
pub mod ws;

pub use accept::{Accepted, ConnectInfo, NoHandshake};
pub use client::{
    Client, ClientBuilder, ClientError, CloseCause, Connected, Forward, ForwardFuture, Incoming,
    Reconnect, ResponseFuture, TcpConnector,
};
pub use codec::TokioCodec;
pub use msgi_proto::server::Violation;
pub use msgi_proto::{
    encode_header, CodecError, ConfigError, Extensions, Flags, Frame, FrameCodec, FrameTransform,
    Framing, Kind, LineCodec, MakeFraming, MakeTransform, Outgoing, Piece, SessionKeys,
    SessionParams, Side, Transformed, Wire, WriteBuf, CORRELATED_HEADER_LEN,
    DEFAULT_MAX_FRAME_SIZE, HEADER_LEN, MAGIC,
};
pub use observer::{kind_label, Activity, ByKind, DepthChanges, ErrorCause, Observer, Rejection};
pub use registry::{
    Backplane, BackplaneError, Delivery, Envelope, LocalNode, MemoryBackplane, Presence, Registry,
    RegistryBuilder, Remote, Sent, Target,
};
pub use serve::{MakeSessionService, PerSession, Serve, WithGracefulShutdown};
pub use server::{Builder as ServerBuilder, Listener, Server};
pub use session::{CloseReason, NodeId, SendError, Session, SessionId};
pub use transport::{ByteStream, IntoTransport, Plain, ReadError, Transport};

/// The error type at service boundaries, as in tower.
pub use msgi_proto::BoxError;

/// The [`Wire`] builder's stack types and the per-session factories.
pub use msgi_proto::wire;

/// The sans-IO layer under this crate: wire, codec, transforms, session rules.
pub use msgi_proto as proto;

/// The guides of the repository's `docs/` folder, as rustdoc pages.
pub mod guide {
    #[doc = include_str!("../../../docs/ARCHITECTURE.md")]
    pub mod architecture {}

    #[doc = include_str!("../../../docs/PROTOCOL.md")]
    pub mod protocol {}

    #[doc = include_str!("../../../docs/BENCHMARKS.md")]
    pub mod benchmarks {}

    #[doc = include_str!("../../../docs/RELIABILITY.md")]
    pub mod reliability {}
}
