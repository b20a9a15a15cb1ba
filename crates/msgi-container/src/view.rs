//! Reading a container in place: [`ContainerRef`], whose names, strings and byte values
//! are `&str` and `&[u8]` views of the payload.
//!
//! It is decoded by the crate's one decoder of the layout (`decoder.rs`), the one
//! [`decode`](crate::decode) uses, with the same checks and errors: only what it makes of
//! the texts differs (views of the payload here, no reference count per string).

use crate::container::Container;
use crate::decoder::{self, Views};
use crate::error::{DecodeError, GetError, ValueError};
use crate::value::{Value, ValueKind, Values};
use crate::wire::Limits;

/// A container read in place from a payload: the header and named values, with every
/// name, string and byte value a view (`&'a str`, `&'a [u8]`) of the payload.
///
/// Made by [`ContainerRef::decode`], which checks exactly what [`decode`](crate::decode)
/// checks (format, UTF-8, unique names, [`Limits`]) and fails with the same
/// [`DecodeError`] on the same input. It is the faster way to read a container in a
/// handler: no reference count is taken per string, and the only allocations are one
/// vector of values per level (the container's, and each nested array or map). Turn it
/// into an owned [`Container`] (copying its text) with [`to_container`](Self::to_container)
/// when it must outlive the payload.
///
/// ```
/// use msgi_container::{Container, ContainerRef};
///
/// let payload = Container::builder("user_login")
///     .source("client-7", "")
///     .value("user", "alice")
///     .value("timestamp", 1_700_000_000i64)
///     .build()?
///     .encode();
///
/// let login = ContainerRef::decode(&payload)?;
/// assert_eq!(login.message_type(), "user_login");
/// let user: &str = login.get("user")?; // a view of `payload`
/// assert_eq!(user, "alice");
/// assert_eq!(login.get::<i64>("timestamp")?, 1_700_000_000);
/// assert!(login.get::<bool>("user").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerRef<'a> {
    source_id: &'a str,
    source_sub_id: &'a str,
    target_id: &'a str,
    target_sub_id: &'a str,
    message_type: &'a str,
    values: ValuesRef<'a>,
}

/// One value of a [`ContainerRef`]: like [`Value`], with strings and bytes as views of
/// the payload.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueRef<'a> {
    /// No value.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A signed integer.
    I64(i64),
    /// An unsigned integer.
    U64(u64),
    /// A 64-bit IEEE 754 float, bits as sent.
    F64(f64),
    /// A UTF-8 string.
    Str(&'a str),
    /// Bytes.
    Bytes(&'a [u8]),
    /// An ordered list of values.
    Array(Vec<ValueRef<'a>>),
    /// A nested map of named values.
    Map(ValuesRef<'a>),
}

/// Named values of a [`ContainerRef`] (or of a nested map) in payload order; names are
/// unique, as in [`Values`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValuesRef<'a> {
    entries: Vec<(&'a str, ValueRef<'a>)>,
}

impl<'a> ContainerRef<'a> {
    /// Reads a container from `payload` with the default [`Limits`]: the same checks and
    /// errors as [`decode`](crate::decode). Never panics, whatever the bytes.
    pub fn decode(payload: &'a [u8]) -> Result<Self, DecodeError> {
        Self::decode_with(payload, &Limits::DEFAULT)
    }

    /// Reads a container from `payload` with these limits.
    pub fn decode_with(payload: &'a [u8], limits: &Limits) -> Result<Self, DecodeError> {
        let (h, values) = decoder::decode(payload, Views::new(payload), limits)?;
        Ok(ContainerRef {
            source_id: h.source_id,
            source_sub_id: h.source_sub_id,
            target_id: h.target_id,
            target_sub_id: h.target_sub_id,
            message_type: h.message_type,
            values,
        })
    }

    /// The message type.
    pub fn message_type(&self) -> &'a str {
        self.message_type
    }

    /// The sender's id (empty when not given).
    pub fn source_id(&self) -> &'a str {
        self.source_id
    }

    /// The sender's sub-id (empty when not given).
    pub fn source_sub_id(&self) -> &'a str {
        self.source_sub_id
    }

    /// The recipient's id (empty when not given).
    pub fn target_id(&self) -> &'a str {
        self.target_id
    }

    /// The recipient's sub-id (empty when not given).
    pub fn target_sub_id(&self) -> &'a str {
        self.target_sub_id
    }

    /// The values.
    pub fn values(&self) -> &ValuesRef<'a> {
        &self.values
    }

    /// The values in payload order, as `(name, value)`.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&'a str, &ValueRef<'a>)> {
        self.values.iter()
    }

    /// The value named `name`.
    #[inline]
    pub fn value(&self, name: &str) -> Option<&ValueRef<'a>> {
        self.values.value(name)
    }

    /// The value named `name` as `T`, with the conversions and errors of
    /// [`Container::get`] (see [`FromValueRef`]).
    #[inline]
    pub fn get<T: FromValueRef<'a>>(&self, name: &str) -> Result<T, GetError> {
        self.values.get(name)
    }

    /// Like [`get`](Self::get), `Ok(None)` when no value is named `name`.
    pub fn find<T: FromValueRef<'a>>(&self, name: &str) -> Result<Option<T>, GetError> {
        self.values.find(name)
    }

    /// An owned [`Container`] with the same header and values, its text and bytes
    /// copied (it does not keep the payload alive). Recurses once per level of nesting
    /// (within [`Limits::max_depth`]).
    pub fn to_container(&self) -> Container {
        Container {
            source_id: self.source_id.into(),
            source_sub_id: self.source_sub_id.into(),
            target_id: self.target_id.into(),
            target_sub_id: self.target_sub_id.into(),
            message_type: self.message_type.into(),
            values: self.values.to_values(),
        }
    }
}

impl<'a> ValuesRef<'a> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        ValuesRef {
            entries: Vec::with_capacity(n),
        }
    }

    pub(crate) fn entries(&self) -> &[(&'a str, ValueRef<'a>)] {
        &self.entries
    }

    /// Appends without checking the name; the decoder has checked that it is not there.
    #[inline(always)]
    pub(crate) fn push_checked(&mut self, name: &'a str, value: ValueRef<'a>) {
        // The decoder reserved room for every value: with that known, the push writes
        // the entry in place (no spill for a call to grow).
        if self.entries.len() < self.entries.capacity() {
            self.entries.push((name, value));
        } else {
            self.push_grow(name, value);
        }
    }

    #[cold]
    #[inline(never)]
    fn push_grow(&mut self, name: &'a str, value: ValueRef<'a>) {
        self.entries.push((name, value));
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The values in payload order, as `(name, value)`.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&'a str, &ValueRef<'a>)> {
        self.entries.iter().map(|(n, v)| (*n, v))
    }

    /// The value named `name` (names compared one by one, as [`Values::value`]).
    #[inline]
    pub fn value(&self, name: &str) -> Option<&ValueRef<'a>> {
        self.entries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// Whether a value is named `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.value(name).is_some()
    }

    /// The value named `name` as `T`: [`GetError::Missing`] when there is none,
    /// [`GetError::WrongType`] or [`GetError::OutOfRange`] when it is not a `T`.
    #[inline]
    pub fn get<T: FromValueRef<'a>>(&self, name: &str) -> Result<T, GetError> {
        match self.value(name) {
            Some(v) => T::from_value_ref(v).map_err(|e| e.named(name)),
            None => Err(GetError::Missing {
                name: name.to_owned(),
            }),
        }
    }

    /// Like [`get`](Self::get), `Ok(None)` when no value is named `name`.
    pub fn find<T: FromValueRef<'a>>(&self, name: &str) -> Result<Option<T>, GetError> {
        match self.value(name) {
            Some(v) => T::from_value_ref(v).map(Some).map_err(|e| e.named(name)),
            None => Ok(None),
        }
    }

    /// Owned [`Values`], text and bytes copied.
    pub fn to_values(&self) -> Values {
        let mut out = Values::with_capacity(self.entries.len());
        for (n, v) in &self.entries {
            // Names were unique and at most 255 bytes in the payload.
            out.push_checked((*n).into(), v.to_value());
        }
        out
    }
}

impl<'a> ValueRef<'a> {
    /// The kind of this value.
    pub fn kind(&self) -> ValueKind {
        match self {
            ValueRef::Null => ValueKind::Null,
            ValueRef::Bool(_) => ValueKind::Bool,
            ValueRef::I64(_) => ValueKind::I64,
            ValueRef::U64(_) => ValueKind::U64,
            ValueRef::F64(_) => ValueKind::F64,
            ValueRef::Str(_) => ValueKind::Str,
            ValueRef::Bytes(_) => ValueKind::Bytes,
            ValueRef::Array(_) => ValueKind::Array,
            ValueRef::Map(_) => ValueKind::Map,
        }
    }

    /// An owned [`Value`], text and bytes copied.
    pub fn to_value(&self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Bool(b) => Value::Bool(*b),
            ValueRef::I64(n) => Value::I64(*n),
            ValueRef::U64(n) => Value::U64(*n),
            ValueRef::F64(x) => Value::F64(*x),
            ValueRef::Str(s) => Value::Str((*s).into()),
            ValueRef::Bytes(b) => Value::Bytes(bytes::Bytes::copy_from_slice(b)),
            ValueRef::Array(items) => Value::Array(items.iter().map(ValueRef::to_value).collect()),
            ValueRef::Map(m) => Value::Map(m.to_values()),
        }
    }

    /// This value as `T` (see [`FromValueRef`]).
    pub fn to<T: FromValueRef<'a>>(&self) -> Result<T, ValueError> {
        T::from_value_ref(self)
    }

    /// The value as a [`Value`] when it is a number, a bool or null (no allocation).
    fn scalar(&self) -> Option<Value> {
        Some(match *self {
            ValueRef::Null => Value::Null,
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::I64(n) => Value::I64(n),
            ValueRef::U64(n) => Value::U64(n),
            ValueRef::F64(x) => Value::F64(x),
            _ => return None,
        })
    }
}

/// A type a [`ValueRef`] can be read as ([`ContainerRef::get`], [`ValueRef::to`]): the
/// conversions of [`FromValue`](crate::FromValue) for `bool`, the integers, `f64`,
/// `&str`, `String`, `&[u8]` and `Option<T>`; strings and bytes are views of the
/// payload. Arrays and maps are read with [`ContainerRef::value`].
pub trait FromValueRef<'a>: Sized {
    /// Reads `value` as `Self`.
    fn from_value_ref(value: &ValueRef<'a>) -> Result<Self, ValueError>;
}

fn wrong(expected: &'static str, value: &ValueRef<'_>) -> ValueError {
    ValueError::WrongType {
        expected,
        found: value.kind(),
    }
}

fn out_of_range(expected: &'static str, value: &ValueRef<'_>) -> ValueError {
    ValueError::OutOfRange {
        expected,
        found: value.kind(),
    }
}

// The conversions of `get.rs`, on `ValueRef` (the tests hold both to the same answers).
macro_rules! integer {
    ($($t:ty),*) => {$(
        impl<'a> FromValueRef<'a> for $t {
            #[inline]
            fn from_value_ref(value: &ValueRef<'a>) -> Result<Self, ValueError> {
                let fitted = match *value {
                    ValueRef::I64(n) => <$t>::try_from(n).ok(),
                    ValueRef::U64(n) => <$t>::try_from(n).ok(),
                    _ => return Err(wrong(stringify!($t), value)),
                };
                fitted.ok_or_else(|| out_of_range(stringify!($t), value))
            }
        }
    )*};
}
integer!(i8, i16, i32, i64, u8, u16, u32, u64);

impl<'a> FromValueRef<'a> for f64 {
    #[inline]
    fn from_value_ref(value: &ValueRef<'a>) -> Result<Self, ValueError> {
        match *value {
            ValueRef::F64(x) => Ok(x),
            // Exactly as `FromValue for f64`: integers of magnitude up to 2^53.
            ValueRef::I64(_) | ValueRef::U64(_) => match value.scalar() {
                Some(v) => <f64 as crate::FromValue<'_>>::from_value(&v),
                None => Err(wrong("f64", value)),
            },
            _ => Err(wrong("f64", value)),
        }
    }
}

impl<'a> FromValueRef<'a> for bool {
    #[inline]
    fn from_value_ref(value: &ValueRef<'a>) -> Result<Self, ValueError> {
        match *value {
            ValueRef::Bool(b) => Ok(b),
            _ => Err(wrong("bool", value)),
        }
    }
}

impl<'a> FromValueRef<'a> for &'a str {
    #[inline]
    fn from_value_ref(value: &ValueRef<'a>) -> Result<Self, ValueError> {
        match *value {
            ValueRef::Str(s) => Ok(s),
            _ => Err(wrong("string", value)),
        }
    }
}

impl<'a> FromValueRef<'a> for String {
    fn from_value_ref(value: &ValueRef<'a>) -> Result<Self, ValueError> {
        <&str>::from_value_ref(value).map(str::to_owned)
    }
}

impl<'a> FromValueRef<'a> for &'a [u8] {
    #[inline]
    fn from_value_ref(value: &ValueRef<'a>) -> Result<Self, ValueError> {
        match *value {
            ValueRef::Bytes(b) => Ok(b),
            _ => Err(wrong("bytes", value)),
        }
    }
}

impl<'a, T: FromValueRef<'a>> FromValueRef<'a> for Option<T> {
    fn from_value_ref(value: &ValueRef<'a>) -> Result<Self, ValueError> {
        match value {
            ValueRef::Null => Ok(None),
            _ => T::from_value_ref(value).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoder::{ascii_prefix, Build, Shared};

    fn check(buf: &[u8]) {
        // Every sub-range: the runs answer what `str::from_utf8` answers, for views and
        // for shared slices.
        let shared = bytes::Bytes::copy_from_slice(buf);
        for at in 0..=buf.len() {
            for len in 0..=buf.len() - at {
                let mut views = Views::new(buf);
                let mut slices = Shared::new(&shared);
                // Walk texts left to right as the decoder does: one before, then this.
                if at > 0 {
                    let _ = views.text(0, at / 2);
                    let _ = slices.text(0, at / 2);
                }
                let want = std::str::from_utf8(&buf[at..at + len]);
                assert_eq!(views.text(at, len), want, "{buf:x?} {at} {len}");
                let got = slices.text(at, len);
                assert_eq!(
                    got.as_deref(),
                    want.as_ref().map(|s| *s),
                    "{buf:x?} {at} {len}"
                );
                if let Ok(text) = got {
                    assert!(text.is_empty() || shared.as_ptr_range().contains(&text.as_ptr()));
                }
            }
        }
    }

    #[test]
    fn a_value_read_in_place_takes_the_48_bytes_the_limits_docs_count() {
        assert!(std::mem::size_of::<(&str, ValueRef<'_>)>() <= 48);
    }

    #[test]
    fn ascii_prefixes() {
        for (bytes, n) in [
            (&b""[..], 0),
            (b"abc", 3),
            (b"abcdefgh", 8),
            (b"abcdefghijklmnopq", 17),
            (b"abcdefghij\x80kl", 10),
            (b"abc\xffdefghijkl", 3),
            (b"\xc3\xa9", 0),
        ] {
            assert_eq!(ascii_prefix(bytes), n, "{bytes:x?}");
        }
    }

    #[test]
    fn runs_agree_with_from_utf8_on_every_range() {
        check(b"hello world");
        check("aé€😀b".as_bytes());
        check(b"ab\xc3(\xa9\xe2\x82xy\xff\xf0\x9f\x98\x80z");
        check(b"\x05ab\xc8\xc3\xa9\x80\x80\xc3");
        check(&[0xe2, 0x82, 0xac, 0x82, 0xac, 0x61, 0xed, 0xa0, 0x80, 0x61]);
        check(b"0123456789abcdef\xc3\xa9ghijklmnopqrstuvw\x80xyz0123456789");
        // Runs of 64 bytes and more (validated in SIMD), with a fault in the middle.
        let mut long = b"abcdefghij".repeat(9);
        long.extend_from_slice("é€".as_bytes());
        long.extend_from_slice(&b"klmnopqrst".repeat(7));
        check(&long);
        long[75] = 0xff;
        check(&long);
    }
}
