//! TLS on loopback sockets, with certificates made at test time (rcgen):
//! handshake and echo, mutual TLS and what it refuses, plaintext and TLS
//! peers on the wrong port, slow handshakers, the handshake timeout.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msgi::{Client, ClientError, Frame, Observer, Rejection, Server, ServerBuilder, Session};
use msgi_tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use msgi_tls::rustls::{self, CertificateError};
use msgi_tls::{HandshakeError, TlsAcceptor, TlsConnector, TlsInfo, ALPN_MSGI};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Every wait in these tests is bounded by this.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("test step timed out")
}

/// A CA and the certificates it signs.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A certificate for `names` (DNS names or IP addresses) and its key.
    fn issue(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        (vec![cert.der().clone()], key)
    }
}

/// Records rejections and opened sessions' TLS info.
#[derive(Clone, Default)]
struct Seen {
    rejections: Arc<Mutex<Vec<Rejection>>>,
    rejected: Option<mpsc::UnboundedSender<Rejection>>,
}

impl Observer for Seen {
    fn connection_rejected(&self, rejection: Rejection) {
        self.rejections.lock().unwrap().push(rejection);
        if let Some(tx) = &self.rejected {
            let _ = tx.send(rejection);
        }
    }
}

struct Running {
    addr: SocketAddr,
    rejected: mpsc::UnboundedReceiver<Rejection>,
    /// The TLS info of each session, as it started.
    infos: mpsc::UnboundedReceiver<Option<TlsInfo>>,
    _stop: oneshot::Sender<()>,
}

fn echo() -> impl tower::Service<
    Frame,
    Response = Option<Frame>,
    Error = Infallible,
    Future = impl Future<Output = Result<Option<Frame>, Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|frame: Frame| async move { Ok::<_, Infallible>(Some(frame)) })
}

/// Serves echo with `builder`, `step` as its accept step.
async fn serve<A, Io>(builder: ServerBuilder, step: A) -> Running
where
    A: tower::Service<msgi::Accepted<TcpStream>, Response = msgi::Accepted<Io>> + Send + 'static,
    A::Error: Into<msgi::BoxError>,
    A::Future: Send + 'static,
    Io: msgi::IntoTransport<msgi::FrameCodec>,
{
    let (tx, rejected) = mpsc::unbounded_channel();
    let (info_tx, infos) = mpsc::unbounded_channel();
    let seen = Seen {
        rejected: Some(tx),
        ..Seen::default()
    };
    let server = builder
        .observer(seen)
        .on_connect(move |s: &Session| {
            let _ = info_tx.send(s.connect_info::<TlsInfo>().cloned());
        })
        .accept(step)
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        server
            .serve(listener, echo())
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            }),
    );
    Running {
        addr,
        rejected,
        infos,
        _stop: stop,
    }
}

/// The server's chain (for `localhost` and 127.0.0.1) and key, from `ca`.
fn server_identity(ca: &Ca) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    ca.issue(&["localhost", "127.0.0.1"])
}

async fn connect(connector: TlsConnector, addr: SocketAddr) -> Result<Client, ClientError> {
    within(Client::builder().connect_with_connector(connector, addr)).await
}

/// The error of a client the server refuses after the client's side of
/// the TLS 1.3 handshake: at connect, or at the first call.
async fn refused(connector: TlsConnector, addr: SocketAddr) -> ClientError {
    match connect(connector, addr).await {
        Err(error) => error,
        Ok(client) => within(client.call(Frame::data("refused?")))
            .await
            .expect_err("the server refused this client"),
    }
}

async fn assert_echoes(client: &Client, text: &str) {
    let answer = within(client.call(Frame::data(text.to_owned())))
        .await
        .unwrap();
    assert_eq!(answer.payload_text(), text);
}

#[tokio::test]
async fn handshake_echo_and_the_verified_identity_in_connect_info() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let (chain, key) = server_identity(&server_ca);
    let tls = TlsAcceptor::builder(chain, key)
        .client_ca(vec![client_ca.der()])
        .build()
        .unwrap();
    let mut server = serve(Server::builder(), tls).await;

    let (client_chain, client_key) = client_ca.issue(&["alice.example"]);
    let connector = TlsConnector::builder("localhost")
        .root_certificates(vec![server_ca.der()])
        .client_certificate(client_chain.clone(), client_key)
        .build()
        .unwrap();
    let client = connect(connector, server.addr).await.unwrap();
    assert_echoes(&client, "hello over TLS").await;
    // 64 KiB: several TLS records each way.
    let big = "x".repeat(64 * 1024);
    assert_echoes(&client, &big).await;

    let info = within(server.infos.recv()).await.unwrap();
    let info = info.expect("a TLS session has TlsInfo in its connect info");
    assert_eq!(info.peer_certificates(), &client_chain[..]);
    assert_eq!(info.peer_certificate(), client_chain.first());
    assert_eq!(info.server_name(), Some("localhost"));
    assert_eq!(info.alpn_protocol(), Some(ALPN_MSGI));
    assert_eq!(
        info.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // This crate's first choice (docs/BENCHMARKS.md says why).
    assert_eq!(
        info.cipher_suite(),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    client.close().await;
}

#[tokio::test]
async fn without_client_ca_no_client_certificate_is_asked_and_the_chain_is_empty() {
    let ca = Ca::new("CA");
    let (chain, key) = server_identity(&ca);
    let mut server = serve(
        Server::builder(),
        TlsAcceptor::builder(chain, key).build().unwrap(),
    )
    .await;
    // By IP address: the certificate names 127.0.0.1 too; no SNI is sent for an IP.
    let connector = TlsConnector::builder("127.0.0.1")
        .root_certificates(vec![ca.der()])
        .build()
        .unwrap();
    let client = connect(connector, server.addr).await.unwrap();
    assert_echoes(&client, "no client certificate").await;
    let info = within(server.infos.recv()).await.unwrap().unwrap();
    assert!(info.peer_certificates().is_empty());
    assert_eq!(info.peer_certificate(), None);
    assert_eq!(info.server_name(), None);
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_with_a_typed_error() {
    let ca = Ca::new("the server's CA");
    let other = Ca::new("another CA");
    let (chain, key) = server_identity(&ca);
    let mut server = serve(
        Server::builder(),
        TlsAcceptor::builder(chain, key).build().unwrap(),
    )
    .await;
    let connector = TlsConnector::builder("localhost")
        .root_certificates(vec![other.der()])
        .build()
        .unwrap();
    let error = connect(connector, server.addr).await.unwrap_err();
    let handshake = HandshakeError::of(&error).expect("a handshake error");
    assert!(
        matches!(
            handshake,
            HandshakeError::Tls(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ),
        "{handshake:?}"
    );
    // Each cause printed once along the chain.
    assert_eq!(error.to_string(), "could not connect to localhost (TLS)");
    let causes: Vec<String> = chain_of(&error);
    assert_eq!(
        causes,
        [
            "TLS handshake refused",
            "invalid peer certificate: UnknownIssuer"
        ]
    );
    // The server saw the client's alert: a failed accept step, no session.
    assert_eq!(
        within(server.rejected.recv()).await,
        Some(Rejection::AcceptFailed)
    );
    assert!(server.infos.try_recv().is_err(), "no session started");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let ca = Ca::new("CA");
    let (chain, key) = ca.issue(&["elsewhere.example"]);
    let server = serve(
        Server::builder(),
        TlsAcceptor::builder(chain, key).build().unwrap(),
    )
    .await;
    let connector = TlsConnector::builder("localhost")
        .root_certificates(vec![ca.der()])
        .build()
        .unwrap();
    let error = connect(connector, server.addr).await.unwrap_err();
    assert!(
        matches!(
            HandshakeError::of(&error),
            Some(HandshakeError::Tls(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )))
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate_or_with_an_unknown_one() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let stranger_ca = Ca::new("stranger CA");
    let (chain, key) = server_identity(&server_ca);
    let tls = TlsAcceptor::builder(chain, key)
        .client_ca(vec![client_ca.der()])
        .build()
        .unwrap();
    let mut server = serve(Server::builder(), tls).await;

    // No certificate: TLS 1.3 tells the client after its side of the
    // handshake, so the client learns it from the server's alert.
    let anonymous = TlsConnector::builder("localhost")
        .root_certificates(vec![server_ca.der()])
        .build()
        .unwrap();
    let error = refused(anonymous, server.addr).await;
    assert_eq!(
        error.to_string(),
        "connection lost: received fatal alert: CertificateRequired",
        "the client hears why"
    );
    assert_eq!(
        within(server.rejected.recv()).await,
        Some(Rejection::AcceptFailed)
    );

    // A certificate from a CA the server does not trust.
    let (chain, key) = stranger_ca.issue(&["mallory.example"]);
    let stranger = TlsConnector::builder("localhost")
        .root_certificates(vec![server_ca.der()])
        .client_certificate(chain, key)
        .build()
        .unwrap();
    let error = refused(stranger, server.addr).await;
    assert_eq!(
        error.to_string(),
        "connection lost: received fatal alert: UnknownCA"
    );
    assert_eq!(
        within(server.rejected.recv()).await,
        Some(Rejection::AcceptFailed)
    );
    assert!(server.infos.try_recv().is_err(), "no session started");
}

#[tokio::test]
async fn a_plaintext_client_on_a_tls_port_is_refused_and_other_sessions_go_on() {
    let ca = Ca::new("CA");
    let (chain, key) = server_identity(&ca);
    let mut server = serve(
        Server::builder(),
        TlsAcceptor::builder(chain, key).build().unwrap(),
    )
    .await;
    let connector = TlsConnector::builder("localhost")
        .root_certificates(vec![ca.der()])
        .build()
        .unwrap();
    let tls_client = connect(connector, server.addr).await.unwrap();
    assert_echoes(&tls_client, "before").await;

    // The plaintext client's HELLO, then its call, meet a closed connection.
    let plain = match within(Client::connect(server.addr)).await {
        Ok(client) => within(client.call(Frame::data("plain"))).await.map(drop),
        Err(e) => Err(e),
    };
    assert!(plain.is_err(), "a plaintext client gets no session");
    assert_eq!(
        within(server.rejected.recv()).await,
        Some(Rejection::AcceptFailed)
    );
    // Raw bytes too: an MSGI header instead of a ClientHello ends that
    // connection (the server closes it), nothing else.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"MSGI\x01\x00\x00\x00\x00\x00\x00\x05hello")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = within(raw.read_to_end(&mut rest)).await;
    assert_eq!(
        within(server.rejected.recv()).await,
        Some(Rejection::AcceptFailed)
    );

    assert_echoes(&tls_client, "after").await;
    assert_eq!(server.infos.len(), 1, "only the TLS client had a session");
}

#[tokio::test]
async fn a_tls_client_on_a_plain_port_gets_a_clear_error() {
    let server = serve(Server::builder(), msgi::NoHandshake).await;
    let ca = Ca::new("CA");
    let connector = TlsConnector::builder("localhost")
        .root_certificates(vec![ca.der()])
        .build()
        .unwrap();
    let error = connect(connector, server.addr).await.unwrap_err();
    let handshake = HandshakeError::of(&error).expect("a handshake error");
    assert!(
        matches!(handshake, HandshakeError::NotTls(_)),
        "{handshake:?}"
    );
    assert!(
        chain_of(&error)
            .first()
            .is_some_and(|m| m.contains("plain msgi port")),
        "{:?}",
        chain_of(&error)
    );
}

/// Opens `n` connections that never finish a handshake: even ones send
/// nothing, odd ones the first bytes of a ClientHello.
async fn slow_handshakers(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut slow = Vec::with_capacity(n);
    for i in 0..n {
        let mut stream = within(TcpStream::connect(addr)).await.unwrap();
        if i % 2 == 1 {
            // A handshake record header announcing 512 bytes, then 4 of them.
            stream
                .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
                .await
                .unwrap();
        }
        slow.push(stream);
    }
    slow
}

#[tokio::test]
async fn a_hundred_slow_handshakes_do_not_delay_a_tls_client_or_a_plain_one() {
    let ca = Ca::new("CA");
    let (chain, key) = server_identity(&ca);
    let tls = TlsAcceptor::builder(chain, key).build().unwrap();
    let mut server = serve(
        Server::builder().handshake_timeout(Some(Duration::from_secs(60))),
        tls,
    )
    .await;
    // A plain server in the same runtime.
    let plain = serve(Server::builder(), msgi::NoHandshake).await;
    let mut slow = slow_handshakers(server.addr, 100).await;

    // Bounded: each step runs `within` 10 s, far below the 60 s handshake
    // timeout the slow ones hold (no wall-clock assert on a busy machine).
    let connector = TlsConnector::builder("localhost")
        .root_certificates(vec![ca.der()])
        .build()
        .unwrap();
    let client = connect(connector, server.addr).await.unwrap();
    assert_echoes(&client, "served while 100 handshakes hang").await;
    let plain_client = within(Client::connect(plain.addr)).await.unwrap();
    assert_echoes(&plain_client, "plain too").await;

    // The slow ones are all still waiting (none refused, none closed).
    assert!(server.rejected.try_recv().is_err());
    for stream in &mut slow {
        let mut byte = [0u8; 1];
        match stream.try_read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("a slow handshake was ended early: {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_handshake_timeout_closes_slow_handshakes() {
    let ca = Ca::new("CA");
    let (chain, key) = server_identity(&ca);
    let tls = TlsAcceptor::builder(chain, key).build().unwrap();
    let mut server = serve(
        Server::builder().handshake_timeout(Some(Duration::from_millis(300))),
        tls,
    )
    .await;
    let slow = slow_handshakers(server.addr, 10).await;
    for mut stream in slow {
        // The server closes it without a word: end of stream (or a reset),
        // within the bound.
        let mut rest = Vec::new();
        let read = within(stream.read_to_end(&mut rest)).await;
        assert!(
            rest.is_empty() && (matches!(&read, Ok(0)) || read.is_err()),
            "closed without a word: {read:?} {rest:?}"
        );
    }
    for _ in 0..10 {
        assert_eq!(
            within(server.rejected.recv()).await,
            Some(Rejection::AcceptTimeout)
        );
    }
    assert!(server.infos.try_recv().is_err(), "no session started");
}

/// The messages of an error's causes, in order.
fn chain_of(error: &dyn std::error::Error) -> Vec<String> {
    let mut out = Vec::new();
    let mut cause = error.source();
    while let Some(e) = cause {
        out.push(e.to_string());
        cause = e.source();
    }
    out
}

#[tokio::test]
async fn alpn_msgi_is_agreed_other_names_refused_none_accepted() {
    let ca = Ca::new("CA");
    let (chain, key) = server_identity(&ca);
    let mut server = serve(
        Server::builder(),
        TlsAcceptor::builder(chain, key).build().unwrap(),
    )
    .await;
    let client = |alpn: Vec<Vec<u8>>| {
        TlsConnector::builder("localhost")
            .root_certificates(vec![ca.der()])
            .alpn_protocols(alpn)
            .build()
            .unwrap()
    };
    // Only another protocol: refused during the handshake.
    let error = connect(client(vec![b"h2".to_vec()]), server.addr)
        .await
        .unwrap_err();
    assert!(
        matches!(
            HandshakeError::of(&error),
            Some(HandshakeError::Tls(rustls::Error::AlertReceived(
                rustls::AlertDescription::NoApplicationProtocol
            )))
        ),
        "{error:?}"
    );
    assert_eq!(
        within(server.rejected.recv()).await,
        Some(Rejection::AcceptFailed)
    );
    // None offered: accepted, nothing agreed.
    let plain_alpn = connect(client(Vec::new()), server.addr).await.unwrap();
    assert_echoes(&plain_alpn, "no ALPN").await;
    let info = within(server.infos.recv()).await.unwrap().unwrap();
    assert_eq!(info.alpn_protocol(), None);
    // Another one first, msgi too: msgi is agreed.
    let both = connect(client(vec![b"h2".to_vec(), b"msgi".to_vec()]), server.addr)
        .await
        .unwrap();
    assert_echoes(&both, "msgi among others").await;
    let info = within(server.infos.recv()).await.unwrap().unwrap();
    assert_eq!(info.alpn_protocol(), Some(&b"msgi"[..]));
}

#[tokio::test]
async fn tls_1_2_clients_are_served_too() {
    let ca = Ca::new("CA");
    let (chain, key) = server_identity(&ca);
    let mut server = serve(
        Server::builder(),
        TlsAcceptor::builder(chain, key).build().unwrap(),
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(msgi_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = msgi_tls::pki_types::ServerName::try_from("localhost").unwrap();
    let connector = TlsConnector::from_config(Arc::new(config), name);
    let client = connect(connector, server.addr).await.unwrap();
    assert_echoes(&client, "over TLS 1.2").await;
    let info = within(server.infos.recv()).await.unwrap().unwrap();
    assert_eq!(
        info.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

#[tokio::test]
async fn handshakes_hold_places_under_the_connection_cap_and_server_full_is_said_in_tls() {
    let ca = Ca::new("CA");
    let (chain, key) = server_identity(&ca);
    let tls = TlsAcceptor::builder(chain, key).build().unwrap();
    let mut server = serve(Server::builder().max_connections(2), tls).await;
    // Two handshakes that never finish take both places.
    let _slow = slow_handshakers(server.addr, 2).await;
    let connector = TlsConnector::builder("localhost")
        .root_certificates(vec![ca.der()])
        .build()
        .unwrap();
    // The third connection's handshake completes (outside the cap), then
    // it reads ERROR `server full` through TLS.
    let error = refused(connector, server.addr).await;
    assert!(
        error.to_string().contains("server full"),
        "told in TLS: {error}"
    );
    assert_eq!(
        within(server.rejected.recv()).await,
        Some(Rejection::ServerFull)
    );
}

#[tokio::test]
async fn a_server_that_closes_during_the_handshake_is_an_io_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Takes the connection, reads the whole ClientHello record, closes its
    // side (FIN, nothing left unread, so no reset) and waits for the client
    // to go.
    let closer = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).await.unwrap();
        let len = u16::from_be_bytes([header[3], header[4]]);
        let mut hello = vec![0u8; usize::from(len)];
        stream.read_exact(&mut hello).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    let ca = Ca::new("CA");
    let connector = TlsConnector::builder("localhost")
        .root_certificates(vec![ca.der()])
        .build()
        .unwrap();
    let error = connect(connector, addr).await.unwrap_err();
    match HandshakeError::of(&error) {
        Some(e @ HandshakeError::Io(io)) => {
            assert_eq!(io.kind(), std::io::ErrorKind::UnexpectedEof, "{io}");
            assert_eq!(e.rustls_error(), None);
        }
        other => panic!("{other:?}"),
    }
    within(closer).await.unwrap();
}

#[tokio::test]
async fn the_client_sees_the_servers_verified_identity_and_a_reconnect_replaces_it() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::Service;

    let ca = Ca::new("server CA");
    // Two identities for the same names: the first connection meets one,
    // the reconnect the other.
    let (first_chain, first_key) = ca.issue(&["localhost", "first.example"]);
    let (second_chain, second_key) = ca.issue(&["localhost", "second.example"]);
    let first = TlsAcceptor::builder(first_chain.clone(), first_key)
        .build()
        .unwrap();
    let second = TlsAcceptor::builder(second_chain.clone(), second_key)
        .build()
        .unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let step = tower::service_fn(move |incoming: msgi::Accepted<TcpStream>| {
        let mut acceptor = match accepted.fetch_add(1, Ordering::Relaxed) {
            0 => first.clone(),
            _ => second.clone(),
        };
        acceptor.call(incoming)
    });
    let (session_tx, mut sessions) = mpsc::unbounded_channel::<Session>();
    let server = Server::builder()
        .on_connect(move |s: &Session| {
            let _ = session_tx.send(s.clone());
        })
        .accept(step)
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener, echo()));

    let connector = TlsConnector::builder("localhost")
        .root_certificates(vec![ca.der()])
        .build()
        .unwrap();
    let policy = msgi::Reconnect {
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        ..msgi::Reconnect::default()
    };
    let client = within(
        Client::builder()
            .reconnect(policy)
            .connect_with_connector(connector, addr),
    )
    .await
    .unwrap();
    let info = client.connect_info();
    let tls = info.get::<TlsInfo>().expect("a TLS client has TlsInfo");
    assert_eq!(
        tls.peer_certificates(),
        &first_chain[..],
        "the server's chain"
    );
    assert_eq!(tls.peer_certificate(), first_chain.first());
    assert_eq!(
        tls.server_name(),
        Some("localhost"),
        "the name it sent (SNI)"
    );
    assert_eq!(tls.alpn_protocol(), Some(ALPN_MSGI));
    assert_eq!(
        tls.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert!(tls.cipher_suite().is_some());

    // The server ends the session; the client reconnects and meets the
    // second identity, which replaces the first in its connect info.
    let session = within(sessions.recv()).await.unwrap();
    assert!(session.close("go away"));
    within(sessions.recv()).await.unwrap();
    assert_echoes(&client, "after the reconnect").await;
    let info = client.connect_info();
    let tls = info.get::<TlsInfo>().unwrap();
    assert_eq!(tls.peer_certificates(), &second_chain[..]);
    within(client.close()).await;
}

/// A client whose provider lists `suites`, in that order.
fn client_preferring(ca: &Ca, suites: &[rustls::CipherSuite]) -> TlsConnector {
    let mut provider = (*msgi_tls::provider()).clone();
    provider.cipher_suites = suites
        .iter()
        .map(|s| {
            *rustls::crypto::ring::ALL_CIPHER_SUITES
                .iter()
                .find(|c| c.suite() == *s)
                .unwrap()
        })
        .collect();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = msgi_tls::pki_types::ServerName::try_from("localhost").unwrap();
    TlsConnector::from_config(Arc::new(config), name)
}

#[tokio::test]
async fn the_server_chooses_aes_128_gcm_first_whatever_the_clients_order() {
    use rustls::CipherSuite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    let ca = Ca::new("CA");
    let (chain, key) = server_identity(&ca);
    let mut server = serve(
        Server::builder(),
        TlsAcceptor::builder(chain, key).build().unwrap(),
    )
    .await;
    // What this crate's own connector lists first.
    let ours = msgi_tls::provider();
    assert_eq!(ours.cipher_suites[0].suite(), TLS13_AES_128_GCM_SHA256);
    // A client preferring AES-256 (as rustls's defaults do) gets AES-128.
    let aes_256_first =
        client_preferring(&ca, &[TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256]);
    let client = connect(aes_256_first, server.addr).await.unwrap();
    assert_echoes(&client, "AES-128").await;
    let info = within(server.infos.recv()).await.unwrap().unwrap();
    assert_eq!(info.cipher_suite(), Some(TLS13_AES_128_GCM_SHA256));
    let info = client.connect_info();
    let tls = info.get::<TlsInfo>().unwrap();
    assert_eq!(tls.cipher_suite(), Some(TLS13_AES_128_GCM_SHA256));
    // A client with ChaCha20-Poly1305 only is still served, with it.
    let chacha = client_preferring(&ca, &[TLS13_CHACHA20_POLY1305_SHA256]);
    let client = connect(chacha, server.addr).await.unwrap();
    assert_echoes(&client, "ChaCha20").await;
    let info = within(server.infos.recv()).await.unwrap().unwrap();
    assert_eq!(info.cipher_suite(), Some(TLS13_CHACHA20_POLY1305_SHA256));
}

/// A `ClientConfig` given to `from_config` with SNI turned off: no name is
/// sent (the server reads none), and the client's `TlsInfo` says so too
/// rather than the name the certificate was verified for.
#[tokio::test]
async fn a_client_config_without_sni_sends_none_and_its_tls_info_says_none() {
    let ca = Ca::new("CA");
    let (chain, key) = server_identity(&ca);
    let mut server = serve(
        Server::builder(),
        TlsAcceptor::builder(chain.clone(), key).build().unwrap(),
    )
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(msgi_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_MSGI.to_vec()];
    config.enable_sni = false;
    let name = msgi_tls::pki_types::ServerName::try_from("localhost").unwrap();
    let connector = TlsConnector::from_config(Arc::new(config), name);
    let client = connect(connector, server.addr).await.unwrap();
    assert_echoes(&client, "no SNI").await;
    let seen = within(server.infos.recv()).await.unwrap().unwrap();
    assert_eq!(seen.server_name(), None, "the server read no SNI");
    let info = client.connect_info();
    let tls = info.get::<TlsInfo>().unwrap();
    assert_eq!(tls.server_name(), None, "the client sent none");
    // The certificate was still verified (for the name).
    assert_eq!(tls.peer_certificates(), &chain[..]);
    within(client.close()).await;
}
