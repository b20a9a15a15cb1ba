//! Typed reading of values: the conversions behind `Container::get::<T>`.

use bytes::Bytes;
use bytestring::ByteString;

use crate::error::ValueError;
use crate::value::{Value, Values};

/// A type a [`Value`] can be read as ([`Container::get`], [`Values::get`], [`Value::to`]).
///
/// The conversions:
///
/// | type | from |
/// |---|---|
/// | `bool` | `Bool` |
/// | `i8` … `i64`, `u8` … `u64` | `I64` or `U64` whose number fits (else [`ValueError::OutOfRange`]) |
/// | `f64` | `F64`; `I64` or `U64` that an `f64` holds exactly (magnitude up to 2^53) |
/// | `&str`, `String`, [`ByteString`] | `Str` (the `ByteString` shares the payload) |
/// | `&[u8]`, [`Bytes`] | `Bytes` (the `Bytes` shares the payload) |
/// | `&[Value]` | `Array` |
/// | `&Values` | `Map` |
/// | `&Value` | anything |
/// | `Option<T>` | `Null` as `None`, else as `T` |
///
/// Anything else is [`ValueError::WrongType`].
///
/// [`Container::get`]: crate::Container::get
pub trait FromValue<'a>: Sized {
    /// Reads `value` as `Self`.
    fn from_value(value: &'a Value) -> Result<Self, ValueError>;
}

fn wrong(expected: &'static str, value: &Value) -> ValueError {
    ValueError::WrongType {
        expected,
        found: value.kind(),
    }
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl<'a> FromValue<'a> for $t {
            fn from_value(value: &'a Value) -> Result<Self, ValueError> {
                let fitted = match *value {
                    Value::I64(n) => <$t>::try_from(n).ok(),
                    Value::U64(n) => <$t>::try_from(n).ok(),
                    _ => return Err(wrong(stringify!($t), value)),
                };
                fitted.ok_or(ValueError::OutOfRange {
                    expected: stringify!($t),
                    found: value.kind(),
                })
            }
        }
    )*};
}
integer!(i8, i16, i32, i64, u8, u16, u32, u64);

/// The largest integer magnitude every step below which an `f64` holds exactly.
const F64_EXACT: u64 = 1 << 53;

impl<'a> FromValue<'a> for f64 {
    fn from_value(value: &'a Value) -> Result<Self, ValueError> {
        let out_of_range = ValueError::OutOfRange {
            expected: "f64",
            found: value.kind(),
        };
        match *value {
            Value::F64(x) => Ok(x),
            // `as` is exact here: the magnitude is at most 2^53.
            Value::I64(n) if n.unsigned_abs() <= F64_EXACT => Ok(n as f64),
            Value::U64(n) if n <= F64_EXACT => Ok(n as f64),
            Value::I64(_) | Value::U64(_) => Err(out_of_range),
            _ => Err(wrong("f64", value)),
        }
    }
}

impl<'a> FromValue<'a> for bool {
    fn from_value(value: &'a Value) -> Result<Self, ValueError> {
        match *value {
            Value::Bool(b) => Ok(b),
            _ => Err(wrong("bool", value)),
        }
    }
}

impl<'a> FromValue<'a> for &'a str {
    fn from_value(value: &'a Value) -> Result<Self, ValueError> {
        match value {
            Value::Str(s) => Ok(s),
            _ => Err(wrong("string", value)),
        }
    }
}

impl<'a> FromValue<'a> for String {
    fn from_value(value: &'a Value) -> Result<Self, ValueError> {
        <&str>::from_value(value).map(str::to_owned)
    }
}

impl<'a> FromValue<'a> for ByteString {
    fn from_value(value: &'a Value) -> Result<Self, ValueError> {
        match value {
            Value::Str(s) => Ok(s.clone()),
            _ => Err(wrong("string", value)),
        }
    }
}

impl<'a> FromValue<'a> for &'a [u8] {
    fn from_value(value: &'a Value) -> Result<Self, ValueError> {
        match value {
            Value::Bytes(b) => Ok(b),
            _ => Err(wrong("bytes", value)),
        }
    }
}

impl<'a> FromValue<'a> for Bytes {
    fn from_value(value: &'a Value) -> Result<Self, ValueError> {
        match value {
            Value::Bytes(b) => Ok(b.clone()),
            _ => Err(wrong("bytes", value)),
        }
    }
}

impl<'a> FromValue<'a> for &'a [Value] {
    fn from_value(value: &'a Value) -> Result<Self, ValueError> {
        match value {
            Value::Array(a) => Ok(a),
            _ => Err(wrong("array", value)),
        }
    }
}

impl<'a> FromValue<'a> for &'a Values {
    fn from_value(value: &'a Value) -> Result<Self, ValueError> {
        match value {
            Value::Map(m) => Ok(m),
            _ => Err(wrong("map", value)),
        }
    }
}

impl<'a> FromValue<'a> for &'a Value {
    fn from_value(value: &'a Value) -> Result<Self, ValueError> {
        Ok(value)
    }
}

impl<'a, T: FromValue<'a>> FromValue<'a> for Option<T> {
    fn from_value(value: &'a Value) -> Result<Self, ValueError> {
        match value {
            Value::Null => Ok(None),
            _ => T::from_value(value).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::ValueKind;

    #[test]
    fn integers_convert_when_they_fit() {
        assert_eq!(Value::I64(-5).to::<i8>(), Ok(-5));
        assert_eq!(Value::U64(200).to::<u8>(), Ok(200));
        assert_eq!(Value::U64(5).to::<i64>(), Ok(5));
        assert_eq!(Value::I64(5).to::<u64>(), Ok(5));
        assert_eq!(
            Value::I64(-1).to::<u64>(),
            Err(ValueError::OutOfRange {
                expected: "u64",
                found: ValueKind::I64
            })
        );
        assert_eq!(
            Value::U64(u64::MAX).to::<i64>(),
            Err(ValueError::OutOfRange {
                expected: "i64",
                found: ValueKind::U64
            })
        );
        assert_eq!(
            Value::U64(256).to::<u8>(),
            Err(ValueError::OutOfRange {
                expected: "u8",
                found: ValueKind::U64
            })
        );
        assert_eq!(
            Value::F64(1.0).to::<i64>(),
            Err(ValueError::WrongType {
                expected: "i64",
                found: ValueKind::F64
            })
        );
    }

    #[test]
    fn floats_take_exact_integers_only() {
        assert_eq!(Value::F64(1.5).to::<f64>(), Ok(1.5));
        assert_eq!(Value::U64(1 << 53).to::<f64>(), Ok(9007199254740992.0));
        assert_eq!(Value::I64(-(1 << 53)).to::<f64>(), Ok(-9007199254740992.0));
        assert!(matches!(
            Value::U64((1 << 53) + 1).to::<f64>(),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            Value::I64(i64::MIN).to::<f64>(),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            Value::Bool(true).to::<f64>(),
            Err(ValueError::WrongType { .. })
        ));
    }

    #[test]
    fn borrowed_reads_share_the_value() {
        let s = Value::Str(ByteString::from_static("hé"));
        assert_eq!(s.to::<&str>(), Ok("hé"));
        assert_eq!(s.to::<String>(), Ok("hé".to_owned()));
        let b = Value::Bytes(Bytes::from_static(b"\x00\x01"));
        let got: Bytes = b.to().unwrap();
        let Value::Bytes(inner) = &b else { panic!() };
        assert_eq!(got.as_ptr(), inner.as_ptr());
        assert_eq!(b.to::<&[u8]>(), Ok(&b"\x00\x01"[..]));
        assert!(matches!(s.to::<&[u8]>(), Err(ValueError::WrongType { .. })));
        assert_eq!(Value::Null.to::<Option<i64>>(), Ok(None));
        assert_eq!(Value::I64(3).to::<Option<i64>>(), Ok(Some(3)));
    }
}
