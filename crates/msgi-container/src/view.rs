//! Reading a container in place: [`ContainerRef`], whose names, strings and byte values
//! are `&str` and `&[u8]` views of the payload.
//!
//! The decoder is the same format and the same checks as [`decode`](crate::decode)
//! (docs/PROTOCOL.md, section 6; the tests hold the two to the same result and the same
//! error on any input), with a cursor over a plain slice: no reference count per string,
//! one vector per level of values, and UTF-8 checked in runs (see [`Utf8Runs`]) rather
//! than string by string.

use std::collections::HashSet;

use crate::container::Container;
use crate::error::{DecodeError, Field, GetError, ValueError};
use crate::value::{Value, ValueKind, Values, LINEAR_NAME_CHECK};
use crate::wire::{tag, unzigzag, Limits, FORMAT_VERSION};

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
        let mut c = Cursor {
            buf: payload,
            pos: 0,
            values_left: limits.max_values(),
            max_values: limits.max_values(),
            max_depth: limits.max_depth(),
            utf8: Utf8Runs::new(payload),
            error: None,
        };
        match c.container() {
            Ok(container) => Ok(container),
            // `Stop` is only made by `Cursor::fail`, which keeps the error.
            Err(Stop) => Err(c
                .error
                .take()
                .unwrap_or(DecodeError::Truncated { at: c.pos })),
        }
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

/// UTF-8 checked in runs: from the first text that needs it, the longest stretch of
/// ASCII bytes is found (eight bytes at a time) and taken as `&str` once
/// (`str::from_utf8` on ASCII is word-at-a-time too); each text that lies in it is a `&str`
/// slice of it. The lengths, tags and small numbers between texts are ASCII, so one run
/// usually covers many texts. A text not inside the run (one with non-ASCII characters,
/// or one that is not UTF-8) is checked by itself with `str::from_utf8`, so the answer is
/// always `str::from_utf8`'s on the text. Runs never overlap, so each byte is looked at a
/// bounded number of times: linear in the payload, whatever it holds.
#[derive(Debug)]
pub(crate) struct Utf8Runs<'a> {
    buf: &'a [u8],
    /// `run` is `buf[start..start + run.len()]`.
    start: usize,
    run: &'a str,
}

impl<'a> Utf8Runs<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Utf8Runs {
            buf,
            start: 0,
            run: "",
        }
    }

    /// `buf[at..at + len]` as text; the caller has checked that it is in `buf`.
    #[inline(always)]
    pub(crate) fn text(&mut self, at: usize, len: usize) -> Result<&'a str, std::str::Utf8Error> {
        if let Some(s) = self.in_run(at, len) {
            return Ok(s);
        }
        if len == 0 {
            return Ok("");
        }
        if at >= self.start + self.run.len() {
            self.new_run(at);
            if let Some(s) = self.in_run(at, len) {
                return Ok(s);
            }
        }
        // Not in one run: the text is not UTF-8 (or straddles an old run); ask directly.
        let bytes = self.buf.get(at..at.saturating_add(len)).unwrap_or_default();
        std::str::from_utf8(bytes)
    }

    #[inline(always)]
    fn in_run(&self, at: usize, len: usize) -> Option<&'a str> {
        let off = at.checked_sub(self.start)?;
        self.run.get(off..off.checked_add(len)?)
    }

    #[cold]
    fn new_run(&mut self, at: usize) {
        let rest = self.buf.get(at..).unwrap_or_default();
        let ascii = rest.get(..ascii_prefix(rest)).unwrap_or_default();
        self.start = at;
        // ASCII is UTF-8: this never fails (an empty run if it did).
        self.run = std::str::from_utf8(ascii).unwrap_or_default();
    }
}

/// How many bytes at the start of `bytes` are ASCII.
#[inline]
fn ascii_prefix(bytes: &[u8]) -> usize {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut chunks = bytes.chunks_exact(8);
    let mut n = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if u64::from_le_bytes(word) & HIGH != 0 {
            break;
        }
        n += 8;
    }
    let tail = bytes.get(n..).unwrap_or_default();
    n + tail
        .iter()
        .position(|b| !b.is_ascii())
        .unwrap_or(tail.len())
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    values_left: usize,
    max_values: usize,
    max_depth: usize,
    utf8: Utf8Runs<'a>,
    /// The first error, when a method returned [`Stop`].
    error: Option<DecodeError>,
}

/// A cursor method failed; the error is in [`Cursor::error`]. Keeps every result small
/// (a `DecodeError` is 40 bytes), so the hot path returns values in registers.
struct Stop;

type Step<T> = Result<T, Stop>;

impl<'a> Cursor<'a> {
    fn container(&mut self) -> Step<ContainerRef<'a>> {
        let version = self.u8()?;
        if version != FORMAT_VERSION {
            return Err(self.fail(DecodeError::UnsupportedVersion { version }));
        }
        let source_id = self.short(Field::SourceId)?;
        let source_sub_id = self.short(Field::SourceSubId)?;
        let target_id = self.short(Field::TargetId)?;
        let target_sub_id = self.short(Field::TargetSubId)?;
        let message_type = self.short(Field::MessageType)?;
        let values = self.values(0)?;
        let count = self.left();
        if count != 0 {
            return Err(self.fail(DecodeError::TrailingBytes {
                at: self.pos,
                count,
            }));
        }
        Ok(ContainerRef {
            source_id,
            source_sub_id,
            target_id,
            target_sub_id,
            message_type,
            values,
        })
    }

    #[cold]
    fn fail(&mut self, e: DecodeError) -> Stop {
        self.error = Some(e);
        Stop
    }

    #[inline]
    fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    #[inline]
    fn u8(&mut self) -> Step<u8> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(self.fail(DecodeError::Truncated { at: self.pos })),
        }
    }

    #[inline]
    fn varint(&mut self) -> Step<u64> {
        // One byte: the common case.
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        self.long_varint()
    }

    fn long_varint(&mut self) -> Step<u64> {
        let at = self.pos;
        let rest = self.buf.get(at..).unwrap_or_default();
        let mut n = 0u64;
        for i in 0..10 {
            let Some(&byte) = rest.get(i) else {
                return Err(self.fail(DecodeError::Truncated { at: at + i }));
            };
            // The tenth byte holds the 64th bit only.
            if i == 9 && byte > 1 {
                return Err(self.fail(DecodeError::BadVarint { at }));
            }
            n |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(self.fail(DecodeError::BadVarint { at }));
                }
                self.pos += i + 1;
                return Ok(n);
            }
        }
        Err(self.fail(DecodeError::BadVarint { at }))
    }

    /// `len` bytes from here.
    #[inline]
    fn take(&mut self, len: usize) -> Step<&'a [u8]> {
        let end = self.pos.checked_add(len);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(b) => {
                self.pos += len;
                Ok(b)
            }
            None => Err(self.fail(DecodeError::Truncated { at: self.pos })),
        }
    }

    fn length(&mut self) -> Step<usize> {
        let at = self.pos;
        let len = self.varint()?;
        let left = self.left();
        match usize::try_from(len) {
            Ok(n) if n <= left => Ok(n),
            _ => Err(self.fail(DecodeError::LengthTooLarge { len, at, left })),
        }
    }

    fn count(&mut self, min_size: usize) -> Step<usize> {
        let at = self.pos;
        let count = self.varint()?;
        let left = self.left();
        let n = match usize::try_from(count) {
            Ok(n) if n <= left / min_size => n,
            _ => return Err(self.fail(DecodeError::CountTooLarge { count, at, left })),
        };
        match self.values_left.checked_sub(n) {
            Some(rest) => self.values_left = rest,
            None => {
                return Err(self.fail(DecodeError::TooManyValues {
                    max: self.max_values,
                    at,
                }))
            }
        }
        Ok(n)
    }

    #[inline(always)]
    fn text(&mut self, len: usize, field: Field) -> Step<&'a str> {
        let at = self.pos;
        if len > self.left() {
            return Err(self.fail(DecodeError::Truncated { at }));
        }
        self.pos += len;
        match self.utf8.text(at, len) {
            Ok(s) => Ok(s),
            Err(source) => Err(self.fail(DecodeError::InvalidUtf8 { field, at, source })),
        }
    }

    #[inline(always)]
    fn short(&mut self, field: Field) -> Step<&'a str> {
        let len = self.u8()?;
        self.text(usize::from(len), field)
    }

    #[inline(never)]
    fn values(&mut self, depth: usize) -> Step<ValuesRef<'a>> {
        // A named value takes at least two bytes: an empty name and a one-byte value.
        let count = self.count(2)?;
        let mut entries: Vec<(&'a str, ValueRef<'a>)> = Vec::with_capacity(count);
        let mut seen: Option<HashSet<&'a str>> = None;
        for _ in 0..count {
            let at = self.pos;
            let name = self.short(Field::Name)?;
            let repeated = if entries.len() < LINEAR_NAME_CHECK {
                entries.iter().any(|(n, _)| *n == name)
            } else {
                let seen = seen.get_or_insert_with(|| {
                    let mut set = HashSet::with_capacity(count);
                    set.extend(entries.iter().map(|(n, _)| *n));
                    set
                });
                !seen.insert(name)
            };
            if repeated {
                return Err(self.fail(DecodeError::DuplicateName {
                    name: name.to_owned(),
                    at,
                }));
            }
            // Pushed first and filled in place: the value is written once, straight into
            // the vector (building it apart and moving it in costs a store-forwarding
            // stall per value on x86).
            entries.push((name, ValueRef::Null));
            if let Some((_, slot)) = entries.last_mut() {
                self.value(depth, slot)?;
            }
        }
        Ok(ValuesRef { entries })
    }

    fn nested(&mut self, depth: usize, at: usize) -> Step<usize> {
        if depth >= self.max_depth {
            return Err(self.fail(DecodeError::TooDeep {
                max: self.max_depth,
                at,
            }));
        }
        Ok(depth + 1)
    }

    /// One value, written into `slot`; inlined into the loops that call it (a nested array or map goes
    /// through [`array`](Self::array) or [`values`](Self::values), out of line), so that
    /// the value is written in place rather than returned through memory.
    #[inline(always)]
    fn value(&mut self, depth: usize, slot: &mut ValueRef<'a>) -> Step<()> {
        let at = self.pos;
        let value = match self.u8()? {
            tag::NULL => ValueRef::Null,
            tag::FALSE => ValueRef::Bool(false),
            tag::TRUE => ValueRef::Bool(true),
            tag::I64 => ValueRef::I64(unzigzag(self.varint()?)),
            tag::U64 => ValueRef::U64(self.varint()?),
            tag::F64 => {
                let mut bits = [0u8; 8];
                bits.copy_from_slice(self.take(8)?);
                ValueRef::F64(f64::from_bits(u64::from_be_bytes(bits)))
            }
            tag::STR => {
                let len = self.length()?;
                ValueRef::Str(self.text(len, Field::Str)?)
            }
            tag::BYTES => {
                let len = self.length()?;
                ValueRef::Bytes(self.take(len)?)
            }
            tag::ARRAY => self.array(depth, at)?,
            tag::MAP => {
                let inner = self.nested(depth, at)?;
                ValueRef::Map(self.values(inner)?)
            }
            tag => return Err(self.fail(DecodeError::UnknownTag { tag, at })),
        };
        // The slot holds the `Null` just pushed, which owns nothing: forgetting it
        // spares an out-of-line drop call per value.
        std::mem::forget(std::mem::replace(slot, value));
        Ok(())
    }

    #[inline(never)]
    fn array(&mut self, depth: usize, at: usize) -> Step<ValueRef<'a>> {
        let inner = self.nested(depth, at)?;
        let count = self.count(1)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(ValueRef::Null);
            if let Some(slot) = items.last_mut() {
                self.value(inner, slot)?;
            }
        }
        Ok(ValueRef::Array(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(buf: &[u8]) {
        // Every sub-range: the runs answer what `str::from_utf8` answers.
        for at in 0..=buf.len() {
            for len in 0..=buf.len() - at {
                let mut runs = Utf8Runs::new(buf);
                // Walk texts left to right as the decoder does: one before, then this.
                if at > 0 {
                    let _ = runs.text(0, at / 2);
                }
                let want = std::str::from_utf8(&buf[at..at + len]);
                assert_eq!(runs.text(at, len), want, "{buf:x?} {at} {len}");
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
    }
}
