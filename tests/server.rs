//! The server's own settings and limits over real loopback sockets: the
//! framing's maximum frame size, shutdown bounds, accept errors, per-address
//! connection limits.

#![allow(clippy::unwrap_used)]

mod support;

use msgi::{Frame, FrameCodec, LineCodec, Server};
use support::{echo, serve, RawPeer};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn a_framings_own_max_frame_size_is_served() {
    // Before, `build()` overwrote the codec's 64 with the builder's 1 MiB.
    let builder = Server::builder().framing(FrameCodec::with_max_frame_size(64));
    let mut server = serve(builder, echo()).await;
    let mut peer = RawPeer::connect(server.addr).await;
    peer.send(Frame::data(vec![1u8; 54])).await; // exactly 64 bytes: fine
    let answer = peer.recv_skip_heartbeats().await.unwrap();
    assert_eq!(answer.payload().len(), 54);
    peer.send(Frame::data(vec![1u8; 55])).await; // 65 bytes
    let err = peer.recv_skip_heartbeats().await.unwrap();
    assert_eq!(err.kind(), msgi::Kind::ERROR);
    assert!(
        err.payload_text().starts_with("frame too large (max 64)"),
        "{}",
        err.payload_text()
    );
    peer.expect_closed().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_line_codecs_own_max_line_is_served() {
    let builder = Server::builder().framing(LineCodec::with_max_line(80));
    let mut server = serve(builder, echo()).await;
    let mut peer = RawPeer::connect_with(server.addr, LineCodec::new()).await;
    let mut line = vec![b'a'; 80];
    line.push(b'\n');
    peer.write(&line).await;
    assert_eq!(peer.recv().await.unwrap().payload().len(), 80);
    let mut long = vec![b'b'; 81];
    long.push(b'\n');
    peer.stream.write_all(&long).await.unwrap();
    let err = peer.recv().await.unwrap();
    assert_eq!(err.kind(), msgi::Kind::DATA);
    assert!(
        err.payload_text()
            .starts_with("ERROR line too long (max 80)"),
        "{}",
        err.payload_text()
    );
    peer.expect_closed().await;
    server.shutdown().await;
}
