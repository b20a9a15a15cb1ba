//! The MSGI wire and session rules, without I/O.
//!
//! This crate is the bottom of msgi: the [`Frame`] and its [`Kind`]s and
//! [`Flags`], the codec that checks every header field before it parses or
//! allocates ([`FrameCodec`], [`LineCodec`], the [`Framing`] trait), the wire
//! transform trait ([`FrameTransform`], [`Transformed`]) and the per-session
//! factories that stack transforms over a codec ([`Wire`], [`MakeFraming`],
//! [`MakeTransform`]), the session rules ([`session::Protocol`]: kinds,
//! handshake, timers) and the server connection state machine built on them
//! ([`server::Connection`]: close phases, exactly one answer per request,
//! requests in flight, backpressure). It has no tokio, no sockets and no clock:
//! time is an argument (`now`), so every rule runs in tests on simulated
//! time, and the same code serves a fuzzer, a browser client compiled to
//! WASM, or a cluster bus.
//!
//! Most users want the `msgi` crate, which drives these rules over tokio and
//! re-exports the public items here.
#![deny(missing_docs)]

pub mod client;
mod codec;
mod config;
pub mod delivery;
mod extensions;
mod frame;
pub mod server;
pub mod session;
pub mod text;
mod transform;
pub mod wire;

pub use codec::{
    encode_header, reserve_at_most, CodecError, FrameCodec, Framing, LineCodec, WriteBuf,
    RESERVE_AHEAD,
};
pub use config::ConfigError;
pub use extensions::Extensions;
pub use frame::{
    Flags, Frame, Kind, CORRELATED_HEADER_LEN, DEFAULT_MAX_FRAME_SIZE, HEADER_LEN, MAGIC,
};
pub use transform::{FrameTransform, Outgoing, Piece, SessionKeys, Side, Transformed};
pub use wire::{MakeFraming, MakeTransform, SessionParams, Wire};

/// The error type at service and transform boundaries, as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
