//! The container decoder (`msgi_container::decode`) on arbitrary payloads:
//! never panics, and a payload it accepts is the one valid encoding of what
//! it decoded (re-encoding gives the same bytes), within the default limits.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use msgi_container::Limits;

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    if let Ok(container) = msgi_container::decode(&payload) {
        let again = container
            .try_encode(&Limits::default())
            .expect("what decoded within the limits encodes within them");
        assert_eq!(&again[..], data, "exactly one encoding per container");
    }
});
