//! Containers: structured messages with a header and named, typed values, for msgi
//! frame payloads.
//!
//! A [`Container`] says who sends it (source id and sub-id), to whom (target id and
//! sub-id) and what it is (the message type), and carries named [`Value`]s in insertion
//! order: null, bool, `i64`, `u64`, `f64`, strings, bytes, arrays and nested maps.
//! Applications dispatch on the message type and route on the target.
//!
//! It travels as a frame's payload in a compact, versioned binary encoding, specified in
//! docs/PROTOCOL.md (section 6) precisely enough for another implementation.
//! [`decode`] reads one from the payload's [`Bytes`](bytes::Bytes) without copying its
//! strings and bytes, and within [`Limits`] (nesting depth, number of values) so that a
//! hostile payload fails with a [`DecodeError`] instead of exhausting memory or the stack.
//! [`ContainerRef::decode`] reads the same payload in place, faster: names, strings and
//! bytes are `&str` / `&[u8]` views of the payload (no reference count per string), with
//! the same checks and errors; [`ContainerRef::to_container`] makes an owned copy.
//!
//! ```
//! use msgi_container::{decode, Container};
//!
//! let login = Container::builder("user_login")
//!     .source("client-7", "")
//!     .target("server", "")
//!     .value("user", "alice")
//!     .value("timestamp", 1_700_000_000i64)
//!     .build()?;
//! let payload = login.encode(); // a frame's payload: msgi::Frame::data(payload)
//!
//! let received = decode(&payload)?;
//! assert_eq!(received, login);
//! let reply = received
//!     .reply("response")
//!     .value("status", "ok")
//!     .value("timestamp", 1_700_000_001i64)
//!     .build()?;
//! assert_eq!(reply.target_id(), "client-7");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With the `serde` feature (on by default), a `#[derive(Serialize, Deserialize)]`
//! struct converts to and from a container's values ([`to_values`], [`from_values`],
//! [`Container::from_serialize`], [`Container::values_as`]); with the `json`
//! feature a container converts to and from JSON (`Container::to_json_string`,
//! `Container::from_json_str`).
//!
//! The crate knows nothing of sockets or msgi's runtime: it depends on `bytes` (and
//! serde, serde_json for those features) only.
#![deny(missing_docs)]

mod container;
mod decoder;
mod error;
mod get;
#[cfg(feature = "json")]
mod json;
#[cfg(feature = "serde")]
mod serde_impl;
mod value;
mod view;
mod wire;

pub use bytestring::ByteString;
pub use container::{Builder, Container};
pub use error::{BuildError, DecodeError, EncodeError, Field, GetError, LimitsError, ValueError};
pub use get::FromValue;
#[cfg(feature = "serde")]
pub use serde_impl::{from_value, from_values, to_value, to_values, SerdeError};
pub use value::{Iter, Value, ValueKind, Values, MAX_SHORT_LEN};
pub use view::{ContainerRef, FromValueRef, ValueRef, ValuesRef};
pub use wire::{decode, Limits, FORMAT_VERSION, MAX_DEPTH_LIMIT, MAX_VALUES_LIMIT};
