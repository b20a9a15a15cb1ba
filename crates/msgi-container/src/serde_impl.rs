//! serde for containers: a user's `#[derive(Serialize, Deserialize)]` type to and from
//! values, and `Serialize` / `Deserialize` for [`Value`], [`Values`] and [`Container`]
//! (which is what the JSON conversion uses).
//!
//! The data model maps as serde_json's does: structs and maps are [`Value::Map`] in field
//! order (map keys must be strings), sequences and tuples are [`Value::Array`], `None`
//! and `()` are [`Value::Null`], a unit variant is its name as a string and any other
//! variant a one-entry map `{variant: content}`, `&[u8]` given to `serialize_bytes`
//! (`serde_bytes`, [`Bytes`]) is [`Value::Bytes`].

use std::fmt;

use bytes::Bytes;
use bytestring::ByteString;
use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, Visitor};
use serde::ser::{self, Serialize, SerializeMap, SerializeStruct};
use serde::{Deserialize, Deserializer, Serializer};

use crate::container::Container;
use crate::error::{BuildError, Field};
use crate::value::{check_short, NameSet, Value, Values};

/// A type that does not convert to or from container values as asked: a map key that is
/// not a string, a repeated or too long name, a value of the wrong type for a field, or
/// the type's own error.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", self.display_text())]
pub struct SerdeError {
    message: String,
    /// The JSON reader's error, when the error came from it (kept as the source, so its
    /// text is not also this error's).
    #[cfg(feature = "json")]
    #[source]
    json: Option<std::sync::Arc<serde_json::Error>>,
}

impl PartialEq for SerdeError {
    /// Errors with the same message are equal (the JSON error is compared by its text).
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for SerdeError {}

impl SerdeError {
    fn new(message: impl fmt::Display) -> Self {
        SerdeError {
            message: message.to_string(),
            #[cfg(feature = "json")]
            json: None,
        }
    }

    #[cfg(feature = "json")]
    pub(crate) fn json(e: serde_json::Error) -> Self {
        SerdeError {
            message: e.to_string(),
            json: Some(std::sync::Arc::new(e)),
        }
    }

    /// This error's own text: for the JSON reader's errors a summary (their text is the
    /// source's), else the message.
    fn display_text(&self) -> &str {
        #[cfg(feature = "json")]
        if self.json.is_some() {
            return "JSON is not a container";
        }
        &self.message
    }

    /// What went wrong; for JSON read by `Container::from_json_str` and friends (feature
    /// `json`), the JSON reader's text (also this error's
    /// [`source`](std::error::Error::source)).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl ser::Error for SerdeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        SerdeError::new(msg)
    }
}

impl de::Error for SerdeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        SerdeError::new(msg)
    }
}

impl From<BuildError> for SerdeError {
    fn from(e: BuildError) -> Self {
        SerdeError::new(e)
    }
}

/// Converts `value` into a [`Value`].
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, SerdeError> {
    value.serialize(ValueSerializer)
}

/// Converts `value` (a struct or a map with string keys) into named values, in field
/// order.
///
/// ```
/// # #[derive(serde::Serialize)]
/// struct Login { user: String, timestamp: i64 }
///
/// let values = msgi_container::to_values(&Login { user: "alice".into(), timestamp: 7 })?;
/// assert_eq!(values.get::<&str>("user")?, "alice");
/// assert_eq!(values.get::<i64>("timestamp")?, 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn to_values<T: Serialize + ?Sized>(value: &T) -> Result<Values, SerdeError> {
    match to_value(value)? {
        Value::Map(values) => Ok(values),
        other => Err(SerdeError::new(format_args!(
            "expected a struct or a map, found {}",
            other.kind()
        ))),
    }
}

/// Reads a `T` from a [`Value`]; `T` may borrow strings and bytes from it.
pub fn from_value<'de, T: Deserialize<'de>>(value: &'de Value) -> Result<T, SerdeError> {
    T::deserialize(value)
}

/// Reads a `T` (a struct or a map) from named values; `T` may borrow strings and bytes
/// from them.
///
/// ```
/// # #[derive(serde::Deserialize, Debug, PartialEq)]
/// struct Login<'a> { user: &'a str, timestamp: i64 }
///
/// let c = msgi_container::Container::builder("user_login")
///     .value("user", "alice")
///     .value("timestamp", 7i64)
///     .build()?;
/// let login: Login<'_> = msgi_container::from_values(c.values())?;
/// assert_eq!(login, Login { user: "alice", timestamp: 7 });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn from_values<'de, T: Deserialize<'de>>(values: &'de Values) -> Result<T, SerdeError> {
    T::deserialize(values)
}

impl Container {
    /// A container of this message type whose values are `value`'s fields (see
    /// [`to_values`]); set the ids with [`set_source`](Container::set_source) and
    /// [`set_target`](Container::set_target).
    pub fn from_serialize<T: Serialize + ?Sized>(
        message_type: impl Into<ByteString>,
        value: &T,
    ) -> Result<Container, SerdeError> {
        let mut c = Container::new(message_type)?;
        c.values = to_values(value)?;
        Ok(c)
    }

    /// Reads the values as a `T` (see [`from_values`]); `T` may borrow strings and bytes
    /// from the container. (Not named `deserialize`: that is serde's
    /// `Deserialize::deserialize`, which reads a whole container, header included.)
    pub fn values_as<'de, T: Deserialize<'de>>(&'de self) -> Result<T, SerdeError> {
        from_values(&self.values)
    }
}

// ---------------------------------------------------------------------------------------
// Serialize for our own types.

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::I64(n) => s.serialize_i64(*n),
            Value::U64(n) => s.serialize_u64(*n),
            Value::F64(x) => s.serialize_f64(*x),
            Value::Str(t) => s.serialize_str(t),
            Value::Bytes(b) => s.serialize_bytes(b),
            Value::Array(items) => s.collect_seq(items),
            Value::Map(m) => m.serialize(s),
        }
    }
}

impl Serialize for Values {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (name, value) in self.iter() {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// A container as serde sees it (and JSON shows it): a struct with the five header
/// fields and `values`.
impl Serialize for Container {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Container", 6)?;
        st.serialize_field("message_type", &*self.message_type)?;
        st.serialize_field("source_id", &*self.source_id)?;
        st.serialize_field("source_sub_id", &*self.source_sub_id)?;
        st.serialize_field("target_id", &*self.target_id)?;
        st.serialize_field("target_sub_id", &*self.target_sub_id)?;
        st.serialize_field("values", &self.values)?;
        st.end()
    }
}

// ---------------------------------------------------------------------------------------
// Deserialize for our own types.

/// Sequences are reserved for at most this many elements up front, whatever their size
/// hint says (a hint is the input's claim).
const MAX_PREALLOC: usize = 1024;

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::I64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::U64(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        if let Ok(n) = u64::try_from(v) {
            Ok(Value::U64(n))
        } else if let Ok(n) = i64::try_from(v) {
            Ok(Value::I64(n))
        } else {
            Err(E::custom(format_args!("integer {v} is out of range")))
        }
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        u64::try_from(v)
            .map(Value::U64)
            .map_err(|_| E::custom(format_args!("integer {v} is out of range")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::F64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(ByteString::from(v)))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(ByteString::from(v)))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(Bytes::copy_from_slice(v)))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(Bytes::from(v)))
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOC));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        ValuesVisitor.visit_map(map).map(Value::Map)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValuesVisitor;

impl<'de> Visitor<'de> for ValuesVisitor {
    type Value = Values;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of named values")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Values, A::Error> {
        let mut values = Values::with_capacity(map.size_hint().unwrap_or(0).min(MAX_PREALLOC));
        let mut names = NameSet::default();
        while let Some(name) = map.next_key::<String>()? {
            check_short(Field::Name, &name).map_err(de::Error::custom)?;
            let name = ByteString::from(name);
            if names.repeated(&values, &name) {
                return Err(de::Error::custom(BuildError::DuplicateName {
                    name: name.to_string(),
                }));
            }
            let value: Value = map.next_value()?;
            values.push_checked(name, value);
        }
        Ok(values)
    }
}

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ValuesVisitor)
    }
}

/// The serde shape of a container: `message_type` is required, ids default to empty,
/// `values` to none, other fields are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerRepr {
    message_type: String,
    #[serde(default)]
    source_id: String,
    #[serde(default)]
    source_sub_id: String,
    #[serde(default)]
    target_id: String,
    #[serde(default)]
    target_sub_id: String,
    #[serde(default)]
    values: Values,
}

impl<'de> Deserialize<'de> for Container {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = ContainerRepr::deserialize(d)?;
        let mut c = Container::new(r.message_type).map_err(de::Error::custom)?;
        c.set_source(r.source_id, r.source_sub_id)
            .map_err(de::Error::custom)?;
        c.set_target(r.target_id, r.target_sub_id)
            .map_err(de::Error::custom)?;
        c.values = r.values;
        Ok(c)
    }
}

// ---------------------------------------------------------------------------------------
// A serializer whose output is a `Value`.

struct ValueSerializer;

fn int_out_of_range(v: impl fmt::Display) -> SerdeError {
    SerdeError::new(format_args!("integer {v} does not fit in i64 or u64"))
}

impl Serializer for ValueSerializer {
    type Ok = Value;
    type Error = SerdeError;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = VariantBuilder<SeqBuilder>;
    type SerializeMap = MapBuilder;
    type SerializeStruct = MapBuilder;
    type SerializeStructVariant = VariantBuilder<MapBuilder>;

    fn serialize_bool(self, v: bool) -> Result<Value, SerdeError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, SerdeError> {
        Ok(Value::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, SerdeError> {
        Ok(Value::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, SerdeError> {
        Ok(Value::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, SerdeError> {
        Ok(Value::I64(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, SerdeError> {
        ValueVisitor.visit_i128(v)
    }
    fn serialize_u8(self, v: u8) -> Result<Value, SerdeError> {
        Ok(Value::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, SerdeError> {
        Ok(Value::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, SerdeError> {
        Ok(Value::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, SerdeError> {
        Ok(Value::U64(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Value, SerdeError> {
        u64::try_from(v)
            .map(Value::U64)
            .map_err(|_| int_out_of_range(v))
    }
    fn serialize_f32(self, v: f32) -> Result<Value, SerdeError> {
        Ok(Value::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, SerdeError> {
        Ok(Value::F64(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, SerdeError> {
        let mut buf = [0u8; 4];
        Ok(Value::from(&*v.encode_utf8(&mut buf)))
    }
    fn serialize_str(self, v: &str) -> Result<Value, SerdeError> {
        Ok(Value::from(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, SerdeError> {
        Ok(Value::from(v))
    }
    fn serialize_none(self) -> Result<Value, SerdeError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, SerdeError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, SerdeError> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, SerdeError> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, SerdeError> {
        Ok(Value::Str(ByteString::from_static(variant)))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Value, SerdeError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, SerdeError> {
        let mut m = Values::with_capacity(1);
        m.insert(ByteString::from_static(variant), to_value(value)?)?;
        Ok(Value::Map(m))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, SerdeError> {
        Ok(SeqBuilder {
            items: Vec::with_capacity(len.unwrap_or(0).min(MAX_PREALLOC)),
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqBuilder, SerdeError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, SerdeError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantBuilder<SeqBuilder>, SerdeError> {
        Ok(VariantBuilder {
            variant,
            inner: self.serialize_seq(Some(len))?,
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapBuilder, SerdeError> {
        Ok(MapBuilder {
            values: Values::with_capacity(len.unwrap_or(0).min(MAX_PREALLOC)),
            key: None,
            names: NameSet::default(),
        })
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<MapBuilder, SerdeError> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantBuilder<MapBuilder>, SerdeError> {
        Ok(VariantBuilder {
            variant,
            inner: self.serialize_map(Some(len))?,
        })
    }
}

struct SeqBuilder {
    items: Vec<Value>,
}

impl ser::SerializeSeq for SeqBuilder {
    type Ok = Value;
    type Error = SerdeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SerdeError> {
        self.items.push(to_value(value)?);
        Ok(())
    }
    fn end(self) -> Result<Value, SerdeError> {
        Ok(Value::Array(self.items))
    }
}

impl ser::SerializeTuple for SeqBuilder {
    type Ok = Value;
    type Error = SerdeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SerdeError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, SerdeError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqBuilder {
    type Ok = Value;
    type Error = SerdeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SerdeError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, SerdeError> {
        ser::SerializeSeq::end(self)
    }
}

struct MapBuilder {
    values: Values,
    key: Option<ByteString>,
    names: NameSet,
}

impl MapBuilder {
    fn add(&mut self, name: ByteString, value: Value) -> Result<(), SerdeError> {
        check_short(Field::Name, &name)?;
        if self.names.repeated(&self.values, &name) {
            return Err(BuildError::DuplicateName {
                name: name.to_string(),
            }
            .into());
        }
        self.values.push_checked(name, value);
        Ok(())
    }
}

impl ser::SerializeMap for MapBuilder {
    type Ok = Value;
    type Error = SerdeError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), SerdeError> {
        self.key = Some(key.serialize(KeySerializer)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SerdeError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| SerdeError::new("a map value was given before its key"))?;
        let value = to_value(value)?;
        self.add(key, value)
    }
    fn end(self) -> Result<Value, SerdeError> {
        Ok(Value::Map(self.values))
    }
}

impl ser::SerializeStruct for MapBuilder {
    type Ok = Value;
    type Error = SerdeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), SerdeError> {
        let value = to_value(value)?;
        self.add(ByteString::from_static(key), value)
    }
    fn end(self) -> Result<Value, SerdeError> {
        Ok(Value::Map(self.values))
    }
}

/// A tuple or struct variant: `{variant: [...]}` or `{variant: {...}}`.
struct VariantBuilder<B> {
    variant: &'static str,
    inner: B,
}

impl<B> VariantBuilder<B> {
    fn wrap(variant: &'static str, content: Value) -> Result<Value, SerdeError> {
        let mut m = Values::with_capacity(1);
        m.insert(ByteString::from_static(variant), content)?;
        Ok(Value::Map(m))
    }
}

impl ser::SerializeTupleVariant for VariantBuilder<SeqBuilder> {
    type Ok = Value;
    type Error = SerdeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SerdeError> {
        ser::SerializeSeq::serialize_element(&mut self.inner, value)
    }
    fn end(self) -> Result<Value, SerdeError> {
        let content = ser::SerializeSeq::end(self.inner)?;
        Self::wrap(self.variant, content)
    }
}

impl ser::SerializeStructVariant for VariantBuilder<MapBuilder> {
    type Ok = Value;
    type Error = SerdeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), SerdeError> {
        SerializeStruct::serialize_field(&mut self.inner, key, value)
    }
    fn end(self) -> Result<Value, SerdeError> {
        let content = SerializeStruct::end(self.inner)?;
        Self::wrap(self.variant, content)
    }
}

/// Map keys: strings and chars only.
struct KeySerializer;

fn key_error() -> SerdeError {
    SerdeError::new("map keys must be strings")
}

impl Serializer for KeySerializer {
    type Ok = ByteString;
    type Error = SerdeError;
    type SerializeSeq = ser::Impossible<ByteString, SerdeError>;
    type SerializeTuple = ser::Impossible<ByteString, SerdeError>;
    type SerializeTupleStruct = ser::Impossible<ByteString, SerdeError>;
    type SerializeTupleVariant = ser::Impossible<ByteString, SerdeError>;
    type SerializeMap = ser::Impossible<ByteString, SerdeError>;
    type SerializeStruct = ser::Impossible<ByteString, SerdeError>;
    type SerializeStructVariant = ser::Impossible<ByteString, SerdeError>;

    fn serialize_str(self, v: &str) -> Result<ByteString, SerdeError> {
        Ok(ByteString::from(v))
    }
    fn serialize_char(self, v: char) -> Result<ByteString, SerdeError> {
        let mut buf = [0u8; 4];
        Ok(ByteString::from(&*v.encode_utf8(&mut buf)))
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<ByteString, SerdeError> {
        Ok(ByteString::from_static(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<ByteString, SerdeError> {
        value.serialize(self)
    }
    fn serialize_bool(self, _: bool) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_i8(self, _: i8) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_i16(self, _: i16) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_i32(self, _: i32) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_i64(self, _: i64) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_u8(self, _: u8) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_u16(self, _: u16) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_u32(self, _: u32) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_u64(self, _: u64) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_f32(self, _: f32) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_f64(self, _: f64) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_none(self) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_unit(self) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<ByteString, SerdeError> {
        Err(key_error())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, SerdeError> {
        Err(key_error())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, SerdeError> {
        Err(key_error())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, SerdeError> {
        Err(key_error())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, SerdeError> {
        Err(key_error())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, SerdeError> {
        Err(key_error())
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, SerdeError> {
        Err(key_error())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, SerdeError> {
        Err(key_error())
    }
}

// ---------------------------------------------------------------------------------------
// Deserializers that read from a `Value` or `Values`, borrowing their strings and bytes.

impl<'de> Deserializer<'de> for &'de Value {
    type Error = SerdeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        match self {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::I64(n) => visitor.visit_i64(*n),
            Value::U64(n) => visitor.visit_u64(*n),
            Value::F64(x) => visitor.visit_f64(*x),
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::Bytes(b) => visitor.visit_borrowed_bytes(b),
            Value::Array(items) => visit_array(items, visitor),
            Value::Map(m) => m.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        match self {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, SerdeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SerdeError> {
        match self {
            Value::Str(s) => visitor.visit_enum(BorrowedStrDeserializer::<SerdeError>::new(s)),
            Value::Map(m) if m.len() == 1 => match m.entries().first() {
                Some((variant, content)) => visitor.visit_enum(EnumRef { variant, content }),
                None => Err(SerdeError::new("an enum map must have one entry")),
            },
            other => Err(SerdeError::new(format_args!(
                "expected an enum (a string or a map of one entry), found {}",
                other.kind()
            ))),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

impl<'de> Deserializer<'de> for &'de Values {
    type Error = SerdeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SerdeError> {
        let mut access = MapRef {
            entries: self.entries().iter(),
            value: None,
        };
        let out = visitor.visit_map(&mut access)?;
        match access.entries.len() {
            0 => Ok(out),
            n => Err(SerdeError::new(format_args!("{n} map entries left unread"))),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

fn visit_array<'de, V: Visitor<'de>>(
    items: &'de [Value],
    visitor: V,
) -> Result<V::Value, SerdeError> {
    let mut access = SeqRef {
        items: items.iter(),
    };
    let out = visitor.visit_seq(&mut access)?;
    match access.items.len() {
        0 => Ok(out),
        _ => Err(de::Error::invalid_length(items.len(), &"fewer elements")),
    }
}

struct SeqRef<'de> {
    items: std::slice::Iter<'de, Value>,
}

impl<'de> de::SeqAccess<'de> for SeqRef<'de> {
    type Error = SerdeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, SerdeError> {
        self.items.next().map(|v| seed.deserialize(v)).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapRef<'de> {
    entries: std::slice::Iter<'de, (ByteString, Value)>,
    value: Option<&'de Value>,
}

impl<'de> de::MapAccess<'de> for MapRef<'de> {
    type Error = SerdeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, SerdeError> {
        match self.entries.next() {
            Some((name, value)) => {
                self.value = Some(value);
                seed.deserialize(BorrowedStrDeserializer::new(name))
                    .map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, SerdeError> {
        match self.value.take() {
            Some(v) => seed.deserialize(v),
            None => Err(SerdeError::new("a map value was asked for before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct EnumRef<'de> {
    variant: &'de ByteString,
    content: &'de Value,
}

impl<'de> de::EnumAccess<'de> for EnumRef<'de> {
    type Error = SerdeError;
    type Variant = &'de Value;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, &'de Value), SerdeError> {
        let variant = seed.deserialize(BorrowedStrDeserializer::<SerdeError>::new(self.variant))?;
        Ok((variant, self.content))
    }
}

impl<'de> de::VariantAccess<'de> for &'de Value {
    type Error = SerdeError;

    fn unit_variant(self) -> Result<(), SerdeError> {
        match self {
            Value::Null => Ok(()),
            other => Err(SerdeError::new(format_args!(
                "expected null for a unit variant, found {}",
                other.kind()
            ))),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, SerdeError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, SerdeError> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SerdeError> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Shape {
        Dot,
        Circle(f64),
        Pair(i32, i32),
        Rect { w: u32, h: u32 },
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Everything {
        flag: bool,
        small: i8,
        big: u64,
        neg: i64,
        ratio: f32,
        letter: char,
        name: String,
        maybe: Option<u16>,
        nothing: Option<u16>,
        list: Vec<u32>,
        tuple: (u8, String),
        shapes: Vec<Shape>,
        map: BTreeMap<String, i32>,
        unit: (),
    }

    fn everything() -> Everything {
        Everything {
            flag: true,
            small: -3,
            big: u64::MAX,
            neg: i64::MIN,
            ratio: 0.5,
            letter: 'é',
            name: "alice".into(),
            maybe: Some(7),
            nothing: None,
            list: vec![1, 2, 3],
            tuple: (9, "nine".into()),
            shapes: vec![
                Shape::Dot,
                Shape::Circle(1.5),
                Shape::Pair(-1, 1),
                Shape::Rect { w: 2, h: 3 },
            ],
            map: [("a".to_owned(), 1), ("b".to_owned(), -2)]
                .into_iter()
                .collect(),
            unit: (),
        }
    }

    #[test]
    fn a_derived_struct_round_trips_through_values_and_bytes() {
        let e = everything();
        let c = Container::from_serialize("everything", &e).unwrap();
        let names: Vec<&str> = c.iter().map(|(n, _)| n).collect();
        assert_eq!(names[..3], ["flag", "small", "big"]);
        assert_eq!(c.get::<u64>("big").unwrap(), u64::MAX);
        assert_eq!(c.get::<&str>("letter").unwrap(), "é");
        assert_eq!(c.value("nothing"), Some(&Value::Null));
        let shapes: &[Value] = c.get("shapes").unwrap();
        assert_eq!(shapes[0], Value::from("Dot"));
        let decoded = crate::decode(&c.encode()).unwrap();
        assert_eq!(decoded.values_as::<Everything>().unwrap(), e);
    }

    #[test]
    fn deserializing_borrows_strings_and_bytes() {
        #[derive(Deserialize)]
        struct Borrowed<'a> {
            user: &'a str,
            #[serde(with = "serde_bytes_ref")]
            blob: &'a [u8],
        }
        mod serde_bytes_ref {
            pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
                d: D,
            ) -> Result<&'de [u8], D::Error> {
                <&[u8]>::deserialize(d)
            }
            use serde::Deserialize;
        }
        let c = Container::builder("t")
            .value("user", "alice")
            .value("blob", Bytes::from_static(b"\x01\x02"))
            .build()
            .unwrap();
        let payload = c.encode();
        let decoded = crate::decode(&payload).unwrap();
        let b: Borrowed<'_> = decoded.values_as().unwrap();
        assert_eq!(b.user, "alice");
        assert_eq!(b.blob, b"\x01\x02");
        // The borrowed str points into the payload the container was decoded from.
        let range = payload.as_ptr_range();
        assert!(range.contains(&b.user.as_ptr()));
        assert!(range.contains(&b.blob.as_ptr()));
    }

    #[test]
    fn wrong_shapes_are_errors_not_panics() {
        #[derive(Deserialize, Debug)]
        struct Need {
            #[allow(dead_code)]
            n: u8,
        }
        let c = Container::builder("t").value("n", 300i64).build().unwrap();
        assert!(c.values_as::<Need>().is_err());
        let c = Container::builder("t").value("m", 1i64).build().unwrap();
        let err = c.values_as::<Need>().unwrap_err();
        assert_eq!(err.message(), "missing field `n`");
        assert_eq!(
            to_values(&5u8).unwrap_err().message(),
            "expected a struct or a map, found u64"
        );
        let mut keyed = BTreeMap::new();
        keyed.insert(1u8, 1u8);
        assert_eq!(
            to_values(&keyed).unwrap_err().message(),
            "map keys must be strings"
        );
        let long: BTreeMap<String, u8> = [("k".repeat(256), 1)].into_iter().collect();
        assert!(to_values(&long).is_err());
    }

    #[test]
    fn values_deserialize_refuses_repeated_and_long_names() {
        let err = serde_json::from_str::<Values>(r#"{"a":1,"a":2}"#).unwrap_err();
        assert!(
            err.to_string().contains("value name \"a\" given twice"),
            "{err}"
        );
        let long = format!(r#"{{"{}":1}}"#, "k".repeat(256));
        assert!(serde_json::from_str::<Values>(&long).is_err());
    }
}
