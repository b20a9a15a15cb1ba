//! `msgi bench --ack`: one-way frames through msgi's client, plain (at most
//! once: counted once their bytes are written) and with acknowledged
//! delivery (counted once the server acknowledged them), alternately,
//! against `msgi serve --ack`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use msgi::{Client, Frame};

use super::{BenchArgs, Measurement};

/// The servers of a `--ack` run: the same `msgi serve --ack`, measured
/// with plain and with acknowledged one-way sends.
pub(super) const PLAIN: &str = "msgi one-way";
pub(super) const ACKED: &str = "msgi acked";

/// Frames kept unacknowledged per client (and 4 MiB).
const WINDOW: usize = 4096;

/// `args.connections` clients sending `size`-byte one-way frames for the
/// duration; the clock stops when the last frame is confirmed (written,
/// or acknowledged).
pub(super) async fn throughput(
    args: &BenchArgs,
    addr: SocketAddr,
    size: usize,
    acked: bool,
    round: usize,
) -> Result<Measurement> {
    let payload = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut clients = Vec::new();
    for i in 0..args.connections {
        let mut builder = Client::builder().client_id(format!("bench-{round}-{i}"));
        if acked {
            builder = builder.acknowledged(WINDOW, 4 << 20);
        }
        clients.push(builder.connect(addr).await.context("connecting")?);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::new();
    for client in clients {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while Instant::now() < deadline {
                // Check the clock every 64 frames, not every frame.
                for _ in 0..64 {
                    client.send(Frame::data(payload.clone())).await?;
                    sent += 1;
                }
            }
            let confirmed = if acked {
                tokio::time::timeout(Duration::from_secs(60), client.wait_acknowledged())
                    .await
                    .context("acknowledgements not back within 60 s")??;
                client.close().await;
                client.acknowledged()
            } else {
                client.close().await;
                sent - client.take_unsent().len() as u64
            };
            Ok::<_, anyhow::Error>(confirmed)
        }));
    }
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
