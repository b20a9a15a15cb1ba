//! The forwarding adapter and the connector service, over loopback.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use msgi::{Client, ClientError, Forward, Frame, Kind, Server};
use support::{serve, within};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};

/// An upstream that answers `up:<payload>`, fails `fail` with an ERROR,
/// and reports one-way frames on `seen`.
async fn upstream(seen: mpsc::UnboundedSender<String>) -> support::TestServer {
    let service = tower::service_fn(move |frame: Frame| {
        let seen = seen.clone();
        async move {
            if frame.request_id().is_none() {
                let _ = seen.send(frame.payload_text().into_owned());
                return Ok(None);
            }
            if frame.payload_text() == "fail" {
                return Err("upstream says no");
            }
            Ok(Some(Frame::data(format!("up:{}", frame.payload_text()))))
        }
    });
    serve(Server::builder(), service).await
}

#[tokio::test]
async fn a_server_whose_handler_forwards_to_an_upstream() {
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mut up = upstream(seen_tx).await;
    let to_up = within(Client::connect(up.addr)).await.unwrap();
    let mut gateway = serve(Server::builder(), Forward::new(to_up)).await;
    let client = within(Client::connect(gateway.addr)).await.unwrap();

    let answer = within(client.call(Frame::data("x"))).await.unwrap();
    assert_eq!(answer.payload_text(), "up:x");

    // One-way stays one-way: it reaches the upstream, nothing comes back.
    client.send(Frame::data("one-way")).await.unwrap();
    assert_eq!(within(seen.recv()).await.unwrap(), "one-way");

    // The upstream's ERROR passes through with its own text.
    let err = within(client.call(Frame::data("fail"))).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Remote(r) if r == "upstream says no"),
        "{err:?}"
    );
    // And the gateway goes on.
    let answer = within(client.call(Frame::data("y"))).await.unwrap();
    assert_eq!(answer.payload_text(), "up:y");
    gateway.shutdown().await;
    up.shutdown().await;
}

#[tokio::test]
async fn forward_returns_an_upstream_error_as_a_frame_and_one_way_as_none() {
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mut up = upstream(seen_tx).await;
    let client = within(Client::connect(up.addr)).await.unwrap();
    let mut forward = Forward::new(client);

    let answer = within(
        forward
            .ready()
            .await
            .unwrap()
            .call(Frame::data("fail").with_request_id(7)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(answer.kind(), Kind::ERROR);
    assert_eq!(answer.payload_text(), "upstream says no");

    let answer = within(
        forward
            .ready()
            .await
            .unwrap()
            .call(Frame::data("z").with_request_id(8)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(answer.payload_text(), "up:z");

    let none = within(forward.ready().await.unwrap().call(Frame::data("ow")))
        .await
        .unwrap();
    assert!(none.is_none());
    assert_eq!(within(seen.recv()).await.unwrap(), "ow");

    // Without readiness nothing is sent.
    let err = forward.call(Frame::data("n")).await.unwrap_err();
    assert!(matches!(err, ClientError::NotReady), "{err:?}");
    up.shutdown().await;
}

#[tokio::test]
async fn a_connector_service_opens_each_connection() {
    let (seen_tx, _seen) = mpsc::unbounded_channel();
    let mut up = upstream(seen_tx).await;
    let opened = Arc::new(AtomicUsize::new(0));
    let count = opened.clone();
    let connector = tower::service_fn(move |addr: SocketAddr| {
        count.fetch_add(1, Ordering::SeqCst);
        TcpStream::connect(addr)
    });
    let client = within(Client::builder().connect_with_connector(connector, up.addr))
        .await
        .unwrap();
    assert_eq!(opened.load(Ordering::SeqCst), 1);
    let answer = within(client.call(Frame::data("c"))).await.unwrap();
    assert_eq!(answer.payload_text(), "up:c");

    // A connector's error: an io::Error is the source of Connect, to
    // `the transport`; any other error too, wrapped.
    let refuse = tower::service_fn(|(): ()| async {
        Err::<TcpStream, _>(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
    });
    let err = within(Client::builder().connect_with_connector(refuse, ()))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "could not connect to the transport");
    assert_eq!(
        err.io_error().map(std::io::Error::kind),
        Some(std::io::ErrorKind::PermissionDenied)
    );
    let refuse = tower::service_fn(|(): ()| async { Err::<TcpStream, _>("no route today") });
    let err = within(Client::builder().connect_with_connector(refuse, ()))
        .await
        .unwrap_err();
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(source.as_deref(), Some("no route today"));
    up.shutdown().await;
}

#[tokio::test]
async fn the_connector_is_called_again_for_each_reconnect() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opened = Arc::new(AtomicUsize::new(0));
    let count = opened.clone();
    let connector = tower::service_fn(move |addr: SocketAddr| {
        count.fetch_add(1, Ordering::SeqCst);
        TcpStream::connect(addr)
    });
    let policy = msgi::Reconnect {
        initial_delay: std::time::Duration::from_millis(1),
        max_delay: std::time::Duration::from_millis(5),
        ..msgi::Reconnect::default()
    };
    let connecting = tokio::spawn(
        Client::builder()
            .reconnect(policy)
            .connect_with_connector(connector, addr),
    );
    // No handshake without a client id: the first accept is the connection.
    let (first, _) = within(listener.accept()).await.unwrap();
    let client = within(connecting).await.unwrap().unwrap();
    drop(first);
    let (_second, _) = within(listener.accept()).await.unwrap();
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    client.close().await;
}

/// Causes are types: a peer that does not speak MSGI is a `Violation::Codec`
/// holding `CodecError::BadMagic`, on the call and on the close; a close by
/// the application is `CloseCause::Application`.
#[tokio::test]
async fn close_causes_are_typed() {
    use msgi::proto::client::{ConnectionError, Violation};
    use msgi::{CloseCause, CodecError};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let _ = stream.read(&mut buf).await;
        stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        // Keep the socket until the client is done with it.
        let _ = stream.read(&mut buf).await;
    });
    let client = within(Client::connect(addr)).await.unwrap();
    let err = within(client.call(Frame::data("hello?")))
        .await
        .unwrap_err();
    let bad_magic = |v: Option<&Violation>| matches!(v, Some(Violation::Codec(e)) if matches!(**e, CodecError::BadMagic));
    assert!(bad_magic(err.violation()), "{err:?}");
    assert!(matches!(
        err,
        ClientError::ConnectionLost(ConnectionError::Violation(_))
    ));
    let reason = within(client.closed()).await;
    assert!(
        matches!(&reason, ClientError::Closed(CloseCause::Lost(_))),
        "{reason:?}"
    );
    assert!(bad_magic(reason.violation()), "{reason:?}");
    assert_eq!(
        reason.connection_error().map(ConnectionError::kind),
        Some("undecodable")
    );
    within(server).await.unwrap();

    let (seen_tx, _seen) = mpsc::unbounded_channel();
    let mut up = upstream(seen_tx).await;
    let client = within(Client::connect(up.addr)).await.unwrap();
    within(client.close()).await;
    let reason = within(client.closed()).await;
    assert!(
        matches!(&reason, ClientError::Closed(CloseCause::Application)),
        "{reason:?}"
    );
    up.shutdown().await;
}
