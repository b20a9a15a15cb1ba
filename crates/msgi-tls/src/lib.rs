//! TLS for msgi, with [rustls] and its `ring` crypto provider: an accept
//! step for the server ([`TlsAcceptor`]) and a connector for the client
//! ([`TlsConnector`]). TLS wraps the byte stream; the MSGI frames inside
//! are unchanged (docs/PROTOCOL.md, "TLS").
//!
//! The server runs the handshake in each connection's own task, under the
//! connection cap and the handshake timeout
//! ([`ServerBuilder::accept`](msgi::ServerBuilder::accept)), never in the
//! accept loop; what it verified (the client's certificate chain under
//! mutual TLS, the SNI server name, the ALPN protocol) is a [`TlsInfo`] in
//! the session's connection info:
//!
//! ```no_run
//! use msgi::{Frame, Server, Session};
//! use msgi_tls::{load_certs, load_key, TlsAcceptor, TlsInfo};
//! use tower::service_fn;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let tls = TlsAcceptor::builder(load_certs("server.pem")?, load_key("server.key")?)
//!     .client_ca(load_certs("clients-ca.pem")?) // mutual TLS (optional)
//!     .build()?;
//! let server = Server::builder()
//!     .accept(tls)
//!     .on_connect(|s: &Session| {
//!         let chain = s.connect_info::<TlsInfo>().map_or(0, |t| t.peer_certificates().len());
//!         println!("{} presented {chain} certificate(s)", s.id());
//!     })
//!     .build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7443").await?;
//! let echo = service_fn(|f: Frame| async move { Ok::<_, std::convert::Infallible>(Some(f)) });
//! server.serve(listener, echo).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The client connects through [`TlsConnector`], given to
//! [`ClientBuilder::connect_with_connector`](msgi::ClientBuilder::connect_with_connector),
//! and finds the server's verified identity, a [`TlsInfo`], in
//! [`Client::connect_info`](msgi::Client::connect_info);
//! a failed handshake is a [`ClientError::Connect`](msgi::ClientError::Connect)
//! whose cause [`HandshakeError::of`] finds:
//!
//! ```no_run
//! use msgi::{Client, Frame};
//! use msgi_tls::{load_certs, TlsConnector, TlsInfo};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let tls = TlsConnector::builder("localhost")
//!     .root_certificates(load_certs("ca.pem")?)
//!     .build()?;
//! let client = Client::builder().connect_with_connector(tls, "127.0.0.1:7443").await?;
//! // The server's verified chain, as the handshake found it.
//! let info = client.connect_info();
//! let chain = info.get::<TlsInfo>().map_or(0, |t| t.peer_certificates().len());
//! println!("the server presented {chain} certificate(s)");
//! let answer = client.call(Frame::data("hello")).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # The crypto provider
//!
//! Every configuration this crate builds names rustls's `ring` provider
//! explicitly (`builder_with_provider`), so it never depends on a
//! process-wide default: rustls panics when two providers are compiled in
//! and none was chosen. The workspace has one crypto library, `ring`.

#![deny(missing_docs)]

mod client;
mod config;
mod server;
mod stream;

pub use client::{ClientTlsStream, HandshakeError, TlsConnector, TlsConnectorBuilder};
pub use config::{load_certs, load_key, provider, TlsConfigError, ALPN_MSGI};
pub use server::{AcceptError, ServerTlsStream, TlsAcceptor, TlsAcceptorBuilder, TlsInfo, TlsThen};
pub use stream::{Endpoint, TlsStream, READ_CHUNK};

/// The rustls this crate is built on (its configuration types, for
/// [`TlsAcceptor::from_config`] and [`TlsConnector::from_config`]).
pub use rustls;

/// Certificate, key and server-name types.
pub use rustls_pki_types as pki_types;
