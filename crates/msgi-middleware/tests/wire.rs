//! Wire transforms and request layers over real loopback sockets, checked
//! from the raw bytes: pushes are transformed like answers, and every bad
//! frame is refused without reaching the handler or disturbing others.

#![allow(clippy::unwrap_used)]

#[path = "../../msgi/tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use msgi::{
    CloseReason, Flags, Frame, FrameCodec, Framing, Kind, MakeFraming, Server, SessionKeys, Side,
    TcpConnector, Wire,
};
use msgi_middleware::psk::ClientHandshake;
use msgi_middleware::{
    FrameTimeoutLayer, Limit, PresharedKeys, Psk, RateLimitLayer, RatePolicy, WireExt,
};
use support::{serve, within, RawPeer, TestServer};
use tokio::io::AsyncReadExt;
use tower::{Layer, ServiceBuilder};

/// What the builders take: a per-session framing factory.
trait Factory: MakeFraming + Clone + std::fmt::Debug {}
impl<M: MakeFraming + Clone + std::fmt::Debug> Factory for M {}

/// The handshake for a stack of these transforms.
fn psk(names: &str) -> Psk {
    Psk::with_transform_names(PresharedKeys::new(1, &[42; 32]), names)
}

fn encrypted() -> impl Factory {
    Wire::new(FrameCodec::new()).encrypt()
}

fn compressed() -> impl Factory {
    Wire::new(FrameCodec::new()).deflate(64)
}

fn authenticated() -> impl Factory {
    Wire::new(FrameCodec::new()).sign()
}

/// Runs the client's handshake on `peer`'s stream and keys its framing.
async fn handshake<C: Framing>(peer: &mut RawPeer<C>, psk: &Psk) -> SessionKeys {
    let (client, hello) = ClientHandshake::start(psk, [5; 32]).unwrap();
    peer.write(&encode(&mut FrameCodec::new(), hello)).await;
    let answer = raw_frame(&mut peer.stream).await;
    let (keys, finished) = client.finish(&answer).unwrap();
    peer.write(&encode(&mut FrameCodec::new(), finished)).await;
    peer.codec.set_session_keys(&keys);
    keys
}

/// An echo handler that counts the frames it saw.
fn counting_echo(
    seen: Arc<AtomicUsize>,
) -> impl tower::Service<
    Frame,
    Response = Option<Frame>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<Option<Frame>, std::convert::Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |f: Frame| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move { Ok(Some(f)) }
    })
}

/// Reads one frame as raw wire bytes, without any transform.
async fn raw_frame(stream: &mut tokio::net::TcpStream) -> Frame {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    within(async {
        loop {
            if let Some(f) = codec.decode(&mut buf).unwrap() {
                return f;
            }
            assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed");
        }
    })
    .await
}

async fn wait_for_sessions(server: &TestServer, n: usize) {
    within(async {
        while server.registry.connection_count() < n {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn broadcast_from_an_encrypting_server_is_ciphertext() {
    let seen = Arc::new(AtomicUsize::new(0));
    let psk = psk("encrypt");
    let mut server = serve(
        Server::builder()
            .framing(encrypted())
            .accept(psk.acceptor()),
        counting_echo(seen),
    )
    .await;
    let mut listener = RawPeer::connect(server.addr).await;
    let keys = handshake(&mut listener, &psk).await;
    wait_for_sessions(&server, 1).await;

    assert_eq!(
        server
            .registry
            .broadcast(Frame::data("top secret broadcast"))
            .queued,
        1
    );
    let raw = raw_frame(&mut listener.stream).await;
    assert!(raw.flags().contains(Flags::ENCRYPTED));
    assert!(!raw.payload().windows(10).any(|w| w == b"top secret"));
    // It is the real thing: the key opens it.
    let mut opener = encrypted().make_framing(Side::Client);
    opener.set_session_keys(&keys);
    let mut wire = BytesMut::new();
    FrameCodec::new().encode(raw, &mut wire).unwrap();
    assert_eq!(
        opener.decode(&mut wire).unwrap().unwrap(),
        Frame::data("top secret broadcast")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn pushed_frame_from_a_compressing_server_is_compressed() {
    let seen = Arc::new(AtomicUsize::new(0));
    let mut server = serve(Server::builder().framing(compressed()), counting_echo(seen)).await;
    let mut listener = RawPeer::connect(server.addr).await;
    wait_for_sessions(&server, 1).await;
    let text = "all work and no play ".repeat(50);
    let session = server.registry.sessions().pop().unwrap();
    session.send(Frame::data(text.clone())).unwrap();
    let raw = raw_frame(&mut listener.stream).await;
    assert!(raw.flags().contains(Flags::COMPRESSED));
    assert!(raw.payload().len() < text.len() / 4);
    let inflated = msgi_middleware::compression::decompress(raw.payload(), 1 << 20).unwrap();
    assert_eq!(inflated, text.as_bytes());
    server.shutdown().await;
}

#[tokio::test]
async fn secure_client_and_server_talk_through_every_layer() {
    let framing = || Wire::new(FrameCodec::new()).deflate(32).encrypt().sign();
    let psk = Psk::new(PresharedKeys::new(3, &[3; 32]), &framing());
    let seen = Arc::new(AtomicUsize::new(0));
    let handler = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(8)
        .layer(FrameTimeoutLayer::new(Duration::from_secs(5)))
        .layer(RateLimitLayer::new(RatePolicy::Delay).per_session(Limit::frames(10_000.0).unwrap()))
        .service(counting_echo(seen.clone()));
    let mut server = serve(
        Server::builder().framing(framing()).accept(psk.acceptor()),
        handler,
    )
    .await;
    let client = within(
        msgi::Client::builder()
            .framing(framing())
            .client_id("sec")
            .connect_with_connector(psk.connector(TcpConnector::new()), server.addr),
    )
    .await
    .unwrap();
    let mut pushes = client.incoming().unwrap();
    let big = "compress me ".repeat(100);
    let answer = within(client.call(Frame::data(big.clone()))).await.unwrap();
    assert_eq!(answer.payload_text(), big);
    within(client.ping()).await.unwrap();
    server
        .registry
        .send_to_client("sec", Frame::data("pushed"))
        .unwrap();
    assert_eq!(within(pushes.recv()).await.unwrap(), Frame::data("pushed"));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    drop(client);
    server.shutdown().await;
}

/// Starts a server with `framing`, a healthy bystander speaking it, then an
/// attacker that writes `bytes(attacker)`. Expects one ERROR (readable with
/// the right key) starting with `reason`, then the close; the handler saw
/// only what `expected_calls` says; the bystander is fine.
async fn refused<C, A>(
    names: &str,
    framing: C,
    attacker: A,
    bytes: impl FnOnce(&mut A::Framing) -> Vec<Vec<u8>>,
    reason: &str,
    expected_calls: usize,
) where
    C: MakeFraming + Clone,
    A: MakeFraming,
{
    let seen = Arc::new(AtomicUsize::new(0));
    let psk = psk(names);
    let mut server = serve(
        Server::builder()
            .framing(framing.clone())
            .accept(psk.acceptor()),
        counting_echo(seen.clone()),
    )
    .await;
    let mut bystander =
        RawPeer::connect_with(server.addr, framing.make_framing(Side::Client)).await;
    handshake(&mut bystander, &psk).await;
    bystander.send(Frame::ping("before")).await;
    assert_eq!(bystander.recv().await.unwrap().payload(), "before");

    let mut evil = RawPeer::connect_with(server.addr, attacker.make_framing(Side::Client)).await;
    let keys = handshake(&mut evil, &psk).await;
    let writes = bytes(&mut evil.codec);
    for chunk in &writes {
        evil.write(chunk).await;
    }
    // Answers to good frames first (when the attack replays one), then the error.
    let mut reader = framing.make_framing(Side::Client);
    reader.set_session_keys(&keys);
    let mut buf = BytesMut::new();
    let error = within(async {
        loop {
            if let Some(f) = reader.decode(&mut buf).unwrap() {
                if f.kind() == Kind::ERROR {
                    return f;
                }
                continue;
            }
            assert!(
                evil.stream.read_buf(&mut buf).await.unwrap() > 0,
                "closed without an ERROR"
            );
        }
    })
    .await;
    assert!(
        error.payload_text().starts_with(reason),
        "{:?} does not start with {reason:?}",
        error.payload_text()
    );
    let mut rest = Vec::new();
    within(evil.stream.read_to_end(&mut rest)).await.ok();
    let (_, why) = server.next_end().await;
    assert!(
        matches!(why, CloseReason::ProtocolViolation { .. }),
        "{why:?}"
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        expected_calls,
        "the bad frame never reached the handler"
    );

    bystander.send(Frame::ping("after")).await;
    assert_eq!(
        bystander.recv_skip_heartbeats().await.unwrap().payload(),
        "after"
    );
    server.shutdown().await;
}

fn encode(codec: &mut impl Framing, frame: Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    codec.encode(frame, &mut out).unwrap();
    out.to_vec()
}

#[tokio::test]
async fn tampered_ciphertext_is_refused() {
    refused(
        "encrypt",
        encrypted(),
        encrypted(),
        |c| {
            let mut bytes = encode(c, Frame::data("hello"));
            let last = bytes.len() - 1;
            bytes[last] ^= 0x01;
            vec![bytes]
        },
        "decryption failed",
        0,
    )
    .await;
}

#[tokio::test]
async fn truncated_ciphertext_is_refused() {
    refused(
        "encrypt",
        encrypted(),
        encrypted(),
        |c| {
            let sealed = encode(c, Frame::data("hello"));
            let mut frame = FrameCodec::new()
                .decode(&mut BytesMut::from(&sealed[..]))
                .unwrap()
                .unwrap();
            let cut = frame.payload().slice(..20);
            *frame.payload_mut() = cut;
            vec![encode(&mut FrameCodec::new(), frame)]
        },
        "encrypted payload too short",
        0,
    )
    .await;
}

#[tokio::test]
async fn replayed_ciphertext_is_refused() {
    refused(
        "encrypt",
        encrypted(),
        encrypted(),
        |c| {
            let once = encode(c, Frame::data("pay 100").with_request_id(1));
            vec![once.clone(), once]
        },
        "decryption failed",
        1,
    )
    .await;
}

#[tokio::test]
async fn reordered_ciphertext_is_refused() {
    refused(
        "encrypt",
        encrypted(),
        encrypted(),
        |c| {
            let first = encode(c, Frame::data("one"));
            let second = encode(c, Frame::data("two"));
            vec![second, first]
        },
        "decryption failed",
        0,
    )
    .await;
}

#[tokio::test]
async fn plaintext_on_an_encrypted_session_is_refused() {
    refused(
        "encrypt",
        encrypted(),
        FrameCodec::new(),
        |c| vec![encode(c, Frame::data("in the clear"))],
        "plaintext frame on an encrypted session",
        0,
    )
    .await;
}

#[tokio::test]
async fn zip_bomb_is_refused() {
    refused(
        "deflate",
        compressed(),
        FrameCodec::new(),
        |c| {
            let bomb = msgi_middleware::compression::compress(&vec![0u8; 4 << 20], 9).unwrap();
            vec![encode(c, Frame::data(bomb).with_flags(Flags::COMPRESSED))]
        },
        "decompressed payload exceeds the maximum frame size",
        0,
    )
    .await;
}

#[tokio::test]
async fn bad_hmac_tag_and_replay_are_refused() {
    refused(
        "sign",
        authenticated(),
        authenticated(),
        |c| {
            let mut bytes = encode(c, Frame::data("x"));
            bytes[12] ^= 1;
            vec![bytes]
        },
        "authentication failed",
        0,
    )
    .await;
    refused(
        "sign",
        authenticated(),
        authenticated(),
        |c| {
            let once = encode(c, Frame::data("x"));
            vec![once.clone(), once]
        },
        "replayed or reordered frame",
        1,
    )
    .await;
    refused(
        "sign",
        authenticated(),
        FrameCodec::new(),
        |c| vec![encode(c, Frame::data("unsigned"))],
        "unauthenticated frame",
        0,
    )
    .await;
}

#[tokio::test]
async fn rate_limit_rejects_with_the_request_id_and_the_session_lives() {
    let seen = Arc::new(AtomicUsize::new(0));
    let handler = RateLimitLayer::new(RatePolicy::Reject)
        .per_session(Limit::frames(2.0).unwrap())
        .layer(counting_echo(seen.clone()));
    let mut server = serve(Server::builder(), handler).await;
    let mut peer = RawPeer::connect(server.addr).await;
    // One write, so the three arrive together whatever the machine is doing.
    let burst: Vec<u8> = (1..=3)
        .flat_map(|id| peer.encode(Frame::data("x").with_request_id(id)).to_vec())
        .collect();
    peer.write(&burst).await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(peer.recv_skip_heartbeats().await.unwrap());
    }
    answers.sort_by_key(|f| f.request_id());
    assert_eq!(answers[2], Frame::error("rate limited").with_request_id(3));
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    peer.send(Frame::ping("alive")).await;
    assert_eq!(
        peer.recv_skip_heartbeats().await.unwrap().payload(),
        "alive"
    );
    // Another session has its own budget.
    let mut other = RawPeer::connect(server.addr).await;
    other.send(Frame::data("y").with_request_id(1)).await;
    assert_eq!(
        other.recv_skip_heartbeats().await.unwrap().kind(),
        Kind::DATA
    );
    server.shutdown().await;
}

#[tokio::test]
async fn timeout_answers_error_with_the_request_id() {
    let handler = FrameTimeoutLayer::new(Duration::from_millis(50)).layer(tower::service_fn(
        |f: Frame| async move {
            if f.payload() == "hang" {
                std::future::pending::<()>().await;
            }
            Ok::<_, std::convert::Infallible>(Some(f))
        },
    ));
    let mut server = serve(Server::builder(), handler).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::data("hang").with_request_id(8)).await;
    let answer = peer.recv_skip_heartbeats().await.unwrap();
    assert_eq!(
        answer,
        Frame::error("timed out after 50 ms").with_request_id(8)
    );
    peer.send(Frame::data("quick").with_request_id(9)).await;
    assert_eq!(
        peer.recv_skip_heartbeats().await.unwrap(),
        Frame::data("quick").with_request_id(9)
    );
    server.shutdown().await;
}

/// A maximum frame size below ~73 bytes made inflating panic (`clamp` with
/// max < min) and ended the session (issue 7, item 6).
#[tokio::test]
async fn a_compressing_session_with_a_64_byte_maximum_works() {
    let framing = || Wire::new(FrameCodec::with_max_frame_size(64)).deflate(16);
    let seen = Arc::new(AtomicUsize::new(0));
    let mut server = serve(Server::builder().framing(framing()), counting_echo(seen)).await;
    let client = within(
        msgi::Client::builder()
            .framing(framing())
            .connect(server.addr),
    )
    .await
    .unwrap();
    for _ in 0..3 {
        let text = "hello hello hello hello hello hello";
        let answer = within(client.call(Frame::data(text))).await.unwrap();
        assert_eq!(answer.payload_text(), text);
    }
    client.close().await;
    server.shutdown().await;
}
