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

use bytes::Bytes;

use crate::frame::{Frame, Kind};

/// The kind of an acknowledgement (`0x004`, from the range the contract
/// leaves to session extensions). Sent only by a server to a client that
/// asked with RESUME.
pub const ACK: Kind = match Kind::new(0x004) {
    Some(kind) => kind,
    None => Kind::DATA,
};

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

/// `(epoch, first)` of a RESUME payload; `None` if it is not one (the
/// prefix missing, a number that is not canonical decimal, epoch 0 or
/// first 0).
pub fn parse_resume(payload: &[u8]) -> Option<(u64, u64)> {
    let rest = payload.strip_prefix(RESUME_PREFIX.as_bytes())?;
    let text = std::str::from_utf8(rest).ok()?;
    let (epoch, first) = text.split_once(' ')?;
    let epoch = parse_decimal(epoch)?;
    let first = parse_decimal(first)?;
    (epoch != 0 && first != 0).then_some((epoch, first))
}

/// The server's answer (uncorrelated here: the caller sets the id).
pub fn resumed_frame(last: u64) -> Frame {
    Frame::control(format!("{RESUMED_PREFIX}{last}"))
}

/// `last` of a RESUMED payload.
pub fn parse_resumed(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(RESUMED_PREFIX.as_bytes())?;
    parse_decimal(std::str::from_utf8(rest).ok()?)
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
