//! WebSocket over TLS (`wss://`): `TlsAcceptor::then` runs msgi's WebSocket
//! accept step on the TLS stream, as one accept step.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use msgi::ws::{WebSocketAccept, WebSocketRequest};
use msgi::{Frame, FrameCodec, Framing, Server, Session};
use msgi_tls::{TlsAcceptor, TlsConnector, TlsInfo};
use rcgen::{CertificateParams, KeyPair};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceExt;

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("test step timed out")
}

#[tokio::test]
async fn msgi_over_websocket_over_tls() {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = cert.der().clone();
    let key = msgi_tls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let tls = TlsAcceptor::builder(vec![der.clone()], key)
        // A browser offers http/1.1 for a WebSocket: no msgi ALPN here.
        .alpn_protocols(vec![b"http/1.1".to_vec()])
        .build()
        .unwrap();
    let step = tls.then(WebSocketAccept::builder().build().unwrap());

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let server = Server::builder()
        .accept(step)
        .on_connect(move |s: &Session| {
            let tls = s
                .connect_info::<TlsInfo>()
                .and_then(|t| t.server_name().map(str::to_owned));
            let path = s
                .connect_info::<WebSocketRequest>()
                .map(|r| r.uri().path().to_owned());
            let _ = seen_tx.send((tls, path));
        })
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = tower::service_fn(|f: Frame| async move { Ok::<_, Infallible>(Some(f)) });
    tokio::spawn(server.serve(listener, echo));

    // The client: TLS (trusting the self-signed certificate), then the
    // WebSocket handshake on it.
    let connector = TlsConnector::builder("localhost")
        .root_certificates(vec![der])
        .alpn_protocols(vec![b"http/1.1".to_vec()])
        .build()
        .unwrap();
    let (stream, _info) = within(connector.oneshot(addr)).await.unwrap().into_parts();
    let (mut ws, _) = within(tokio_tungstenite::client_async(
        "wss://localhost/chat",
        stream,
    ))
    .await
    .unwrap();

    let mut codec = FrameCodec::new();
    let mut out = BytesMut::new();
    let mut request = Frame::data("over wss");
    request.set_request_id(Some(7));
    codec.encode(request, &mut out).unwrap();
    within(ws.send(Message::binary(out.to_vec())))
        .await
        .unwrap();
    // The session's first message is the echo (no heartbeat this early).
    let answer = match within(ws.next()).await.unwrap().unwrap() {
        Message::Binary(bytes) => {
            let mut buf = BytesMut::from(&bytes[..]);
            codec.decode(&mut buf).unwrap().unwrap()
        }
        other => panic!("unexpected message {other:?}"),
    };
    assert_eq!(answer.payload_text(), "over wss");
    assert_eq!(answer.request_id(), Some(7));

    let (server_name, path) = within(seen.recv()).await.unwrap();
    assert_eq!(
        server_name.as_deref(),
        Some("localhost"),
        "TlsInfo reached the session"
    );
    assert_eq!(
        path.as_deref(),
        Some("/chat"),
        "and the WebSocket request too"
    );
}
