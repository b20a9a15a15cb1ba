//! The binary encoding of containers (docs/PROTOCOL.md, section 6) and its limits.
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
use crate::error::{DecodeError, EncodeError, Field, LimitsError};
use crate::value::{NameSet, Value, Values};

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
    let mut r = Reader {
        buf: payload,
        pos: 0,
        values_left: limits.max_values,
        max_values: limits.max_values,
        max_depth: limits.max_depth,
    };
    let version = r.u8()?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    let source_id = r.short(Field::SourceId)?;
    let source_sub_id = r.short(Field::SourceSubId)?;
    let target_id = r.short(Field::TargetId)?;
    let target_sub_id = r.short(Field::TargetSubId)?;
    let message_type = r.short(Field::MessageType)?;
    let values = r.values(0)?;
    let count = r.left();
    if count != 0 {
        return Err(DecodeError::TrailingBytes { at: r.pos, count });
    }
    Ok(Container {
        source_id,
        source_sub_id,
        target_id,
        target_sub_id,
        message_type,
        values,
    })
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    values_left: usize,
    max_values: usize,
    max_depth: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn rest(&self) -> &'a [u8] {
        let buf: &'a [u8] = self.buf;
        buf.get(self.pos..).unwrap_or_default()
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        match self.rest().first() {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(DecodeError::Truncated { at: self.pos }),
        }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let at = self.pos;
        let rest = self.rest();
        let mut n = 0u64;
        for i in 0..10 {
            let Some(&byte) = rest.get(i) else {
                return Err(DecodeError::Truncated { at: at + i });
            };
            // The tenth byte holds the 64th bit only.
            if i == 9 && byte > 1 {
                return Err(DecodeError::BadVarint { at });
            }
            n |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(DecodeError::BadVarint { at });
                }
                self.pos += i + 1;
                return Ok(n);
            }
        }
        Err(DecodeError::BadVarint { at })
    }

    /// `len` bytes from here, as a slice of the payload.
    fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        let end = self.pos.checked_add(len).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let b = self.buf.slice(self.pos..end);
                self.pos = end;
                Ok(b)
            }
            None => Err(DecodeError::Truncated { at: self.pos }),
        }
    }

    /// A length prefix, checked against the bytes left.
    fn length(&mut self) -> Result<usize, DecodeError> {
        let at = self.pos;
        let len = self.varint()?;
        let left = self.left();
        match usize::try_from(len) {
            Ok(n) if n <= left => Ok(n),
            _ => Err(DecodeError::LengthTooLarge { len, at, left }),
        }
    }

    /// A count of values each taking at least `min_size` bytes, checked against the
    /// bytes left and charged to the values left, before anything is allocated for it.
    fn count(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let count = self.varint()?;
        let left = self.left();
        let n = match usize::try_from(count) {
            Ok(n) if n <= left / min_size => n,
            _ => return Err(DecodeError::CountTooLarge { count, at, left }),
        };
        match self.values_left.checked_sub(n) {
            Some(rest) => self.values_left = rest,
            None => {
                return Err(DecodeError::TooManyValues {
                    max: self.max_values,
                    at,
                })
            }
        }
        Ok(n)
    }

    fn text(&mut self, len: usize, field: Field) -> Result<ByteString, DecodeError> {
        let at = self.pos;
        let bytes = self.take(len)?;
        ByteString::try_from(bytes).map_err(|source| DecodeError::InvalidUtf8 { field, at, source })
    }

    /// A header field or name: one length byte, then UTF-8.
    fn short(&mut self, field: Field) -> Result<ByteString, DecodeError> {
        let len = self.u8()?;
        self.text(usize::from(len), field)
    }

    fn values(&mut self, depth: usize) -> Result<Values, DecodeError> {
        // A named value takes at least two bytes: an empty name and a one-byte value.
        let count = self.count(2)?;
        let mut values = Values::with_capacity(count);
        let mut names = NameSet::default();
        for _ in 0..count {
            let at = self.pos;
            let name = self.short(Field::Name)?;
            if names.repeated(&values, &name) {
                return Err(DecodeError::DuplicateName {
                    name: name.to_string(),
                    at,
                });
            }
            let value = self.value(depth)?;
            values.push_checked(name, value);
        }
        Ok(values)
    }

    fn nested(&self, depth: usize, at: usize) -> Result<usize, DecodeError> {
        if depth >= self.max_depth {
            return Err(DecodeError::TooDeep {
                max: self.max_depth,
                at,
            });
        }
        Ok(depth + 1)
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let at = self.pos;
        let value = match self.u8()? {
            tag::NULL => Value::Null,
            tag::FALSE => Value::Bool(false),
            tag::TRUE => Value::Bool(true),
            tag::I64 => Value::I64(unzigzag(self.varint()?)),
            tag::U64 => Value::U64(self.varint()?),
            tag::F64 => {
                let raw = self.take(8)?;
                let mut bits = [0u8; 8];
                bits.copy_from_slice(&raw);
                Value::F64(f64::from_bits(u64::from_be_bytes(bits)))
            }
            tag::STR => {
                let len = self.length()?;
                Value::Str(self.text(len, Field::Str)?)
            }
            tag::BYTES => {
                let len = self.length()?;
                Value::Bytes(self.take(len)?)
            }
            tag::ARRAY => {
                let inner = self.nested(depth, at)?;
                let count = self.count(1)?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(inner)?);
                }
                Value::Array(items)
            }
            tag::MAP => {
                let inner = self.nested(depth, at)?;
                Value::Map(self.values(inner)?)
            }
            tag => return Err(DecodeError::UnknownTag { tag, at }),
        };
        Ok(value)
    }
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
            let bytes = buf.freeze();
            let mut r = Reader {
                buf: &bytes,
                pos: 0,
                values_left: 1,
                max_values: 1,
                max_depth: 1,
            };
            assert_eq!(r.varint(), Ok(n));
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
