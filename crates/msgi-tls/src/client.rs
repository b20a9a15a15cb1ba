//! The client side: [`TlsConnector`], a connector (a tower `Service` of a
//! target) that opens a transport with an inner connector (TCP by
//! default) and runs the TLS handshake on it.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use msgi::{Accepted, BoxError, ClientError, Connected, TcpConnector};
use rustls::client::{ClientConfig, UnbufferedClientConnection};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::{provider, root_store, TlsConfigError, ALPN_MSGI};
use crate::server::TlsInfo;
use crate::stream::TlsStream;

/// The client's side of a [`TlsStream`]: what the client runs on.
pub type ClientTlsStream<Io> = TlsStream<Io, UnbufferedClientConnection>;

/// Opens TLS connections for a [`Client`](msgi::Client): give it to
/// [`ClientBuilder::connect_with_connector`](msgi::ClientBuilder::connect_with_connector)
/// with the address. Each connection (and each reconnect) opens the
/// transport with the inner connector ([`TcpConnector`] unless
/// [`with_transport`](TlsConnector::with_transport) says otherwise) and
/// runs the handshake, verifying the server's certificate for the server
/// name; both count against the client's connect timeout.
///
/// A handshake that fails is [`ClientError::Connect`] whose source is an
/// [`io::Error`] holding a [`HandshakeError`] (find it with
/// [`HandshakeError::of`]): the server's certificate did not verify, the
/// server does not speak TLS, or the connection ended. A server that
/// refuses this client's certificate (mutual TLS) says so after the
/// client's side of the handshake is done, so that shows as the
/// connection lost with the server's TLS alert in its text.
#[derive(Clone)]
pub struct TlsConnector<C = TcpConnector> {
    inner: C,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    /// The SNI name sent, for [`TlsInfo`]: the DNS name when the
    /// configuration enables SNI (rustls sends none for an IP address).
    sni: Option<Arc<str>>,
}

impl<C: fmt::Debug> fmt::Debug for TlsConnector<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("inner", &self.inner)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// Settings for connections to the server called `server_name` (a DNS
    /// name or an IP address; its certificate must name it).
    pub fn builder(server_name: impl Into<String>) -> TlsConnectorBuilder {
        TlsConnectorBuilder {
            server_name: server_name.into(),
            roots: Vec::new(),
            client_cert: None,
            alpn: vec![ALPN_MSGI.to_vec()],
        }
    }

    /// A connector of any rustls configuration (build it with
    /// `ClientConfig::builder_with_provider(msgi_tls::provider())` to keep
    /// the provider explicit), over TCP. With `enable_sni` off in `config`
    /// no SNI is sent, and the connection's [`TlsInfo::server_name`] is
    /// `None`.
    pub fn from_config(
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    ) -> TlsConnector {
        let sni = match &server_name {
            ServerName::DnsName(dns) if config.enable_sni => Some(Arc::from(dns.as_ref())),
            _ => None,
        };
        TlsConnector {
            inner: TcpConnector::new(),
            config,
            server_name,
            sni,
        }
    }
}

impl<C> TlsConnector<C> {
    /// The same TLS over another transport connector (a
    /// `Service<Target>` answering a byte stream: a
    /// [`TcpConnector`] with other settings, a Unix socket, a proxy).
    pub fn with_transport<C2>(self, inner: C2) -> TlsConnector<C2> {
        TlsConnector {
            inner,
            config: self.config,
            server_name: self.server_name,
            sni: self.sni,
        }
    }

    /// The rustls configuration.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The name the server's certificate is verified for (and sent as SNI
    /// if it is a DNS name and the configuration enables SNI, as the
    /// builder's does).
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }
}

/// Settings of a [`TlsConnector`], checked by
/// [`build`](TlsConnectorBuilder::build).
pub struct TlsConnectorBuilder {
    server_name: String,
    roots: Vec<CertificateDer<'static>>,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: Vec<Vec<u8>>,
}

impl fmt::Debug for TlsConnectorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnectorBuilder")
            .field("server_name", &self.server_name)
            .field("roots", &self.roots.len())
            .field("client_cert", &self.client_cert.is_some())
            .field("alpn", &self.alpn)
            .finish()
    }
}

impl TlsConnectorBuilder {
    /// Trusts these CA certificates for the server's chain (required: no
    /// system roots are read).
    pub fn root_certificates(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.roots.extend(roots);
        self
    }

    /// Presents this certificate chain (its own certificate first) and key
    /// to a server that asks for one (mutual TLS).
    pub fn client_certificate(
        mut self,
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.client_cert = Some((cert_chain, key));
        self
    }

    /// The ALPN protocols offered, most preferred first (default:
    /// [`ALPN_MSGI`]; empty: none offered).
    pub fn alpn_protocols(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.alpn = protocols;
        self
    }

    /// The connector, with rustls's `ring` provider, TLS 1.3 and 1.2.
    ///
    /// # Errors
    ///
    /// No root certificates or an unusable one, an invalid server name, or
    /// a client key that does not match its certificate.
    pub fn build(self) -> Result<TlsConnector, TlsConfigError> {
        let server_name = ServerName::try_from(self.server_name.clone()).map_err(|source| {
            TlsConfigError::ServerName {
                name: self.server_name,
                source,
            }
        })?;
        let roots = root_store(self.roots)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsConfigError::Rustls)?
            .with_root_certificates(roots);
        let mut config = match self.client_cert {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(TlsConfigError::Rustls)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn;
        Ok(TlsConnector::from_config(Arc::new(config), server_name))
    }
}

/// Why a client's TLS handshake failed: the source of the [`io::Error`]
/// inside [`ClientError::Connect`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// What the server sent is not TLS: most likely a plain (non-TLS)
    /// msgi port, which answers the ClientHello with an MSGI ERROR frame.
    #[error("the server's answer is not TLS (is this a plain msgi port?)")]
    NotTls(#[source] rustls::Error),
    /// TLS refused the server (its certificate did not verify for the
    /// server name: `InvalidCertificate(UnknownIssuer)`, `NotValidForName`,
    /// ...), or the server refused this client (an alert).
    #[error("TLS handshake refused")]
    Tls(#[source] rustls::Error),
    /// The connection failed or closed during the handshake.
    #[error("the connection ended during the TLS handshake")]
    Io(#[source] io::Error),
}

impl HandshakeError {
    /// The handshake error behind a client's error, if that is what it is.
    pub fn of(error: &ClientError) -> Option<&HandshakeError> {
        error
            .io_error()?
            .get_ref()?
            .downcast_ref::<HandshakeError>()
    }

    /// What rustls refused, unless the connection itself failed.
    pub fn rustls_error(&self) -> Option<&rustls::Error> {
        match self {
            HandshakeError::NotTls(e) | HandshakeError::Tls(e) => Some(e),
            HandshakeError::Io(_) => None,
        }
    }

    fn from_io(error: io::Error) -> HandshakeError {
        // What rustls refused is an InvalidData io::Error around the
        // rustls::Error (as TlsStream reports it).
        let refused = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .cloned();
        match refused {
            Some(e @ rustls::Error::InvalidMessage(_)) => HandshakeError::NotTls(e),
            Some(e) => HandshakeError::Tls(e),
            None => HandshakeError::Io(error),
        }
    }
}

impl<A, C> tower::Service<A> for TlsConnector<C>
where
    C: tower::Service<A>,
    C::Response: Connected,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    /// The TLS stream, and the inner connector's connection info with a
    /// [`TlsInfo`] added (what the client keeps as
    /// [`Client::connect_info`](msgi::Client::connect_info)).
    type Response = Accepted<ClientTlsStream<<C::Response as Connected>::Io>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: A) -> Self::Future {
        let opening = self.inner.call(target);
        let config = self.config.clone();
        let name = self.server_name.clone();
        let sni = self.sni.clone();
        Box::pin(async move {
            // The transport's own error (a ClientError naming the address
            // for TCP) goes to the client as it is.
            let (io, mut info) = opening.await.map_err(Into::into)?.into_connected();
            let label = format!("{} (TLS)", name.to_str());
            let failed = |e: io::Error| {
                let kind = e.kind();
                let error = io::Error::new(kind, HandshakeError::from_io(e));
                BoxError::from(ClientError::Connect {
                    target: label.clone(),
                    source: Arc::new(error),
                })
            };
            let conn = UnbufferedClientConnection::new(config, name)
                .map_err(|e| failed(io::Error::new(io::ErrorKind::InvalidData, e)))?;
            let mut stream = TlsStream::new(io, conn);
            stream.handshake().await.map_err(failed)?;
            info.insert(TlsInfo::of(stream.connection(), sni));
            Ok(Accepted::new(stream, info))
        })
    }
}
