//! Round trips, property-tested: any container through its encoding, any JSON value
//! through a container, any derived struct through a container's values.

use bytes::Bytes;
use msgi_container::{decode, ByteString, Container, ContainerRef, Value, ValueRef, Values};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

fn name() -> impl Strategy<Value = String> {
    // Mostly short ASCII (cheap to generate), sometimes up to 60 characters of any kind:
    // at most 240 bytes, under the 255-byte limit.
    prop_oneof![3 => "[a-z_]{0,12}", 1 => "\\PC{0,60}"]
}

fn values_of(inner: impl Strategy<Value = Value>) -> impl Strategy<Value = Values> {
    prop::collection::vec((name(), inner), 0..8).prop_map(|entries| {
        let mut values = Values::new();
        for (n, v) in entries {
            if !values.contains(&n) {
                values.insert(n, v).expect("names are at most 240 bytes");
            }
        }
        values
    })
}

/// Any value, NaNs and every float bit pattern included.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::I64),
        any::<u64>().prop_map(Value::U64),
        any::<u64>().prop_map(|bits| Value::F64(f64::from_bits(bits))),
        any::<f64>().prop_map(Value::F64),
        prop_oneof![3 => "[ -~]{0,20}", 1 => "\\PC{0,40}"]
            .prop_map(|s| Value::Str(ByteString::from(s))),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| Value::Bytes(Bytes::from(b))),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            values_of(inner).prop_map(Value::Map),
        ]
    })
}

fn any_container() -> impl Strategy<Value = Container> {
    (
        name(),
        name(),
        name(),
        name(),
        name(),
        values_of(any_value()),
    )
        .prop_map(|(mt, sid, ssub, tid, tsub, values)| {
            let mut c = Container::new(mt).expect("short");
            c.set_source(sid, ssub).expect("short");
            c.set_target(tid, tsub).expect("short");
            *c.values_mut() = values;
            c
        })
}

/// Any JSON value: objects with unique keys (as JSON objects are), integers as serde_json
/// reads them (non-negative ones as u64), finite floats.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value as J;
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<u64>().prop_map(J::from),
        (i64::MIN..0).prop_map(J::from),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(J::from),
        "\\PC{0,30}".prop_map(J::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(J::Array),
            prop::collection::btree_map(name(), inner, 0..8)
                .prop_map(|m| J::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_container_round_trips_through_its_encoding(c in any_container()) {
        let bytes = c.encode();
        prop_assert_eq!(bytes.len(), c.encoded_len());
        let back = decode(&bytes).unwrap();
        // Bytes equal: every float bit pattern kept. Debug equal: the same structure
        // (PartialEq alone would fail on NaN, which is not equal to itself).
        prop_assert_eq!(back.encode(), bytes.clone());
        prop_assert_eq!(format!("{back:?}"), format!("{c:?}"));
        // Read in place: the same container, its text and bytes views of the payload.
        let view = ContainerRef::decode(&bytes).unwrap();
        prop_assert_eq!(view.to_container().encode(), bytes.clone());
        prop_assert_eq!(format!("{:?}", view.to_container()), format!("{c:?}"));
        let range = bytes.as_ptr_range();
        for (name, value) in view.iter() {
            prop_assert!(name.is_empty() || range.contains(&name.as_ptr()));
            match value {
                ValueRef::Str(s) if !s.is_empty() => prop_assert!(range.contains(&s.as_ptr())),
                ValueRef::Bytes(b) if !b.is_empty() => prop_assert!(range.contains(&b.as_ptr())),
                _ => {}
            }
        }
    }

    #[test]
    fn every_prefix_of_an_encoding_is_refused(c in any_container()) {
        let bytes = c.encode();
        for len in 0..bytes.len() {
            prop_assert!(decode(&bytes.slice(..len)).is_err());
        }
    }

    #[test]
    fn any_json_value_round_trips_through_a_container(values in any_json(), mt in name()) {
        let json = serde_json::json!({
            "message_type": mt,
            "source_id": "a",
            "source_sub_id": "",
            "target_id": "b",
            "target_sub_id": "c",
            "values": { "v": values },
        });
        let c = Container::from_json_value(json.clone()).unwrap();
        prop_assert_eq!(c.to_json_value(), json.clone());
        // And through the binary encoding, and the JSON text.
        let back = decode(&c.encode()).unwrap();
        prop_assert_eq!(back.to_json_value(), json.clone());
        let text: serde_json::Value = serde_json::from_str(&back.to_json_string()).unwrap();
        prop_assert_eq!(text, json);
    }
}

proptest! {
    // Cheap cases: many of them.
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_bytes_never_panic_and_what_decodes_is_canonical(
        mut bytes in prop::collection::vec(any::<u8>(), 0..200),
        version_one in any::<bool>(),
    ) {
        if version_one && !bytes.is_empty() {
            bytes[0] = 1;
        }
        let p = Bytes::from(bytes);
        let owned = decode(&p);
        if let Ok(c) = &owned {
            prop_assert_eq!(c.encode(), p.clone());
        }
        // The in-place reader takes the same payloads, and refuses the others with the
        // same error.
        let view = ContainerRef::decode(&p).map(|v| v.to_container().encode());
        prop_assert_eq!(view, owned.map(|c| c.encode()));
    }

    #[test]
    fn any_change_to_an_encoding_gets_the_same_answer_from_both_decoders(
        c in any_container(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
    ) {
        // Valid encodings with a few bytes set, inserted or removed: errors deep inside
        // nested values, not only at the start.
        let mut bytes = c.encode().to_vec();
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => {
                    bytes.remove(i);
                }
            }
        }
        let p = Bytes::from(bytes);
        let owned = decode(&p).map(|c| c.encode());
        let view = ContainerRef::decode(&p).map(|v| v.to_container().encode());
        prop_assert_eq!(view, owned);
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Status {
    Ok,
    Failed { code: u16, reason: String },
    Retry(u32),
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Login {
    user: String,
    timestamp: i64,
    attempts: u8,
    score: f64,
    remember: bool,
    device: Option<String>,
    roles: Vec<String>,
    status: Status,
    location: (i32, i32),
}

fn any_login() -> impl Strategy<Value = Login> {
    let status = prop_oneof![
        Just(Status::Ok),
        (any::<u16>(), "\\PC{0,20}").prop_map(|(code, reason)| Status::Failed { code, reason }),
        any::<u32>().prop_map(Status::Retry),
    ];
    (
        ("\\PC{0,20}", any::<i64>(), any::<u8>()),
        (
            any::<f64>().prop_filter("not NaN", |x| !x.is_nan()),
            any::<bool>(),
        ),
        prop::option::of("\\PC{0,20}"),
        prop::collection::vec("\\PC{0,10}", 0..5),
        status,
        any::<(i32, i32)>(),
    )
        .prop_map(
            |((user, timestamp, attempts), (score, remember), device, roles, status, location)| {
                Login {
                    user,
                    timestamp,
                    attempts,
                    score,
                    remember,
                    device,
                    roles,
                    status,
                    location,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_derived_struct_round_trips_through_a_container(login in any_login()) {
        let c = Container::from_serialize("user_login", &login).unwrap();
        let back = decode(&c.encode()).unwrap();
        prop_assert_eq!(back.values_as::<Login>().unwrap(), login.clone());
        // Its fields are the container's values, by name, in field order.
        prop_assert_eq!(back.get::<i64>("timestamp").unwrap(), login.timestamp);
        prop_assert_eq!(back.get::<&str>("user").unwrap(), login.user.as_str());
        prop_assert_eq!(back.iter().next().map(|(n, _)| n), Some("user"));
    }
}
