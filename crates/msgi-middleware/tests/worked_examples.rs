//! The worked byte examples of docs/PROTOCOL.md, checked.

#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use msgi::Framing as _;
use msgi::{Frame, FrameCodec, FrameTransform, MakeTransform, SessionParams, Side};
use msgi_middleware::{Deflate, Encrypt, EncryptionKey, HmacKeys, Sign};

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

#[test]
fn encryption_example() {
    let key: [u8; 32] = std::array::from_fn(|i| i as u8);
    let nonce: [u8; 24] = std::array::from_fn(|i| 0x40 + i as u8);
    let t = Encrypt::new(EncryptionKey::new(key)).make_transform(on(Side::Client));
    let frame = t
        .seal_with_nonce(Frame::data("abc").with_request_id(7), nonce)
        .unwrap();
    let bytes = wire(frame.clone());
    println!("encryption: {bytes}");
    assert!(doc().contains(&bytes), "docs/PROTOCOL.md shows {bytes}");
    let mut server = Encrypt::new(EncryptionKey::new(key)).make_transform(on(Side::Server));
    assert_eq!(
        server.decode(frame).unwrap(),
        Frame::data("abc").with_request_id(7)
    );
}

#[test]
fn hmac_example() {
    let t = Sign::new(HmacKeys::new(1, b"key")).make_transform(on(Side::Client));
    let bytes = wire(t.encode(Frame::data("abc")).unwrap());
    println!("hmac: {bytes}");
    assert!(doc().contains(&bytes), "docs/PROTOCOL.md shows {bytes}");
}
