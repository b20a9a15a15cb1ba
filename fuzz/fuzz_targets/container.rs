//! The container decoders (`msgi_container::decode` and `ContainerRef::decode`) on
//! arbitrary payloads: never panic, agree with each other (the same container, or the
//! same error), and a payload they accept is the one valid encoding of what they decoded
//! (re-encoding gives the same bytes), within the default limits.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use msgi_container::{ContainerRef, Limits};

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    let owned = msgi_container::decode(&payload);
    let view = ContainerRef::decode(data);
    match (&owned, &view) {
        (Ok(container), Ok(view)) => {
            let again = container
                .try_encode(&Limits::default())
                .expect("what decoded within the limits encodes within them");
            assert_eq!(&again[..], data, "exactly one encoding per container");
            // The same container (compared encoded: a NaN is not equal to itself).
            let viewed = view.to_container().try_encode(&Limits::default());
            assert_eq!(viewed.as_deref(), Ok(data), "the two decodes agree");
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "the same error from both decodes"),
        _ => panic!("one decode accepted what the other refused: {owned:?} / {view:?}"),
    }
});
