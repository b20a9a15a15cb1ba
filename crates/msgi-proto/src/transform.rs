//! Wire transforms: a pair of halves that rewrite every frame of a session,
//! inbound after decoding and outbound before encoding.
//!
//! A [`FrameTransform`] is installed *in the framing*, not around the
//! service, so it applies to everything that crosses the wire: answers,
//! pushes (broadcasts, sends to a session), one-way client frames, and the
//! session's own frames (PONG, HEARTBEAT, ERROR, DISCONNECT). Wrapping a
//! [`Framing`] in [`Transformed`] gives a framing again, so transforms stack:
//!
//! ```text
//! application ⇄ Transformed<A, Transformed<B, FrameCodec>> ⇄ wire
//!   outbound:  A.encode, then B.encode, then bytes
//!   inbound:   bytes, then B.decode, then A.decode
//! ```
//!
//! The transform nearest the codec is nearest the wire. Built with
//! [`Wire`](crate::Wire), the first transform added is the one nearest the
//! application.
//!
//! A `FrameTransform` is the state of **one session**: it is made fresh for
//! each connection by a [`MakeTransform`](crate::MakeTransform) (as a rustls
//! config makes a connection), never cloned from a template, so nothing a
//! transform holds (sequence numbers, replay windows, an `Arc` to shared
//! counters) leaks from one session into another. See [`crate::wire`].

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{CodecError, Framing, WriteBuf};
use crate::frame::Frame;
use crate::BoxError;

/// Which end of a connection a framing serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The end that accepted the connection.
    Server,
    /// The end that opened it.
    Client,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::Server => Side::Client,
            Side::Client => Side::Server,
        }
    }

    /// The direction byte the wire transforms authenticate for frames sent
    /// by this side: `0x01` client to server, `0x02` server to client
    /// (docs/PROTOCOL.md, section 4).
    pub fn direction_byte(self) -> u8 {
        match self {
            Side::Client => 0x01,
            Side::Server => 0x02,
        }
    }
}

/// Per-direction traffic secrets a transport upgrade established for one
/// connection (msgi-middleware's pre-shared-key handshake), handed to the
/// connection's transforms with [`FrameTransform::set_session_keys`] before
/// any frame is sent or received; each transform derives its own keys from
/// them.
///
/// Opaque bytes to this crate (it does no cryptography): 32 bytes for each
/// direction. `Debug` never shows them, and they are overwritten with zeros
/// when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    client_to_server: [u8; 32],
    server_to_client: [u8; 32],
}

impl SessionKeys {
    /// The secrets of frames the client sends and of frames the server sends.
    pub fn new(client_to_server: [u8; 32], server_to_client: [u8; 32]) -> Self {
        SessionKeys {
            client_to_server,
            server_to_client,
        }
    }

    /// The secret of the frames `side` sends.
    pub fn sent_by(&self, side: Side) -> &[u8; 32] {
        match side {
            Side::Client => &self.client_to_server,
            Side::Server => &self.server_to_client,
        }
    }
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        // Best effort: no copy the compiler made is reached.
        self.client_to_server = [0; 32];
        self.server_to_client = [0; 32];
        std::hint::black_box(&self.client_to_server);
        std::hint::black_box(&self.server_to_client);
    }
}

/// A few bytes a transform puts before or after a payload it left in its
/// own buffer (a nonce counter, a tag, a MAC trailer): at most `N`, kept
/// inline, so sealing in place allocates nothing. See [`Outgoing`].
#[derive(Clone, Copy)]
pub struct Piece<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> Piece<N> {
    /// Empty.
    #[inline]
    pub fn new() -> Self {
        Piece {
            len: 0,
            bytes: [0; N],
        }
    }

    /// The bytes held.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// The whole inline array: the bytes held are its first
    /// [`len`](Piece::len), the rest zeros. For callers that copy a piece
    /// with one fixed-size move instead of a copy of variable length.
    #[inline]
    pub fn as_array(&self) -> &[u8; N] {
        &self.bytes
    }

    /// How many bytes are held.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True when nothing is held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `bytes` when they fit, and says so; when they do not,
    /// appends nothing and returns false.
    #[inline]
    pub fn try_extend(&mut self, bytes: &[u8]) -> bool {
        let at = usize::from(self.len);
        let end = at + bytes.len();
        match (self.bytes.get_mut(at..end), u8::try_from(end)) {
            (Some(room), Ok(len)) => {
                room.copy_from_slice(bytes);
                self.len = len;
                true
            }
            _ => false,
        }
    }
}

impl<const N: usize> Default for Piece<N> {
    fn default() -> Self {
        Piece::new()
    }
}

impl<const N: usize> fmt::Debug for Piece<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Piece({} bytes)", self.len)
    }
}

/// A frame on its way out whose payload on the wire is
/// `head ‖ frame.payload() ‖ tail`: what a transform that seals a payload
/// where it lies leaves (the encryption transform: the nonce counter
/// before, the tag after), so that neither it nor the framing below copies
/// the payload to put a few bytes in front of it. The header fields (type,
/// flags, request id) are the frame's.
///
/// [`FrameTransform::encode_split`] takes and gives one;
/// [`Framing::encode_split_into`] writes one (the MSGI codec writes `head`
/// and `tail` into its packed buffer around the payload, which it copies
/// there when small and hands over without a copy when large).
/// [`join`](Outgoing::join) makes it one frame again.
#[derive(Debug, Default)]
pub struct Outgoing {
    /// The frame: header fields, and the middle of the payload.
    pub frame: Frame,
    /// Bytes before the frame's payload on the wire.
    pub head: Piece<{ Outgoing::HEAD }>,
    /// Bytes after the frame's payload on the wire.
    pub tail: Piece<{ Outgoing::TAIL }>,
}

impl Outgoing {
    /// The most bytes `head` holds.
    pub const HEAD: usize = 16;
    /// The most bytes `tail` holds (an AEAD tag and an HMAC trailer fit).
    pub const TAIL: usize = 64;

    /// `frame` whole: nothing before or after its payload.
    #[inline]
    pub fn new(frame: Frame) -> Outgoing {
        Outgoing {
            frame,
            head: Piece::new(),
            tail: Piece::new(),
        }
    }

    /// True when the payload on the wire is the frame's payload alone.
    #[inline]
    pub fn is_whole(&self) -> bool {
        self.head.is_empty() && self.tail.is_empty()
    }

    /// Bytes of payload on the wire: `head`, the frame's payload, `tail`.
    #[inline]
    pub fn payload_len(&self) -> usize {
        self.head.len() + self.frame.payload().len() + self.tail.len()
    }

    /// Bytes on the wire, header included.
    #[inline]
    pub fn wire_len(&self) -> usize {
        self.frame.header_len() + self.payload_len()
    }

    /// The frame with its wire payload in one buffer: as it is when
    /// [whole](Outgoing::is_whole), else one allocation and one copy.
    pub fn join(self) -> Frame {
        let Outgoing {
            mut frame,
            head,
            tail,
        } = self;
        if head.is_empty() && tail.is_empty() {
            return frame;
        }
        let mut joined = BytesMut::with_capacity(head.len() + frame.payload().len() + tail.len());
        joined.put_slice(head.as_slice());
        joined.put_slice(frame.payload());
        joined.put_slice(tail.as_slice());
        *frame.payload_mut() = Bytes::from(joined);
        frame
    }
}

impl From<Frame> for Outgoing {
    fn from(frame: Frame) -> Outgoing {
        Outgoing::new(frame)
    }
}

/// One reversible rewrite of frames, with per-session state.
///
/// `decode` sees frames as they came off the wire (after the transforms
/// nearer the wire) and must remove the flag it owns; a frame it must
/// refuse (bad tag, replay, plaintext where a transform is required) is an
/// `Err`, which closes the session with an ERROR frame carrying the error
/// text. `encode` does the opposite on the way out.
///
/// ## Sending is transactional
///
/// A frame that is not written must consume nothing: an answer over the
/// maximum frame size is replaced by an ERROR, and that ERROR (and every
/// later frame) must still be accepted by the peer. So the outbound step is
/// split in two:
///
/// - [`encode`](FrameTransform::encode) prepares the frame **without
///   advancing the sequence** (it takes `&self`); it may fail, and then the
///   peer sees nothing of it;
/// - [`commit`](FrameTransform::commit) advances the state (sequence
///   numbers) and cannot fail. [`Transformed`] calls it only after every
///   transform nearer the wire and the codec itself accepted the frame, so
///   the sequence counts the frames written.
///
/// Encoding twice without a commit gives two frames with the same sequence
/// number; a transform whose output must never repeat for different frames
/// (a nonce) must make it unique on every `encode`, not on `commit` (the
/// encryption transform in msgi-middleware counts its nonces per seal).
///
/// [`Transformed`] never lets a refused frame leave: if the framing below
/// wrote part of a frame and then failed, the bytes it wrote are dropped
/// again (`dst` is cut back to its length before the call), nothing is
/// committed, and the error is returned. It commits only when the framing
/// below wrote bytes, so a frame a framing drops without an error
/// ([`LineCodec`](crate::LineCodec) drops HEARTBEAT and PING) is not
/// counted either. (Transforms over `LineCodec` are not supported all the
/// same: a line carries no flags, so the peer cannot tell what to undo.)
///
/// ## One value per session
///
/// A transform is made for one connection by its
/// [`MakeTransform`](crate::MakeTransform), which is told the side and the
/// maximum frame size ([`SessionParams`](crate::SessionParams)); it is never
/// cloned from a template or reset, so the trait has no `Clone` bound and no
/// "start" method: a fresh session is a fresh value.
pub trait FrameTransform: Send + 'static {
    /// Learns a new maximum frame size for this session (to bound what
    /// decoding may produce), when the framing's limit is changed after the
    /// transform was made ([`Framing::set_max_frame_size`]). The limit at
    /// the start of the session is given to
    /// [`MakeTransform::make_transform`](crate::MakeTransform::make_transform).
    fn set_max_frame_size(&mut self, _max: usize) {}

    /// Takes the keys a transport upgrade (a pre-shared-key handshake)
    /// established for this session, before its first frame: called by the
    /// server after its accept step and by the client after its connector,
    /// when the upgrade produced [`SessionKeys`]. The default ignores them
    /// (transforms without keys).
    fn set_session_keys(&mut self, _keys: &SessionKeys) {}

    /// Undoes the transform on a received frame.
    fn decode(&mut self, frame: Frame) -> Result<Frame, BoxError>;

    /// Applies the transform to a frame about to be sent, without advancing
    /// the session's sequence: see [`commit`](FrameTransform::commit). Anything
    /// that must never serve two frames (a nonce) is used up here, not on
    /// commit.
    fn encode(&self, frame: Frame) -> Result<Frame, BoxError>;

    /// [`encode`](FrameTransform::encode) for a frame whose payload may be
    /// in pieces ([`Outgoing`]), as the transforms nearer the application
    /// left it; [`Transformed`] sends every frame through this. The same
    /// contract as `encode` (nothing advances; what must never repeat is
    /// used up here), and the same bytes on the wire. A transform that works
    /// where the payload lies overrides it to leave its output in pieces
    /// instead of copying the payload to put a few bytes in front of it.
    /// The default joins the pieces (one copy when there are any; none for a
    /// frame that arrives whole) and calls `encode`.
    ///
    /// It works on `out` where it is (no move of the pieces per layer); on
    /// `Err`, `out` is left in no particular state and is not sent.
    fn encode_split(&self, out: &mut Outgoing) -> Result<(), BoxError> {
        let whole = std::mem::take(out).join();
        out.frame = self.encode(whole)?;
        Ok(())
    }

    /// Records that the frame last returned by [`encode`](FrameTransform::encode)
    /// was written: advances per-session state (the sending sequence).
    /// Called exactly once per frame written, never for a frame refused
    /// further down the stack. The default does nothing (stateless transforms).
    fn commit(&mut self) {}

    /// The most bytes [`encode`](FrameTransform::encode) adds to a payload
    /// (an authentication tag, a nonce). A frame whose size plus this fits
    /// the maximum frame size is never refused for size further down.
    /// The default is 0 (a transform that never makes a payload larger).
    fn max_overhead(&self) -> usize {
        0
    }
}

/// A framing `C` whose frames pass through the transform `T`: one session's
/// framing, made by [`Wire`](crate::Wire).
///
/// Not `Clone`, on purpose: a copy of a session's framing would share or
/// repeat that session's state. To serve many sessions, give the server or
/// client a [`MakeFraming`](crate::MakeFraming) such as a
/// [`Wire`](crate::Wire), which makes one per connection.
pub struct Transformed<T, C> {
    transform: T,
    inner: C,
}

impl<T, C> Transformed<T, C> {
    /// Wraps `inner` with `transform`.
    pub fn new(transform: T, inner: C) -> Self {
        Transformed { transform, inner }
    }

    /// The transform.
    pub fn transform(&self) -> &T {
        &self.transform
    }

    /// The wrapped framing.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// The wrapped framing, mutably.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Unwraps the framing.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<T: fmt::Debug, C: fmt::Debug> fmt::Debug for Transformed<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transformed")
            .field("transform", &self.transform)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<T: FrameTransform, C: Framing> Transformed<T, C> {
    fn decode_frame(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.inner.decode(src)? {
            Some(frame) => self
                .transform
                .decode(frame)
                .map(Some)
                .map_err(CodecError::Transform),
            None => Ok(None),
        }
    }
}

impl<T: FrameTransform, C: Framing> Transformed<T, C> {
    fn encode_frame(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        // Check, then commit: the transform's state moves only once
        // everything below it has accepted the frame.
        let frame = self
            .transform
            .encode(frame)
            .map_err(CodecError::Transform)?;
        let before = dst.len();
        if let Err(e) = self.inner.encode(frame, dst) {
            // A framing that wrote and then failed: the frame is not sent.
            dst.truncate(before);
            return Err(e);
        }
        // A framing may drop a frame it cannot carry (LineCodec drops
        // HEARTBEAT and PING): nothing written, nothing committed.
        if dst.len() > before {
            self.transform.commit();
        }
        Ok(())
    }
}

impl<T: FrameTransform, C: Framing> Framing for Transformed<T, C> {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        self.decode_frame(src)
    }

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_frame(frame, dst)
    }

    fn encode_into(&mut self, frame: Frame, dst: &mut WriteBuf) -> Result<(), CodecError> {
        self.encode_split_into(&mut Outgoing::new(frame), dst)
    }

    fn encode_split_into(
        &mut self,
        out: &mut Outgoing,
        dst: &mut WriteBuf,
    ) -> Result<(), CodecError> {
        self.transform
            .encode_split(out)
            .map_err(CodecError::Transform)?;
        let before = dst.len();
        if let Err(e) = self.inner.encode_split_into(out, dst) {
            // A framing that wrote and then failed: the frame is not sent.
            dst.truncate(before);
            return Err(e);
        }
        // A framing may drop a frame it cannot carry (LineCodec drops
        // HEARTBEAT and PING): nothing written, nothing committed.
        if dst.len() > before {
            self.transform.commit();
        }
        Ok(())
    }

    fn max_encoded_len(&self) -> usize {
        self.inner
            .max_encoded_len()
            .saturating_sub(self.transform.max_overhead())
    }

    fn set_max_frame_size(&mut self, max: usize) {
        self.transform.set_max_frame_size(max);
        self.inner.set_max_frame_size(max);
    }

    fn set_session_keys(&mut self, keys: &SessionKeys) {
        self.transform.set_session_keys(keys);
        self.inner.set_session_keys(keys);
    }

    fn max_frame_size(&self) -> usize {
        self.inner.max_frame_size()
    }

    fn is_binary(&self) -> bool {
        self.inner.is_binary()
    }
}

/// `None` is the identity transform, so a stack can hold optional layers
/// (chosen at run time) with one static type.
impl<T: FrameTransform> FrameTransform for Option<T> {
    fn set_max_frame_size(&mut self, max: usize) {
        if let Some(t) = self {
            t.set_max_frame_size(max);
        }
    }

    fn set_session_keys(&mut self, keys: &SessionKeys) {
        if let Some(t) = self {
            t.set_session_keys(keys);
        }
    }

    fn decode(&mut self, frame: Frame) -> Result<Frame, BoxError> {
        match self {
            Some(t) => t.decode(frame),
            None => Ok(frame),
        }
    }

    fn encode(&self, frame: Frame) -> Result<Frame, BoxError> {
        match self {
            Some(t) => t.encode(frame),
            None => Ok(frame),
        }
    }

    fn encode_split(&self, out: &mut Outgoing) -> Result<(), BoxError> {
        match self {
            Some(t) => t.encode_split(out),
            None => Ok(()),
        }
    }

    fn commit(&mut self) {
        if let Some(t) = self {
            t.commit();
        }
    }

    fn max_overhead(&self) -> usize {
        self.as_ref().map_or(0, FrameTransform::max_overhead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::LineCodec;

    /// Counts its commits; changes nothing else.
    #[derive(Default)]
    struct Counting {
        commits: u32,
    }

    impl FrameTransform for Counting {
        fn decode(&mut self, frame: Frame) -> Result<Frame, BoxError> {
            Ok(frame)
        }
        fn encode(&self, frame: Frame) -> Result<Frame, BoxError> {
            Ok(frame)
        }
        fn commit(&mut self) {
            self.commits += 1;
        }
    }

    /// Remembers the keys it was given.
    #[derive(Default)]
    struct Keyed(Option<SessionKeys>);

    impl FrameTransform for Keyed {
        fn decode(&mut self, frame: Frame) -> Result<Frame, BoxError> {
            Ok(frame)
        }
        fn encode(&self, frame: Frame) -> Result<Frame, BoxError> {
            Ok(frame)
        }
        fn set_session_keys(&mut self, keys: &SessionKeys) {
            self.0 = Some(keys.clone());
        }
    }

    #[test]
    fn session_keys_reach_every_transform_of_the_stack() {
        let keys = SessionKeys::new([1; 32], [2; 32]);
        let mut stack = Transformed::new(
            Keyed::default(),
            Transformed::new(Some(Keyed::default()), crate::FrameCodec::new()),
        );
        stack.set_session_keys(&keys);
        assert_eq!(stack.transform().0.as_ref(), Some(&keys));
        let below = stack
            .get_ref()
            .transform()
            .as_ref()
            .and_then(|k| k.0.as_ref());
        assert_eq!(below, Some(&keys));
        assert_eq!(keys.sent_by(Side::Client), &[1; 32]);
        assert_eq!(keys.sent_by(Side::Server), &[2; 32]);
        assert_eq!(format!("{keys:?}"), "SessionKeys(..)", "never printed");
    }

    #[test]
    fn pieces_hold_what_fits_and_a_split_frame_is_written_as_its_join() {
        let mut head = Piece::<4>::new();
        assert!(head.try_extend(b"ab") && head.try_extend(b"cd"));
        assert!(!head.try_extend(b"e"), "full");
        assert_eq!(head.as_slice(), b"abcd");
        let mut out = Outgoing::new(Frame::data("mid").with_request_id(9));
        assert!(out.is_whole());
        assert!(out.head.try_extend(b"<<") && out.tail.try_extend(b">>"));
        assert!(
            !out.tail.try_extend(&[0; Outgoing::TAIL - 1]),
            "nothing appended"
        );
        assert_eq!((out.payload_len(), out.wire_len()), (7, 14 + 7));
        // The codec writes the pieces around the payload: the same bytes
        // as the joined frame, small payload (packed) and large (its own
        // slice).
        for body in [Bytes::from_static(b"mid"), Bytes::from(vec![7u8; 5000])] {
            let frame = Frame::data(body).with_request_id(9);
            let mut split = Outgoing::new(frame);
            assert!(split.head.try_extend(b"<<") && split.tail.try_extend(b">>"));
            let mut joined = BytesMut::new();
            let mut codec = crate::FrameCodec::new();
            let whole = Outgoing {
                frame: split.frame.clone(),
                head: split.head,
                tail: split.tail,
            }
            .join();
            Framing::encode(&mut codec, whole, &mut joined).unwrap();
            let mut buf = WriteBuf::new();
            codec.encode_split_into(&mut split, &mut buf).unwrap();
            let mut slices = [std::io::IoSlice::new(&[]); WriteBuf::MAX_IOVECS];
            let n = buf.chunks_vectored(&mut slices);
            let bytes: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
            assert_eq!(bytes, &joined[..]);
        }
        // Over the limit with its pieces: refused, nothing written.
        let mut codec = crate::FrameCodec::with_max_frame_size(14 + 4);
        let mut buf = WriteBuf::new();
        let mut big = Outgoing::new(Frame::data("mid").with_request_id(1));
        assert!(big.tail.try_extend(b">>"));
        assert!(codec.encode_split_into(&mut big, &mut buf).is_err());
        assert!(buf.is_empty());
    }

    #[test]
    fn a_frame_the_framing_drops_is_not_committed() {
        let mut t = Transformed::new(Counting::default(), LineCodec::new());
        let mut out = WriteBuf::new();
        t.encode_into(Frame::heartbeat(), &mut out).unwrap();
        t.encode_into(Frame::ping("p"), &mut out).unwrap();
        let mut bytes = BytesMut::new();
        Framing::encode(&mut t, Frame::heartbeat(), &mut bytes).unwrap();
        assert_eq!(t.transform().commits, 0, "nothing was written");
        t.encode_into(Frame::data(""), &mut out).unwrap();
        Framing::encode(&mut t, Frame::data("x"), &mut bytes).unwrap();
        assert_eq!(t.transform().commits, 2);
        assert_eq!((out.len(), &bytes[..]), (1, &b"x\n"[..]));
    }
}
