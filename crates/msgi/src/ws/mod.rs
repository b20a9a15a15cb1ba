//! MSGI over WebSocket (feature `websocket`): one frame per binary message,
//! so a browser is a client.
//!
//! - [`WebSocketAccept`] is an accept step ([`ServerBuilder::accept`]): it
//!   runs the HTTP upgrade in the connection's own task (under the
//!   connection cap and the handshake timeout), checks the `Origin` against
//!   an allow-list, and records the request ([`WebSocketRequest`]: path,
//!   headers, origin) in the session's [`ConnectInfo`](crate::ConnectInfo).
//! - [`WebSocket`] is an upgraded connection; it becomes a
//!   [`WebSocketTransport`] with the server's framing (so wire transforms
//!   run on each message). [`WebSocket::from_upgraded`] takes a stream
//!   upgraded by your own HTTP server (hyper, axum), for
//!   [`Server::serve_connection`](crate::Server::serve_connection).
//!
//! A TCP server and a WebSocket server share one [`Registry`](crate::Registry)
//! (give both the same one with [`ServerBuilder::registry`]), so a broadcast
//! reaches both:
//!
//! ```no_run
//! use msgi::ws::WebSocketAccept;
//! use msgi::{Frame, Registry, Server};
//! use tower::service_fn;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let registry = Registry::new();
//! let echo = service_fn(|frame: Frame| async move {
//!     Ok::<_, std::convert::Infallible>(Some(frame))
//! });
//! let tcp = Server::builder().registry(registry.clone()).build()?;
//! let ws = Server::builder()
//!     .registry(registry.clone())
//!     .accept(WebSocketAccept::builder().allow_origin("https://chat.example").build()?)
//!     .build()?;
//! let tcp_listener = tokio::net::TcpListener::bind("127.0.0.1:7000").await?;
//! let ws_listener = tokio::net::TcpListener::bind("127.0.0.1:7001").await?;
//! tokio::try_join!(tcp.serve(tcp_listener, echo.clone()), ws.serve(ws_listener, echo))?;
//! # Ok(())
//! # }
//! ```
//!
//! What is refused, and the close codes, are in docs/PROTOCOL.md ("MSGI
//! over WebSocket"). This module is the only one that imports
//! `tokio-tungstenite`, and none of its types is in msgi's public API.
//!
//! [`ServerBuilder::accept`]: crate::ServerBuilder::accept
//! [`ServerBuilder::registry`]: crate::ServerBuilder::registry

mod accept;
mod transport;

pub use accept::{AcceptError, WebSocketAccept, WebSocketAcceptBuilder, WebSocketRequest};
pub use transport::{accept_key, MessageError, WebSocket, WebSocketTransport};
