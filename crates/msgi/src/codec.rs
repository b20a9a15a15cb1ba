//! The bridge from msgi-proto's [`Framing`] to tokio-util's codec traits.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use msgi_proto::{CodecError, Frame, Framing};

/// Any [`Framing`] as a tokio-util codec, for `tokio_util::codec::Framed`
/// and friends. The framing itself lives in the tokio-free `msgi-proto`
/// crate, so it cannot implement tokio-util's traits; this wrapper does.
///
/// ```
/// use futures_util::{SinkExt, StreamExt};
/// use msgi::{Frame, FrameCodec, TokioCodec};
/// use tokio_util::codec::Framed;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), msgi::CodecError> {
/// let (a, b) = tokio::io::duplex(1024);
/// let mut a = Framed::new(a, TokioCodec(FrameCodec::new()));
/// let mut b = Framed::new(b, TokioCodec(FrameCodec::new()));
/// a.send(Frame::data("hi").with_request_id(1)).await?;
/// let frame = b.next().await.expect("a frame")?;
/// assert_eq!(frame.payload(), "hi");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioCodec<F>(pub F);

impl<F: Framing> Decoder for TokioCodec<F> {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        self.0.decode(src)
    }
}

impl<F: Framing> Encoder<Frame> for TokioCodec<F> {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.0.encode(frame, dst)
    }
}
