//! `msgi send --count N [--ack]`: numbered one-way frames, for checking
//! delivery across server restarts (scripts/ack_restarts.sh), and
//! `msgi serve --record FILE`: the numbers the application was handed.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use msgi::{Client, Frame, Reconnect};

/// Sends `0` .. `count - 1` as DATA frames, reconnecting as needed; with
/// `ack`, waits up to `wait` for every one to be acknowledged. Prints one
/// line: `sent N acknowledged M unsent U`.
pub(crate) async fn send(
    addr: &str,
    client_id: Option<String>,
    count: u64,
    ack: bool,
    wait: Duration,
) -> Result<()> {
    let mut builder = Client::builder().reconnect(Reconnect {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(500),
        multiplier: 2.0,
        max_attempts: None,
    });
    if let Some(id) = client_id {
        builder = builder.client_id(id);
    }
    if ack {
        builder = builder.acknowledged(4096, 4 << 20);
    }
    let client = builder
        .connect(addr.to_owned())
        .await
        .with_context(|| format!("could not connect to {addr}"))?;
    for n in 0..count {
        client.send(Frame::data(n.to_string())).await?;
    }
    if ack {
        tokio::time::timeout(wait, client.wait_acknowledged())
            .await
            .map_err(|_| anyhow::anyhow!("not every frame acknowledged within {wait:?}"))??;
    }
    let acknowledged = client.acknowledged();
    tokio::time::timeout(wait, client.close())
        .await
        .map_err(|_| anyhow::anyhow!("close not done within {wait:?}"))?;
    let unsent = client.take_unsent().len();
    println!("sent {count} acknowledged {acknowledged} unsent {unsent}");
    Ok(())
}

/// Appends the payload of every uncorrelated DATA frame, one per line, to
/// a file, written at once (a SIGKILL loses no line already handed over).
#[derive(Clone)]
pub(crate) struct Recorder {
    file: Arc<Mutex<std::fs::File>>,
}

impl Recorder {
    pub(crate) fn open(path: &std::path::Path) -> Result<Recorder> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Recorder {
            file: Arc::new(Mutex::new(file)),
        })
    }

    pub(crate) fn record(&self, frame: &Frame) {
        if frame.request_id().is_some() || frame.kind() != msgi::Kind::DATA {
            return;
        }
        let mut line = frame.payload().to_vec();
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.write_all(&line) {
            tracing::warn!(error = %e, "recording failed");
        }
    }
}
