//! Payloads a hostile or broken peer may send: each fails with the typed error it
//! deserves, never a panic, and never after allocating what it claims.
//!
//! `msgi_container::decode` is the entry point the fuzz target calls; these are the
//! tricky inputs written down. Every payload here also goes through the in-place reader
//! (`ContainerRef::decode_with`), which must give the same container or the same error.

use bytes::Bytes;
use msgi_container::{Container, ContainerRef, DecodeError, Field, Limits, Value, Values};

fn decode(p: &Bytes) -> Result<Container, DecodeError> {
    decode_with(p, &Limits::DEFAULT)
}

/// Both decoders on `p`: they agree on the result (the same encoding when they take it,
/// the same error when they refuse it), and the owned one's answer is returned.
fn decode_with(p: &Bytes, limits: &Limits) -> Result<Container, DecodeError> {
    let owned = Container::decode_with(p, limits);
    let view = ContainerRef::decode_with(p, limits);
    assert_eq!(
        view.map(|v| v.to_container().encode()),
        owned.as_ref().map(Container::encode).map_err(Clone::clone),
        "the decoders disagree on {p:x?}"
    );
    owned
}

/// Version byte and an empty header: what every payload below starts with.
const HEAD: [u8; 6] = [1, 0, 0, 0, 0, 0];

fn payload(body: &[u8]) -> Bytes {
    let mut p = HEAD.to_vec();
    p.extend_from_slice(body);
    Bytes::from(p)
}

fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

#[test]
fn the_smallest_container_is_seven_bytes() {
    let c = decode(&payload(&[0])).unwrap();
    assert_eq!(c, Container::default());
    assert_eq!(
        &Container::new("").unwrap().encode()[..],
        &[1, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn empty_and_truncated_payloads() {
    assert_eq!(decode(&Bytes::new()), Err(DecodeError::Truncated { at: 0 }));
    assert_eq!(
        decode(&Bytes::from_static(&[1])),
        Err(DecodeError::Truncated { at: 1 })
    );
    // A header field longer than what is left.
    assert_eq!(
        decode(&Bytes::from_static(&[1, 5, b'a'])),
        Err(DecodeError::Truncated { at: 2 })
    );
    // Header without the values count.
    assert_eq!(decode(&payload(&[])), Err(DecodeError::Truncated { at: 6 }));
    // A varint cut in the middle.
    assert_eq!(
        decode(&payload(&[0x80])),
        Err(DecodeError::Truncated { at: 7 })
    );
    // An f64 with 3 of its 8 bytes.
    assert_eq!(
        decode(&payload(&[1, 1, b'x', 5, 1, 2, 3])),
        Err(DecodeError::Truncated { at: 10 })
    );
    // Every prefix of a valid payload fails.
    let full = Container::builder("t")
        .value("s", "text")
        .value("a", vec![Value::from(1u8), Value::from(-1i8)])
        .value("f", 2.5)
        .build()
        .unwrap()
        .encode();
    for len in 0..full.len() {
        assert!(decode(&full.slice(..len)).is_err(), "prefix of {len} bytes");
    }
    assert!(decode(&full).is_ok());
}

#[test]
fn other_versions_are_refused() {
    for version in [0u8, 2, 0xff] {
        assert_eq!(
            decode(&Bytes::from(vec![version, 0, 0, 0, 0, 0, 0])),
            Err(DecodeError::UnsupportedVersion { version })
        );
    }
}

#[test]
fn a_count_of_a_billion_in_twenty_bytes_fails_at_once() {
    let mut body = varint(1_000_000_000);
    body.resize(14, 0);
    let p = payload(&body);
    assert_eq!(p.len(), 20);
    assert_eq!(
        decode(&p),
        Err(DecodeError::CountTooLarge {
            count: 1_000_000_000,
            at: 6,
            left: 9
        })
    );
    // The same in an array, and the largest count there is.
    let mut body = vec![1, 1, b'a', 8];
    body.extend(varint(u64::MAX));
    body.push(0);
    assert_eq!(
        decode(&payload(&body)),
        Err(DecodeError::CountTooLarge {
            count: u64::MAX,
            at: 10,
            left: 1
        })
    );
}

#[test]
fn a_count_the_bytes_could_hold_is_still_bounded_by_max_values() {
    let limits = Limits::new(32, 10).unwrap();
    // 10 nulls in an array are fine, 11 are not (the array's own entry counts too).
    let ok = Container::builder("")
        .value("a", vec![Value::Null; 9])
        .build()
        .unwrap()
        .encode();
    assert!(decode_with(&ok, &limits).is_ok());
    let over = Container::builder("")
        .value("a", vec![Value::Null; 10])
        .build()
        .unwrap()
        .encode();
    assert_eq!(
        decode_with(&over, &limits),
        Err(DecodeError::TooManyValues { max: 10, at: 10 })
    );
    // Nested claims are charged as they are read, before anything is reserved for them:
    // arrays in arrays each claiming 6 elements, in a payload long enough for each claim.
    let mut body = vec![1, 1, b'a'];
    for _ in 0..3 {
        body.extend([8, 6]);
    }
    body.resize(body.len() + 8, 0);
    assert_eq!(
        decode_with(&payload(&body), &limits),
        Err(DecodeError::TooManyValues { max: 10, at: 12 })
    );
}

#[test]
fn lengths_beyond_the_payload() {
    let mut body = vec![1, 1, b's', 6];
    body.extend(varint(u64::from(u32::MAX)));
    body.extend_from_slice(b"abc");
    assert_eq!(
        decode(&payload(&body)),
        Err(DecodeError::LengthTooLarge {
            len: u64::from(u32::MAX),
            at: 10,
            left: 3
        })
    );
    let mut body = vec![1, 1, b'b', 7];
    body.extend(varint(u64::MAX));
    assert!(matches!(
        decode(&payload(&body)),
        Err(DecodeError::LengthTooLarge { len: u64::MAX, .. })
    ));
}

#[test]
fn bad_varints() {
    // Overlong: 0 written in two bytes.
    assert_eq!(
        decode(&payload(&[0x80, 0x00])),
        Err(DecodeError::BadVarint { at: 6 })
    );
    // Overlong: 1 written in two bytes.
    assert_eq!(
        decode(&payload(&[0x81, 0x00])),
        Err(DecodeError::BadVarint { at: 6 })
    );
    // Eleven bytes.
    assert_eq!(
        decode(&payload(&[0xff; 11])),
        Err(DecodeError::BadVarint { at: 6 })
    );
    // Ten bytes whose last is above 1: more than 64 bits.
    let mut v = vec![0xff; 9];
    v.push(0x02);
    assert_eq!(decode(&payload(&v)), Err(DecodeError::BadVarint { at: 6 }));
    // In a value.
    assert_eq!(
        decode(&payload(&[1, 1, b'n', 4, 0x80, 0x80, 0x00])),
        Err(DecodeError::BadVarint { at: 10 })
    );
    // u64::MAX itself is fine.
    let mut body = vec![1, 1, b'n', 4];
    body.extend(varint(u64::MAX));
    assert_eq!(
        decode(&payload(&body)).unwrap().get::<u64>("n").unwrap(),
        u64::MAX
    );
}

#[test]
fn text_that_is_not_utf8() {
    let bad: [&[u8]; 4] = [
        b"\xff",
        b"\xc0\xaf",     // overlong '/'
        b"\xed\xa0\x80", // a surrogate
        b"\xe2\x82",     // a character cut short
    ];
    for text in bad {
        // In the header.
        let mut p = vec![1, 0, 0, 0, 0, text.len() as u8];
        p.extend_from_slice(text);
        p.push(0);
        assert!(
            matches!(
                decode(&Bytes::from(p)),
                Err(DecodeError::InvalidUtf8 {
                    field: Field::MessageType,
                    at: 6,
                    ..
                })
            ),
            "{text:?}"
        );
        // As a name.
        let mut body = vec![1, text.len() as u8];
        body.extend_from_slice(text);
        body.push(0);
        assert!(matches!(
            decode(&payload(&body)),
            Err(DecodeError::InvalidUtf8 {
                field: Field::Name,
                at: 8,
                ..
            })
        ));
        // As a string value.
        let mut body = vec![1, 1, b's', 6, text.len() as u8];
        body.extend_from_slice(text);
        assert!(matches!(
            decode(&payload(&body)),
            Err(DecodeError::InvalidUtf8 {
                field: Field::Str,
                at: 11,
                ..
            })
        ));
    }
    // The error keeps what the UTF-8 check found as its source, and says it once.
    let err = decode(&payload(&[1, 1, 0xff, 0])).unwrap_err();
    assert_eq!(err.to_string(), "value name at byte 8 is not UTF-8");
    let source = std::error::Error::source(&err).expect("a source");
    assert!(source.to_string().contains("invalid utf-8"), "{source}");
}

#[test]
fn unknown_tags() {
    for tag in [0x0a, 0x10, 0x7f, 0xff] {
        assert_eq!(
            decode(&payload(&[1, 1, b'x', tag])),
            Err(DecodeError::UnknownTag { tag, at: 9 })
        );
    }
}

#[test]
fn nesting_is_bounded_without_touching_the_stack() {
    fn nested_arrays(depth: usize) -> Bytes {
        let mut body = vec![1, 1, b'a'];
        for _ in 0..depth {
            body.extend([8, 1]);
        }
        body.push(0);
        payload(&body)
    }
    assert!(decode(&nested_arrays(32)).is_ok());
    assert_eq!(
        decode(&nested_arrays(33)),
        Err(DecodeError::TooDeep { max: 32, at: 73 })
    );
    // A million levels claimed: refused at the limit, long before the stack ends.
    assert!(matches!(
        decode(&nested_arrays(1_000_000)),
        Err(DecodeError::TooDeep { max: 32, .. })
    ));
    let deepest = Limits::new(msgi_container::MAX_DEPTH_LIMIT, 1 << 20).unwrap();
    assert!(decode_with(&nested_arrays(128), &deepest).is_ok());
    assert!(matches!(
        decode_with(&nested_arrays(1_000_000), &deepest),
        Err(DecodeError::TooDeep { max: 128, .. })
    ));
    // Maps count the same way; depth 0 refuses any.
    let flat = Limits::new(0, 10).unwrap();
    assert_eq!(
        decode_with(&payload(&[1, 1, b'm', 9, 0]), &flat),
        Err(DecodeError::TooDeep { max: 0, at: 9 })
    );
    assert!(decode_with(&payload(&[1, 1, b'm', 0]), &flat).is_ok());
}

#[test]
fn repeated_names_are_refused_per_map() {
    assert_eq!(
        decode(&payload(&[2, 1, b'a', 0, 1, b'a', 1])),
        Err(DecodeError::DuplicateName {
            name: "a".into(),
            at: 10
        })
    );
    // The same name in two maps is fine.
    let mut inner = Values::new();
    inner.insert("a", 1u8).unwrap();
    let ok = Container::builder("").value("a", inner).build().unwrap();
    assert_eq!(decode(&ok.encode()).unwrap(), ok);
    // In a nested map.
    assert!(matches!(
        decode(&payload(&[1, 1, b'm', 9, 2, 1, b'x', 0, 1, b'x', 0])),
        Err(DecodeError::DuplicateName { .. })
    ));
    // In a large map (checked with a set rather than name by name).
    let mut body = varint(40);
    for i in 0..40u8 {
        body.extend([2, b'k', b'0' + (i % 39)]);
        body.push(0);
    }
    assert_eq!(
        decode(&payload(&body)),
        Err(DecodeError::DuplicateName {
            name: "k0".into(),
            at: 6 + 1 + 39 * 4
        })
    );
    let mut body = varint(40);
    for i in 0..40u8 {
        body.extend([2, b'k', b'0' + i]);
        body.push(0);
    }
    assert_eq!(decode(&payload(&body)).unwrap().values().len(), 40);
}

#[test]
fn trailing_bytes_are_refused() {
    assert_eq!(
        decode(&payload(&[0, 0])),
        Err(DecodeError::TrailingBytes { at: 7, count: 1 })
    );
}

#[test]
fn every_one_byte_change_of_a_valid_payload_is_decoded_or_refused_canonically() {
    let full = Container::builder("login")
        .source("c1", "")
        .value("user", "ann")
        .value("ts", 1_700_000_000i64)
        .value("tags", vec![Value::from("a"), Value::Null])
        .value("f", 1.5)
        .build()
        .unwrap()
        .encode();
    for i in 0..full.len() {
        for b in [0x00, 0x01, 0x02, 0x7f, 0x80, 0xff] {
            let mut p = full.to_vec();
            p[i] = b;
            let p = Bytes::from(p);
            // The encoding is canonical: what decodes, encodes back to the same bytes.
            if let Ok(c) = decode(&p) {
                assert_eq!(c.encode(), p, "byte {i} set to {b:#04x}");
            }
        }
    }
}
