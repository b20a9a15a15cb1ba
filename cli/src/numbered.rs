//! `msgi send --count N [--ack]`: numbered one-way frames, for checking
//! delivery across server restarts (scripts/ack_restarts.sh), and
//! `msgi serve --record FILE`: the numbers the application was handed.
//!
//! Push recovery (scripts/push_restarts.sh): `msgi serve --ack
//! --recover-pushes` pushes for whoever asks with a [`PUSH_TO`] request
//! ([`relay`]); `msgi send --push-to ID` asks ([`push`]), and `msgi send
//! --receive N` is the client that gets the pushes ([`receive`]).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use msgi::delivery::{AckStore, PushError};
use msgi::{Client, ClientError, Frame, Kind, Reconnect};

/// The kind of a request to `msgi serve --recover-pushes` to push a frame
/// to a client id: payload `<client id> <text>`; answered DATA
/// `pushed <number> <server pid>` (kept for the client until it has it;
/// the pid says which server process took it) or ERROR
/// `push refused (<why>): ...`, `why` one of [`refusal_word`]'s.
pub(crate) const PUSH_TO: u16 = 0x110;

/// A reconnecting client's policy: soon, and never giving up.
const RECONNECT: Reconnect = Reconnect {
    initial_delay: Duration::from_millis(20),
    max_delay: Duration::from_millis(500),
    multiplier: 2.0,
    max_attempts: None,
};

/// The short name of a refusal, in the ERROR's parentheses.
fn refusal_word(e: &PushError) -> &'static str {
    match e {
        PushError::Off => "off",
        PushError::UnknownClient => "unknown-client",
        PushError::Full => "full",
        PushError::Expired => "expired",
        PushError::NotPushable => "not-pushable",
        PushError::NumbersExhausted => "numbers-exhausted",
        _ => "refused",
    }
}

/// The server's side of a [`PUSH_TO`] request: pushes DATA `<text>` to
/// the client id through `store`; the answer says the push's number or
/// why it was refused (the push is then lost, and the asker knows it).
pub(crate) fn relay(store: &AckStore, request: &Frame) -> Frame {
    let payload = request.payload();
    let Some(space) = payload.iter().position(|b| *b == b' ') else {
        return Frame::error("bad push request: expected <client id> <text>");
    };
    let Ok(client_id) = std::str::from_utf8(&payload[..space]) else {
        return Frame::error("bad push request: the client id is not UTF-8");
    };
    let text = request.payload().slice(space + 1..);
    match store.push(client_id, &Frame::data(text)) {
        Ok(seq) => Frame::data(format!("pushed {seq} {}", std::process::id())),
        Err(e) => Frame::error(format!("push refused ({}): {e}", refusal_word(&e))),
    }
}

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
    let mut builder = Client::builder().reconnect(RECONNECT);
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

/// Pushes `0` .. `count - 1` to `target` through the server, one request
/// at a time, reconnecting as needed. A push the server refuses because
/// the target is not there yet, is behind (its buffer full) or away past
/// the grace period is asked again (after 1 ms, up to `wait` for each); a
/// push whose request was lost with the connection may or may not have
/// been made, and is not asked again (it could arrive twice). Prints
/// `pushed <n> <number> <server pid>` for each push made, `unknown <n>` for each lost
/// with the connection, then `pushes N made M unknown U`.
pub(crate) async fn push(
    addr: &str,
    client_id: Option<String>,
    target: &str,
    count: u64,
    wait: Duration,
) -> Result<()> {
    if target.contains(' ') {
        bail!("--push-to: a client id with a space cannot be named in a push request");
    }
    let kind = Kind::app(PUSH_TO).context("the push kind")?;
    let mut builder = Client::builder().reconnect(RECONNECT);
    if let Some(id) = client_id {
        builder = builder.client_id(id);
    }
    let client = builder
        .connect(addr.to_owned())
        .await
        .with_context(|| format!("could not connect to {addr}"))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (mut made, mut unknown) = (0u64, 0u64);
    for n in 0..count {
        let request = Frame::new(kind, format!("{target} {n}"));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match client.call(request.clone()).await {
                Ok(answer) => {
                    let text = answer.payload_text();
                    let Some(seq) = text.strip_prefix("pushed ") else {
                        bail!("push {n}: unexpected answer {text:?} (is the server msgi serve --recover-pushes?)");
                    };
                    writeln!(out, "pushed {n} {seq}")?;
                    made += 1;
                    break;
                }
                Err(ClientError::Remote(why))
                    if ["(full)", "(unknown-client)", "(expired)"]
                        .iter()
                        .any(|w| why.contains(w)) =>
                {
                    if tokio::time::Instant::now() >= deadline {
                        bail!("push {n}: still refused after {wait:?}: {why}");
                    }
                    // The pusher's own backoff: nothing on this side to await.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                // Held while reconnecting and never written: ask again, up
                // to `wait` as for a refusal.
                Err(ClientError::NotConnected) => {
                    if tokio::time::Instant::now() >= deadline {
                        bail!("push {n}: the server was not reachable for {wait:?}");
                    }
                }
                Err(ClientError::ConnectionLost(_)) => {
                    writeln!(out, "unknown {n}")?;
                    unknown += 1;
                    break;
                }
                Err(e) => return Err(e).with_context(|| format!("push {n}")),
            }
        }
    }
    writeln!(out, "pushes {count} made {made} unknown {unknown}")?;
    out.flush()?;
    drop(out);
    tokio::time::timeout(wait, client.close())
        .await
        .map_err(|_| anyhow::anyhow!("close not done within {wait:?}"))?;
    Ok(())
}

/// The client of push recovery: acknowledged delivery with push recovery
/// under `client_id`, reconnecting as needed; prints the payload of each
/// push, one per line, until `count` came or none came for `wait`, then
/// `received N fresh F missed M dropped D` (F: the reconnections the
/// server answered `fresh`, M: the pushes it said were lost, D: the ones
/// this client's full queue dropped).
///
/// # Errors
///
/// Fewer than `count` pushes came (after the summary line).
pub(crate) async fn receive(
    addr: &str,
    client_id: String,
    count: u64,
    wait: Duration,
) -> Result<()> {
    let client = Client::builder()
        .reconnect(RECONNECT)
        .client_id(client_id)
        .acknowledged(64, 64 << 10)
        .recover_pushes(true)
        .incoming_capacity(1 << 16)
        .incoming_bytes(64 << 20)
        .connect(addr.to_owned())
        .await
        .with_context(|| format!("could not connect to {addr}"))?;
    let mut incoming = client.incoming().context("the incoming stream")?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut received = 0u64;
    while received < count {
        let Ok(Some(push)) = tokio::time::timeout(wait, incoming.recv()).await else {
            break;
        };
        out.write_all(push.payload())?;
        out.write_all(b"\n")?;
        received += 1;
    }
    writeln!(
        out,
        "received {received} fresh {} missed {} dropped {}",
        client.fresh_resumes(),
        client.missed_pushes(),
        client.pushes_dropped()
    )?;
    out.flush()?;
    drop(out);
    tokio::time::timeout(wait, client.close())
        .await
        .map_err(|_| anyhow::anyhow!("close not done within {wait:?}"))?;
    if received < count {
        bail!("received {received} of {count} pushes (none for {wait:?})");
    }
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
