//! Per-session framings: [`MakeFraming`], [`MakeTransform`] and the [`Wire`]
//! builder that stacks wire transforms over a codec.
//!
//! A server accepts many connections and a client reconnects; each
//! connection needs a framing whose transforms (sequence numbers, nonces,
//! replay windows) start fresh. So servers and clients are given a
//! **factory**, as a rustls config makes a connection: a [`MakeFraming`]
//! makes one [`Framing`] per connection, and a [`MakeTransform`] makes one
//! [`FrameTransform`] per connection. Nothing is cloned from a template and
//! then reset, so a transform cannot carry state (even behind an `Arc`) from
//! one session into another unless its factory hands it the same `Arc` on
//! purpose.
//!
//! [`Wire`] is the builder: a codec, then transforms, the first added
//! nearest the application and the last nearest the wire:
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use msgi_proto::{
//!     BoxError, Frame, FrameCodec, FrameTransform, Framing, MakeFraming, MakeTransform,
//!     SessionParams, Side, Wire,
//! };
//!
//! /// Counts the frames one session sent, in a counter it shares (with a
//! /// metrics thread, say): a fresh counter per session.
//! struct Count(Arc<AtomicU64>);
//!
//! impl FrameTransform for Count {
//!     fn decode(&mut self, frame: Frame) -> Result<Frame, BoxError> {
//!         Ok(frame)
//!     }
//!     fn encode(&self, frame: Frame) -> Result<Frame, BoxError> {
//!         Ok(frame)
//!     }
//!     fn commit(&mut self) {
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!     }
//! }
//!
//! /// The factory: one `Count` per session.
//! #[derive(Clone, Debug)]
//! struct Counting;
//!
//! impl MakeTransform for Counting {
//!     type Transform = Count;
//!     fn make_transform(&self, _params: SessionParams) -> Count {
//!         Count(Arc::new(AtomicU64::new(0)))
//!     }
//! }
//!
//! let wire = Wire::new(FrameCodec::new()).transform(Counting);
//! let mut first = wire.make_framing(Side::Server);
//! let mut second = wire.make_framing(Side::Server);
//! let mut bytes = bytes::BytesMut::new();
//! first.encode(Frame::data("a"), &mut bytes)?;
//! first.encode(Frame::data("b"), &mut bytes)?;
//! second.encode(Frame::data("c"), &mut bytes)?;
//! assert_eq!(first.transform().0.load(Ordering::Relaxed), 2);
//! assert_eq!(second.transform().0.load(Ordering::Relaxed), 1);
//! # Ok::<(), msgi_proto::CodecError>(())
//! ```
//!
//! A plain [`FrameCodec`](crate::FrameCodec) or
//! [`LineCodec`](crate::LineCodec) is a `MakeFraming` itself (any `Clone`
//! framing is: it is copied for each connection), so
//! `Server::builder().framing(LineCodec::new())` needs no `Wire`.
//!
//! A `Wire` is not a `tower::Layer` stack: transforms are not services
//! (they rewrite every frame of a session, pushes and the session's own
//! frames included), so they have this builder of their own, and
//! `tower::ServiceBuilder` stays for services.

use std::fmt;

use crate::codec::Framing;
use crate::transform::{FrameTransform, Side, Transformed};

/// What a factory knows about the session it makes a framing or a
/// transform for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionParams {
    /// Which end of the connection this is.
    pub side: Side,
    /// The session's maximum frame size, header included (the codec's).
    pub max_frame_size: usize,
    /// The most bytes the transforms nearer the wire than this one append
    /// to a payload it sends (their [`MakeTransform::max_overhead`]
    /// together; 0 for the transform nearest the wire): a transform that
    /// builds a new payload leaves this much room at its end, so that they
    /// append in place instead of copying the payload again.
    pub tail_room: usize,
}

impl SessionParams {
    /// Parameters for a session on `side` with `max_frame_size`.
    pub fn new(side: Side, max_frame_size: usize) -> SessionParams {
        SessionParams {
            side,
            max_frame_size,
            tail_room: 0,
        }
    }
}

/// Makes the [`FrameTransform`] of each session: the transform's settings
/// (keys, thresholds), shared by every session, as a rustls config is.
///
/// `make_transform` is called once per connection (each accepted session,
/// each client connection and reconnection); what it returns starts that
/// session's state from nothing. State meant to be shared by every session
/// (a key ring that rotates) is shared because the factory hands out its
/// own `Arc`, never by accident.
pub trait MakeTransform: Send + Sync + 'static {
    /// The per-session transform.
    type Transform: FrameTransform;

    /// Makes the transform of a new session.
    fn make_transform(&self, params: SessionParams) -> Self::Transform;

    /// The most bytes the transforms made here add to a payload: the same
    /// as their [`FrameTransform::max_overhead`], known before any session
    /// (servers and clients size their push limits with it). Default 0.
    fn max_overhead(&self) -> usize {
        0
    }
}

/// `None` makes the identity transform, so a stack can hold optional
/// transforms (chosen at run time, from flags) with one static type.
impl<M: MakeTransform> MakeTransform for Option<M> {
    type Transform = Option<M::Transform>;

    fn make_transform(&self, params: SessionParams) -> Option<M::Transform> {
        self.as_ref().map(|m| m.make_transform(params))
    }

    fn max_overhead(&self) -> usize {
        self.as_ref().map_or(0, MakeTransform::max_overhead)
    }
}

/// Makes the [`Framing`] of each connection: what `Server::builder().framing(..)`
/// and `Client::builder().framing(..)` take.
///
/// Implemented by [`Wire`] (a codec under wire transforms, each made fresh
/// per session) and by every `Clone + Sync` [`Framing`] (copied for each
/// connection: right for framings with no per-session state, such as
/// [`FrameCodec`](crate::FrameCodec) and [`LineCodec`](crate::LineCodec)).
/// A framing with per-session state implements this trait itself instead of
/// `Clone`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot make a framing per session",
    label = "not a framing or a framing factory",
    note = "wire transforms are stacked with `msgi::Wire::new(codec)`, not with `tower::ServiceBuilder` (which builds services)"
)]
pub trait MakeFraming: Send + Sync + 'static {
    /// The framing of one connection.
    type Framing: Framing;
    /// The byte framing at the bottom, whose limits are the session's.
    type Codec: Framing;

    /// Makes the framing of a new connection on `side`.
    fn make_framing(&self, side: Side) -> Self::Framing;

    /// The codec every framing is made with: its maximum frame size and
    /// whether it is binary are the sessions' ([`Framing::max_frame_size`],
    /// [`Framing::is_binary`]).
    fn codec(&self) -> &Self::Codec;

    /// The codec, to change its limit (`max_frame_size` on the server and
    /// client builders writes here) before any framing is made.
    fn codec_mut(&mut self) -> &mut Self::Codec;

    /// The most bytes the transforms over the codec add to a payload
    /// (0 without transforms).
    fn max_overhead(&self) -> usize {
        0
    }

    /// The largest frame, as [`Frame::wire_len`](crate::Frame::wire_len)
    /// counts it before any transform, that a framing made here never
    /// refuses for size: the codec's [`Framing::max_encoded_len`] less
    /// [`max_overhead`](MakeFraming::max_overhead).
    fn max_sendable(&self) -> usize {
        self.codec()
            .max_encoded_len()
            .saturating_sub(self.max_overhead())
    }
}

/// A framing with no per-session state is its own factory: each
/// connection gets a copy.
impl<C: Framing + Clone + Sync> MakeFraming for C {
    type Framing = C;
    type Codec = C;

    fn make_framing(&self, _side: Side) -> C {
        self.clone()
    }

    fn codec(&self) -> &C {
        self
    }

    fn codec_mut(&mut self) -> &mut C {
        self
    }
}

/// A codec under a stack of wire transforms: the builder of per-session
/// framings (a [`MakeFraming`]).
///
/// ```
/// use msgi_proto::{FrameCodec, MakeFraming, Side, Wire};
/// # use msgi_proto::{BoxError, Frame, FrameTransform, MakeTransform, SessionParams};
/// # #[derive(Clone, Debug)] struct A; #[derive(Clone, Debug)] struct B;
/// # struct Id;
/// # impl FrameTransform for Id {
/// #     fn decode(&mut self, f: Frame) -> Result<Frame, BoxError> { Ok(f) }
/// #     fn encode(&self, f: Frame) -> Result<Frame, BoxError> { Ok(f) }
/// # }
/// # impl MakeTransform for A { type Transform = Id; fn make_transform(&self, _: SessionParams) -> Id { Id } }
/// # impl MakeTransform for B { type Transform = Id; fn make_transform(&self, _: SessionParams) -> Id { Id } }
///
/// // A is nearest the application, B nearest the wire:
/// // outbound A.encode, then B.encode, then bytes.
/// let wire = Wire::new(FrameCodec::new()).transform(A).transform(B);
/// let framing = wire.make_framing(Side::Client);
/// # let _: &msgi_proto::Transformed<Id, msgi_proto::Transformed<Id, FrameCodec>> = &framing;
/// ```
///
/// msgi-middleware adds `.deflate(..)`, `.encrypt(..)` and `.sign(..)`
/// (its `WireExt` trait) for its own transforms.
#[derive(Clone)]
pub struct Wire<C, S = Identity> {
    codec: C,
    stack: S,
}

impl<C: fmt::Debug, S: fmt::Debug> fmt::Debug for Wire<C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wire")
            .field("codec", &self.codec)
            .field("transforms", &self.stack)
            .finish()
    }
}

impl<C: Framing + Clone + Sync> Wire<C> {
    /// A codec without transforms yet.
    pub fn new(codec: C) -> Wire<C> {
        Wire {
            codec,
            stack: Identity,
        }
    }
}

impl<C, S> Wire<C, S> {
    /// Adds a transform below those added so far: nearer the wire. The
    /// first added is nearest the application.
    pub fn transform<M: MakeTransform>(self, make: M) -> Wire<C, Stack<S, M>> {
        Wire {
            codec: self.codec,
            stack: Stack {
                above: self.stack,
                make,
            },
        }
    }

    /// The transforms' factories.
    pub fn transforms(&self) -> &S {
        &self.stack
    }
}

impl<C, S> MakeFraming for Wire<C, S>
where
    C: Framing + Clone + Sync,
    S: MakeStack<C>,
{
    type Framing = S::Framing;
    type Codec = C;

    fn make_framing(&self, side: Side) -> S::Framing {
        let codec = self.codec.clone();
        let params = SessionParams::new(side, codec.max_frame_size());
        self.stack.make_stack(codec, params)
    }

    fn codec(&self) -> &C {
        &self.codec
    }

    fn codec_mut(&mut self) -> &mut C {
        &mut self.codec
    }

    fn max_overhead(&self) -> usize {
        self.stack.max_overhead()
    }
}

/// No transforms: the bottom of a [`Wire`]'s stack.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

/// The transforms `above` (nearer the application) over `make` (nearer
/// the wire): a [`Wire`]'s stack, built by [`Wire::transform`].
#[derive(Debug, Clone)]
pub struct Stack<S, M> {
    above: S,
    make: M,
}

impl<S, M> Stack<S, M> {
    /// The factories nearer the application.
    pub fn above(&self) -> &S {
        &self.above
    }

    /// The factory of the transform nearest the wire in this stack.
    pub fn make(&self) -> &M {
        &self.make
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Identity {}
    impl<S, M> Sealed for super::Stack<S, M> {}
}

/// A [`Wire`]'s stack of transform factories over a codec `C`:
/// implemented by [`Identity`] and [`Stack`] only.
pub trait MakeStack<C: Framing>: sealed::Sealed + Send + Sync + 'static {
    /// The framing of one session: `C` under every transform.
    type Framing: Framing;

    /// Makes every transform of a new session and stacks them over `codec`.
    fn make_stack(&self, codec: C, params: SessionParams) -> Self::Framing;

    /// What the transforms add to a payload, at most, all together.
    fn max_overhead(&self) -> usize;
}

impl<C: Framing> MakeStack<C> for Identity {
    type Framing = C;

    fn make_stack(&self, codec: C, _params: SessionParams) -> C {
        codec
    }

    fn max_overhead(&self) -> usize {
        0
    }
}

impl<C, S, M> MakeStack<C> for Stack<S, M>
where
    C: Framing,
    M: MakeTransform,
    S: MakeStack<Transformed<M::Transform, C>>,
{
    type Framing = S::Framing;

    fn make_stack(&self, codec: C, params: SessionParams) -> S::Framing {
        let below = Transformed::new(self.make.make_transform(params), codec);
        let above = SessionParams {
            tail_room: params.tail_room.saturating_add(self.make.max_overhead()),
            ..params
        };
        self.above.make_stack(below, above)
    }

    fn max_overhead(&self) -> usize {
        self.above
            .max_overhead()
            .saturating_add(self.make.max_overhead())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use bytes::BytesMut;

    use super::*;
    use crate::codec::{FrameCodec, LineCodec};
    use crate::frame::Frame;
    use crate::BoxError;

    /// Appends one letter to every payload it sends and checks and removes
    /// it on receipt; adds 1 byte; remembers what it was made with.
    struct Letter {
        letter: u8,
        params: SessionParams,
        sent: Arc<AtomicU64>,
    }

    impl FrameTransform for Letter {
        fn decode(&mut self, mut frame: Frame) -> Result<Frame, BoxError> {
            let p = frame.payload().clone();
            match p.last() {
                Some(b) if *b == self.letter => {
                    *frame.payload_mut() = p.slice(..p.len() - 1);
                    Ok(frame)
                }
                _ => Err("missing letter".into()),
            }
        }
        fn encode(&self, mut frame: Frame) -> Result<Frame, BoxError> {
            let mut p = frame.payload().to_vec();
            p.push(self.letter);
            *frame.payload_mut() = p.into();
            Ok(frame)
        }
        fn commit(&mut self) {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        fn max_overhead(&self) -> usize {
            1
        }
    }

    #[derive(Clone, Debug)]
    struct MakeLetter(u8);

    impl MakeTransform for MakeLetter {
        type Transform = Letter;
        fn make_transform(&self, params: SessionParams) -> Letter {
            Letter {
                letter: self.0,
                params,
                sent: Arc::new(AtomicU64::new(0)),
            }
        }
        fn max_overhead(&self) -> usize {
            1
        }
    }

    #[test]
    fn the_first_transform_added_is_nearest_the_application() {
        let wire = Wire::new(FrameCodec::new())
            .transform(MakeLetter(b'a'))
            .transform(MakeLetter(b'b'));
        let mut framing = wire.make_framing(Side::Client);
        let mut bytes = BytesMut::new();
        framing.encode(Frame::data("x"), &mut bytes).unwrap();
        // a appended first (outermost), then b (nearest the wire).
        let raw = FrameCodec::new().decode(&mut bytes.clone()).unwrap();
        assert_eq!(raw.unwrap().payload(), "xab");
        let mut peer = wire.make_framing(Side::Server);
        assert_eq!(peer.decode(&mut bytes).unwrap().unwrap(), Frame::data("x"));
    }

    #[test]
    fn each_framing_gets_fresh_transforms_told_its_side_and_limit() {
        let wire = Wire::new(FrameCodec::with_max_frame_size(100)).transform(MakeLetter(b'a'));
        let mut one = wire.make_framing(Side::Server);
        let two = wire.make_framing(Side::Client);
        let mut bytes = BytesMut::new();
        one.encode(Frame::data("x"), &mut bytes).unwrap();
        one.encode(Frame::data("y"), &mut bytes).unwrap();
        assert_eq!(one.transform().sent.load(Ordering::Relaxed), 2);
        assert_eq!(two.transform().sent.load(Ordering::Relaxed), 0);
        assert!(!Arc::ptr_eq(&one.transform().sent, &two.transform().sent));
        assert_eq!(
            one.transform().params,
            SessionParams::new(Side::Server, 100)
        );
        assert_eq!(
            two.transform().params,
            SessionParams::new(Side::Client, 100)
        );
    }

    #[test]
    fn limits_come_from_the_codec_less_the_overheads() {
        let mut wire = Wire::new(FrameCodec::with_max_frame_size(100))
            .transform(MakeLetter(b'a'))
            .transform(Some(MakeLetter(b'b')))
            .transform(None::<MakeLetter>);
        assert_eq!(wire.max_overhead(), 2);
        assert_eq!(wire.max_sendable(), 98);
        wire.codec_mut().set_max_frame_size(50);
        assert_eq!(wire.codec().max_frame_size(), 50);
        let framing = wire.make_framing(Side::Client);
        assert_eq!(framing.max_encoded_len(), wire.max_sendable());
        assert_eq!(framing.transform().params.max_frame_size, 50);
    }

    #[test]
    fn each_transform_is_told_what_the_ones_nearer_the_wire_append() {
        let wire = Wire::new(FrameCodec::new())
            .transform(MakeLetter(b'a'))
            .transform(None::<MakeLetter>)
            .transform(Some(MakeLetter(b'b')))
            .transform(MakeLetter(b'c'));
        let framing = wire.make_framing(Side::Client);
        // a is nearest the application (the outermost framing), c nearest the wire.
        let a = framing.transform();
        let b = framing.get_ref().get_ref().transform();
        let c = framing.get_ref().get_ref().get_ref().transform();
        assert_eq!(c.params.tail_room, 0);
        assert_eq!(b.as_ref().map(|b| b.params.tail_room), Some(1));
        assert_eq!(a.params.tail_room, 2);
    }

    #[test]
    fn a_plain_codec_is_its_own_factory() {
        let codec = LineCodec::with_max_line(80);
        assert_eq!(codec.make_framing(Side::Server).max_frame_size(), 80);
        assert_eq!(MakeFraming::max_sendable(&codec), usize::MAX);
        assert!(!MakeFraming::codec(&codec).is_binary());
        assert_eq!(
            MakeFraming::max_sendable(&FrameCodec::new()),
            crate::DEFAULT_MAX_FRAME_SIZE
        );
    }
}
