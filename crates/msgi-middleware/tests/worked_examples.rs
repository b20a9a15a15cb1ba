//! The worked byte examples of docs/PROTOCOL.md, checked.

#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use msgi::Framing as _;
use msgi::{Frame, FrameCodec, FrameTransform, Side};
use msgi_middleware::{CompressionLayer, EncryptionKey, EncryptionLayer, HmacKeys, HmacLayer};

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
    let t = CompressionLayer::new().threshold(16).transform();
    let frame = t.encode(Frame::data("hello hello hello hello")).unwrap();
    let bytes = wire(frame);
    println!("compression: {bytes}");
    assert!(doc().contains(&bytes), "docs/PROTOCOL.md shows {bytes}");
}

#[test]
fn encryption_example() {
    let key: [u8; 32] = std::array::from_fn(|i| i as u8);
    let nonce: [u8; 24] = std::array::from_fn(|i| 0x40 + i as u8);
    let mut t = EncryptionLayer::new(EncryptionKey::new(key)).transform();
    t.start_session(Side::Client);
    let frame = t
        .seal_with_nonce(Frame::data("abc").with_request_id(7), nonce)
        .unwrap();
    let bytes = wire(frame.clone());
    println!("encryption: {bytes}");
    assert!(doc().contains(&bytes), "docs/PROTOCOL.md shows {bytes}");
    let mut server = EncryptionLayer::new(EncryptionKey::new(key)).transform();
    server.start_session(Side::Server);
    assert_eq!(
        server.decode(frame).unwrap(),
        Frame::data("abc").with_request_id(7)
    );
}

#[test]
fn hmac_example() {
    let mut t = HmacLayer::new(HmacKeys::new(1, b"key")).transform();
    t.start_session(Side::Client);
    let bytes = wire(t.encode(Frame::data("abc")).unwrap());
    println!("hmac: {bytes}");
    assert!(doc().contains(&bytes), "docs/PROTOCOL.md shows {bytes}");
}
