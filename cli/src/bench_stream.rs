//! `msgi bench --stream`: one-way frames streamed into `msgi serve
//! --discard`, which reads each frame, undoes its wire layers (opens and
//! verifies it, with `--key-file`) and drops it, answering nothing. So each
//! payload byte is sealed once by the generator and opened once by the
//! server, each on its own core: the bandwidth of the wire layers one way,
//! where the echo modes pay four AEAD passes per frame on two cores.
//!
//! The figure is payload bytes delivered and verified per second: frames
//! count once the server has answered a PING sent after them (it decodes
//! in order, and a frame that fails to open ends the session with an ERROR
//! instead of the PONG), and the clock stops at the last PONG.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use msgi::{Frame, Framing, Kind, WriteBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{BenchArgs, Measurement};

/// The server of a `--stream` run: `msgi serve --discard`.
pub(super) const STREAM: &str = "msgi stream";

/// Frames sealed per write.
const BATCH: usize = 4;

/// How long the server may take to confirm what was sent.
const CONFIRM: Duration = Duration::from_secs(60);

/// `args.connections` connections (each with the pre-shared-key handshake
/// under `--key-file`, done before the clock starts) streaming `size`-byte
/// one-way frames for the duration, then confirming them with a PING.
pub(super) async fn throughput(
    args: &BenchArgs,
    addr: SocketAddr,
    size: usize,
) -> Result<Measurement> {
    let payload = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut connections = Vec::new();
    for _ in 0..args.connections {
        let mut stream = TcpStream::connect(addr).await.context("connecting")?;
        stream.set_nodelay(true)?;
        let mut framing = super::framing(&args.wire)?;
        super::handshake(&args.wire, &mut stream, &mut [&mut framing]).await?;
        connections.push((stream, framing));
    }
    let start = Instant::now();
    let deadline = start
        .checked_add(Duration::from_secs_f64(args.duration))
        .context("--duration is too long for this system's clock")?;
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|(stream, framing)| {
            tokio::spawn(stream_one(stream, framing, payload.clone(), deadline))
        })
        .collect();
    let mut messages = 0;
    for task in tasks {
        messages += task.await??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let msgs_per_sec = messages as f64 / seconds;
    Ok(Measurement {
        messages,
        seconds,
        msgs_per_sec,
        mb_per_sec: msgs_per_sec * size as f64 / 1e6,
        ..Measurement::default()
    })
}

/// Streams until `deadline`, then confirms: returns the frames the server
/// read and opened.
async fn stream_one(
    mut stream: TcpStream,
    mut framing: crate::stack::Framing,
    payload: Bytes,
    deadline: Instant,
) -> Result<u64> {
    let mut out = WriteBuf::new();
    let mut sent = 0u64;
    while Instant::now() < deadline {
        for _ in 0..BATCH {
            framing.encode_into(Frame::data(payload.clone()), &mut out)?;
            sent += 1;
        }
        write_out(&mut stream, &mut out).await?;
    }
    framing.encode_into(Frame::ping("sent"), &mut out)?;
    write_out(&mut stream, &mut out).await?;
    tokio::time::timeout(CONFIRM, confirmed(&mut stream, &mut framing))
        .await
        .context("the server did not confirm the stream within 60 s")??;
    Ok(sent)
}

/// Writes everything `out` holds (its large payloads from their own
/// buffers, as a session writes them).
async fn write_out(stream: &mut TcpStream, out: &mut WriteBuf) -> Result<()> {
    while !out.is_empty() {
        let mut slices = [IoSlice::new(&[]); WriteBuf::MAX_IOVECS];
        let n = out.chunks_vectored(&mut slices);
        let written = stream.write_vectored(&slices[..n]).await?;
        if written == 0 {
            bail!("the server stopped reading");
        }
        out.advance(written);
    }
    Ok(())
}

/// Waits for the PONG: every frame before the PING was opened.
async fn confirmed(stream: &mut TcpStream, framing: &mut crate::stack::Framing) -> Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        while let Some(frame) = framing.decode(&mut buf)? {
            match frame.kind() {
                Kind::PONG => return Ok(()),
                Kind::ERROR | Kind::DISCONNECT => {
                    bail!("the server refused the stream: {}", frame.payload_text())
                }
                // A heartbeat, or anything else: not the confirmation.
                _ => {}
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("the server closed the connection before confirming the stream");
        }
    }
}
