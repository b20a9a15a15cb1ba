//! Load-balanced upstream routing for msgi, as tower services a server runs
//! as its handler (a gateway), or a client uses on its own (a pool).
//!
//! - [`Upstreams`]: the set of upstream addresses: static, changed while
//!   traffic flows, or DNS names re-resolved periodically
//!   ([`Upstreams::resolve`]).
//! - [`Endpoint`]: one supervised connection to one upstream (a
//!   [`msgi::Client`] through [`msgi::Forward`]): reconnected with backoff,
//!   pinged, honest readiness (down or saturated: not ready), a real
//!   [`Load`](tower::load::Load) (peak-EWMA with a failure penalty, or
//!   requests in flight).
//! - [`Balanced`]: tower's p2c over the endpoints of a set ([`Discovery`]),
//!   behind [`FailFast`] (a bounded wait when none is ready), shared by
//!   every session of a server (called in the session's task when ready at
//!   once, else queued behind tower's `Buffer`).
//!   Built by [`Builder`].
//! - [`Keyed`] / [`Affinity`]: routing by key (rendezvous hashing; e.g.
//!   [`client_id_key`]), sticking to an upstream while it is up.
//! - [`by_kind`]: routing by frame kind (tower's `Steer`).
//! - [`RetryIdempotent`]: a tower retry policy: idempotent requests once
//!   more on another upstream, within a budget.
//! - [`Pool`]: N connections to one server behind one `Service`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use msgi::Server;
//! use msgi_balance::{Builder, Upstreams};
//!
//! let upstreams = Upstreams::from(["10.0.0.1:7000".parse()?, "10.0.0.2:7000".parse()?]);
//! let balanced = Builder::default().build(&upstreams)?;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:7000").await?;
//! Server::builder().build()?.serve(listener, balanced).await?;
//! # Ok(()) }
//! ```
mod affinity;
mod balanced;
mod discover;
mod endpoint;
mod error;
mod pool;
mod retry;
mod route;
mod shared;

pub use affinity::{client_id_key, weight, Affinity, AffinityFuture, KeyFn, Keyed};
pub use balanced::{Balanced, Builder, FailFast, FailFastFuture};
pub use discover::{Discovery, Key, Upstreams};
pub use endpoint::{Endpoint, EndpointFuture, LoadMeasure, Settings};
pub use error::Error;
pub use pool::{Pool, PoolFuture};
pub use retry::RetryIdempotent;
pub use route::{by_kind, KindPicker};
pub use shared::SharedFuture;
