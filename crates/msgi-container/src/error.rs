//! The errors of building, reading and decoding containers.

use std::fmt;

use crate::value::{ValueKind, MAX_SHORT_LEN};

/// A text field of the format: a header field, a value name or a string value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// The header's source id.
    SourceId,
    /// The header's source sub-id.
    SourceSubId,
    /// The header's target id.
    TargetId,
    /// The header's target sub-id.
    TargetSubId,
    /// The header's message type.
    MessageType,
    /// The name of a value.
    Name,
    /// A string value.
    Str,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::SourceId => "source id",
            Field::SourceSubId => "source sub-id",
            Field::TargetId => "target id",
            Field::TargetSubId => "target sub-id",
            Field::MessageType => "message type",
            Field::Name => "value name",
            Field::Str => "string value",
        })
    }
}

/// A container or value that cannot be built as asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A header field or name is longer than [`MAX_SHORT_LEN`] bytes.
    #[error("{field} is {len} bytes long; at most {MAX_SHORT_LEN} are allowed")]
    TooLong {
        /// Which field.
        field: Field,
        /// Its length in bytes.
        len: usize,
    },
    /// The builder was given the same name twice (names are unique, see [`Values`]).
    ///
    /// [`Values`]: crate::Values
    #[error("value name {name:?} given twice")]
    DuplicateName {
        /// The name.
        name: String,
    },
}

/// A value that is not of the type asked for, without its name (see [`GetError`] for the
/// error of a named value).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// The value is of another kind.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// The type asked for.
        expected: &'static str,
        /// The kind of the value.
        found: ValueKind,
    },
    /// The value is a number that the type asked for cannot hold exactly.
    #[error("{found} value does not fit in {expected}")]
    OutOfRange {
        /// The type asked for.
        expected: &'static str,
        /// The kind of the value.
        found: ValueKind,
    },
}

impl ValueError {
    pub(crate) fn named(self, name: &str) -> GetError {
        let name = name.to_owned();
        match self {
            ValueError::WrongType { expected, found } => GetError::WrongType {
                name,
                expected,
                found,
            },
            ValueError::OutOfRange { expected, found } => GetError::OutOfRange {
                name,
                expected,
                found,
            },
        }
    }
}

/// A named value that cannot be read as asked ([`Container::get`]).
///
/// [`Container::get`]: crate::Container::get
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// No value has this name.
    #[error("no value named {name:?}")]
    Missing {
        /// The name asked for.
        name: String,
    },
    /// The value is of another kind.
    #[error("value {name:?} is {found}, not {expected}")]
    WrongType {
        /// The name asked for.
        name: String,
        /// The type asked for.
        expected: &'static str,
        /// The kind of the value.
        found: ValueKind,
    },
    /// The value is a number that the type asked for cannot hold exactly.
    #[error("value {name:?} ({found}) does not fit in {expected}")]
    OutOfRange {
        /// The name asked for.
        name: String,
        /// The type asked for.
        expected: &'static str,
        /// The kind of the value.
        found: ValueKind,
    },
}

/// A payload that is not a valid container (docs/PROTOCOL.md, section 6). `at` is the
/// offset in the payload of the byte or field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The first byte is not a version this decoder reads.
    #[error(
        "unsupported container version {version} (this decoder reads version {})",
        crate::FORMAT_VERSION
    )]
    UnsupportedVersion {
        /// The version byte.
        version: u8,
    },
    /// The payload ends inside a field.
    #[error("payload ends at byte {at}, inside a field")]
    Truncated {
        /// Where the missing bytes were expected.
        at: usize,
    },
    /// A varint longer than needed (a final `0x00` byte after the first) or above `u64::MAX`.
    #[error("bad varint at byte {at} (overlong or above u64::MAX)")]
    BadVarint {
        /// Where the varint starts.
        at: usize,
    },
    /// A length larger than the bytes left in the payload.
    #[error("length {len} at byte {at} is more than the {left} bytes left")]
    LengthTooLarge {
        /// The length read.
        len: u64,
        /// Where it starts.
        at: usize,
        /// Bytes left after it.
        left: usize,
    },
    /// A count of values that the bytes left could not hold even if every value had its
    /// smallest encoding; refused before anything is allocated for it.
    #[error("count {count} at byte {at} cannot fit in the {left} bytes left")]
    CountTooLarge {
        /// The count read.
        count: u64,
        /// Where it starts.
        at: usize,
        /// Bytes left after it.
        left: usize,
    },
    /// Text that is not UTF-8.
    #[error("{field} at byte {at} is not UTF-8")]
    InvalidUtf8 {
        /// Which field.
        field: Field,
        /// Where the text starts.
        at: usize,
        /// What the UTF-8 check found.
        #[source]
        source: std::str::Utf8Error,
    },
    /// A value tag this version does not define.
    #[error("unknown value tag 0x{tag:02x} at byte {at}")]
    UnknownTag {
        /// The tag.
        tag: u8,
        /// Where it is.
        at: usize,
    },
    /// Arrays and maps nested deeper than [`Limits::max_depth`].
    ///
    /// [`Limits::max_depth`]: crate::Limits::max_depth
    #[error("nesting deeper than {max} at byte {at}")]
    TooDeep {
        /// The limit.
        max: usize,
        /// Where the array or map that goes too deep starts.
        at: usize,
    },
    /// More values in all than [`Limits::max_values`] (counted as the counts are read).
    ///
    /// [`Limits::max_values`]: crate::Limits::max_values
    #[error("more than {max} values (count at byte {at})")]
    TooManyValues {
        /// The limit.
        max: usize,
        /// Where the count that goes past it starts.
        at: usize,
    },
    /// One map (or the container) names two values alike.
    #[error("duplicate value name {name:?} at byte {at}")]
    DuplicateName {
        /// The name.
        name: String,
        /// Where the second one starts.
        at: usize,
    },
    /// Bytes after the end of the container.
    #[error("{count} bytes after the end of the container at byte {at}")]
    TrailingBytes {
        /// Where the container ended.
        at: usize,
        /// How many bytes follow.
        count: usize,
    },
}

/// Why [`Container::try_encode`](crate::Container::try_encode) refused a container: a
/// decoder with those [`Limits`](crate::Limits) would refuse its encoding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// More values in all (named values, array elements, values of nested maps) than
    /// the limits allow.
    #[error("more than {max} values")]
    TooManyValues {
        /// [`Limits::max_values`](crate::Limits::max_values).
        max: usize,
    },
    /// Arrays and maps nested deeper than the limits allow.
    #[error("nested deeper than {max}")]
    TooDeep {
        /// [`Limits::max_depth`](crate::Limits::max_depth).
        max: usize,
    },
}

/// Decoding limits out of range ([`Limits::new`]).
///
/// [`Limits::new`]: crate::Limits::new
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// `max_depth` above [`MAX_DEPTH_LIMIT`](crate::MAX_DEPTH_LIMIT).
    #[error("max_depth {0} is above {limit}", limit = crate::MAX_DEPTH_LIMIT)]
    DepthTooLarge(usize),
    /// `max_values` of 0 or above [`MAX_VALUES_LIMIT`](crate::MAX_VALUES_LIMIT).
    #[error("max_values {0} must be from 1 to {limit}", limit = crate::MAX_VALUES_LIMIT)]
    ValuesOutOfRange(usize),
}
