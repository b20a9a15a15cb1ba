//! The pre-shared-key handshake: every attack the issue names is refused
//! with the documented reason, sans IO and over loopback sockets. (The
//! worked example of docs/PROTOCOL.md is checked in worked_examples.rs.)

#![allow(clippy::unwrap_used)]

#[path = "../../msgi/tests/support/mod.rs"]
mod support;

use bytes::BytesMut;
use msgi::{
    Client, ClientError, Flags, Frame, FrameCodec, Framing, Kind, MakeFraming, Server, SessionKeys,
    Side, TcpConnector, Wire,
};
use msgi_middleware::psk::{
    AuthenticatedKey, ClientHandshake, PresharedKeys, Psk, PskError, ServerHandshake,
};
use msgi_middleware::WireExt;
use support::{echo, serve, within, RawPeer, TestServer};

const KEY: [u8; 32] = [7; 32];

fn wire() -> impl MakeFraming<Framing = impl Framing> + Clone + std::fmt::Debug {
    Wire::new(FrameCodec::new()).deflate(64).encrypt().sign()
}

fn psk_for(key: &[u8]) -> Psk {
    Psk::new(
        PresharedKeys::new(1, key),
        &Wire::new(FrameCodec::new()).deflate(64).encrypt().sign(),
    )
}

/// Runs both halves sans IO: the client's and the server's keys.
fn handshake(client: &Psk, server: &Psk) -> Result<(SessionKeys, SessionKeys), PskError> {
    let (c, hello) = ClientHandshake::start(client, rand())?;
    let (s, answer) = ServerHandshake::start(server, rand(), &hello)?;
    let (client_keys, finished) = c.finish(&answer)?;
    Ok((client_keys, s.finish(&finished)?))
}

fn rand() -> [u8; 32] {
    std::array::from_fn(|_| fastrand::u8(..))
}

/// A keyed framing of `wire` for `side`.
fn keyed(side: Side, keys: &SessionKeys) -> impl Framing {
    let mut framing = wire().make_framing(side);
    framing.set_session_keys(keys);
    framing
}

fn to_wire(framing: &mut impl Framing, frame: Frame) -> BytesMut {
    let mut out = BytesMut::new();
    framing.encode(frame, &mut out).unwrap();
    out
}

fn refusal(framing: &mut impl Framing, mut bytes: BytesMut) -> String {
    framing.decode(&mut bytes).unwrap_err().to_string()
}

#[test]
fn both_ends_derive_the_same_keys_and_every_session_new_ones() {
    let psk = psk_for(&KEY);
    let (client, server) = handshake(&psk, &psk).unwrap();
    assert_eq!(client, server);
    assert_ne!(client.sent_by(Side::Client), client.sent_by(Side::Server));
    let (again, _) = handshake(&psk, &psk).unwrap();
    assert_ne!(again, client, "fresh randomness, fresh keys");
    let mut c = keyed(Side::Client, &client);
    let mut s = keyed(Side::Server, &server);
    let mut up = to_wire(&mut c, Frame::data("x".repeat(500)).with_request_id(3));
    assert_eq!(
        s.decode(&mut up).unwrap(),
        Some(Frame::data("x".repeat(500)).with_request_id(3))
    );
}

#[test]
fn a_frame_spliced_from_another_live_session_is_refused() {
    let psk = psk_for(&KEY);
    let (a, _) = handshake(&psk, &psk).unwrap();
    let (b, _) = handshake(&psk, &psk).unwrap();
    // Frame 0 of session A, into session B where frame 0 is expected.
    let spliced = to_wire(&mut keyed(Side::Client, &a), Frame::data("pay 100"));
    let why = refusal(&mut keyed(Side::Server, &b), spliced);
    assert!(why.contains("authentication failed"), "{why}");
}

#[test]
fn a_frame_reflected_to_its_sender_is_refused() {
    let psk = psk_for(&KEY);
    let (keys, _) = handshake(&psk, &psk).unwrap();
    let mut client = keyed(Side::Client, &keys);
    let sent = to_wire(&mut client, Frame::data("ping"));
    // The client's own frame 0 back to it, where the server's frame 0 is expected.
    let why = refusal(&mut keyed(Side::Client, &keys), sent);
    assert!(why.contains("authentication failed"), "{why}");
}

#[test]
fn a_frame_replayed_within_a_session_is_refused() {
    let psk = psk_for(&KEY);
    let (keys, _) = handshake(&psk, &psk).unwrap();
    let mut client = keyed(Side::Client, &keys);
    let mut server = keyed(Side::Server, &keys);
    let first = to_wire(&mut client, Frame::data("once"));
    assert!(server.decode(&mut first.clone()).unwrap().is_some());
    let why = refusal(&mut server, first);
    assert!(
        why.contains("replayed or reordered frame (sequence 0, expected 1)"),
        "{why}"
    );
}

#[test]
fn the_encrypt_layer_alone_refuses_splice_reflection_and_replay() {
    let only = |side| Wire::new(FrameCodec::new()).encrypt().make_framing(side);
    let psk = Psk::new(
        PresharedKeys::new(1, &KEY),
        &Wire::new(FrameCodec::new()).encrypt(),
    );
    let (a, _) = handshake(&psk, &psk).unwrap();
    let (b, _) = handshake(&psk, &psk).unwrap();
    let (mut client, mut server, mut other) =
        (only(Side::Client), only(Side::Server), only(Side::Server));
    client.set_session_keys(&a);
    server.set_session_keys(&a);
    other.set_session_keys(&b);
    let frame = to_wire(&mut client, Frame::data("secret"));
    assert!(!frame.windows(6).any(|w| w == b"secret"));
    assert!(refusal(&mut other, frame.clone()).contains("decryption failed"));
    let mut reflected = only(Side::Client);
    reflected.set_session_keys(&a);
    assert!(refusal(&mut reflected, frame.clone()).contains("decryption failed"));
    assert!(server.decode(&mut frame.clone()).unwrap().is_some());
    assert!(refusal(&mut server, frame).contains("decryption failed"));
}

#[test]
fn refusals_name_the_difference() {
    let psk = psk_for(&KEY);
    // Transforms: compression on one side only.
    let plain = Psk::new(
        PresharedKeys::new(1, &KEY),
        &Wire::new(FrameCodec::new()).encrypt().sign(),
    );
    let (_, hello) = ClientHandshake::start(&psk, rand()).unwrap();
    let err = ServerHandshake::start(&plain, rand(), &hello).unwrap_err();
    assert_eq!(
        err.reason(),
        "psk: transforms differ (client deflate,encrypt,sign; server encrypt,sign)"
    );
    assert_eq!(
        err.to_error_frame().unwrap().payload_text(),
        err.reason(),
        "told to the client as it is"
    );
    // No key: the first frame is not a hello.
    let err = ServerHandshake::start(&psk, rand(), &Frame::data("hi")).unwrap_err();
    assert_eq!(
        err.reason(),
        "psk: this server requires the pre-shared-key handshake \
         (the first frame was DATA, not a psk client hello)"
    );
    // Unknown key id.
    let rotated = Psk::new(
        PresharedKeys::new(2, &KEY),
        &Wire::new(FrameCodec::new()).deflate(64).encrypt().sign(),
    );
    let (_, hello) = ClientHandshake::start(&rotated, rand()).unwrap();
    let err = ServerHandshake::start(&psk, rand(), &hello).unwrap_err();
    assert_eq!(err.reason(), "psk: unknown or retired key id 2");
    // Another version.
    let (_, hello) = ClientHandshake::start(&psk, rand()).unwrap();
    let mut bytes = hello.payload().to_vec();
    bytes[9] = 2;
    let err = ServerHandshake::start(&psk, rand(), &Frame::new(Kind::CONTROL, bytes)).unwrap_err();
    assert_eq!(
        err.reason(),
        "psk: version 2 not supported (this end speaks 1)"
    );
    // Wrong key: the client finds out from the server's MAC.
    let wrong = psk_for(&[8; 32]);
    let (client, hello) = ClientHandshake::start(&wrong, rand()).unwrap();
    let (_, answer) = ServerHandshake::start(&psk, rand(), &hello).unwrap();
    let err = client.finish(&answer).unwrap_err();
    assert_eq!(
        err.reason(),
        "psk: wrong key (the server's finished MAC does not verify)"
    );
    // The server's refusal reaches the client's error as the server wrote it.
    let (client, _) = ClientHandshake::start(&psk, rand()).unwrap();
    let err = client
        .finish(&Frame::error("psk: unknown or retired key id 1"))
        .unwrap_err();
    assert!(matches!(err, PskError::Refused(_)));
    assert_eq!(err.reason(), "psk: unknown or retired key id 1");
    assert!(err.to_error_frame().is_none(), "not echoed back");
}

#[test]
fn a_replayed_handshake_fails_the_client_mac() {
    let psk = psk_for(&KEY);
    let (client, hello) = ClientHandshake::start(&psk, rand()).unwrap();
    let (_, answer) = ServerHandshake::start(&psk, rand(), &hello).unwrap();
    let (_, finished) = client.finish(&answer).unwrap();
    // The recording played to a new server run: new server randomness.
    let (server, _) = ServerHandshake::start(&psk, rand(), &hello).unwrap();
    let err = server.finish(&finished).unwrap_err();
    assert_eq!(
        err.reason(),
        "psk: the client's finished MAC does not verify (wrong key, or a replayed handshake)"
    );
}

async fn psk_server(psk: &Psk) -> TestServer {
    serve(
        Server::builder().framing(wire()).accept(psk.acceptor()),
        echo(),
    )
    .await
}

async fn connect(psk: &Psk, addr: std::net::SocketAddr) -> Result<Client, ClientError> {
    within(
        Client::builder()
            .framing(wire())
            .reconnect(msgi::Reconnect {
                max_attempts: Some(0),
                ..msgi::Reconnect::default()
            })
            .connect_with_connector(psk.connector(TcpConnector::new()), addr),
    )
    .await
}

#[tokio::test]
async fn a_session_runs_on_handshake_keys_answers_and_pushes_alike() {
    let psk = psk_for(&KEY);
    let server = psk_server(&psk).await;
    let client = connect(&psk, server.addr).await.unwrap();
    let mut incoming = client.incoming().unwrap();
    let big = "compressible ".repeat(100);
    let answer = within(client.call(Frame::data(big.clone()))).await.unwrap();
    assert_eq!(answer.payload_text(), big);
    // A broadcast is sealed and signed like an answer: the client's framing
    // refuses anything else.
    let delivered = server.registry.broadcast(Frame::data("to all"));
    let _ = delivered;
    let push = within(incoming.recv()).await.unwrap();
    assert_eq!(push.payload_text(), "to all");
    let sessions = server.registry.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        sessions[0].connect_info::<AuthenticatedKey>().cloned(),
        Some(AuthenticatedKey(1))
    );
    assert_eq!(
        sessions[0].connect_info::<SessionKeys>().cloned(),
        None,
        "the keys went to the transforms, not to the application"
    );
    assert!(
        client.connect_info().get::<SessionKeys>().is_none(),
        "on the client too"
    );
    client.close().await;
}

#[tokio::test]
async fn a_recorded_session_replayed_is_refused() {
    let psk = psk_for(&KEY);
    let server = psk_server(&psk).await;
    // A session, recorded: everything the client wrote.
    let mut peer = RawPeer::connect(server.addr).await;
    let (client, hello) = ClientHandshake::start(&psk, rand()).unwrap();
    let mut recording = peer.encode(hello);
    peer.write(&recording).await;
    let answer = peer.recv().await.unwrap();
    let (keys, finished) = client.finish(&answer).unwrap();
    let mut session = keyed(Side::Client, &keys);
    let finished = peer.encode(finished);
    let data = to_wire(&mut session, Frame::data("transfer 100").with_request_id(1));
    peer.write(&finished).await;
    peer.write(&data).await;
    recording.extend_from_slice(&finished);
    recording.extend_from_slice(&data);
    let mut server_side = keyed(Side::Client, &keys);
    let mut raw = BytesMut::new();
    // The echo comes back under the session's keys.
    let echoed = peer.recv().await.unwrap();
    FrameCodec::new().encode(echoed, &mut raw).unwrap();
    assert_eq!(
        server_side
            .decode(&mut raw)
            .unwrap()
            .unwrap()
            .payload_text(),
        "transfer 100"
    );
    // Replayed on a new connection: refused at the client's finished MAC.
    let mut replay = RawPeer::connect(server.addr).await;
    replay.write(&recording).await;
    let hello = replay.recv().await.unwrap();
    assert_eq!(hello.kind(), Kind::CONTROL, "a fresh server hello");
    let refused = replay.recv().await.unwrap();
    assert_eq!(refused.kind(), Kind::ERROR);
    assert!(!refused.flags().contains(Flags::ENCRYPTED), "in the clear");
    assert_eq!(
        refused.payload_text(),
        "psk: the client's finished MAC does not verify (wrong key, or a replayed handshake)"
    );
    replay.expect_closed().await;
    assert_eq!(
        server.registry.connection_count(),
        1,
        "only the real session"
    );
}

#[tokio::test]
async fn a_wrong_key_is_refused_on_both_ends_with_the_reason() {
    let server = psk_server(&psk_for(&KEY)).await;
    let err = connect(&psk_for(&[8; 32]), server.addr).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "handshake refused: psk: wrong key (the server's finished MAC does not verify)"
    );
    assert_eq!(server.registry.connection_count(), 0);
}

#[tokio::test]
async fn a_layer_mismatch_is_refused_naming_both_stacks() {
    let server_psk = Psk::new(
        PresharedKeys::new(1, &KEY),
        &Wire::new(FrameCodec::new()).encrypt().sign(),
    );
    let server = serve(
        Server::builder()
            .framing(Wire::new(FrameCodec::new()).encrypt().sign())
            .accept(server_psk.acceptor()),
        echo(),
    )
    .await;
    let err = connect(&psk_for(&KEY), server.addr).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "handshake refused: psk: transforms differ (client deflate,encrypt,sign; server encrypt,sign)"
    );
}

#[tokio::test]
async fn a_client_without_the_key_is_told_why_in_the_clear() {
    let server = psk_server(&psk_for(&KEY)).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::data("hello?").with_request_id(1)).await;
    let refused = peer.recv().await.unwrap();
    assert_eq!(refused.kind(), Kind::ERROR);
    assert_eq!(
        refused.payload_text(),
        "psk: this server requires the pre-shared-key handshake \
         (the first frame was DATA, not a psk client hello)"
    );
    peer.expect_closed().await;
}

#[tokio::test]
async fn a_psk_client_against_a_plain_server_is_told_why() {
    let server = serve(Server::builder(), echo()).await;
    let err = connect(&psk_for(&KEY), server.addr).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "handshake refused: psk: the server does not run the pre-shared-key handshake \
         (it answered with the client's own hello: an echo)"
    );
}

#[tokio::test]
async fn a_rotated_key_is_accepted_and_named() {
    let keys = PresharedKeys::new(1, &KEY);
    keys.accept(2, &[9; 32]).unwrap();
    let server_psk = Psk::new(
        keys,
        &Wire::new(FrameCodec::new()).deflate(64).encrypt().sign(),
    );
    let server = psk_server(&server_psk).await;
    let client = connect(
        &Psk::new(
            PresharedKeys::new(2, &[9; 32]),
            &Wire::new(FrameCodec::new()).deflate(64).encrypt().sign(),
        ),
        server.addr,
    )
    .await
    .unwrap();
    assert_eq!(
        within(client.call(Frame::data("x")))
            .await
            .unwrap()
            .payload_text(),
        "x"
    );
    let sessions = server.registry.sessions();
    assert_eq!(
        sessions[0].connect_info::<AuthenticatedKey>().cloned(),
        Some(AuthenticatedKey(2))
    );
}
