//! Containers to and from JSON, for people (the CLI, logs, tests).
//!
//! The JSON form of a container is an object:
//!
//! ```json
//! {"message_type": "user_login", "source_id": "client-7", "source_sub_id": "",
//!  "target_id": "server", "target_sub_id": "", "values": {"user": "alice", "timestamp": 1700000000}}
//! ```
//!
//! Reading it, `message_type` is required, the ids default to `""`, `values` to none, and
//! any other field is refused. JSON numbers become `U64` when they are non-negative
//! integers, `I64` when negative integers, `F64` otherwise.
//!
//! JSON cannot say everything a container can, so the way back is not always exact:
//! bytes are written as an array of numbers (and read back as an array of `U64`), a
//! non-negative `I64` is read back as `U64`, and a non-finite `F64` is written as `null`.
//! A JSON value read into a container and written back is the same JSON value.

use crate::container::Container;
use crate::serde_impl::SerdeError;

impl Container {
    /// The container as compact JSON, values in insertion order.
    pub fn to_json_string(&self) -> String {
        // Serializing our own types into a String cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The container as indented JSON, values in insertion order.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The container as a [`serde_json::Value`] (its objects keep serde_json's key
    /// order, which is sorted unless serde_json's `preserve_order` feature is on).
    pub fn to_json_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Reads a container from JSON text.
    pub fn from_json_str(json: &str) -> Result<Container, SerdeError> {
        serde_json::from_str(json).map_err(json_error)
    }

    /// Reads a container from a [`serde_json::Value`].
    pub fn from_json_value(json: serde_json::Value) -> Result<Container, SerdeError> {
        serde_json::from_value(json).map_err(json_error)
    }
}

fn json_error(e: serde_json::Error) -> SerdeError {
    SerdeError::json(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;
    use bytes::Bytes;
    use serde_json::json;

    #[test]
    fn json_keeps_insertion_order_and_reads_back() {
        let c = Container::builder("user_login")
            .source("client-7", "")
            .target("server", "auth")
            .value("user", "alice")
            .value("timestamp", 1_700_000_000i64)
            .value("admin", false)
            .build()
            .unwrap();
        let text = c.to_json_string();
        assert_eq!(
            text,
            r#"{"message_type":"user_login","source_id":"client-7","source_sub_id":"","target_id":"server","target_sub_id":"auth","values":{"user":"alice","timestamp":1700000000,"admin":false}}"#
        );
        let back = Container::from_json_str(&text).unwrap();
        // A non-negative i64 comes back as u64; everything else as it was.
        assert_eq!(back.value("timestamp"), Some(&Value::U64(1_700_000_000)));
        assert_eq!(back.get::<i64>("timestamp").unwrap(), 1_700_000_000);
        assert_eq!(back.target_sub_id(), "auth");
        assert_eq!(
            back.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["user", "timestamp", "admin"]
        );
    }

    #[test]
    fn reading_json_defaults_ids_and_refuses_unknown_fields() {
        let c = Container::from_json_str(r#"{"message_type":"ping"}"#).unwrap();
        assert_eq!(
            (c.message_type(), c.source_id(), c.values().len()),
            ("ping", "", 0)
        );
        let err = Container::from_json_str(r#"{"values":{}}"#).unwrap_err();
        assert!(
            err.message().contains("missing field `message_type`"),
            "{err}"
        );
        // The JSON reader's error is the source, its text said once in the chain.
        let source = std::error::Error::source(&err).expect("the JSON error");
        assert!(source.is::<std::sync::Arc<serde_json::Error>>());
        assert_eq!(source.to_string(), err.message());
        assert_eq!(err.to_string(), "JSON is not a container");
        let err = Container::from_json_str(r#"{"message_type":"t","extra":1}"#).unwrap_err();
        assert!(err.message().contains("unknown field `extra`"), "{err}");
        let long = format!(r#"{{"message_type":"{}"}}"#, "t".repeat(256));
        assert!(Container::from_json_str(&long).is_err());
    }

    #[test]
    fn lossy_parts_are_as_documented() {
        let c = Container::builder("t")
            .value("b", Bytes::from_static(b"\x01\xff"))
            .value("nan", f64::NAN)
            .value("neg", -5i64)
            .build()
            .unwrap();
        let j = c.to_json_value();
        assert_eq!(j["values"], json!({"b": [1, 255], "nan": null, "neg": -5}));
        let back = Container::from_json_value(j).unwrap();
        assert_eq!(
            back.value("b"),
            Some(&Value::Array(vec![Value::U64(1), Value::U64(255)]))
        );
        assert_eq!(back.value("nan"), Some(&Value::Null));
        assert_eq!(back.value("neg"), Some(&Value::I64(-5)));
    }
}
