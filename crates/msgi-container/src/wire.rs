//! The binary encoding of containers (docs/PROTOCOL.md, section 6), its limits, and
//! the owned decode ([`decode`]), made by the crate's one decoder (`decoder.rs`).
//!
//! The decoder checks before it allocates: a length is compared with the bytes left
//! before anything is sliced, a count with the bytes left (every value takes at least one
//! byte, every named value two) and with the values left in [`Limits::max_values`] before
//! a vector is reserved for it, and nesting with [`Limits::max_depth`] before it recurses.
//! So what a decoded container holds is bounded by the limits, whatever the payload says,
//! and strings and bytes are slices of the payload (no copy).

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::container::Container;
use crate::decoder::{self, Shared};
use crate::error::{DecodeError, EncodeError, LimitsError};
use crate::value::{Value, Values};

/// The version byte this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// The largest [`Limits::max_depth`] allowed: the decoder recurses once per level.
pub const MAX_DEPTH_LIMIT: usize = 128;

/// The largest [`Limits::max_values`] allowed.
pub const MAX_VALUES_LIMIT: usize = 1 << 24;

/// The value tags of format version 1.
pub(crate) mod tag {
    pub(crate) const NULL: u8 = 0x00;
    pub(crate) const FALSE: u8 = 0x01;
    pub(crate) const TRUE: u8 = 0x02;
    pub(crate) const I64: u8 = 0x03;
    pub(crate) const U64: u8 = 0x04;
    pub(crate) const F64: u8 = 0x05;
    pub(crate) const STR: u8 = 0x06;
    pub(crate) const BYTES: u8 = 0x07;
    pub(crate) const ARRAY: u8 = 0x08;
    pub(crate) const MAP: u8 = 0x09;
}

/// What a decoder accepts, beyond the format itself.
///
/// With the defaults (depth 32, 65,536 values) a decoded container holds at most
/// 65,536 × 72 bytes (about 4.5 MiB) of values and names, besides the payload its strings
/// share, whatever the payload claims; a frame's payload is itself bounded by the maximum
/// frame size (1 MiB by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    max_depth: usize,
    max_values: usize,
}

impl Limits {
    /// Depth 32, 65,536 values.
    pub const DEFAULT: Limits = Limits {
        max_depth: 32,
        max_values: 65_536,
    };

    /// Limits of your own: `max_depth` at most [`MAX_DEPTH_LIMIT`] (0 refuses every array
    /// and map), `max_values` from 1 to [`MAX_VALUES_LIMIT`].
    pub fn new(max_depth: usize, max_values: usize) -> Result<Self, LimitsError> {
        if max_depth > MAX_DEPTH_LIMIT {
            return Err(LimitsError::DepthTooLarge(max_depth));
        }
        if max_values == 0 || max_values > MAX_VALUES_LIMIT {
            return Err(LimitsError::ValuesOutOfRange(max_values));
        }
        Ok(Limits {
            max_depth,
            max_values,
        })
    }

    /// How many arrays and maps may nest, one in another: a value of the container that
    /// is an array is at depth 1, an array in it at depth 2.
    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// How many values the container may hold in all, counting every named value, every
    /// array element and every value in a nested map.
    pub fn max_values(&self) -> usize {
        self.max_values
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Decodes a container from a frame's payload with the default [`Limits`].
///
/// Never panics, whatever the bytes: a payload that is not a valid container is a
/// [`DecodeError`]. Strings, names and byte values of the result are slices of `payload`
/// (they keep its buffer alive, and copy nothing): a value kept after the message, in a
/// map or a cache, pins the whole buffer the payload was read into; keep
/// [`Value::detached`] copies instead.
pub fn decode(payload: &Bytes) -> Result<Container, DecodeError> {
    decode_with(payload, &Limits::DEFAULT)
}

pub(crate) fn decode_with(payload: &Bytes, limits: &Limits) -> Result<Container, DecodeError> {
    let (h, values) = decoder::decode(payload, Shared::new(payload), limits)?;
    Ok(Container {
        source_id: h.source_id,
        source_sub_id: h.source_sub_id,
        target_id: h.target_id,
        target_sub_id: h.target_sub_id,
        message_type: h.message_type,
        values,
    })
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

pub(crate) fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn varint_len(n: u64) -> usize {
    let bits = 64 - n.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

fn put_varint(buf: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        buf.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
}

fn put_short(buf: &mut BytesMut, text: &str) {
    // Every way of making a header field or name checks it against MAX_SHORT_LEN.
    debug_assert!(text.len() <= crate::MAX_SHORT_LEN);
    buf.put_u8(u8::try_from(text.len()).unwrap_or(u8::MAX));
    buf.put_slice(text.as_bytes());
}

/// Whether a decoder with `limits` would take `c`'s encoding: its values counted and its
/// nesting measured as the decoder does, without recursion (a value built in code may
/// nest without bound), stopping at the first excess.
pub(crate) fn check(c: &Container, limits: &Limits) -> Result<(), EncodeError> {
    enum Level<'a> {
        Named(std::slice::Iter<'a, (ByteString, Value)>),
        Items(std::slice::Iter<'a, Value>),
    }
    let too_many = EncodeError::TooManyValues {
        max: limits.max_values,
    };
    let mut left = limits.max_values;
    let mut take = |n: usize| -> Result<(), EncodeError> {
        left = left.checked_sub(n).ok_or_else(|| too_many.clone())?;
        Ok(())
    };
    take(c.values.len())?;
    // The levels being walked: its length is the depth of the values they hold.
    let mut stack = vec![Level::Named(c.values.entries().iter())];
    while let Some(level) = stack.last_mut() {
        let next = match level {
            Level::Named(it) => it.next().map(|(_, v)| v),
            Level::Items(it) => it.next(),
        };
        let Some(value) = next else {
            stack.pop();
            continue;
        };
        let inner = match value {
            Value::Array(items) => {
                take(items.len())?;
                Level::Items(items.iter())
            }
            Value::Map(m) => {
                take(m.len())?;
                Level::Named(m.entries().iter())
            }
            _ => continue,
        };
        // The value is at depth `stack.len() - 1`; the decoder refuses to enter it
        // unless that is below the maximum.
        if stack.len() > limits.max_depth {
            return Err(EncodeError::TooDeep {
                max: limits.max_depth,
            });
        }
        stack.push(inner);
    }
    Ok(())
}

pub(crate) fn encoded_len(c: &Container) -> usize {
    let header = [
        &c.source_id,
        &c.source_sub_id,
        &c.target_id,
        &c.target_sub_id,
        &c.message_type,
    ]
    .iter()
    .map(|s| 1 + s.len())
    .sum::<usize>();
    1 + header + values_len(&c.values)
}

fn values_len(values: &Values) -> usize {
    varint_len(values.len() as u64)
        + values
            .entries()
            .iter()
            .map(|(n, v)| 1 + n.len() + value_len(v))
            .sum::<usize>()
}

fn value_len(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 1,
        Value::I64(n) => 1 + varint_len(zigzag(*n)),
        Value::U64(n) => 1 + varint_len(*n),
        Value::F64(_) => 9,
        Value::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
        Value::Bytes(b) => 1 + varint_len(b.len() as u64) + b.len(),
        Value::Array(items) => {
            1 + varint_len(items.len() as u64) + items.iter().map(value_len).sum::<usize>()
        }
        Value::Map(m) => 1 + values_len(m),
    }
}

pub(crate) fn encode_into(c: &Container, buf: &mut BytesMut) {
    buf.put_u8(FORMAT_VERSION);
    put_short(buf, &c.source_id);
    put_short(buf, &c.source_sub_id);
    put_short(buf, &c.target_id);
    put_short(buf, &c.target_sub_id);
    put_short(buf, &c.message_type);
    put_values(buf, &c.values);
}

fn put_values(buf: &mut BytesMut, values: &Values) {
    put_varint(buf, values.len() as u64);
    for (name, value) in values.entries() {
        put_short(buf, name);
        put_value(buf, value);
    }
}

fn put_value(buf: &mut BytesMut, v: &Value) {
    match v {
        Value::Null => buf.put_u8(tag::NULL),
        Value::Bool(false) => buf.put_u8(tag::FALSE),
        Value::Bool(true) => buf.put_u8(tag::TRUE),
        Value::I64(n) => {
            buf.put_u8(tag::I64);
            put_varint(buf, zigzag(*n));
        }
        Value::U64(n) => {
            buf.put_u8(tag::U64);
            put_varint(buf, *n);
        }
        Value::F64(x) => {
            buf.put_u8(tag::F64);
            buf.put_u64(x.to_bits());
        }
        Value::Str(s) => {
            buf.put_u8(tag::STR);
            put_varint(buf, s.len() as u64);
            buf.put_slice(s.as_bytes());
        }
        Value::Bytes(b) => {
            buf.put_u8(tag::BYTES);
            put_varint(buf, b.len() as u64);
            buf.put_slice(b);
        }
        Value::Array(items) => {
            buf.put_u8(tag::ARRAY);
            put_varint(buf, items.len() as u64);
            for item in items {
                put_value(buf, item);
            }
        }
        Value::Map(m) => {
            buf.put_u8(tag::MAP);
            put_values(buf, m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_maps_small_magnitudes_to_small_numbers() {
        for (n, z) in [
            (0i64, 0u64),
            (-1, 1),
            (1, 2),
            (-2, 3),
            (i64::MAX, u64::MAX - 1),
            (i64::MIN, u64::MAX),
        ] {
            assert_eq!(zigzag(n), z);
            assert_eq!(unzigzag(z), n);
        }
    }

    #[test]
    fn varint_lengths() {
        for (n, len) in [
            (0u64, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(n), len, "{n}");
            let mut buf = BytesMut::new();
            put_varint(&mut buf, n);
            assert_eq!(buf.len(), len);
            let c = Container::builder("").value("n", n).build().unwrap();
            let payload = c.encode();
            assert_eq!(&payload[payload.len() - len..], &buf[..]);
            assert_eq!(decode(&payload).unwrap().get::<u64>("n"), Ok(n));
        }
    }

    #[test]
    fn a_value_with_its_name_takes_the_72_bytes_the_limits_docs_count() {
        assert!(std::mem::size_of::<Value>() <= 40);
        assert!(std::mem::size_of::<(ByteString, Value)>() <= 72);
    }

    #[test]
    fn limits_are_checked_when_made() {
        assert_eq!(Limits::new(129, 10), Err(LimitsError::DepthTooLarge(129)));
        assert_eq!(Limits::new(1, 0), Err(LimitsError::ValuesOutOfRange(0)));
        assert_eq!(
            Limits::new(1, MAX_VALUES_LIMIT + 1),
            Err(LimitsError::ValuesOutOfRange(MAX_VALUES_LIMIT + 1))
        );
        assert!(Limits::new(0, 1).is_ok());
        assert_eq!(Limits::default(), Limits::DEFAULT);
    }
}
