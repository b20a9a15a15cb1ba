//! `try_encode` refuses what a decoder with the same limits would refuse, without
//! recursing, and accepts what it would take.

use msgi_container::{decode, Container, EncodeError, Limits, Value, Values};

fn nested(depth: usize) -> Value {
    let mut v = Value::I64(1);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

fn with(value: Value) -> Container {
    Container::builder("t")
        .value("v", value)
        .build()
        .expect("a valid container")
}

#[test]
fn nesting_at_the_limit_encodes_and_decodes_one_deeper_is_refused() {
    let max = Limits::DEFAULT.max_depth();
    let ok = with(nested(max));
    let bytes = ok.try_encode(&Limits::DEFAULT).unwrap();
    assert_eq!(decode(&bytes).unwrap(), ok);

    let deep = with(nested(max + 1));
    assert_eq!(
        deep.try_encode(&Limits::DEFAULT),
        Err(EncodeError::TooDeep { max })
    );
    // What `encode` writes regardless, the decoder refuses: try_encode agrees with it.
    assert!(decode(&deep.encode()).is_err());

    // Maps count as arrays do.
    let mut m = Value::I64(1);
    for _ in 0..=max {
        let mut inner = Values::new();
        inner.insert("m", m).unwrap();
        m = Value::Map(inner);
    }
    assert_eq!(
        with(m).try_encode(&Limits::DEFAULT),
        Err(EncodeError::TooDeep { max })
    );
}

#[test]
fn a_value_nested_far_deeper_than_any_limit_is_refused_without_recursion() {
    let deep = with(nested(2_000));
    assert_eq!(
        deep.try_encode(&Limits::DEFAULT),
        Err(EncodeError::TooDeep { max: 32 })
    );
}

#[test]
fn values_are_counted_as_the_decoder_counts_them() {
    let limits = Limits::new(4, 5).unwrap();
    // Two named values, one an array of three: five values.
    let c = Container::builder("t")
        .value("a", 1i64)
        .value(
            "b",
            Value::Array(vec![1i64.into(), 2i64.into(), 3i64.into()]),
        )
        .build()
        .unwrap();
    let bytes = c.try_encode(&limits).unwrap();
    assert_eq!(Container::decode_with(&bytes, &limits).unwrap(), c);

    let c = Container::builder("t")
        .value("a", 1i64)
        .value(
            "b",
            Value::Array(vec![1i64.into(), 2i64.into(), 3i64.into(), 4i64.into()]),
        )
        .build()
        .unwrap();
    assert_eq!(
        c.try_encode(&limits),
        Err(EncodeError::TooManyValues { max: 5 })
    );
    assert!(Container::decode_with(&c.encode(), &limits).is_err());
}
