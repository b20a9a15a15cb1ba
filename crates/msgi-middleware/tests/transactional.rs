//! Sending is transactional (issue 7, item 1): a frame that is not written
//! consumes nothing, so an ERROR that replaces an over-size answer, and
//! every later frame, is still accepted by a peer that checks sequences.
//! Over real loopback sockets, with encryption and HMAC on both sides.

#![allow(clippy::unwrap_used)]

#[path = "../../msgi/tests/support/mod.rs"]
mod support;

use msgi::{
    Client, ClientError, Frame, FrameCodec, Framing, MakeFraming, MakeTransform, SendError, Server,
    SessionKeys, SessionParams, Side, TcpConnector, Wire,
};
use msgi_middleware::{PresharedKeys, Psk, WireExt};
use support::{serve, within, TestServer};

/// The maximum frame size of both ends.
const MAX: usize = 1024;
/// What encryption (counter, tag) and HMAC (sequence, tag) add.
const OVERHEAD: usize = 8 + 16 + 8 + 32;

fn secured() -> impl MakeFraming + Clone + std::fmt::Debug {
    Wire::new(FrameCodec::new()).encrypt().sign()
}

fn psk() -> Psk {
    Psk::with_transform_names(PresharedKeys::new(1, &[42; 32]), "encrypt,sign")
}

/// Echoes, except that `big` is answered with a payload over the limit.
fn handler() -> impl tower::Service<
    Frame,
    Response = Option<Frame>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<Option<Frame>, std::convert::Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|f: Frame| async move {
        if f.payload() == "big" {
            return Ok(Some(Frame::data(vec![b'x'; MAX])));
        }
        Ok(Some(Frame::data(f.payload().clone())))
    })
}

async fn setup() -> (TestServer, Client) {
    let server = serve(
        Server::builder()
            .framing(secured())
            .max_frame_size(MAX)
            .accept(psk().acceptor()),
        handler(),
    )
    .await;
    let client = within(
        Client::builder()
            .framing(secured())
            .max_frame_size(MAX)
            .connect_with_connector(psk().connector(TcpConnector::new()), server.addr),
    )
    .await
    .unwrap();
    (server, client)
}

/// One call; the answer's payload as text.
async fn call(client: &Client, text: &str) -> String {
    let answer = within(client.call(Frame::data(text.to_owned())))
        .await
        .unwrap();
    answer.payload_text().into_owned()
}

#[tokio::test]
async fn an_over_size_answer_becomes_a_readable_error_and_the_session_goes_on() {
    let (mut server, client) = setup().await;
    assert_eq!(call(&client, "before").await, "before");
    let err = within(client.call(Frame::data("big"))).await.unwrap_err();
    match &err {
        ClientError::Remote(reason) => {
            assert!(
                reason.starts_with("answer not sent: frame too large"),
                "{reason}"
            )
        }
        other => panic!("expected the server's ERROR, got {other:?}"),
    }
    // The ERROR did not break the sequences: the next calls work.
    for i in 0..3 {
        let text = format!("after {i}");
        assert_eq!(call(&client, &text).await, text);
    }
    client.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_push_over_the_limit_is_refused_to_the_pusher_and_the_session_goes_on() {
    let (mut server, client) = setup().await;
    let mut incoming = client.incoming().unwrap();
    // A call first, so the session is registered and running.
    within(client.call(Frame::data("hello"))).await.unwrap();
    let session = server.registry.sessions().pop().unwrap();

    // The largest push that fits once both transforms have added their
    // bytes is sent; one byte more is refused, to the pusher, up front.
    let fits = MAX - OVERHEAD - 10;
    let err = server
        .registry
        .send(session.id(), Frame::data(vec![1u8; fits + 1]))
        .unwrap_err();
    assert_eq!(
        err,
        SendError::TooLarge {
            length: fits + 1 + 10,
            max: MAX - OVERHEAD
        }
    );
    assert_eq!(
        session.send(Frame::data(vec![1u8; MAX])),
        Err(SendError::TooLarge {
            length: MAX + 10,
            max: MAX - OVERHEAD
        })
    );
    assert!(!session.is_closing());

    server
        .registry
        .send(session.id(), Frame::data(vec![2u8; fits]))
        .unwrap();
    let pushed = within(incoming.recv()).await.unwrap();
    assert_eq!(pushed.payload().len(), fits);
    assert!(pushed.payload().iter().all(|b| *b == 2));
    assert_eq!(call(&client, "still here").await, "still here");
    client.close().await;
    server.shutdown().await;
}

/// A framing that writes the frame and then fails, once (a user framing
/// breaking the "check before writing" rule); it keeps what it wrote.
#[derive(Clone, Default)]
struct WritesThenFails {
    codec: FrameCodec,
    failed: bool,
    wrote: Vec<u8>,
}

impl Framing for WritesThenFails {
    fn decode(&mut self, src: &mut bytes::BytesMut) -> Result<Option<Frame>, msgi::CodecError> {
        self.codec.decode(src)
    }

    fn encode(&mut self, frame: Frame, dst: &mut bytes::BytesMut) -> Result<(), msgi::CodecError> {
        let before = dst.len();
        self.codec.encode(frame, dst)?;
        if !self.failed {
            self.failed = true;
            self.wrote = dst[before..].to_vec();
            return Err(msgi::CodecError::Io(std::io::Error::other(
                "failed after writing",
            )));
        }
        Ok(())
    }

    fn set_max_frame_size(&mut self, max: usize) {
        self.codec.set_max_frame_size(max);
    }
    fn max_frame_size(&self) -> usize {
        self.codec.max_frame_size()
    }
}

#[test]
fn a_framing_that_writes_then_fails_sends_nothing_and_reuses_no_nonce() {
    use msgi::{FrameTransform, WriteBuf};
    let make = msgi_middleware::Encrypt::new();
    let keys = SessionKeys::new([9; 32], [10; 32]);
    // The client's framing writes and then fails; the factory is the usual one.
    let mut client = Wire::new(WritesThenFails::default())
        .transform(make)
        .make_framing(Side::Client);
    client.set_session_keys(&keys);
    let mut server = make.make_transform(SessionParams::new(Side::Server, 1 << 20));
    server.set_session_keys(&keys);

    let mut out = WriteBuf::new();
    out.put_slice(b"queued");
    assert!(client.encode_into(Frame::data("one"), &mut out).is_err());
    assert_eq!(out.len(), 6, "the refused frame's bytes were left queued");
    client.encode_into(Frame::data("two"), &mut out).unwrap();

    // The frame that went out is the peer's frame 0, under another nonce
    // than the refused one.
    let mut sent = bytes::BytesMut::new();
    let mut slices = [std::io::IoSlice::new(&[]); 8];
    let n = out.chunks_vectored(&mut slices);
    for s in &slices[..n] {
        sent.extend_from_slice(s);
    }
    let refused = FrameCodec::new()
        .decode(&mut bytes::BytesMut::from(&client.get_ref().wrote[..]))
        .unwrap()
        .unwrap();
    let mut wire = sent.split_off(6);
    let frame = FrameCodec::new().decode(&mut wire).unwrap().unwrap();
    assert_ne!(
        refused.payload().slice(..8),
        frame.payload().slice(..8),
        "two frames sealed under one nonce"
    );
    assert_eq!(server.decode(frame).unwrap(), Frame::data("two"));
}
