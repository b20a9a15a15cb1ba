//! Building a map with many names stays linear in the number of names, whichever way it
//! is built: a repeated name is found with a hash set once a map holds more than 16 names,
//! not by comparing each new name with every name before it (100,000 names would take
//! 5 × 10^9 comparisons, a minute or more unoptimized, that way).

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use msgi_container::{to_values, BuildError, Container};

const NAMES: usize = 100_000;

/// Generous: the linear check takes well under a second here, even unoptimized.
const LIMIT: Duration = Duration::from_secs(20);

/// Runs `work` on its own thread and fails the test if it has not finished within
/// [`LIMIT`] (the thread is left behind; the test process ends with the test).
fn within_limit<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(LIMIT)
        .expect("building a map with many names took too long (quadratic name check?)")
}

fn name(i: usize) -> String {
    format!("k{i}")
}

fn json_object(repeat_last: bool) -> String {
    let mut json = String::from(r#"{"message_type":"big","values":{"#);
    for i in 0..NAMES {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!("\"{}\":{i}", name(i)));
    }
    if repeat_last {
        json.push_str(&format!(",\"{}\":0", name(NAMES / 2)));
    }
    json.push_str("}}");
    json
}

#[test]
fn a_json_object_with_100k_names_reads_in_linear_time() {
    let c = within_limit(|| Container::from_json_str(&json_object(false)));
    let c = c.unwrap();
    assert_eq!(c.iter().len(), NAMES);
    assert_eq!(c.get::<u64>(&name(NAMES - 1)).unwrap(), (NAMES - 1) as u64);

    let err = within_limit(|| Container::from_json_str(&json_object(true))).unwrap_err();
    assert!(
        err.message()
            .contains(&format!("value name \"{}\" given twice", name(NAMES / 2))),
        "{err}"
    );
}

#[test]
fn the_builder_takes_100k_names_in_linear_time() {
    let c = within_limit(|| {
        let mut b = Container::builder("big");
        for i in 0..NAMES {
            b = b.value(name(i), i as u64);
        }
        b.build()
    })
    .unwrap();
    assert_eq!(c.iter().len(), NAMES);

    let err = within_limit(|| {
        let mut b = Container::builder("big");
        for i in 0..NAMES {
            b = b.value(name(i), i as u64);
        }
        b.value(name(17), 0u64).build()
    })
    .unwrap_err();
    assert_eq!(err, BuildError::DuplicateName { name: name(17) });
}

#[test]
fn serializing_a_map_with_100k_keys_is_linear() {
    let map: BTreeMap<String, u64> = (0..NAMES).map(|i| (name(i), i as u64)).collect();
    let values = within_limit(move || to_values(&map)).unwrap();
    assert_eq!(values.len(), NAMES);
    assert_eq!(values.get::<u64>(&name(5)).unwrap(), 5);
}
