//! Acknowledged delivery, the wire part (docs/PROTOCOL.md, section 3,
//! *Acknowledged delivery*): the frames, how to make and read them.
//!
//! - The client asks with a correlated CONTROL `RESUME <epoch> <first>`
//!   after WELCOME, on every connection: `epoch` names this run of the
//!   client (a random number from 1 to 2^64 - 1, drawn when it starts),
//!   `first` is the sequence number of its oldest frame not yet
//!   acknowledged (or of its next frame).
//! - The server answers CONTROL `RESUMED <last>` with the same request id:
//!   the highest sequence number of this client id and epoch it has handed
//!   to the application (at least `first - 1`).
//! - From then on every uncorrelated DATA, CONTROL or application frame the
//!   client sends on that connection is numbered implicitly, `last + 1`,
//!   `last + 2`, ... (no bytes are added to it), and the server pushes
//!   [`ACK`] frames, whose 8-byte payload is the highest number handed to
//!   the application so far (cumulative).
//!
//! Push recovery (server to client, optional): the client adds a third
//! number to RESUME, `RESUME <epoch> <first> <pushes>`, the highest push
//! number it has received in this run (0: none). A server that keeps pushes
//! answers `RESUMED <last> recovered <missed>` (it kept the client id's
//! pushes while it was away) or `RESUMED <last> fresh <missed>` (it had
//! none kept: a first connection, or the grace period passed), `missed`
//! the pushes it accepted for the client id and dropped since its previous
//! RESUME (a push it refused was told to its pusher); one that does not answers
//! `RESUMED <last>`. It then sends each kept push as a [`PUSH`] frame
//! (numbered explicitly), and the client says which it has with
//! uncorrelated CONTROL `PUSHED <n>` (cumulative, not numbered itself).

use bytes::Bytes;

use crate::frame::{Frame, Kind};

/// The kind of an acknowledgement (`0x004`, from the range the contract
/// leaves to session extensions). Sent only by a server to a client that
/// asked with RESUME.
pub const ACK: Kind = match Kind::new(0x004) {
    Some(kind) => kind,
    None => Kind::DATA,
};

/// The kind of a numbered push (`0x005`), server to client only, to a
/// client that asked for push recovery: payload the push's 8-byte
/// big-endian number, the carried frame's 2-byte kind (DATA, CONTROL or an
/// application kind), then its payload.
pub const PUSH: Kind = match Kind::new(0x005) {
    Some(kind) => kind,
    None => Kind::DATA,
};

/// The bytes of a [`PUSH`] payload before the carried payload.
pub const PUSH_HEADER_LEN: usize = 10;

/// The prefix of the client's acknowledgement of pushes: `PUSHED <n>`.
pub const PUSHED_PREFIX: &str = "PUSHED ";

/// How a server that keeps pushes answered RESUME (its third word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResume {
    /// `recovered <missed>`: the client id's pushes were kept while it was
    /// away; `missed` pushes accepted for it were dropped since its
    /// previous RESUME (a push refused, its buffer full, was told to its
    /// pusher instead and is not counted).
    Recovered {
        /// Pushes accepted and dropped since the client's previous RESUME.
        missed: u64,
    },
    /// `fresh <missed>`: nothing was kept (a first connection, a restarted
    /// server, the grace period passed, no place for the client id);
    /// `missed` pushes are known to be lost.
    Fresh {
        /// Pushes known lost (dropped at the end of the grace period).
        missed: u64,
    },
}

/// A [`PUSH`] frame carrying `frame` (uncorrelated, without flags) as push
/// number `seq`. `None` for a frame that cannot be pushed (correlated,
/// with flags, or of a kind that is not delivered).
pub fn push_frame(seq: u64, frame: &Frame) -> Option<Frame> {
    if frame.request_id().is_some() || !frame.flags().is_empty() || !frame.kind().is_delivered() {
        return None;
    }
    let mut payload = bytes::BytesMut::with_capacity(PUSH_HEADER_LEN + frame.payload().len());
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.extend_from_slice(&frame.kind().get().to_be_bytes());
    payload.extend_from_slice(frame.payload());
    Some(Frame::new(PUSH, payload.freeze()))
}

/// The number and the carried frame of a [`PUSH`] frame's payload; `None`
/// if it is shorter than its header or carries a kind that is not
/// delivered.
pub fn parse_push(payload: &Bytes) -> Option<(u64, Frame)> {
    let seq: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    let kind: [u8; 2] = payload.get(8..PUSH_HEADER_LEN)?.try_into().ok()?;
    let kind = Kind::new(u16::from_be_bytes(kind)).filter(|k| k.is_delivered())?;
    Some((
        u64::from_be_bytes(seq),
        Frame::new(kind, payload.slice(PUSH_HEADER_LEN..)),
    ))
}

/// The client's acknowledgement of every push up to `n`.
pub fn pushed_frame(n: u64) -> Frame {
    Frame::control(format!("{PUSHED_PREFIX}{n}"))
}

/// `n` of a `PUSHED <n>` payload.
pub fn parse_pushed(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(PUSHED_PREFIX.as_bytes())?;
    parse_decimal(std::str::from_utf8(rest).ok()?)
}

/// RESUME asking for push recovery too: `RESUME <epoch> <first> <pushes>`.
pub fn resume_frame_with_pushes(epoch: u64, first: u64, pushes: u64) -> Frame {
    Frame::control(format!("{RESUME_PREFIX}{epoch} {first} {pushes}"))
}

/// `(epoch, first, pushes)` of a RESUME payload, `pushes` given only when
/// the client asked for push recovery; `None` if it is not one.
pub fn parse_resume_with_pushes(payload: &[u8]) -> Option<(u64, u64, Option<u64>)> {
    let rest = payload.strip_prefix(RESUME_PREFIX.as_bytes())?;
    let text = std::str::from_utf8(rest).ok()?;
    let mut words = text.split(' ');
    let epoch = parse_decimal(words.next()?)?;
    let first = parse_decimal(words.next()?)?;
    let pushes = match words.next() {
        Some(word) => Some(parse_decimal(word)?),
        None => None,
    };
    if words.next().is_some() || epoch == 0 || first == 0 {
        return None;
    }
    Some((epoch, first, pushes))
}

/// The answer of a server that keeps pushes.
pub fn resumed_frame_with_pushes(last: u64, pushes: PushResume) -> Frame {
    Frame::control(match pushes {
        PushResume::Recovered { missed } => format!("{RESUMED_PREFIX}{last} recovered {missed}"),
        PushResume::Fresh { missed } => format!("{RESUMED_PREFIX}{last} fresh {missed}"),
    })
}

/// `last`, and how pushes were kept when the server said, of a RESUMED
/// payload.
pub fn parse_resumed_with_pushes(payload: &[u8]) -> Option<(u64, Option<PushResume>)> {
    let rest = payload.strip_prefix(RESUMED_PREFIX.as_bytes())?;
    let text = std::str::from_utf8(rest).ok()?;
    let mut words = text.split(' ');
    let last = parse_decimal(words.next()?)?;
    let pushes = match (words.next(), words.next()) {
        (None, _) => None,
        (Some("recovered"), Some(m)) => Some(PushResume::Recovered {
            missed: parse_decimal(m)?,
        }),
        (Some("fresh"), Some(m)) => Some(PushResume::Fresh {
            missed: parse_decimal(m)?,
        }),
        _ => return None,
    };
    if words.next().is_some() {
        return None;
    }
    Some((last, pushes))
}

/// The prefix of the client's request: `RESUME <epoch> <first>`.
pub const RESUME_PREFIX: &str = "RESUME ";

/// The prefix of the server's answer: `RESUMED <last>`.
pub const RESUMED_PREFIX: &str = "RESUMED ";

/// The reason of the DISCONNECT a server shutting down sends to a client
/// that resumed acknowledged delivery, before the number of the last frame
/// it handed to the application: `server shutdown; last <n>`. A client
/// that matches the reason by its prefix `server shutdown` reads it as any
/// shutdown.
pub const SHUTDOWN_LAST_PREFIX: &str = "server shutdown; last ";

/// The length of an [`ACK`] frame's payload: a big-endian `u64`.
pub const ACK_PAYLOAD_LEN: usize = 8;

/// An acknowledgement of every frame up to `last`.
pub fn ack_frame(last: u64) -> Frame {
    Frame::new(ACK, Bytes::copy_from_slice(&last.to_be_bytes()))
}

/// The sequence number an [`ACK`] frame acknowledges, or `None` when its
/// payload is not exactly 8 bytes.
pub fn parse_ack(frame: &Frame) -> Option<u64> {
    let bytes: [u8; ACK_PAYLOAD_LEN] = frame.payload().as_ref().try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The reason `server shutdown; last <last>` (see [`SHUTDOWN_LAST_PREFIX`]).
pub fn shutdown_reason(last: u64) -> String {
    format!("{SHUTDOWN_LAST_PREFIX}{last}")
}

/// `last` of a DISCONNECT payload `server shutdown; last <last>`; `None`
/// for any other reason.
pub fn parse_shutdown_last(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(SHUTDOWN_LAST_PREFIX.as_bytes())?;
    parse_decimal(std::str::from_utf8(rest).ok()?)
}

/// The client's request (uncorrelated here: the caller sets its id).
pub fn resume_frame(epoch: u64, first: u64) -> Frame {
    Frame::control(format!("{RESUME_PREFIX}{epoch} {first}"))
}

/// `(epoch, first)` of a RESUME payload without push recovery; `None` if
/// it is not one (the prefix missing, a number that is not canonical
/// decimal, epoch 0 or first 0, a third number).
pub fn parse_resume(payload: &[u8]) -> Option<(u64, u64)> {
    match parse_resume_with_pushes(payload)? {
        (epoch, first, None) => Some((epoch, first)),
        _ => None,
    }
}

/// The server's answer (uncorrelated here: the caller sets the id).
pub fn resumed_frame(last: u64) -> Frame {
    Frame::control(format!("{RESUMED_PREFIX}{last}"))
}

/// `last` of a RESUMED payload (with or without the push words).
pub fn parse_resumed(payload: &[u8]) -> Option<u64> {
    parse_resumed_with_pushes(payload).map(|(last, _)| last)
}

/// A canonical decimal `u64`: digits only, no sign, no leading zero.
fn parse_decimal(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_what_is_not_canonical() {
        assert_eq!(ACK.get(), 0x004);
        assert_eq!(parse_ack(&ack_frame(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_ack(&Frame::new(ACK, vec![0u8; 7])), None);
        assert_eq!(parse_resume(resume_frame(9, 1).payload()), Some((9, 1)));
        for bad in [
            "RESUME 0 1",
            "RESUME 1 0",
            "RESUME 01 1",
            "RESUME 1",
            "RESUME +1 1",
            "RESUME 1 1 ",
            "RESUME 18446744073709551616 1",
            "resume 1 1",
        ] {
            assert_eq!(parse_resume(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(parse_resumed(resumed_frame(0).payload()), Some(0));
        assert_eq!(parse_resumed(b"RESUMED 42"), Some(42));
        assert_eq!(parse_resumed(b"RESUMED -1"), None);
        assert_eq!(parse_shutdown_last(shutdown_reason(7).as_bytes()), Some(7));
        assert_eq!(
            parse_resume_with_pushes(resume_frame_with_pushes(9, 1, 0).payload()),
            Some((9, 1, Some(0)))
        );
        assert_eq!(parse_resume(b"RESUME 9 1 0"), None);
        assert_eq!(parse_resume_with_pushes(b"RESUME 9 1 0 0"), None);
        for answer in [
            PushResume::Recovered { missed: 3 },
            PushResume::Fresh { missed: 0 },
        ] {
            let frame = resumed_frame_with_pushes(5, answer);
            assert_eq!(
                parse_resumed_with_pushes(frame.payload()),
                Some((5, Some(answer)))
            );
        }
        assert_eq!(parse_resumed_with_pushes(b"RESUMED 5 kept 1"), None);
        assert_eq!(parse_resumed_with_pushes(b"RESUMED 5 fresh"), None);
        let push = push_frame(7, &Frame::data("hi")).unwrap();
        let (seq, carried) = parse_push(push.payload()).unwrap();
        assert_eq!((seq, carried), (7, Frame::data("hi")));
        assert!(push_frame(1, &Frame::data("x").with_request_id(1)).is_none());
        assert!(push_frame(1, &Frame::ping("x")).is_none());
        assert!(parse_push(&Bytes::from_static(&[0; 9])).is_none());
        assert!(parse_push(&Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 1])).is_none());
        assert_eq!(parse_pushed(pushed_frame(12).payload()), Some(12));
        for bad in [
            "server shutdown",
            "server shutdown; last ",
            "server shutdown; last 07",
            "idle timeout",
        ] {
            assert_eq!(parse_shutdown_last(bad.as_bytes()), None, "{bad}");
        }
    }
}
