//! The worked byte examples of docs/PROTOCOL.md, checked.

#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use msgi::Framing as _;
use msgi::{Frame, FrameCodec, FrameTransform, MakeTransform, SessionKeys, SessionParams, Side};
use msgi_middleware::psk::{ClientHandshake, ServerHandshake};
use msgi_middleware::{Deflate, Encrypt, PresharedKeys, Psk, Sign};

/// A session on `side` with the default maximum frame size.
fn on(side: Side) -> SessionParams {
    SessionParams::new(side, msgi::DEFAULT_MAX_FRAME_SIZE)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn wire(frame: Frame) -> String {
    let mut out = BytesMut::new();
    FrameCodec::new().encode(frame, &mut out).unwrap();
    hex(&out)
}

/// docs/PROTOCOL.md with the spaces inside each line removed, so the
/// examples' field-separated hex reads as one string.
fn doc() -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/PROTOCOL.md"
    ))
    .unwrap();
    text.lines()
        .map(|l| l.replace(' ', ""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn compression_example() {
    let t = Deflate::new()
        .threshold(16)
        .make_transform(on(Side::Client));
    let frame = t.encode(Frame::data("hello hello hello hello")).unwrap();
    let bytes = wire(frame);
    println!("compression: {bytes}");
    assert!(doc().contains(&bytes), "docs/PROTOCOL.md shows {bytes}");
}

/// The handshake of the worked example: key `00 01 … 1f` (id 1), client
/// random `20 21 … 3f`, server random `40 41 … 5f`, transforms `encrypt,sign`.
fn handshake() -> (Frame, Frame, Frame, SessionKeys) {
    let key: [u8; 32] = std::array::from_fn(|i| i as u8);
    let psk = Psk::with_transform_names(PresharedKeys::new(1, &key), "encrypt,sign");
    let client_random: [u8; 32] = std::array::from_fn(|i| 0x20 + i as u8);
    let server_random: [u8; 32] = std::array::from_fn(|i| 0x40 + i as u8);
    let (client, hello) = ClientHandshake::start(&psk, client_random).unwrap();
    let (server, answer) = ServerHandshake::start(&psk, server_random, &hello).unwrap();
    let (keys, finished) = client.finish(&answer).unwrap();
    assert_eq!(server.finish(&finished).unwrap(), keys);
    (hello, answer, finished, keys)
}

#[test]
fn handshake_example() {
    let (hello, answer, finished, keys) = handshake();
    let doc = doc();
    let shown = [
        ("client hello", wire(hello)),
        ("server hello", wire(answer)),
        ("client finished", wire(finished)),
        ("client traffic secret", hex(keys.sent_by(Side::Client))),
        ("server traffic secret", hex(keys.sent_by(Side::Server))),
    ];
    for (name, bytes) in &shown {
        println!("{name}: {bytes}");
    }
    for (name, bytes) in &shown {
        assert!(
            doc.contains(bytes),
            "docs/PROTOCOL.md shows the {name} {bytes}"
        );
    }
}

#[test]
fn encryption_example() {
    let (.., keys) = handshake();
    let mut t = Encrypt::new().make_transform(on(Side::Client));
    t.set_session_keys(&keys);
    let frame = t
        .seal_with_counter(Frame::data("abc").with_request_id(7), 0)
        .unwrap();
    let bytes = wire(frame.clone());
    println!("encryption: {bytes}");
    assert!(doc().contains(&bytes), "docs/PROTOCOL.md shows {bytes}");
    let mut server = Encrypt::new().make_transform(on(Side::Server));
    server.set_session_keys(&keys);
    assert_eq!(
        server.decode(frame).unwrap(),
        Frame::data("abc").with_request_id(7)
    );
}

#[test]
fn hmac_example() {
    let (.., keys) = handshake();
    let mut t = Sign::new().make_transform(on(Side::Client));
    t.set_session_keys(&keys);
    let bytes = wire(t.encode(Frame::data("abc")).unwrap());
    println!("hmac: {bytes}");
    assert!(doc().contains(&bytes), "docs/PROTOCOL.md shows {bytes}");
}
