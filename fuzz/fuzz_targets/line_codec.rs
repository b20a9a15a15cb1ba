//! `LineCodec::decode` fed arbitrary bytes in arbitrary splits.
//!
//! Checks: never panics; each line is the bytes up to the first newline
//! (a trailing `\r` dropped), so consumed bytes == lines re-encoded; no
//! line over the maximum; `LineTooLong` only for a line that is; the read
//! buffer's capacity within the documented bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msgi_fuzz::{read_loop, End, Stream};
use msgi_proto::{CodecError, LineCodec};

fuzz_target!(|data: &[u8]| {
    let Some(stream) = Stream::parse(data) else {
        return;
    };
    let max = match stream.cfg % 4 {
        0 => 64 * 1024,
        1 => 1,
        2 => usize::from(stream.cfg),
        _ => 100_000,
    };
    let mut codec = LineCodec::with_max_line(max);
    let end = read_loop(&mut codec, &stream, |frame, at| {
        let line = frame.payload();
        assert!(line.len() <= max, "line of {} over {max}", line.len());
        assert!(!line.contains(&b'\n'), "a line holds a newline");
        let rest = &stream.bytes[at..];
        assert_eq!(&rest[..line.len()], &line[..]);
        let newline = rest[line.len()..]
            .iter()
            .position(|b| *b == b'\n')
            .expect("a line ends with a newline");
        // Only the one `\r` before the newline may be dropped.
        assert!(newline == 0 || (newline == 1 && rest[line.len()] == b'\r'));
        if newline == 0 {
            assert_ne!(line.last(), Some(&b'\r'), "a trailing \\r is dropped");
        }
        line.len() + newline + 1
    });
    if let End::Refused { error, at } = end {
        let CodecError::LineTooLong { max: m } = error else {
            panic!("unexpected error {error:?}");
        };
        assert_eq!(m, max);
        let rest = &stream.bytes[at..];
        match rest.iter().position(|b| *b == b'\n') {
            Some(pos) => assert!(pos > max, "line of {pos} refused (max {max})"),
            None => assert!(rest.len() > max),
        }
    }
});
