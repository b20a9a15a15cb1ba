//! `msgi bench fanout`: broadcast to many sessions, measured from outside.
//!
//! The server is `msgi fanout-server` (hidden), a child process as for the
//! other modes: a msgi [`Server`] whose only service is a *publish* frame
//! (application kind [`PUBLISH`]): its payload is one target byte and the
//! bytes to broadcast. The server pushes a DATA frame with those bytes
//! through its registry and answers the publish with what the registry
//! reported (queued, closed, slow consumers, too large, no such session;
//! five u32, big-endian). Targets:
//!
//! - `all` ([`TARGET_ALL`]): [`Registry::broadcast`] (every session, the
//!   publisher's own included);
//! - `filter` ([`TARGET_FILTER`]): [`Registry::broadcast_filter`] with a
//!   topic-less filter (every session but the publisher's);
//! - `subset` ([`TARGET_SUBSET`]): [`Registry::send_to_client`] for the
//!   client ids `f0` .. `f<K-1>` (`--subset K`), one lookup each.
//!
//! The generator opens the receiving sessions (each announces client id
//! `f<i>`), and one publisher connection. Publishes carry, in their first
//! 8 bytes, the time they were written (nanoseconds since the run began,
//! one clock: generator and receivers are one process), so a receiver
//! knows each delivery's publish-to-receive latency. The publisher sends
//! at `--rate` deliveries per second (so `rate / recipients` publishes a
//! second), or, without `--rate`, one publish at a time, the next as soon
//! as the server has queued the previous one everywhere.
//!
//! What is reported: deliveries received per second (from the first
//! publish to the last delivery), latency percentiles, frames the server
//! said it queued that never arrived (`lost`), deliveries the server
//! refused (slow consumers, closed), receiving sessions that ended during
//! the run (`closed`), and the server's CPU time per delivery received.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, BytesMut};
use hdrhistogram::Histogram;
use msgi::{Frame, FrameCodec, Framing, Kind, MakeFraming, Registry, Server, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use super::{cpu_time, framing, handshake, BenchArgs, Measurement};
use crate::stack::WireArgs;

/// The kind of a publish frame (an application kind).
pub(crate) const PUBLISH: u16 = 0x1F0;
/// Publish target: [`Registry::broadcast`].
pub(crate) const TARGET_ALL: u8 = 0;
/// Publish target: [`Registry::broadcast_filter`], all but the publisher.
pub(crate) const TARGET_FILTER: u8 = 1;
/// Publish target: [`Registry::send_to_client`] for `f0` .. `f<K-1>`.
pub(crate) const TARGET_SUBSET: u8 = 2;
/// Bytes of the publish answer: five u32 counts.
const ANSWER_LEN: usize = 20;
/// Publishes in flight at a fixed rate (without `--rate`: one).
const RATE_WINDOW: usize = 1024;
/// Shards of the latency histogram the receivers record into.
const SHARDS: usize = 16;
/// Sessions opened at once while connecting.
const CONNECTING: usize = 64;
/// Source ports used per loopback source address (127.0.0.x).
const PORTS_PER_SOURCE: usize = 16_000;

/// Where a publish goes.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Target {
    /// `Registry::broadcast`: every session (the publisher's too).
    All,
    /// `Registry::broadcast_filter` with a topic-less filter: every
    /// session but the publisher's.
    Filter,
    /// `Registry::send_to_client` for `--subset` client ids.
    Subset,
}

/// `msgi fanout-server`: the server `msgi bench fanout` measures.
#[derive(clap::Args, Debug)]
pub(crate) struct FanoutServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Client ids of the subset target: `f0` .. `f<K-1>`.
    #[arg(long, default_value_t = 1000)]
    subset: usize,
    #[command(flatten)]
    wire: WireArgs,
}

/// Runs the fanout server; prints `LISTENING <addr>` once listening.
pub(crate) async fn serve(args: FanoutServerArgs) -> Result<()> {
    if args.wire.is_empty() {
        serve_with(args, FrameCodec::new()).await
    } else {
        let framing = args.wire.framing()?;
        serve_with(args, framing).await
    }
}

async fn serve_with<C: MakeFraming>(args: FanoutServerArgs, framing: C) -> Result<()> {
    let builder = Server::builder()
        .framing(framing)
        .max_connections(1_000_000)
        .idle_timeout(None);
    // With --key-file, the pre-shared-key handshake runs in each
    // connection's accept step and keys its session's transforms.
    match args.wire.psk()? {
        Some(psk) => run(args, builder.accept(psk.acceptor()).build()?).await,
        None => run(args, builder.build()?).await,
    }
}

async fn run<C, A, Io>(args: FanoutServerArgs, server: Server<C, A>) -> Result<()>
where
    C: MakeFraming,
    A: tower::Service<msgi::Accepted<tokio::net::TcpStream>, Response = msgi::Accepted<Io>>
        + Clone
        + Send
        + 'static,
    A::Error: Into<msgi::BoxError>,
    A::Future: Send + 'static,
    Io: msgi::IntoTransport<C::Framing>,
{
    let registry = server.registry();
    let subset: Arc<[String]> = (0..args.subset).map(|i| format!("f{i}")).collect();
    let service = tower::service_fn(move |frame: Frame| {
        let answer = publish(&registry, &subset, frame);
        async move { Ok::<_, std::convert::Infallible>(answer) }
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    crate::announce(listener.local_addr()?)?;
    server.serve(listener, service).await?;
    Ok(())
}

/// Acts on one publish: pushes its bytes, answers with the counts.
fn publish(registry: &Registry, subset: &[String], frame: Frame) -> Option<Frame> {
    if frame.kind().get() != PUBLISH {
        return None;
    }
    let publisher = frame.extensions().get::<Session>().map(Session::id);
    let payload = frame.payload();
    let (&target, _) = payload.split_first()?;
    let data = Frame::data(payload.slice(1..));
    let mut counts = [0usize; 5];
    match target {
        TARGET_ALL => {
            let d = registry.broadcast(data);
            counts = [
                d.queued,
                d.closed,
                d.slow_consumers,
                d.too_large,
                d.no_such_session,
            ];
        }
        TARGET_FILTER => {
            let d = registry.broadcast_filter(data, |s| Some(s.id()) != publisher);
            counts = [
                d.queued,
                d.closed,
                d.slow_consumers,
                d.too_large,
                d.no_such_session,
            ];
        }
        TARGET_SUBSET => {
            for id in subset {
                let slot = match registry.send_to_client(id, data.clone()) {
                    Ok(_) => 0,
                    Err(msgi::SendError::Closed) => 1,
                    Err(msgi::SendError::SlowConsumer) => 2,
                    Err(msgi::SendError::TooLarge { .. }) => 3,
                    Err(_) => 4,
                };
                if let Some(c) = counts.get_mut(slot) {
                    *c += 1;
                }
            }
        }
        _ => return Some(Frame::error("unknown publish target")),
    }
    let mut answer = BytesMut::with_capacity(ANSWER_LEN);
    for c in counts {
        answer.put_u32(u32::try_from(c).unwrap_or(u32::MAX));
    }
    Some(Frame::data(answer.freeze()))
}

/// Raises the soft limit of open files to what `needed` asks, within the
/// hard limit; returns the soft limit now in force.
#[cfg(unix)]
fn raise_nofile(needed: u64) -> Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let (current, maximum) = (now.current, now.maximum);
    if current.is_none_or(|c| c >= needed) {
        return Ok(current.unwrap_or(u64::MAX));
    }
    let want = maximum.map_or(needed, |m| m.min(needed));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum,
        },
    )
    .context("raising the open-file limit")?;
    Ok(want)
}

/// No open-file limit to raise here.
#[cfg(not(unix))]
fn raise_nofile(_needed: u64) -> Result<u64> {
    Ok(u64::MAX)
}

/// Raises the open-file limit for `sessions` (before the server child is
/// started, which inherits it), and refuses a count it cannot hold.
pub(crate) fn prepare(sessions: usize) -> Result<()> {
    // Each session is one socket here and one in the server; some spare.
    let needed = u64::try_from(sessions)?.saturating_add(256);
    let limit = raise_nofile(needed)?;
    if limit < needed {
        bail!(
            "{sessions} sessions need an open-file limit of {needed}; the hard limit is {limit} \
             (raise it with `ulimit -Hn` as root, or use fewer --sessions)"
        );
    }
    Ok(())
}

/// What the receivers and the publisher share.
struct Shared {
    /// The clock the payload timestamps count from.
    epoch: Instant,
    received: AtomicU64,
    /// When the last delivery arrived, nanoseconds after `epoch`.
    last_ns: AtomicU64,
    /// Receiving sessions that ended during the run.
    closed: AtomicU64,
    hist: Vec<Mutex<Histogram<u64>>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Counts deliveries read in one go, with their latencies.
    fn record(&self, shard: usize, latencies: &mut Vec<u64>, now: u64) {
        if latencies.is_empty() {
            return;
        }
        if let Some(hist) = self.hist.get(shard % SHARDS) {
            let mut hist = hist.lock().unwrap_or_else(|e| e.into_inner());
            for l in latencies.iter() {
                hist.saturating_record(*l);
            }
        }
        self.received
            .fetch_add(latencies.len() as u64, Ordering::Relaxed);
        self.last_ns.fetch_max(now, Ordering::Relaxed);
        latencies.clear();
    }
}

/// What decoding one read's worth of bytes found.
enum Read {
    More,
    Ended,
}

/// Decodes what `buf` holds: deliveries (DATA without request id) are
/// timed; answers (DATA with one) go to `answers`; DISCONNECT ends it.
fn take_frames(
    dec: &mut crate::stack::Framing,
    buf: &mut BytesMut,
    now: u64,
    latencies: &mut Vec<u64>,
    mut answers: impl FnMut(&Frame),
) -> Result<Read> {
    loop {
        let frame = match dec.decode(buf) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(Read::More),
            Err(e) => bail!("bad frame from server: {e}"),
        };
        match frame.kind() {
            Kind::DATA if frame.request_id().is_none() => {
                let mut p = frame.payload().clone();
                if p.len() >= 8 {
                    latencies.push(now.saturating_sub(p.get_u64()));
                }
            }
            Kind::DATA | Kind::ERROR => answers(&frame),
            Kind::DISCONNECT => return Ok(Read::Ended),
            _ => {}
        }
    }
}

/// Connects session `i`, from 127.0.0.x when the server is on IPv4
/// loopback (a new source address every 16,000 sessions, so ports last).
async fn connect(addr: SocketAddr, i: usize) -> Result<TcpStream> {
    let stream = match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && i >= PORTS_PER_SOURCE => {
            let host = u8::try_from(1 + i / PORTS_PER_SOURCE).context("too many sessions")?;
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(Ipv4Addr::new(127, 0, 0, host).into(), 0))?;
            socket.connect(addr).await?
        }
        _ => TcpStream::connect(addr).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens session `i`: HELLO `f<i>`, waits for WELCOME.
async fn open(
    addr: SocketAddr,
    wire: &WireArgs,
    i: usize,
) -> Result<(TcpStream, crate::stack::Framing)> {
    let mut stream = connect(addr, i).await?;
    let mut f = framing(wire)?;
    // With --key-file: the pre-shared-key handshake keys the session.
    handshake(wire, &mut stream, &mut [&mut f]).await?;
    let mut out = BytesMut::new();
    let mut hello = Frame::control(format!("HELLO f{i}"));
    hello.set_request_id(Some(0));
    f.encode(hello, &mut out)?;
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if let Some(frame) = f.decode(&mut buf)? {
            match frame.kind() {
                Kind::CONTROL if frame.payload().starts_with(b"WELCOME ") => {
                    return Ok((stream, f))
                }
                Kind::ERROR => bail!("handshake refused: {}", frame.payload_text()),
                _ => continue,
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("closed before WELCOME");
        }
    }
}

/// One receiving session: counts and times deliveries until aborted.
async fn receive(
    mut stream: TcpStream,
    mut dec: crate::stack::Framing,
    shared: Arc<Shared>,
    shard: usize,
) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut latencies = Vec::with_capacity(64);
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let ended = match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => true,
            Ok(_) => {
                let now = shared.now_ns();
                let read = take_frames(&mut dec, &mut buf, now, &mut latencies, |_| {});
                shared.record(shard, &mut latencies, now);
                !matches!(read, Ok(Read::More))
            }
        };
        if ended {
            shared.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

/// What the server said about the publishes it answered.
#[derive(Default)]
struct Answers {
    answered: AtomicU64,
    queued: AtomicU64,
    refused_closed: AtomicU64,
    refused_slow: AtomicU64,
    refused_other: AtomicU64,
    errors: AtomicU64,
}

impl Answers {
    fn take(&self, frame: &Frame) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        let mut p = frame.payload().clone();
        if frame.kind() != Kind::DATA || p.len() != ANSWER_LEN {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut next = || u64::from(p.get_u32());
        self.queued.fetch_add(next(), Ordering::Relaxed);
        self.refused_closed.fetch_add(next(), Ordering::Relaxed);
        self.refused_slow.fetch_add(next(), Ordering::Relaxed);
        let other = next() + next();
        self.refused_other.fetch_add(other, Ordering::Relaxed);
    }
}

/// Runs one fanout measurement against the fanout server at `addr`.
pub(crate) async fn fanout(
    args: &BenchArgs,
    size: usize,
    addr: SocketAddr,
    pid: Option<u32>,
) -> Result<Measurement> {
    if size < 8 {
        bail!("fanout payloads carry an 8-byte timestamp: --size must be at least 8");
    }
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        received: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        hist: (0..SHARDS)
            .map(|_| Histogram::new_with_bounds(1, 60_000_000_000, 3).map(Mutex::new))
            .collect::<Result<_, _>>()?,
    });
    let mut receivers = tokio::task::JoinSet::new();
    let mut pending = tokio::task::JoinSet::new();
    let mut opened = 0;
    let mut connected = 0;
    while opened < args.sessions || !pending.is_empty() {
        while opened < args.sessions && pending.len() < CONNECTING {
            let wire = args.wire.clone();
            let i = opened;
            pending.spawn(async move { open(addr, &wire, i).await });
            opened += 1;
        }
        if let Some(joined) = pending.join_next().await {
            let (stream, dec) = joined?.with_context(|| {
                format!("opening session {} of {}", connected + 1, args.sessions)
            })?;
            receivers.spawn(receive(stream, dec, shared.clone(), connected));
            connected += 1;
        }
    }
    let recipients = match args.target {
        Target::All => args.sessions + 1,
        Target::Filter => args.sessions,
        Target::Subset => args.subset.min(args.sessions),
    };
    let m = publish_for(args, size, addr, pid, recipients, &shared).await;
    receivers.abort_all();
    m
}

/// Publishes for `--duration`, waits for the deliveries, sums up.
async fn publish_for(
    args: &BenchArgs,
    size: usize,
    addr: SocketAddr,
    pid: Option<u32>,
    recipients: usize,
    shared: &Arc<Shared>,
) -> Result<Measurement> {
    let mut stream = connect(addr, 0).await?;
    let (mut enc, mut dec) = (framing(&args.wire)?, framing(&args.wire)?);
    handshake(&args.wire, &mut stream, &mut [&mut enc, &mut dec]).await?;
    let (mut rd, mut wr) = stream.into_split();
    let answers = Arc::new(Answers::default());
    let window = Arc::new(Semaphore::new(if args.rate.is_some() {
        RATE_WINDOW
    } else {
        1
    }));
    let target = match args.target {
        Target::All => TARGET_ALL,
        Target::Filter => TARGET_FILTER,
        Target::Subset => TARGET_SUBSET,
    };
    // The publisher's own reader: answers, and (target all) deliveries.
    // When the server ends the publisher's connection (or sends what does
    // not decode), no answer can come any more: the window is closed, so
    // that the publishing loop stops instead of waiting for permits.
    let reader = {
        let (shared, answers, window) = (shared.clone(), answers.clone(), window.clone());
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let mut latencies = Vec::with_capacity(64);
            let ended: Result<()> = async {
                loop {
                    if buf.capacity() - buf.len() < 16 * 1024 {
                        buf.reserve(64 * 1024);
                    }
                    if rd.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                    let now = shared.now_ns();
                    let read = take_frames(&mut dec, &mut buf, now, &mut latencies, |f| {
                        answers.take(f);
                        window.add_permits(1);
                    })?;
                    shared.record(SHARDS - 1, &mut latencies, now);
                    if matches!(read, Read::Ended) {
                        return Ok(());
                    }
                }
            }
            .await;
            window.close();
            ended
        })
    };
    let filler: Vec<u8> = (0..size - 8).map(|i| (i % 251) as u8).collect();
    let per_second = args.rate.map(|r| r / recipients.max(1) as f64);
    let cpu_before = pid.and_then(cpu_time);
    let start = Instant::now();
    let start_ns = shared.now_ns();
    let deadline = start
        .checked_add(Duration::from_secs_f64(args.duration))
        .context("--duration is too long for this system's clock")?;
    let mut sent: u64 = 0;
    let mut out = BytesMut::new();
    // Every wait below ends at the deadline: a server that stops
    // answering (or a write it stops taking) ends the publishing, and the
    // report says what was not answered.
    let until = tokio::time::Instant::from_std(deadline);
    'publishing: while Instant::now() < deadline {
        let due = match per_second {
            Some(ps) => {
                let due = (start.elapsed().as_secs_f64() * ps) as u64 + 1;
                if due <= sent {
                    let next = Duration::from_secs_f64((sent as f64) / ps);
                    tokio::time::sleep_until((start + next).into()).await;
                    continue;
                }
                due
            }
            None => sent + 1,
        };
        while sent < due {
            match tokio::time::timeout_at(until, window.acquire()).await {
                Ok(Ok(permit)) => permit.forget(),
                // Closed: the publisher's connection ended. Timed out:
                // publishes still unanswered at the deadline.
                Ok(Err(_)) | Err(_) => break 'publishing,
            }
            let mut payload = BytesMut::with_capacity(1 + size);
            payload.put_u8(target);
            payload.put_u64(shared.now_ns());
            payload.put_slice(&filler);
            let mut frame = Frame::new(
                Kind::new(PUBLISH).context("publish kind")?,
                payload.freeze(),
            );
            frame.set_request_id(Some((sent % u64::from(u32::MAX)) as u32));
            enc.encode(frame, &mut out)?;
            sent += 1;
        }
        let write = tokio::time::timeout_at(until, wr.write_all(&out)).await;
        // Counted as sent (and so as unanswered) even if cut short.
        if !matches!(write, Ok(Ok(()))) {
            break;
        }
        out.clear();
    }
    let publishing = start.elapsed().as_secs_f64();
    // Every publish answered, then every queued delivery in (or no
    // progress for a second: the rest is lost). Not past 30 seconds,
    // and no wait for answers once the publisher's connection ended.
    let settle = Instant::now() + Duration::from_secs(30);
    // (A server still broadcasting delivers meanwhile: that is progress.)
    let progress = || {
        (
            answers.answered.load(Ordering::Relaxed),
            shared.received.load(Ordering::Relaxed),
        )
    };
    let mut last = (progress(), Instant::now());
    while last.0 .0 < sent && Instant::now() < settle && !window.is_closed() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = progress();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    let mut last = (shared.received.load(Ordering::Relaxed), Instant::now());
    loop {
        let got = shared.received.load(Ordering::Relaxed);
        if got >= answers.queued.load(Ordering::Relaxed) || Instant::now() > settle {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_after = pid.and_then(cpu_time);
    let publisher_closed = window.is_closed();
    reader.abort();
    let received = shared.received.load(Ordering::Relaxed);
    let queued = answers.queued.load(Ordering::Relaxed);
    let seconds = Duration::from_nanos(
        shared
            .last_ns
            .load(Ordering::Relaxed)
            .saturating_sub(start_ns),
    )
    .as_secs_f64()
    .max(publishing);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for h in &shared.hist {
        hist.add(&*h.lock().unwrap_or_else(|e| e.into_inner()))?;
    }
    let refused_slow = answers.refused_slow.load(Ordering::Relaxed);
    Ok(Measurement {
        messages: received,
        seconds,
        msgs_per_sec: received as f64 / seconds,
        mb_per_sec: received as f64 * size as f64 / seconds / 1e6,
        p50_us: hist.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1e3,
        p999_us: hist.value_at_quantile(0.999) as f64 / 1e3,
        errors: answers.errors.load(Ordering::Relaxed)
            + (sent - answers.answered.load(Ordering::Relaxed).min(sent)),
        server_cpu_us_per_msg: match (cpu_before, cpu_after) {
            (Some(b), Some(a)) if received > 0 => {
                Some((a.saturating_sub(b)).as_secs_f64() * 1e6 / received as f64)
            }
            _ => None,
        },
        fanout: Some(Fanout {
            recipients,
            publishes: sent,
            offered_per_sec: sent as f64 * recipients as f64 / publishing,
            queued,
            lost: queued.saturating_sub(received),
            refused_slow,
            refused_other: answers.refused_closed.load(Ordering::Relaxed)
                + answers.refused_other.load(Ordering::Relaxed),
            sessions_closed: shared.closed.load(Ordering::Relaxed),
            publisher_closed,
        }),
        ..Measurement::default()
    })
}

/// What a fanout run adds to a [`Measurement`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Fanout {
    /// Sessions each publish was for.
    pub(crate) recipients: usize,
    /// Publishes sent.
    pub(crate) publishes: u64,
    /// Deliveries offered per second (publishes x recipients over the
    /// publishing time).
    pub(crate) offered_per_sec: f64,
    /// Deliveries the server said it queued.
    pub(crate) queued: u64,
    /// Queued but never received.
    pub(crate) lost: u64,
    /// Deliveries refused because the session's outbox was full.
    pub(crate) refused_slow: u64,
    /// Deliveries refused otherwise (session closed, too large, unknown id).
    pub(crate) refused_other: u64,
    /// Receiving sessions that ended during the run.
    pub(crate) sessions_closed: u64,
    /// The server ended the publisher's connection during the run (its
    /// unanswered publishes are counted in `errors`).
    pub(crate) publisher_closed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    /// A run against a server that answers no publish and keeps the
    /// connection open ends at its deadline, with every publish counted
    /// as an error: it used to wait forever for the window's permits once
    /// 1,024 publishes were unanswered (what `--rate 4000000` did when the
    /// server had closed the publisher as a slow consumer).
    #[tokio::test]
    async fn a_server_that_stops_answering_ends_the_run() {
        let service = tower::service_fn(|_: Frame| {
            std::future::pending::<Result<Option<Frame>, std::convert::Infallible>>()
        });
        let (run, fan) = run_against(service).await;
        assert!(!fan.publisher_closed);
        // The window spent, then nothing more until the deadline.
        assert_eq!(fan.publishes, RATE_WINDOW as u64, "{fan:?}");
        assert_eq!(run.errors, fan.publishes, "{fan:?}");
        assert_eq!(fan.queued, 0, "{fan:?}");
    }

    /// A server that ends the publisher's session at its first publish
    /// (as one did when the publisher's own copies overflowed its outbox):
    /// the run ends and says so.
    #[tokio::test]
    async fn a_publisher_closed_by_the_server_ends_the_run_and_is_reported() {
        let service = tower::service_fn(|frame: Frame| {
            if frame.kind().get() == PUBLISH {
                if let Some(session) = frame.extensions().get::<Session>() {
                    session.close("no more publishing");
                }
            }
            async { Ok::<_, std::convert::Infallible>(None) }
        });
        let (run, fan) = run_against(service).await;
        assert!(fan.publisher_closed, "{fan:?}");
        assert!(fan.publishes > 0, "{fan:?}");
        // The publishes were answered with errors, or not at all.
        assert!(run.errors > 0, "{fan:?}");
        assert_eq!(fan.queued, 0, "{fan:?}");
    }

    /// A fanout run of 0.5 s at 6 M deliveries/s to 5 sessions (1 M
    /// publishes a second: the window spent in a millisecond) against a
    /// server with `service`; fails if it takes 20 s.
    async fn run_against<S>(service: S) -> (Measurement, Fanout)
    where
        S: tower::Service<Frame, Response = Option<Frame>> + Clone + Send + 'static,
        S::Error: Into<msgi::BoxError>,
        S::Future: Send + 'static,
    {
        let server = Server::builder()
            .idle_timeout(None)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let serving = tokio::spawn(server.serve(listener, service));
        let cli = Cli::parse_from([
            "bench",
            "fanout",
            "--sessions",
            "5",
            "--rate",
            "6000000",
            "-t",
            "0.5",
        ]);
        let run = tokio::time::timeout(Duration::from_secs(20), fanout(&cli.bench, 16, addr, None))
            .await
            .unwrap_or_else(|_| panic!("the run did not end"))
            .unwrap_or_else(|e| panic!("{e}"));
        serving.abort();
        let fan = run
            .fanout
            .clone()
            .unwrap_or_else(|| panic!("no fanout figures"));
        (run, fan)
    }

    #[test]
    fn a_publish_answer_counts_what_the_registry_did() {
        let registry = Registry::new();
        let frame = Frame::new(
            Kind::new(PUBLISH).unwrap_or(Kind::DATA),
            Bytes::from_static(b"\x00hello"),
        );
        let answer = publish(&registry, &[], frame).map(|f| f.payload().clone());
        assert_eq!(answer, Some(Bytes::from(vec![0u8; ANSWER_LEN])));
        let unknown = Frame::new(
            Kind::new(PUBLISH).unwrap_or(Kind::DATA),
            Bytes::from_static(b"\x09"),
        );
        assert_eq!(
            publish(&registry, &[], unknown).map(|f| f.kind()),
            Some(Kind::ERROR)
        );
        let subset = ["f0".to_owned(), "f1".to_owned()];
        let frame = Frame::new(
            Kind::new(PUBLISH).unwrap_or(Kind::DATA),
            Bytes::from_static(b"\x02x"),
        );
        let answer = publish(&registry, &subset, frame).map(|f| f.payload().clone());
        // Nobody holds f0 or f1: two "no such session".
        let mut expected = vec![0u8; ANSWER_LEN];
        expected[19] = 2;
        assert_eq!(answer, Some(Bytes::from(expected)));
    }
}
