//! The container: a header that says who sends what to whom, and named values.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::{BuildError, DecodeError, EncodeError, Field, GetError};
use crate::get::FromValue;
use crate::value::{check_short, Iter, NameSet, Value, Values};
use crate::wire::{self, Limits};

/// A structured message: a header (source id and sub-id, target id and sub-id, message
/// type) and named, typed [`Value`]s in insertion order.
///
/// Header fields are UTF-8 of at most [`MAX_SHORT_LEN`](crate::MAX_SHORT_LEN) bytes; an
/// empty id means "not given". Names are unique (see [`Values`]).
///
/// ```
/// use msgi_container::Container;
///
/// let login = Container::builder("user_login")
///     .source("client-7", "")
///     .target("server", "auth")
///     .value("user", "alice")
///     .value("timestamp", 1_700_000_000i64)
///     .build()?;
///
/// let payload = login.encode();
/// let decoded = msgi_container::decode(&payload)?;
/// assert_eq!(decoded.message_type(), "user_login");
/// assert_eq!(decoded.get::<&str>("user")?, "alice");
/// assert_eq!(decoded.get::<i64>("timestamp")?, 1_700_000_000);
/// assert!(decoded.get::<bool>("timestamp").is_err()); // a typed error, not a panic
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Container {
    pub(crate) source_id: ByteString,
    pub(crate) source_sub_id: ByteString,
    pub(crate) target_id: ByteString,
    pub(crate) target_sub_id: ByteString,
    pub(crate) message_type: ByteString,
    pub(crate) values: Values,
}

impl Container {
    /// An empty container of this message type, without ids. Fails when the type is
    /// longer than [`MAX_SHORT_LEN`](crate::MAX_SHORT_LEN) bytes.
    pub fn new(message_type: impl Into<ByteString>) -> Result<Self, BuildError> {
        let message_type = message_type.into();
        check_short(Field::MessageType, &message_type)?;
        Ok(Container {
            message_type,
            ..Container::default()
        })
    }

    /// A builder for a container of this message type.
    pub fn builder(message_type: impl Into<ByteString>) -> Builder {
        Builder::new(message_type)
    }

    /// A builder for the answer to this container: source and target swapped (the answer
    /// goes from this container's target to its source), no values.
    pub fn reply(&self, message_type: impl Into<ByteString>) -> Builder {
        let mut b = Builder::new(message_type);
        b.container.source_id = self.target_id.clone();
        b.container.source_sub_id = self.target_sub_id.clone();
        b.container.target_id = self.source_id.clone();
        b.container.target_sub_id = self.source_sub_id.clone();
        b
    }

    /// The message type: what the values mean, what applications dispatch on.
    pub fn message_type(&self) -> &str {
        &self.message_type
    }

    /// The sender's id (empty when not given).
    pub fn source_id(&self) -> &str {
        &self.source_id
    }

    /// The sender's sub-id (empty when not given).
    pub fn source_sub_id(&self) -> &str {
        &self.source_sub_id
    }

    /// The recipient's id (empty when not given).
    pub fn target_id(&self) -> &str {
        &self.target_id
    }

    /// The recipient's sub-id (empty when not given).
    pub fn target_sub_id(&self) -> &str {
        &self.target_sub_id
    }

    /// Sets the message type. Fails, changing nothing, when it is too long.
    pub fn set_message_type(
        &mut self,
        message_type: impl Into<ByteString>,
    ) -> Result<(), BuildError> {
        let message_type = message_type.into();
        check_short(Field::MessageType, &message_type)?;
        self.message_type = message_type;
        Ok(())
    }

    /// Sets the source id and sub-id. Fails, changing nothing, when either is too long.
    pub fn set_source(
        &mut self,
        id: impl Into<ByteString>,
        sub_id: impl Into<ByteString>,
    ) -> Result<(), BuildError> {
        let (id, sub_id) = (id.into(), sub_id.into());
        check_short(Field::SourceId, &id)?;
        check_short(Field::SourceSubId, &sub_id)?;
        self.source_id = id;
        self.source_sub_id = sub_id;
        Ok(())
    }

    /// Sets the target id and sub-id. Fails, changing nothing, when either is too long.
    pub fn set_target(
        &mut self,
        id: impl Into<ByteString>,
        sub_id: impl Into<ByteString>,
    ) -> Result<(), BuildError> {
        let (id, sub_id) = (id.into(), sub_id.into());
        check_short(Field::TargetId, &id)?;
        check_short(Field::TargetSubId, &sub_id)?;
        self.target_id = id;
        self.target_sub_id = sub_id;
        Ok(())
    }

    /// The values.
    pub fn values(&self) -> &Values {
        &self.values
    }

    /// The values, to change.
    pub fn values_mut(&mut self) -> &mut Values {
        &mut self.values
    }

    /// Takes the values out.
    pub fn into_values(self) -> Values {
        self.values
    }

    /// The values in insertion order, as `(name, value)`.
    pub fn iter(&self) -> Iter<'_> {
        self.values.iter()
    }

    /// The value named `name`.
    pub fn value(&self, name: &str) -> Option<&Value> {
        self.values.value(name)
    }

    /// The value named `name` as `T`, e.g. `get::<i64>("timestamp")`:
    /// [`GetError::Missing`] when there is none, [`GetError::WrongType`] or
    /// [`GetError::OutOfRange`] when it is not a `T` (conversions: [`FromValue`]).
    pub fn get<'a, T: FromValue<'a>>(&'a self, name: &str) -> Result<T, GetError> {
        self.values.get(name)
    }

    /// Like [`get`](Self::get), `Ok(None)` when no value is named `name`.
    pub fn find<'a, T: FromValue<'a>>(&'a self, name: &str) -> Result<Option<T>, GetError> {
        self.values.find(name)
    }

    /// Sets a value (see [`Values::insert`]).
    pub fn insert(
        &mut self,
        name: impl Into<ByteString>,
        value: impl Into<Value>,
    ) -> Result<Option<Value>, BuildError> {
        self.values.insert(name, value)
    }

    /// The container's encoding (docs/PROTOCOL.md, section 6), for a frame's payload.
    ///
    /// This does not check [`Limits`]: a container built in code with more values than
    /// a decoder's [`Limits::max_values`] or nested deeper than its [`Limits::max_depth`]
    /// encodes, and the decoder refuses it; one nested deeper than the stack allows
    /// (thousands of levels) overflows the stack here, since encoding recurses once per
    /// level. For a container built from input you do not control, use
    /// [`try_encode`](Self::try_encode).
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        wire::encode_into(self, &mut buf);
        buf.freeze()
    }

    /// The container's encoding, if a decoder with `limits` (usually
    /// [`Limits::DEFAULT`], what [`decode`](crate::decode) uses) would take it; otherwise
    /// [`EncodeError`], found without recursion and before anything is encoded.
    pub fn try_encode(&self, limits: &Limits) -> Result<Bytes, EncodeError> {
        wire::check(self, limits)?;
        Ok(self.encode())
    }

    /// Appends the container's encoding to `buf` (reserving [`encoded_len`] bytes once).
    ///
    /// [`encoded_len`]: Self::encoded_len
    pub fn encode_into(&self, buf: &mut BytesMut) {
        buf.reserve(self.encoded_len());
        wire::encode_into(self, buf);
    }

    /// The length of the container's encoding, in bytes.
    pub fn encoded_len(&self) -> usize {
        wire::encoded_len(self)
    }

    /// Decodes a payload with the default [`Limits`]; see [`decode`](crate::decode).
    pub fn decode(payload: &Bytes) -> Result<Self, DecodeError> {
        wire::decode_with(payload, &Limits::DEFAULT)
    }

    /// Decodes a payload with these limits.
    pub fn decode_with(payload: &Bytes, limits: &Limits) -> Result<Self, DecodeError> {
        wire::decode_with(payload, limits)
    }
}

impl<'a> IntoIterator for &'a Container {
    type Item = (&'a str, &'a Value);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.values.iter()
    }
}

/// Builds a [`Container`]: header setters and values in the order they are given. The
/// first mistake (a field too long, a name given twice) is kept and returned by
/// [`build`](Builder::build).
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    container: Container,
    error: Option<BuildError>,
    names: NameSet,
}

impl Builder {
    fn new(message_type: impl Into<ByteString>) -> Self {
        let mut b = Builder {
            container: Container::default(),
            error: None,
            names: NameSet::default(),
        };
        let message_type = message_type.into();
        match check_short(Field::MessageType, &message_type) {
            Ok(()) => b.container.message_type = message_type,
            Err(e) => b.error = Some(e),
        }
        b
    }

    fn keep(&mut self, r: Result<(), BuildError>) {
        if let (Err(e), None) = (r, &self.error) {
            self.error = Some(e);
        }
    }

    /// The source id and sub-id (`""` for none).
    pub fn source(mut self, id: impl Into<ByteString>, sub_id: impl Into<ByteString>) -> Self {
        let r = self.container.set_source(id, sub_id);
        self.keep(r);
        self
    }

    /// The target id and sub-id (`""` for none).
    pub fn target(mut self, id: impl Into<ByteString>, sub_id: impl Into<ByteString>) -> Self {
        let r = self.container.set_target(id, sub_id);
        self.keep(r);
        self
    }

    /// Adds a value after the others. A name given twice is an error at `build`.
    pub fn value(mut self, name: impl Into<ByteString>, value: impl Into<Value>) -> Self {
        let name = name.into();
        let r = check_short(Field::Name, &name).and_then(|()| {
            if self.names.repeated(&self.container.values, &name) {
                Err(BuildError::DuplicateName {
                    name: name.to_string(),
                })
            } else {
                Ok(())
            }
        });
        if r.is_ok() {
            self.container.values.push_checked(name, value.into());
        }
        self.keep(r);
        self
    }

    /// The container, or the first mistake made while building it.
    pub fn build(self) -> Result<Container, BuildError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.container),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_keeps_order_and_refuses_a_repeated_name() {
        let c = Container::builder("t")
            .value("b", 1i64)
            .value("a", 2i64)
            .build()
            .unwrap();
        let names: Vec<&str> = c.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["b", "a"]);

        let err = Container::builder("t")
            .value("a", 1i64)
            .value("a", 2i64)
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            BuildError::DuplicateName {
                name: "a".to_owned()
            }
        );
    }

    #[test]
    fn builder_reports_the_first_field_too_long() {
        let long = "x".repeat(256);
        let err = Container::builder("t")
            .target("ok", long.as_str())
            .source(long.as_str(), "")
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            BuildError::TooLong {
                field: Field::TargetSubId,
                len: 256
            }
        );
        assert!(Container::new(long.as_str()).is_err());
        assert!(Container::builder(long.as_str()).build().is_err());
    }

    #[test]
    fn setters_change_nothing_on_error() {
        let mut c = Container::new("t").unwrap();
        c.set_source("a", "b").unwrap();
        let long = "x".repeat(256);
        assert!(c.set_source("new", long.as_str()).is_err());
        assert_eq!((c.source_id(), c.source_sub_id()), ("a", "b"));
        assert!(c.set_message_type(long).is_err());
        assert_eq!(c.message_type(), "t");
    }

    #[test]
    fn reply_swaps_source_and_target() {
        let req = Container::builder("user_login")
            .source("client", "1")
            .target("server", "auth")
            .build()
            .unwrap();
        let resp = req.reply("response").value("status", "ok").build().unwrap();
        assert_eq!(resp.message_type(), "response");
        assert_eq!((resp.source_id(), resp.source_sub_id()), ("server", "auth"));
        assert_eq!((resp.target_id(), resp.target_sub_id()), ("client", "1"));
    }

    #[test]
    fn get_reports_missing_and_wrong_type_by_name() {
        let c = Container::builder("t").value("n", "text").build().unwrap();
        assert_eq!(
            c.get::<i64>("timestamp"),
            Err(GetError::Missing {
                name: "timestamp".to_owned()
            })
        );
        assert_eq!(
            c.get::<i64>("n").unwrap_err().to_string(),
            "value \"n\" is string, not i64"
        );
        assert_eq!(c.find::<i64>("absent"), Ok(None));
        assert!(c.find::<i64>("n").is_err());
    }
}
