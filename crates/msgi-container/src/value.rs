//! Values: the typed data of a container, and the ordered list of named values.

use std::collections::HashSet;
use std::fmt;

use bytes::Bytes;
use bytestring::ByteString;

use crate::error::{BuildError, Field, GetError};
use crate::get::FromValue;

/// The longest name and header field, in bytes of UTF-8 (the format gives them a one-byte
/// length).
pub const MAX_SHORT_LEN: usize = 255;

/// One typed value.
///
/// Strings and byte strings are [`ByteString`] and [`Bytes`]: a decoded container's are
/// slices of the payload it was decoded from, not copies.
///
/// Equality is structural; as for `f64`, an `F64(NaN)` is not equal to itself.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// No value (JSON `null`, serde's `None` and `()`).
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A signed integer.
    I64(i64),
    /// An unsigned integer.
    U64(u64),
    /// A 64-bit IEEE 754 float; every bit pattern (NaNs included) is kept as it is.
    F64(f64),
    /// A UTF-8 string.
    Str(ByteString),
    /// Bytes.
    Bytes(Bytes),
    /// An ordered list of values.
    Array(Vec<Value>),
    /// A nested container: named values without a header.
    Map(Values),
}

/// What kind a [`Value`] is, for error messages and dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// [`Value::Null`]
    Null,
    /// [`Value::Bool`]
    Bool,
    /// [`Value::I64`]
    I64,
    /// [`Value::U64`]
    U64,
    /// [`Value::F64`]
    F64,
    /// [`Value::Str`]
    Str,
    /// [`Value::Bytes`]
    Bytes,
    /// [`Value::Array`]
    Array,
    /// [`Value::Map`]
    Map,
}

impl ValueKind {
    /// The kind's name as error messages and the docs write it.
    pub fn name(self) -> &'static str {
        match self {
            ValueKind::Null => "null",
            ValueKind::Bool => "bool",
            ValueKind::I64 => "i64",
            ValueKind::U64 => "u64",
            ValueKind::F64 => "f64",
            ValueKind::Str => "string",
            ValueKind::Bytes => "bytes",
            ValueKind::Array => "array",
            ValueKind::Map => "map",
        }
    }
}

impl fmt::Display for ValueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Value {
    /// The kind of this value.
    pub fn kind(&self) -> ValueKind {
        match self {
            Value::Null => ValueKind::Null,
            Value::Bool(_) => ValueKind::Bool,
            Value::I64(_) => ValueKind::I64,
            Value::U64(_) => ValueKind::U64,
            Value::F64(_) => ValueKind::F64,
            Value::Str(_) => ValueKind::Str,
            Value::Bytes(_) => ValueKind::Bytes,
            Value::Array(_) => ValueKind::Array,
            Value::Map(_) => ValueKind::Map,
        }
    }

    /// A deep copy whose strings, byte strings and names own their memory: a decoded
    /// value's are slices of the payload, and keep that whole buffer (the read chunk it
    /// came in) alive for as long as they live. Detach a value before keeping it longer
    /// than the message. Recurses once per level of nesting (a decoded value is within
    /// [`Limits::max_depth`](crate::Limits::max_depth)).
    pub fn detached(&self) -> Value {
        match self {
            Value::Str(s) => Value::Str(ByteString::from(&**s)),
            Value::Bytes(b) => Value::Bytes(Bytes::copy_from_slice(b)),
            Value::Array(items) => Value::Array(items.iter().map(Value::detached).collect()),
            Value::Map(m) => Value::Map(Values {
                entries: m
                    .entries
                    .iter()
                    .map(|(n, v)| (ByteString::from(&**n), v.detached()))
                    .collect(),
            }),
            other => other.clone(),
        }
    }

    /// This value as `T` (see [`FromValue`] for the conversions allowed).
    pub fn to<'a, T: FromValue<'a>>(&'a self) -> Result<T, crate::ValueError> {
        T::from_value(self)
    }
}

macro_rules! from_signed {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::I64(i64::from(v))
            }
        }
    )*};
}
macro_rules! from_unsigned {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::U64(u64::from(v))
            }
        }
    )*};
}
from_signed!(i8, i16, i32, i64);
from_unsigned!(u8, u16, u32, u64);

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Value::F64(f64::from(v))
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::F64(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(ByteString::from(v))
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(ByteString::from(v))
    }
}
impl From<ByteString> for Value {
    fn from(v: ByteString) -> Self {
        Value::Str(v)
    }
}
impl From<Bytes> for Value {
    fn from(v: Bytes) -> Self {
        Value::Bytes(v)
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Bytes(Bytes::copy_from_slice(v))
    }
}
impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::Array(v)
    }
}
impl From<Values> for Value {
    fn from(v: Values) -> Self {
        Value::Map(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Named values in insertion order: the body of a container, and of a nested
/// [`Value::Map`].
///
/// Names are unique within one `Values` (a nested map has its own names): inserting a
/// name that is there replaces its value in place, the builder refuses a repeated name,
/// and the decoder refuses a payload that repeats one ([`DecodeError::DuplicateName`]).
/// Repeated data is an [`Value::Array`]. Unique names are what a struct field, a JSON
/// object and [`Container::get`] expect; a format that allowed repeats would leave every
/// reader to choose which one counts.
///
/// Lookups ([`value`](Self::value), [`get`](Self::get), [`insert`](Self::insert)) compare
/// names one by one: fast for the tens of values a message carries, O(len) each. Building
/// a whole map (the decoder, [`Container::builder`](crate::Container::builder), serde) checks repeats with a hash set
/// once there are more than 16 names, so it stays linear in the number of names whatever
/// a peer sends; calling `insert` in a loop to build a large map is quadratic.
///
/// [`DecodeError::DuplicateName`]: crate::DecodeError::DuplicateName
/// [`Container::get`]: crate::Container::get
/// [`Container::builder`]: crate::Container::builder
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Values {
    entries: Vec<(ByteString, Value)>,
}

impl Values {
    /// No values.
    pub fn new() -> Self {
        Self::default()
    }

    /// No values, with room for `capacity`.
    pub fn with_capacity(capacity: usize) -> Self {
        Values {
            entries: Vec::with_capacity(capacity),
        }
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The values in insertion order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            inner: self.entries.iter(),
        }
    }

    /// The value named `name`.
    pub fn value(&self, name: &str) -> Option<&Value> {
        self.position(name)
            .and_then(|i| self.entries.get(i))
            .map(|(_, v)| v)
    }

    /// Whether a value is named `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    /// The value named `name` as `T`: [`GetError::Missing`] when there is none,
    /// [`GetError::WrongType`] or [`GetError::OutOfRange`] when it is not a `T`.
    pub fn get<'a, T: FromValue<'a>>(&'a self, name: &str) -> Result<T, GetError> {
        match self.value(name) {
            Some(v) => T::from_value(v).map_err(|e| e.named(name)),
            None => Err(GetError::Missing {
                name: name.to_owned(),
            }),
        }
    }

    /// Like [`get`](Self::get), for a value that may be absent: `Ok(None)` when no
    /// value is named `name` (a value that is there but not a `T` is still an error).
    pub fn find<'a, T: FromValue<'a>>(&'a self, name: &str) -> Result<Option<T>, GetError> {
        match self.value(name) {
            Some(v) => T::from_value(v).map(Some).map_err(|e| e.named(name)),
            None => Ok(None),
        }
    }

    /// Sets the value named `name`: a new name goes last, a name already there keeps its
    /// place and the old value is returned. Fails, changing nothing, when the name is
    /// longer than [`MAX_SHORT_LEN`] bytes.
    pub fn insert(
        &mut self,
        name: impl Into<ByteString>,
        value: impl Into<Value>,
    ) -> Result<Option<Value>, BuildError> {
        let name = name.into();
        check_short(Field::Name, &name)?;
        let value = value.into();
        match self.position(&name) {
            Some(i) => Ok(self
                .entries
                .get_mut(i)
                .map(|(_, old)| std::mem::replace(old, value))),
            None => {
                self.entries.push((name, value));
                Ok(None)
            }
        }
    }

    /// Removes the value named `name`, keeping the order of the others.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let i = self.position(name)?;
        Some(self.entries.remove(i).1)
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|(n, _)| **n == *name)
    }

    /// Appends without checking the name; the caller has checked its length and that it
    /// is not there yet.
    pub(crate) fn push_checked(&mut self, name: ByteString, value: Value) {
        self.entries.push((name, value));
    }

    pub(crate) fn entries(&self) -> &[(ByteString, Value)] {
        &self.entries
    }
}

/// Maps with more names than this are checked for repeats with a hash set rather than
/// name by name.
pub(crate) const LINEAR_NAME_CHECK: usize = 16;

/// Finds a repeated name while a map is built one name at a time, in time linear in the
/// number of names: name by name while the map is small, with a hash set (filled with
/// the names already there when it is first needed) beyond [`LINEAR_NAME_CHECK`].
#[derive(Clone, Debug, Default)]
pub(crate) struct NameSet {
    seen: HashSet<ByteString>,
}

impl NameSet {
    /// Whether `name` is already in `values` (which must hold the names this set was
    /// shown and nothing else is added behind its back). Remembers `name` as seen.
    pub(crate) fn repeated(&mut self, values: &Values, name: &ByteString) -> bool {
        if values.len() < LINEAR_NAME_CHECK {
            return values.contains(name);
        }
        if self.seen.is_empty() {
            self.seen.reserve(values.len() * 2);
            self.seen
                .extend(values.entries.iter().map(|(n, _)| n.clone()));
        }
        !self.seen.insert(name.clone())
    }
}

/// Checks a name or header field against [`MAX_SHORT_LEN`].
pub(crate) fn check_short(field: Field, text: &str) -> Result<(), BuildError> {
    if text.len() > MAX_SHORT_LEN {
        return Err(BuildError::TooLong {
            field,
            len: text.len(),
        });
    }
    Ok(())
}

/// The values of a [`Values`] in insertion order, as `(name, value)`.
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    inner: std::slice::Iter<'a, (ByteString, Value)>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a Value);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|(n, v)| (&**n, v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Values {
    type Item = (&'a str, &'a Value);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_keeps_order_and_replaces_in_place() {
        let mut v = Values::new();
        assert_eq!(v.insert("a", 1i64).unwrap(), None);
        assert_eq!(v.insert("b", "x").unwrap(), None);
        assert_eq!(v.insert("a", 2i64).unwrap(), Some(Value::I64(1)));
        let names: Vec<&str> = v.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(v.get::<i64>("a").unwrap(), 2);
        assert_eq!(v.remove("a"), Some(Value::I64(2)));
        assert_eq!(v.len(), 1);
        assert!(!v.contains("a"));
    }

    #[test]
    fn a_detached_value_shares_nothing_with_the_payload() {
        let mut inner = Values::new();
        inner.insert("name", "text").unwrap();
        inner
            .insert("list", vec![Value::Bytes(Bytes::from_static(b"raw"))])
            .unwrap();
        let c = crate::Container::builder("t")
            .value("m", inner)
            .build()
            .unwrap();
        let payload = c.encode();
        let range = payload.as_ptr_range();
        let decoded = crate::decode(&payload).unwrap();
        let original = decoded.value("m").unwrap();
        let detached = original.detached();
        assert_eq!(&detached, original);
        let Value::Map(m) = &detached else {
            panic!("{detached:?}")
        };
        let (name, value) = m.iter().next().unwrap();
        let Value::Str(text) = value else {
            panic!("{value:?}")
        };
        let Some(Value::Array(list)) = m.value("list") else {
            panic!("{m:?}")
        };
        let Some(Value::Bytes(raw)) = list.first() else {
            panic!("{list:?}")
        };
        for ptr in [name.as_ptr(), text.as_ptr(), raw.as_ptr()] {
            assert!(!range.contains(&ptr));
        }
        // The original's are slices of the payload.
        let Value::Map(m) = original else {
            panic!("{original:?}")
        };
        assert!(range.contains(&m.iter().next().unwrap().0.as_ptr()));
    }

    #[test]
    fn a_long_name_is_refused_and_changes_nothing() {
        let mut v = Values::new();
        let long = "n".repeat(MAX_SHORT_LEN + 1);
        let err = v.insert(long, 1i64).unwrap_err();
        assert_eq!(
            err,
            BuildError::TooLong {
                field: Field::Name,
                len: 256
            }
        );
        assert!(v.is_empty());
        assert!(v.insert("n".repeat(MAX_SHORT_LEN), 1i64).is_ok());
    }
}
