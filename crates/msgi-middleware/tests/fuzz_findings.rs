//! Regression tests for what fuzzing found in the wire transforms' inbound
//! path (fuzz/README.md), over real loopback sockets.

#![allow(clippy::unwrap_used)]

#[path = "../../msgi/tests/support/mod.rs"]
mod support;

use bytes::BytesMut;
use msgi::{Client, Flags, Frame, FrameCodec, Framing, Wire};
use msgi_middleware::compression::compress;
use msgi_middleware::WireExt;
use support::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A client whose framing carries its own limit (no `max_frame_size` call)
/// bounds decompression by that limit, as a server does: a small
/// compressed push that inflates past it closes the connection instead of
/// being delivered. The client used to tell its transforms nothing, so they
/// inflated up to their default of 1 MiB (found writing the `transforms`
/// fuzz target; fixed at the root by `Wire`, whose transforms are made with
/// the codec's limit).
#[tokio::test]
async fn a_client_bounds_decompression_by_its_framings_limit() {
    const LIMIT: usize = 1024;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let packed = compress(&[0u8; 100_000], 1).unwrap();
        assert!(packed.len() + 10 < LIMIT, "the bomb fits the frame limit");
        let mut wire = BytesMut::new();
        FrameCodec::new()
            .encode(Frame::data(packed).with_flags(Flags::COMPRESSED), &mut wire)
            .unwrap();
        stream.write_all(&wire).await.unwrap();
        // The client refuses the frame and closes: read to the end.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    let framing = Wire::new(FrameCodec::with_max_frame_size(LIMIT)).deflate(64);
    let client = within(Client::builder().framing(framing).connect(addr))
        .await
        .unwrap();
    let mut incoming = client.incoming().unwrap();
    while let Some(frame) = within(incoming.recv()).await {
        assert!(
            frame.wire_len() <= LIMIT,
            "a {}-byte payload was inflated past the {LIMIT}-byte limit",
            frame.payload().len()
        );
    }
    within(server).await.unwrap();
}
