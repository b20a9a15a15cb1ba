//! The server side: [`TlsAcceptor`], the accept step that runs the
//! handshake in each connection's task, and [`TlsInfo`], what it verified.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use msgi::{Accepted, BoxError, ConnectInfo, Plain};
use rustls::server::{ServerConfig, UnbufferedServerConnection, WebPkiClientVerifier};
use rustls::{CipherSuite, CommonState, ProtocolVersion};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::{provider, root_store, TlsConfigError, ALPN_MSGI};
use crate::stream::TlsStream;

/// The server's side of a [`TlsStream`]: what the session runs on.
pub type ServerTlsStream<Io> = TlsStream<Io, UnbufferedServerConnection>;

/// The server's TLS accept step: give it to
/// [`ServerBuilder::accept`](msgi::ServerBuilder::accept). Each accepted
/// connection's handshake runs in that connection's own task, under the
/// server's connection cap and handshake timeout (a peer that sends
/// nothing, or half a ClientHello, holds one place until the timeout and
/// delays no one else). The session runs on the TLS stream, and its
/// connection info gains a [`TlsInfo`].
///
/// A failed handshake (a plaintext client, an unknown client certificate
/// under mutual TLS, no common protocol version) ends that connection only,
/// as [`Rejection::AcceptFailed`](msgi::Rejection::AcceptFailed); the error
/// is an [`AcceptError`].
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor").finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Settings for a server presenting `cert_chain` (its certificate
    /// first, then intermediates) with `key`.
    pub fn builder(
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> TlsAcceptorBuilder {
        TlsAcceptorBuilder {
            cert_chain,
            key,
            client_ca: None,
            alpn: vec![ALPN_MSGI.to_vec()],
        }
    }

    /// An acceptor of any rustls configuration (build it with
    /// `ServerConfig::builder_with_provider(msgi_tls::provider())` to keep
    /// the provider explicit).
    pub fn from_config(config: Arc<ServerConfig>) -> TlsAcceptor {
        TlsAcceptor { config }
    }

    /// The rustls configuration.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// The TLS handshake, then `next` (another accept step taking any byte
    /// stream, such as msgi's `WebSocketAccept` for WebSocket over TLS,
    /// `wss://`) on the TLS stream, as one accept step: both run in the
    /// connection's task under the handshake timeout, and `next` finds the
    /// [`TlsInfo`] in the connection info. Browsers offer ALPN `http/1.1`
    /// for a WebSocket: give the acceptor
    /// `alpn_protocols(vec![b"http/1.1".to_vec()])` (the default, `msgi`
    /// alone, refuses them).
    pub fn then<B>(self, next: B) -> TlsThen<B> {
        TlsThen { tls: self, next }
    }
}

/// The accept step of [`TlsAcceptor::then`]: the handshake, then another
/// step on the TLS stream. Its error is the handshake's [`AcceptError`] or
/// the next step's error, boxed.
#[derive(Clone, Debug)]
pub struct TlsThen<B> {
    tls: TlsAcceptor,
    next: B,
}

impl<Io, B> tower::Service<Accepted<Io>> for TlsThen<B>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: tower::Service<Accepted<ServerTlsStream<Io>>> + Clone + Send + 'static,
    B::Error: Into<BoxError>,
    B::Future: Send + 'static,
{
    type Response = B::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<B::Response, BoxError>> + Send>>;

    /// Ready when the next step is.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.next.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, incoming: Accepted<Io>) -> Self::Future {
        // The step made ready goes with this connection; a fresh clone
        // stays for the next one (tower's usual clone-and-swap).
        let clone = self.next.clone();
        let mut next = std::mem::replace(&mut self.next, clone);
        let handshake = self.tls.handshake(incoming);
        Box::pin(async move {
            let (stream, info) = handshake.await?;
            next.call(Accepted::new(stream, info))
                .await
                .map_err(Into::into)
        })
    }
}

/// Settings of a [`TlsAcceptor`], checked by
/// [`build`](TlsAcceptorBuilder::build).
pub struct TlsAcceptorBuilder {
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<Vec<CertificateDer<'static>>>,
    alpn: Vec<Vec<u8>>,
}

impl fmt::Debug for TlsAcceptorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptorBuilder")
            .field("cert_chain", &self.cert_chain.len())
            .field("client_ca", &self.client_ca.as_ref().map(Vec::len))
            .field("alpn", &self.alpn)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptorBuilder {
    /// Mutual TLS: every client must present a certificate chain that
    /// verifies to one of `roots`; a client without one, or with another,
    /// fails its handshake. Its chain is then in [`TlsInfo`].
    pub fn client_ca(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.client_ca = Some(roots);
        self
    }

    /// The ALPN protocols the server accepts, most preferred first
    /// (default: [`ALPN_MSGI`]; empty: no ALPN).
    pub fn alpn_protocols(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.alpn = protocols;
        self
    }

    /// The acceptor, with rustls's `ring` provider, TLS 1.3 and 1.2.
    ///
    /// # Errors
    ///
    /// The key does not match the certificate or cannot sign, or a client
    /// CA certificate is unusable.
    pub fn build(self) -> Result<TlsAcceptor, TlsConfigError> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsConfigError::Rustls)?;
        let builder = match self.client_ca {
            Some(roots) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(root_store(roots)?),
                    provider,
                )
                .build()
                .map_err(TlsConfigError::ClientVerifier)?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(self.cert_chain, self.key)
            .map_err(TlsConfigError::Rustls)?;
        config.alpn_protocols = self.alpn;
        // The provider's order (AES-128-GCM first), not the client's.
        config.ignore_client_order = true;
        Ok(TlsAcceptor::from_config(Arc::new(config)))
    }
}

/// What the TLS handshake established. On the server it is in the session's
/// connection info (`session.connect_info::<TlsInfo>()`): under mutual TLS
/// the client's certificate chain, verified against the client CA before
/// the session started. On the client ([`TlsConnector`](crate::TlsConnector))
/// it is in [`Client::connect_info`](msgi::Client::connect_info)
/// (`client.connect_info().get::<TlsInfo>()`): the server's chain, verified
/// for the server name. Read the names in a certificate with an X.509
/// parser of your choice.
#[derive(Clone, Debug)]
pub struct TlsInfo {
    peer_certificates: Arc<[CertificateDer<'static>]>,
    server_name: Option<Arc<str>>,
    alpn: Option<Arc<[u8]>>,
    version: Option<ProtocolVersion>,
    cipher_suite: Option<CipherSuite>,
}

impl TlsInfo {
    /// What `conn` established; `server_name` is the SNI name (the one the
    /// client sent, as the server read it or as the client sent it).
    pub(crate) fn of(conn: &CommonState, server_name: Option<Arc<str>>) -> TlsInfo {
        TlsInfo {
            peer_certificates: conn.peer_certificates().unwrap_or_default().into(),
            server_name,
            alpn: conn.alpn_protocol().map(Arc::from),
            version: conn.protocol_version(),
            cipher_suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
        }
    }

    /// The peer's verified certificate chain, its own certificate first: on
    /// the server the client's (empty without mutual TLS), on the client
    /// the server's.
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &self.peer_certificates
    }

    /// The peer's own certificate (on the server: the client's, under
    /// mutual TLS).
    pub fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.peer_certificates.first()
    }

    /// The server name the client asked for (SNI), if it sent one (a client
    /// connecting to an IP address sends none, nor does one whose rustls
    /// configuration turns `enable_sni` off).
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// The ALPN protocol agreed, if the client offered one the server
    /// accepts.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.alpn.as_deref()
    }

    /// The TLS version agreed.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// The cipher suite agreed.
    pub fn cipher_suite(&self) -> Option<CipherSuite> {
        self.cipher_suite
    }
}

/// A server-side TLS handshake that failed, for one connection: the
/// [`io::Error`] is the source, with the [`rustls::Error`] inside it
/// ([`rustls_error`](AcceptError::rustls_error)) when TLS refused the peer.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with {} failed", peer.map_or_else(|| "the peer".to_owned(), |a| a.to_string()))]
pub struct AcceptError {
    peer: Option<SocketAddr>,
    #[source]
    source: io::Error,
}

impl AcceptError {
    /// The peer's address, if the transport has one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// What rustls refused (a plaintext peer: an invalid message; no client
    /// certificate under mutual TLS; an unknown issuer), if TLS refused
    /// it; `None` when the connection itself failed or closed.
    pub fn rustls_error(&self) -> Option<&rustls::Error> {
        self.source.get_ref()?.downcast_ref::<rustls::Error>()
    }
}

impl<Io> tower::Service<Accepted<Io>> for TlsAcceptor
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Response = Accepted<Plain<ServerTlsStream<Io>>>;
    type Error = AcceptError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, AcceptError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), AcceptError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, incoming: Accepted<Io>) -> Self::Future {
        let handshake = self.handshake(incoming);
        Box::pin(async move {
            let (stream, info) = handshake.await?;
            Ok(Accepted::new(Plain(stream), info))
        })
    }
}

impl TlsAcceptor {
    /// The handshake on `incoming`: the TLS stream, and the info with the
    /// [`TlsInfo`] added.
    fn handshake<Io>(
        &self,
        incoming: Accepted<Io>,
    ) -> impl Future<Output = Result<(ServerTlsStream<Io>, ConnectInfo), AcceptError>> + Send + 'static
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (io, mut info) = incoming.into_parts();
        let config = self.config.clone();
        async move {
            let peer = info.peer_addr();
            let failed = |source| AcceptError { peer, source };
            let conn = UnbufferedServerConnection::new(config)
                .map_err(|e| failed(io::Error::new(io::ErrorKind::InvalidData, e)))?;
            let mut stream = TlsStream::new(io, conn);
            let server_name = client_hello_name(&mut stream).await.map_err(failed)?;
            stream.handshake().await.map_err(failed)?;
            info.insert(TlsInfo::of(stream.connection(), server_name));
            Ok((stream, info))
        }
    }
}

/// The SNI name of the ClientHello at the start of `stream`'s input, read
/// as far as the ClientHello goes (rustls's unbuffered server connection
/// does not tell it): rustls's `Acceptor` parses a copy of those bytes,
/// which stay in `stream` for the handshake proper. `None` when the client
/// sent no name, or when what it sent is no ClientHello (the handshake then
/// says why).
async fn client_hello_name<Io>(stream: &mut ServerTlsStream<Io>) -> io::Result<Option<Arc<str>>>
where
    Io: AsyncRead + AsyncWrite + Unpin,
{
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    loop {
        let mut fresh = stream.incoming().get(fed..).unwrap_or_default();
        while !fresh.is_empty() {
            match acceptor.read_tls(&mut fresh) {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
        fed = stream.incoming().len();
        match acceptor.accept() {
            Ok(Some(hello)) => return Ok(hello.client_hello().server_name().map(Arc::from)),
            Ok(None) => {}
            Err(_) => return Ok(None),
        }
        if std::future::poll_fn(|cx| stream.poll_fill(cx)).await? == 0 {
            return Ok(None);
        }
    }
}
