//! `ContainerRef`: a container read in place, with the getters and errors of `Container`.

use bytes::Bytes;
use msgi_container::{
    decode, Container, ContainerRef, DecodeError, GetError, Limits, Value, ValueError, ValueKind,
    ValueRef,
};

fn login() -> Container {
    let mut geo = msgi_container::Values::new();
    geo.insert("x", -1i64).expect("a short name");
    Container::builder("user_login")
        .source("client-7", "phone")
        .target("server", "auth")
        .value("user", "alice")
        .value("timestamp", 1_700_000_000i64)
        .value("version", 42u64)
        .value("score", 1.5)
        .value("remember", true)
        .value("raw", Bytes::from_static(b"\x00\x01"))
        .value("nothing", Value::Null)
        .value("tags", vec![Value::from("a"), Value::from(7i64)])
        .value("geo", geo)
        .value("name é", "ünïcode ✓")
        .build()
        .expect("short, unique names")
}

#[test]
fn reads_the_header_and_every_kind_of_value_in_place() {
    let c = login();
    let payload = c.encode();
    let range = payload.as_ptr_range();
    let v = ContainerRef::decode(&payload).unwrap();
    assert_eq!(v.message_type(), "user_login");
    assert_eq!((v.source_id(), v.source_sub_id()), ("client-7", "phone"));
    assert_eq!((v.target_id(), v.target_sub_id()), ("server", "auth"));
    assert!(range.contains(&v.message_type().as_ptr()));

    let user: &str = v.get("user").unwrap();
    assert_eq!(user, "alice");
    assert!(range.contains(&user.as_ptr()));
    let raw: &[u8] = v.get("raw").unwrap();
    assert_eq!(raw, b"\x00\x01");
    assert!(range.contains(&raw.as_ptr()));
    assert_eq!(v.get::<String>("name é").unwrap(), "ünïcode ✓");
    assert_eq!(v.get::<i64>("timestamp").unwrap(), 1_700_000_000);
    assert_eq!(v.get::<u8>("version").unwrap(), 42);
    assert_eq!(v.get::<i32>("version").unwrap(), 42);
    assert_eq!(v.get::<f64>("score").unwrap(), 1.5);
    assert_eq!(v.get::<f64>("version").unwrap(), 42.0);
    assert!(v.get::<bool>("remember").unwrap());
    assert_eq!(v.get::<Option<i64>>("nothing").unwrap(), None);
    assert_eq!(
        v.get::<Option<i64>>("timestamp").unwrap(),
        Some(1_700_000_000)
    );
    assert_eq!(v.find::<i64>("absent").unwrap(), None);
    assert_eq!(v.find::<u64>("version").unwrap(), Some(42));

    let Some(ValueRef::Array(tags)) = v.value("tags") else {
        panic!("{:?}", v.value("tags"))
    };
    assert_eq!(tags, &[ValueRef::Str("a"), ValueRef::I64(7)]);
    let Some(ValueRef::Map(geo)) = v.value("geo") else {
        panic!("{:?}", v.value("geo"))
    };
    assert_eq!(geo.get::<i64>("x").unwrap(), -1);
    assert!(geo.contains("x") && !geo.contains("y"));

    // Insertion order, and the same container once owned.
    let names: Vec<&str> = v.iter().map(|(n, _)| n).collect();
    let want: Vec<&str> = c.iter().map(|(n, _)| n).collect();
    assert_eq!(names, want);
    assert_eq!(v.values().len(), c.values().len());
    assert_eq!(v.to_container(), c);
    assert_eq!(v.to_container(), decode(&payload).unwrap());
}

#[test]
fn getters_fail_as_the_owned_ones_do() {
    let c = login();
    let payload = c.encode();
    let v = ContainerRef::decode(&payload).unwrap();
    for name in [
        "user",
        "timestamp",
        "version",
        "score",
        "raw",
        "tags",
        "geo",
        "absent",
    ] {
        assert_eq!(v.get::<bool>(name), c.get::<bool>(name), "{name}");
        assert_eq!(v.get::<u8>(name), c.get::<u8>(name), "{name}");
        assert_eq!(v.get::<&str>(name), c.get::<&str>(name), "{name}");
        assert_eq!(v.get::<&[u8]>(name), c.get::<&[u8]>(name), "{name}");
        assert_eq!(v.get::<f64>(name), c.get::<f64>(name), "{name}");
    }
    assert_eq!(
        v.get::<i64>("user"),
        Err(GetError::WrongType {
            name: "user".to_owned(),
            expected: "i64",
            found: ValueKind::Str
        })
    );
    assert_eq!(
        ValueRef::I64(-1).to::<u64>(),
        Err(ValueError::OutOfRange {
            expected: "u64",
            found: ValueKind::I64
        })
    );
    assert_eq!(
        v.get::<i8>("absent"),
        Err(GetError::Missing {
            name: "absent".to_owned()
        })
    );
}

#[test]
fn hostile_payloads_get_the_owned_decoders_errors() {
    // A billion values claimed in 20 bytes.
    let mut p = vec![1, 0, 0, 0, 0, 0, 0x80, 0x94, 0xeb, 0xdc, 0x03];
    p.resize(20, 0);
    assert!(matches!(
        ContainerRef::decode(&p),
        Err(DecodeError::CountTooLarge { .. })
    ));
    // Nested a million deep: refused at the limit, not on the stack.
    let mut deep = vec![1, 0, 0, 0, 0, 0, 1, 1, b'a'];
    for _ in 0..1_000_000 {
        deep.extend([8, 1]);
    }
    deep.push(0);
    assert_eq!(
        ContainerRef::decode(&deep),
        Err(DecodeError::TooDeep {
            max: 32,
            at: 9 + 32 * 2
        })
    );
    let limits = Limits::new(2, 10).unwrap();
    assert!(matches!(
        ContainerRef::decode_with(&deep, &limits),
        Err(DecodeError::TooDeep { max: 2, .. })
    ));
    // A name that is not UTF-8, a repeated name.
    assert!(matches!(
        ContainerRef::decode(&[1, 0, 0, 0, 0, 0, 1, 1, 0xff, 0]),
        Err(DecodeError::InvalidUtf8 { at: 8, .. })
    ));
    assert_eq!(
        ContainerRef::decode(&[1, 0, 0, 0, 0, 0, 2, 1, b'a', 0, 1, b'a', 1]),
        Err(DecodeError::DuplicateName {
            name: "a".to_owned(),
            at: 10
        })
    );
}

#[test]
fn many_names_are_checked_for_repeats_past_the_linear_check() {
    let mut b = Container::builder("t");
    for i in 0..40 {
        b = b.value(format!("n{i}"), i as i64);
    }
    let payload = b.build().unwrap().encode();
    assert_eq!(ContainerRef::decode(&payload).unwrap().values().len(), 40);
    // 40 names, the last repeating the first: found by the hash set.
    let mut p = vec![1, 0, 0, 0, 0, 1, b't', 40];
    for i in 0..39 {
        let name = format!("n{i}");
        p.push(name.len() as u8);
        p.extend(name.bytes());
        p.push(0);
    }
    p.extend([2, b'n', b'0', 0]);
    let owned = Container::decode(&Bytes::from(p.clone()));
    assert!(
        matches!(owned, Err(DecodeError::DuplicateName { ref name, .. }) if name == "n0"),
        "{owned:?}"
    );
    assert_eq!(ContainerRef::decode(&p).map(|v| v.to_container()), owned);
}
