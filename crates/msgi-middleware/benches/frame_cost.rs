//! What a server's framing does per echoed frame, a fixed number of times,
//! for callgrind (instruction counts are deterministic; wall-clock figures on
//! a shared machine are not). Not a criterion bench: it runs exactly the
//! frames it is told to.
//!
//! A client-side framing seals batches of 32 requests (as `msgi bench` keeps
//! 32 in flight per connection); the server-side framing decodes each batch
//! from one read buffer and encodes every answer (the request itself, as
//! `msgi serve` echoes) into one write buffer, which is then written out;
//! the client decodes the answers and checks them. Only [`server_batch`] is
//! what is measured:
//!
//! ```sh
//! cargo bench -p msgi-middleware --bench frame_cost --no-run
//! B=$(ls -t target/release/deps/frame_cost-* | grep -v '\.d$' | head -1)
//! valgrind --tool=callgrind --toggle-collect='*server_batch*' $B encrypt+sign 1024 3200
//! ```
//!
//! Arguments: the layers (`plain`, `encrypt`, `sign`, `encrypt+sign`), the
//! payload size, the number of frames (a multiple of the batch), and the
//! batch: frames per read buffer (default 32; 1 for large frames, which
//! arrive one per read: the codec hands such a frame over with its whole
//! buffer). Instructions per frame = the total callgrind reports / frames.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::{Buf, BytesMut};
use msgi::{Frame, FrameCodec, Framing, MakeFraming, SessionKeys, Side, Wire, WriteBuf};
use msgi_middleware::{Encrypt, Sign};

/// The server's side of one batch: decode every request in `read`, encode
/// its echo into `write`, write it all out (into `out`).
#[inline(never)]
fn server_batch<F: Framing>(server: &mut F, read: &mut BytesMut, write: &mut WriteBuf) -> usize {
    let mut n = 0;
    while let Some(frame) = server.decode(read).unwrap() {
        server.encode_into(frame, write).unwrap();
        n += 1;
    }
    n
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let layers = args.get(1).map_or("encrypt+sign", String::as_str);
    let size: usize = args.get(2).map_or(1024, |s| s.parse().unwrap());
    let frames: usize = args.get(3).map_or(3200, |s| s.parse().unwrap());
    let batch: usize = args.get(4).map_or(32, |s| s.parse().unwrap());
    let encrypt = layers.contains("encrypt").then(Encrypt::new);
    let sign = layers.contains("sign").then(Sign::new);
    let wire = Wire::new(FrameCodec::new())
        .transform(encrypt)
        .transform(sign);
    let mut client = wire.make_framing(Side::Client);
    let mut server = wire.make_framing(Side::Server);
    let keys = SessionKeys::new([1; 32], [2; 32]);
    client.set_session_keys(&keys);
    server.set_session_keys(&keys);

    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut write = WriteBuf::new();
    let mut echoed = 0;
    for round in 0..frames / batch {
        let mut requests = BytesMut::new();
        for i in 0..batch {
            let id = (round * batch + i) as u32;
            let frame = Frame::data(payload.clone()).with_request_id(id);
            client.encode(frame, &mut requests).unwrap();
        }
        // What one read from the socket gives the server.
        let mut read = BytesMut::with_capacity(requests.len());
        read.extend_from_slice(&requests);
        echoed += server_batch(&mut server, &mut read, &mut write);
        // The client reads the answers back.
        let mut answers = BytesMut::with_capacity(write.len());
        while !write.is_empty() {
            let mut slices = [std::io::IoSlice::new(&[]); WriteBuf::MAX_IOVECS];
            let n = write.chunks_vectored(&mut slices);
            let taken: usize = slices[..n].iter().map(|s| s.len()).sum();
            for s in &slices[..n] {
                answers.extend_from_slice(s);
            }
            write.advance(taken);
        }
        for i in 0..batch {
            let answer = client.decode(&mut answers).unwrap().unwrap();
            assert_eq!(answer.request_id(), Some((round * batch + i) as u32));
            assert_eq!(answer.payload().chunk(), &payload[..]);
        }
        assert!(answers.is_empty());
    }
    assert_eq!(echoed, frames / batch * batch);
    println!("{layers} {size} B: {echoed} frames echoed and checked");
}
