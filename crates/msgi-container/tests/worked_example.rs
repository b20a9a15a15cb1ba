//! The worked example of docs/PROTOCOL.md, section 6, read from the document itself.

use bytes::Bytes;
use msgi_container::{decode, Container, ContainerRef, Value, Values};

const PROTOCOL: &str = include_str!("../../../docs/PROTOCOL.md");
const MARKER: &str = "<!-- checked by crates/msgi-container/tests/worked_example.rs";

fn example() -> Container {
    let mut geo = Values::new();
    geo.insert("x", -1i64).expect("a short name");
    Container::builder("login")
        .source("c1", "")
        .target("srv", "")
        .value("user", "ann")
        .value("ts", 1_700_000_000i64)
        .value("n", 300u64)
        .value("ok", true)
        .value("pi", 1.5f64)
        .value("raw", Bytes::from_static(b"\x01\x02"))
        .value("tags", vec![Value::from("a"), Value::Null])
        .value("geo", geo)
        .build()
        .expect("a valid container")
}

/// The fenced block after the marker: per line, the hex before the first two spaces.
fn documented_bytes() -> Vec<u8> {
    let start = PROTOCOL.find(MARKER).expect("the marker is in PROTOCOL.md");
    let block = &PROTOCOL[start..];
    let block = &block[block.find("```text\n").expect("a text block follows") + 8..];
    let block = &block[..block.find("```").expect("the block ends")];
    let mut out = Vec::new();
    for line in block.lines() {
        let hex = line.split("  ").next().unwrap_or_default();
        for byte in hex.split_whitespace() {
            out.push(
                u8::from_str_radix(byte, 16)
                    .unwrap_or_else(|e| panic!("{byte:?} in {line:?}: {e}")),
            );
        }
    }
    out
}

/// The JSON block after the marker, with its line breaks removed.
fn documented_json() -> String {
    let start = PROTOCOL.find(MARKER).expect("the marker is in PROTOCOL.md");
    let block = &PROTOCOL[start..];
    let block = &block[block.find("```json\n").expect("a json block follows") + 8..];
    let block = &block[..block.find("```").expect("the block ends")];
    block.lines().map(str::trim).collect()
}

#[test]
fn the_documented_bytes_are_what_the_encoder_writes() {
    let documented = documented_bytes();
    assert_eq!(documented.len(), 86, "the document says 86 bytes");
    let c = example();
    assert_eq!(c.encoded_len(), documented.len());
    assert_eq!(&c.encode()[..], &documented[..]);
}

#[test]
fn the_documented_bytes_decode_to_the_container_sharing_the_payload() {
    let payload = Bytes::from(documented_bytes());
    let decoded = decode(&payload).unwrap();
    assert_eq!(decoded, example());
    assert_eq!(decoded.get::<i64>("ts").unwrap(), 1_700_000_000);
    // Strings and bytes point into the payload: nothing was copied.
    let range = payload.as_ptr_range();
    let user: &str = decoded.get("user").unwrap();
    let raw: &[u8] = decoded.get("raw").unwrap();
    assert!(range.contains(&user.as_ptr()));
    assert!(range.contains(&raw.as_ptr()));
    assert!(range.contains(&decoded.message_type().as_ptr()));
}

#[test]
fn the_documented_json_is_what_to_json_writes() {
    assert_eq!(example().to_json_string(), documented_json());
    let back = Container::from_json_str(&documented_json()).unwrap();
    assert_eq!(back.get::<i64>("ts").unwrap(), 1_700_000_000);
    assert_eq!(back.value("ts"), Some(&Value::U64(1_700_000_000)));
    assert_eq!(
        back.value("raw"),
        Some(&Value::Array(vec![Value::U64(1), Value::U64(2)]))
    );
}

#[test]
fn the_documented_bytes_read_in_place() {
    let bytes = documented_bytes();
    let view = ContainerRef::decode(&bytes).unwrap();
    assert_eq!(view.to_container(), example());
    assert_eq!(view.get::<i64>("ts").unwrap(), 1_700_000_000);
    assert_eq!(view.get::<&str>("user").unwrap(), "ann");
}
