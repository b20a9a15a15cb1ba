//! MSGI over WebSocket (feature `websocket`), against tokio-tungstenite's
//! client over real loopback sockets: one frame per binary message, a TCP
//! and a WebSocket server sharing one registry, what is refused and with
//! which close code, the request in the session's connect info.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use msgi::ws::{WebSocketAccept, WebSocketRequest};
use msgi::{Client, Frame, FrameCodec, Framing, Kind, Registry, Rejection, Server, Session};
use support::{echo, within};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower::service_fn;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket peer speaking MSGI frames, one per binary message.
struct Peer {
    ws: Ws,
    codec: FrameCodec,
}

/// What a peer saw until the server closed: the frames, then the close frame.
#[derive(Debug)]
struct Ending {
    frames: Vec<Frame>,
    close: Option<CloseFrame>,
}

impl Peer {
    async fn connect(addr: SocketAddr) -> Peer {
        Peer::connect_with(addr, "/chat?room=1", None)
            .await
            .unwrap()
    }

    async fn connect_with(
        addr: SocketAddr,
        path: &str,
        origin: Option<&str>,
    ) -> Result<Peer, WsError> {
        let mut request = format!("ws://{addr}{path}").into_client_request()?;
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        let (ws, _) = within(tokio_tungstenite::connect_async(request)).await?;
        Ok(Peer {
            ws,
            codec: FrameCodec::new(),
        })
    }

    fn encode(&mut self, frame: Frame) -> Vec<u8> {
        let mut buf = BytesMut::new();
        self.codec.encode(frame, &mut buf).unwrap();
        buf.to_vec()
    }

    async fn send(&mut self, frame: Frame) {
        let bytes = self.encode(frame);
        within(self.ws.send(Message::binary(bytes))).await.unwrap();
    }

    async fn send_message(&mut self, message: Message) {
        within(self.ws.send(message)).await.unwrap();
    }

    /// The next MSGI frame (HEARTBEATs skipped); panics on anything else.
    async fn recv(&mut self) -> Frame {
        loop {
            match within(self.ws.next()).await {
                Some(Ok(Message::Binary(bytes))) => {
                    let frame = self.decode(&bytes);
                    if frame.kind() != Kind::HEARTBEAT {
                        return frame;
                    }
                }
                other => panic!("expected a binary message, got {other:?}"),
            }
        }
    }

    fn decode(&mut self, bytes: &[u8]) -> Frame {
        let mut buf = BytesMut::from(bytes);
        let frame = self.codec.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "one frame per message");
        frame
    }

    /// Frames until the server's close frame, and that frame; answers the
    /// close (tungstenite does) and reads to the end.
    async fn ending(mut self) -> Ending {
        let mut frames = Vec::new();
        let mut close = None;
        within(async {
            while let Some(message) = self.ws.next().await {
                match message {
                    Ok(Message::Binary(bytes)) => {
                        let frame = self.decode(&bytes);
                        if frame.kind() != Kind::HEARTBEAT {
                            frames.push(frame);
                        }
                    }
                    Ok(Message::Close(frame)) => close = frame,
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(WsError::ConnectionClosed) => break,
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await;
        Ending { frames, close }
    }
}

fn code_and_reason(ending: &Ending) -> (CloseCode, String) {
    let close = ending
        .close
        .as_ref()
        .unwrap_or_else(|| panic!("no close frame: {ending:?}"));
    (close.code, close.reason.to_string())
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A WebSocket server with `step`, serving `echo`; the sessions it opened
/// come out of the receiver.
async fn ws_server(
    step: WebSocketAccept,
    tune: impl FnOnce(msgi::ServerBuilder) -> msgi::ServerBuilder,
) -> (SocketAddr, mpsc::UnboundedReceiver<Session>) {
    let (listener, addr) = listener().await;
    let (tx, rx) = mpsc::unbounded_channel();
    let server = tune(Server::builder())
        .on_connect(move |s| {
            let _ = tx.send(s.clone());
        })
        .accept(step)
        .build()
        .unwrap();
    tokio::spawn(server.serve(listener, echo()));
    (addr, rx)
}

#[tokio::test]
async fn frames_are_binary_messages_and_the_request_is_in_the_connect_info() {
    let (addr, mut sessions) = ws_server(WebSocketAccept::new(), |b| b).await;
    let mut peer = Peer::connect(addr).await;
    peer.send(Frame::control("HELLO browser-1").with_request_id(0))
        .await;
    let welcome = peer.recv().await;
    assert_eq!(welcome.kind(), Kind::CONTROL);
    assert!(welcome.payload().starts_with(b"WELCOME "), "{welcome:?}");
    assert_eq!(welcome.request_id(), Some(0));

    peer.send(Frame::data("hello over ws").with_request_id(7))
        .await;
    let answer = peer.recv().await;
    assert_eq!(answer.payload(), "hello over ws");
    assert_eq!(answer.request_id(), Some(7));

    // A large frame is one message too.
    let big = vec![b'x'; 200_000];
    peer.send(Frame::data(big.clone()).with_request_id(8)).await;
    assert_eq!(peer.recv().await.payload(), &big[..]);

    // Pings are answered by the WebSocket layer.
    peer.send_message(Message::Ping("are you there".into()))
        .await;
    match within(peer.ws.next()).await {
        Some(Ok(Message::Pong(payload))) => assert_eq!(payload, "are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }

    let session = within(sessions.recv()).await.unwrap();
    assert_eq!(session.client_id(), "browser-1");
    let request = session.connect_info::<WebSocketRequest>().unwrap();
    assert_eq!(request.path(), "/chat");
    assert_eq!(request.uri().query(), Some("room=1"));
    assert_eq!(request.origin(), None);
    assert!(request.headers().contains_key("sec-websocket-key"));
    assert_eq!(
        session.peer_addr(),
        Some(peer.ws.get_ref().get_ref().local_addr().unwrap())
    );
}

/// One registry for a TCP server and a WebSocket server: a broadcast from
/// either side reaches the other.
#[tokio::test]
async fn a_broadcast_reaches_tcp_and_websocket_sessions() {
    let registry = Registry::new();
    let chat = {
        let registry = registry.clone();
        service_fn(move |frame: Frame| {
            let registry = registry.clone();
            async move {
                if frame.kind() == Kind::DATA {
                    registry.broadcast(Frame::data(frame.payload().clone()));
                }
                Ok::<_, std::convert::Infallible>(None)
            }
        })
    };
    let (tcp_listener, tcp_addr) = listener().await;
    let (ws_listener, ws_addr) = listener().await;
    let tcp = Server::builder()
        .registry(registry.clone())
        .build()
        .unwrap();
    let ws = Server::builder()
        .registry(registry.clone())
        .accept(WebSocketAccept::new())
        .build()
        .unwrap();
    tokio::spawn(tcp.serve(tcp_listener, chat.clone()));
    tokio::spawn(ws.serve(ws_listener, chat));

    let client = within(Client::connect(tcp_addr)).await.unwrap();
    let mut incoming = client.incoming().unwrap();
    let mut peer = Peer::connect(ws_addr).await;
    // Both are registered once each has been answered once.
    peer.send(Frame::control("HELLO web").with_request_id(1))
        .await;
    assert!(peer.recv().await.payload().starts_with(b"WELCOME"));
    within(async {
        while registry.sessions().len() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    client.send(Frame::data("from tcp")).await.unwrap();
    assert_eq!(peer.recv().await.payload(), "from tcp");
    assert_eq!(within(incoming.recv()).await.unwrap().payload(), "from tcp");

    peer.send(Frame::data("from the browser")).await;
    assert_eq!(
        within(incoming.recv()).await.unwrap().payload(),
        "from the browser"
    );
    assert_eq!(peer.recv().await.payload(), "from the browser");
}

#[tokio::test]
async fn an_oversize_message_is_refused_with_1009() {
    let step = WebSocketAccept::builder()
        .max_message_size(1024)
        .build()
        .unwrap();
    let (addr, _sessions) = ws_server(step, |b| b).await;
    let mut peer = Peer::connect(addr).await;
    peer.send(Frame::data(vec![1u8; 1000])).await;
    assert_eq!(peer.recv().await.payload().len(), 1000);
    peer.send(Frame::data(vec![1u8; 2000])).await;
    let ending = peer.ending().await;
    let error = ending.frames.first().unwrap();
    assert_eq!(error.kind(), Kind::ERROR);
    assert!(
        error
            .payload_text()
            .starts_with("frame too large (max 1024)"),
        "{error:?}"
    );
    let (code, reason) = code_and_reason(&ending);
    assert_eq!(code, CloseCode::Size);
    assert!(reason.starts_with("frame too large"), "{reason}");
}

#[tokio::test]
async fn a_bad_origin_is_refused_with_403() {
    let (observer, mut rejections) = Rejections::new();
    let step = WebSocketAccept::builder()
        .allow_origin("http://chat.example")
        .build()
        .unwrap();
    let (addr, mut sessions) = ws_server(step, |b| b.observer(observer)).await;
    match Peer::connect_with(addr, "/", Some("http://evil.example")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        Err(e) => panic!("expected 403, got {e}"),
        Ok(_) => panic!("a bad origin was let in"),
    }
    assert_eq!(
        within(rejections.recv()).await,
        Some(Rejection::AcceptFailed)
    );
    // The allowed origin, and a client that is not a browser, get in.
    let mut allowed = Peer::connect_with(addr, "/", Some("http://chat.example"))
        .await
        .unwrap();
    allowed.send(Frame::data("hi").with_request_id(1)).await;
    assert_eq!(allowed.recv().await.payload(), "hi");
    let session = within(sessions.recv()).await.unwrap();
    assert_eq!(
        session
            .connect_info::<WebSocketRequest>()
            .and_then(WebSocketRequest::origin),
        Some("http://chat.example")
    );
    let mut native = Peer::connect(addr).await;
    native.send(Frame::data("hi").with_request_id(1)).await;
    assert_eq!(native.recv().await.payload(), "hi");
}

#[tokio::test]
async fn the_server_origin_is_the_default() {
    let (addr, _sessions) = ws_server(WebSocketAccept::new(), |b| b).await;
    let own = format!("http://{addr}");
    let mut peer = Peer::connect_with(addr, "/", Some(&own)).await.unwrap();
    peer.send(Frame::data("hi").with_request_id(1)).await;
    assert_eq!(peer.recv().await.payload(), "hi");
    match Peer::connect_with(addr, "/", Some("http://127.0.0.1:1")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        Err(e) => panic!("expected 403, got {e}"),
        Ok(_) => panic!("another origin was let in"),
    }
    // DNS rebinding: a page of evil.example whose name now resolves to the
    // server sends its own name as both Host and Origin.
    let mut request = format!("ws://{addr}/").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("host", "evil.example:17011".parse().unwrap());
    headers.insert("origin", "http://evil.example:17011".parse().unwrap());
    match within(tokio_tungstenite::connect_async(request)).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        Err(e) => panic!("expected 403, got {e}"),
        Ok(_) => panic!("a rebound name was taken for the server's own"),
    }
}

#[tokio::test]
async fn a_text_message_is_refused_with_1003() {
    let (addr, _sessions) = ws_server(WebSocketAccept::new(), |b| b).await;
    let mut peer = Peer::connect(addr).await;
    peer.send_message(Message::text("MSGI as text?")).await;
    let ending = peer.ending().await;
    let error = ending.frames.first().unwrap();
    assert_eq!(error.kind(), Kind::ERROR);
    assert_eq!(
        error.payload_text(),
        "text message refused: MSGI over WebSocket takes binary messages"
    );
    assert_eq!(
        code_and_reason(&ending),
        (
            CloseCode::Unsupported,
            "text message refused: MSGI over WebSocket takes binary messages".to_owned()
        )
    );
}

#[tokio::test]
async fn a_message_must_be_exactly_one_frame() {
    let (addr, _sessions) = ws_server(WebSocketAccept::new(), |b| b).await;
    // Two frames in one message.
    let mut peer = Peer::connect(addr).await;
    let mut two = peer.encode(Frame::data("a"));
    two.extend(peer.encode(Frame::data("b")));
    peer.send_message(Message::binary(two)).await;
    let ending = peer.ending().await;
    assert_eq!(
        ending.frames.first().unwrap().payload_text(),
        "binary message holds more than one frame (11 bytes after the first)"
    );
    assert_eq!(code_and_reason(&ending).0, CloseCode::Invalid);

    // Part of a frame.
    let mut peer = Peer::connect(addr).await;
    let whole = peer.encode(Frame::data("abc"));
    peer.send_message(Message::binary(whole[..12].to_vec()))
        .await;
    let ending = peer.ending().await;
    assert_eq!(
        ending.frames.first().unwrap().payload_text(),
        "binary message holds part of a frame (12 bytes)"
    );
    assert_eq!(code_and_reason(&ending).0, CloseCode::Invalid);

    // Not MSGI at all.
    let mut peer = Peer::connect(addr).await;
    peer.send_message(Message::binary(b"GET / HTTP/1.1\r\n\r\n".to_vec()))
        .await;
    let ending = peer.ending().await;
    assert!(ending
        .frames
        .first()
        .unwrap()
        .payload_text()
        .starts_with("bad magic"));
    assert_eq!(code_and_reason(&ending).0, CloseCode::Invalid);
}

#[tokio::test]
async fn disconnect_and_idle_timeout_become_close_frames() {
    // The application closes a session: DISCONNECT, then close 1000 with
    // its reason. A server without idle timeout: a stalled test must not
    // see the idle close instead.
    let (addr, mut sessions) = ws_server(WebSocketAccept::new(), |b| b).await;
    let mut peer = Peer::connect(addr).await;
    peer.send(Frame::data("x").with_request_id(1)).await;
    assert_eq!(peer.recv().await.payload(), "x");
    let session = within(sessions.recv()).await.unwrap();
    assert!(session.close("room closed"));
    let ending = peer.ending().await;
    let last = ending.frames.last().unwrap();
    assert_eq!(last.kind(), Kind::DISCONNECT);
    assert_eq!(last.payload(), "room closed");
    assert_eq!(
        code_and_reason(&ending),
        (CloseCode::Normal, "room closed".to_owned())
    );

    // A silent peer: DISCONNECT `idle timeout`, close 1000 `idle timeout`.
    let (addr, _sessions) = ws_server(WebSocketAccept::new(), |b| {
        b.idle_timeout(Some(Duration::from_millis(300)))
    })
    .await;
    let peer = Peer::connect(addr).await;
    let ending = peer.ending().await;
    assert_eq!(ending.frames.last().unwrap().payload(), "idle timeout");
    assert_eq!(
        code_and_reason(&ending),
        (CloseCode::Normal, "idle timeout".to_owned())
    );
}

#[tokio::test]
async fn shutdown_is_going_away_and_a_full_server_is_try_again() {
    let (listener, addr) = listener().await;
    let server = Server::builder()
        .max_connections(1)
        .accept(WebSocketAccept::new())
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        server
            .serve(listener, echo())
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );
    let mut first = Peer::connect(addr).await;
    first.send(Frame::data("x").with_request_id(1)).await;
    assert_eq!(first.recv().await.payload(), "x");

    // Over the cap: upgraded, then ERROR `server full`, close 1013.
    let second = Peer::connect(addr).await;
    let ending = second.ending().await;
    assert!(ending.frames[0].payload_text().starts_with("server full"));
    assert_eq!(code_and_reason(&ending).0, CloseCode::Again);

    stop.send(()).unwrap();
    let ending = first.ending().await;
    assert_eq!(ending.frames.last().unwrap().payload(), "server shutdown");
    assert_eq!(
        code_and_reason(&ending),
        (CloseCode::Away, "server shutdown".to_owned())
    );
    within(serving).await.unwrap().unwrap();
}

/// The client closes: the session ends as a peer close, without an ERROR.
#[tokio::test]
async fn a_client_close_ends_the_session() {
    let (listener, addr) = listener().await;
    let (tx, mut ended) = mpsc::unbounded_channel();
    let server = Server::builder()
        .on_disconnect(move |_, reason| {
            let _ = tx.send(reason.clone());
        })
        .accept(WebSocketAccept::new())
        .build()
        .unwrap();
    tokio::spawn(server.serve(listener, echo()));
    let mut peer = Peer::connect(addr).await;
    peer.send(Frame::data("x").with_request_id(1)).await;
    assert_eq!(peer.recv().await.payload(), "x");
    within(peer.ws.close(None)).await.unwrap();
    let ending = peer.ending().await;
    assert!(ending.frames.is_empty(), "{ending:?}");
    assert_eq!(
        within(ended.recv()).await.unwrap(),
        msgi::CloseReason::PeerClosed
    );
}

/// What the observer saw rejected.
struct Rejections(mpsc::UnboundedSender<Rejection>);

impl Rejections {
    fn new() -> (Rejections, mpsc::UnboundedReceiver<Rejection>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Rejections(tx), rx)
    }
}

impl msgi::Observer for Rejections {
    fn connection_rejected(&self, why: Rejection) {
        let _ = self.0.send(why);
    }
}

/// PROTOCOL.md's worked example, byte for byte: the RFC 6455 upgrade, a
/// masked binary message holding one frame, the unmasked answer, and the
/// close frame of an application's DISCONNECT.
#[tokio::test]
async fn the_worked_example_in_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, mut sessions) = ws_server(WebSocketAccept::new(), |b| b).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /chat HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        within(tcp.read_exact(&mut byte)).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );

    // DATA "abc" with request id 7: 17 bytes, masked with 01 02 03 04.
    let frame = b"MSGI\x00\x00\x00\x11\x10\x10\x00\x00\x00\x07abc";
    let mask = [1u8, 2, 3, 4];
    let mut message = vec![0x82, 0x80 | 17];
    message.extend_from_slice(&mask);
    message.extend(frame.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&message).await.unwrap();
    let mut answer = [0u8; 19];
    within(tcp.read_exact(&mut answer)).await.unwrap();
    assert_eq!(answer[..2], [0x82, 0x11]);
    assert_eq!(&answer[2..], frame);

    // The application closes the session with "bye": DISCONNECT as a
    // binary message, then close 1000 "bye".
    let session = within(sessions.recv()).await.unwrap();
    assert!(session.close("bye"));
    let mut tail = [0u8; 2 + 13 + 2 + 5];
    within(tcp.read_exact(&mut tail)).await.unwrap();
    assert_eq!(
        tail,
        *b"\x82\x0dMSGI\x00\x00\x00\x0d\x00\x50bye\x88\x05\x03\xe8bye"
    );
}

/// Embedding: an HTTP server of one's own answers the upgrade (here by
/// hand, as a hyper or axum route would), then hands the upgraded stream to
/// `serve_connection` as a `WebSocket::from_upgraded`.
#[tokio::test]
async fn a_stream_upgraded_elsewhere_is_served_by_serve_connection() {
    use http::header::{HeaderMap, HeaderName, HeaderValue};
    use msgi::ws::{accept_key, WebSocket};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let settings = WebSocketAccept::builder()
        .allow_origin("http://app.example")
        .max_message_size(4096)
        .build()
        .unwrap();
    let (tx, mut sessions) = mpsc::unbounded_channel();
    let server = Server::builder()
        .on_connect(move |s| {
            let _ = tx.send(s.clone());
        })
        .build()
        .unwrap();
    let (listener, addr) = listener().await;
    let upgrade = {
        let settings = settings.clone();
        async move {
            loop {
                let (mut tcp, peer) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    tcp.read_exact(&mut byte).await.unwrap();
                    head.push(byte[0]);
                }
                let text = String::from_utf8(head).unwrap();
                let mut lines = text.split("\r\n");
                let path = lines.next().unwrap().split(' ').nth(1).unwrap().to_owned();
                let mut headers = HeaderMap::new();
                for line in lines.filter(|l| !l.is_empty()) {
                    let (name, value) = line.split_once(':').unwrap();
                    headers.append(
                        HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                        HeaderValue::from_str(value.trim()).unwrap(),
                    );
                }
                if !settings.origin_allowed(&headers) {
                    tcp.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    continue;
                }
                let key = accept_key(headers["sec-websocket-key"].as_bytes());
                tcp.write_all(
                    format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                         Connection: Upgrade\r\nSec-WebSocket-Accept: {key}\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
                let mut info = msgi::ConnectInfo::from_peer_addr(peer);
                info.insert(WebSocketRequest::new(path.parse().unwrap(), headers));
                let ws = WebSocket::from_upgraded(tcp, &settings).await;
                tokio::spawn(server.serve_connection(ws, info, echo()));
            }
        }
    };
    tokio::spawn(upgrade);

    let mut peer = Peer::connect_with(addr, "/embedded", Some("http://app.example"))
        .await
        .unwrap();
    peer.send(Frame::data("through my own route").with_request_id(5))
        .await;
    let answer = peer.recv().await;
    assert_eq!(answer.payload(), "through my own route");
    assert_eq!(answer.request_id(), Some(5));
    let session = within(sessions.recv()).await.unwrap();
    let request = session.connect_info::<WebSocketRequest>().unwrap();
    assert_eq!(request.path(), "/embedded");
    assert_eq!(request.origin(), Some("http://app.example"));
    // The message limit of `settings` holds there too.
    peer.send(Frame::data(vec![0u8; 8000])).await;
    let ending = peer.ending().await;
    assert_eq!(code_and_reason(&ending).0, CloseCode::Size);

    match Peer::connect_with(addr, "/", Some("http://evil.example")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        Err(e) => panic!("expected 403, got {e}"),
        Ok(_) => panic!("another origin was let in"),
    }
}
