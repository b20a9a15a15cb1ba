//! `msgi bench`: a load generator for any MSGI server.
//!
//! Without `--addr` it starts the servers itself, each in a child process
//! on loopback (so server and generator never share a runtime), and runs
//! them alternately, msgi then the raw-tokio reference, for `--rounds`
//! rounds: every figure is a median and a ratio msgi / reference.
//!
//! `fanout` measures broadcast instead, against `msgi fanout-server` (see
//! the `fanout` module).

#[path = "bench_ack.rs"]
mod bench_ack;
#[path = "bench_stream.rs"]
mod bench_stream;
#[path = "bench_ws.rs"]
mod bench_ws;
#[path = "bench_fanout.rs"]
mod fanout;
pub(crate) use fanout::{serve as fanout_serve, FanoutServerArgs};

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use msgi::{Frame, Framing, Kind, MakeFraming, Side};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::stack::WireArgs;
use crate::tls::BenchTls;

/// The name of the msgi-over-TLS server in the runs and the report.
const MSGI_TLS: &str = "msgi+tls";
/// The name of msgi over WebSocket (`msgi serve --ws-listen`) in the runs
/// and the report.
const MSGI_WS: &str = "msgi+ws";

#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    /// What to measure.
    #[arg(value_enum, default_value_t = Mode::Throughput)]
    mode: Mode,
    /// Measure the server at this address instead of starting servers.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// With --addr: the server's process id, for its CPU time and memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Which servers to start (without --addr).
    #[arg(long, value_enum, default_value_t = Servers::Both)]
    servers: Servers,
    /// Rounds per server, run alternately (A B A B ...); medians are reported.
    #[arg(long, default_value_t = 2, value_parser = crate::flags::count)]
    rounds: usize,
    /// Connections (throughput, connect).
    #[arg(short, long, default_value_t = 4, value_parser = crate::flags::count)]
    connections: usize,
    /// Frames in flight per connection (throughput).
    #[arg(short, long, default_value_t = 32, value_parser = crate::flags::count)]
    depth: usize,
    /// Payload bytes per frame (latency defaults to 64 when this is not given).
    #[arg(short, long)]
    size: Option<usize>,
    /// Seconds per measurement.
    #[arg(short = 't', long, default_value_t = 5.0, value_parser = crate::flags::seconds)]
    duration: f64,
    /// Send one-way frames (the echo comes back uncorrelated) instead of calls.
    #[arg(long)]
    one_way: bool,
    /// Sessions to open (idle, fanout).
    #[arg(long, default_value_t = 10_000, value_parser = crate::flags::count)]
    sessions: usize,
    /// Fanout: deliveries offered per second (publishes x recipients);
    /// without it, one publish at a time, as fast as the server takes them.
    #[arg(long, value_parser = crate::flags::rate)]
    rate: Option<f64>,
    /// Fanout: whom each publish goes to.
    #[arg(long, value_enum, default_value_t = fanout::Target::All)]
    target: fanout::Target,
    /// Fanout: the sessions of `--target subset` (client ids f0 .. f<K-1>).
    #[arg(long, default_value_t = 1000, value_parser = crate::flags::count)]
    subset: usize,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    wire: WireArgs,
    /// Also run msgi over TLS (server `msgi+tls`, a throwaway certificate),
    /// alternately with the others (throughput, latency, idle).
    #[arg(long)]
    tls: bool,
    /// With --addr: connect with TLS, verifying the server's certificate
    /// (for the IP address of --addr) with the CA certificates in this
    /// file (PEM), e.g. a server started with the files of `msgi certs`
    /// (throughput, latency, idle).
    #[arg(long, value_name = "FILE", requires = "addr", conflicts_with = "tls")]
    tls_ca: Option<std::path::PathBuf>,
    /// Also run msgi over WebSocket (server `msgi+ws`: `msgi serve
    /// --ws-listen`; the generator sends each frame as one binary
    /// WebSocket message), alternately with the others (throughput,
    /// latency). With --addr: the address is a WebSocket listener's.
    #[arg(long)]
    ws: bool,
    /// Throughput of one-way frames sent with msgi's client against
    /// `msgi serve --ack`: plain (counted once written) and with
    /// acknowledged delivery (counted once acknowledged), alternately.
    #[arg(long)]
    ack: bool,
    /// Throughput of one-way frames streamed into `msgi serve --discard`,
    /// which opens (with --key-file) and drops each: payload bytes
    /// delivered and verified per second, one seal per byte in the
    /// generator and one open in the server (the echo modes pay four).
    /// Frames count once a PING sent after them is answered.
    #[arg(long)]
    stream: bool,
    /// Run the msgi servers it starts with metrics on (`serve --metrics`:
    /// the observer and its endpoint), to measure their overhead against a
    /// run without.
    #[arg(long)]
    metrics: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Connections x frames in flight, for a duration.
    Throughput,
    /// Connect, PING, PONG, close, in loops.
    Connect,
    /// Open sessions and leave them idle; server memory per session.
    Idle,
    /// One frame at a time.
    Latency,
    /// Broadcasts to --sessions sessions (msgi fanout-server only).
    Fanout,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Servers {
    /// msgi and the reference, alternately.
    Both,
    /// msgi only.
    Msgi,
    /// The raw-tokio reference only.
    Reference,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Measurement {
    server: String,
    round: usize,
    messages: u64,
    seconds: f64,
    msgs_per_sec: f64,
    mb_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    errors: u64,
    /// Server CPU (user + system) per message, microseconds.
    server_cpu_us_per_msg: Option<f64>,
    /// Server resident memory per idle session, bytes.
    server_rss_per_session: Option<f64>,
    /// What a fanout run adds.
    #[serde(skip_serializing_if = "Option::is_none")]
    fanout: Option<fanout::Fanout>,
}

/// A server in a child process.
struct ChildServer {
    child: Child,
    addr: SocketAddr,
}

impl ChildServer {
    fn start(kind: &str, args: &BenchArgs, tls: Option<&BenchTls>) -> Result<ChildServer> {
        let wire = &args.wire;
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        if kind == "fanout" {
            let subset = args.subset.to_string();
            cmd.args([
                "fanout-server",
                "--listen",
                "127.0.0.1:0",
                "--subset",
                &subset,
            ]);
            cmd.args(wire.to_args());
        } else if kind == "msgi" || kind == MSGI_TLS || kind == MSGI_WS || args.ack || args.stream {
            cmd.args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--announce",
                "--idle-timeout",
                "0",
                "--max-connections",
                "1000000",
            ]);
            cmd.args(wire.to_args());
            if args.ack {
                cmd.arg("--ack");
            }
            if args.stream {
                cmd.arg("--discard");
            }
            if let (MSGI_TLS, Some(tls)) = (kind, tls) {
                cmd.args(tls.serve.to_args());
            }
            if kind == MSGI_WS {
                cmd.args(["--ws-listen", "127.0.0.1:0"]);
            }
            if args.metrics {
                cmd.args(["--metrics", "127.0.0.1:0"]);
            }
        } else {
            cmd.args(["reference-server", "--listen", "127.0.0.1:0"]);
        }
        cmd.env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("starting the server process")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if kind == MSGI_WS {
            // The second line: `LISTENING ws://ADDR/`.
            line.clear();
            stdout.read_line(&mut line)?;
        }
        if args.metrics && cmd.get_args().any(|a| a == "--metrics") {
            // The last line, `METRICS http://ADDR/metrics`, read so that
            // the server's write of it never meets a closed pipe.
            let mut metrics = String::new();
            stdout.read_line(&mut metrics)?;
            if !metrics.starts_with("METRICS ") {
                bail!("the server did not announce its metrics endpoint: {metrics:?}");
            }
        }
        let announced = line
            .trim()
            .strip_prefix("LISTENING ")
            .context("server did not announce its address")?;
        let addr = match announced.strip_prefix("ws://") {
            Some(ws) => ws.trim_end_matches('/'),
            None => announced,
        };
        let addr = addr.parse()?;
        Ok(ChildServer { child, addr })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) of a process, from /proc.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // Linux reports clock ticks of 1/100 s on every mainstream configuration.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Resident memory of a process in bytes, from /proc.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub(crate) async fn run(args: BenchArgs) -> Result<()> {
    let size = args.size.unwrap_or(match args.mode {
        Mode::Latency => 64,
        Mode::Fanout => 128,
        _ => 1024,
    });
    let tls = if args.tls {
        if args.addr.is_some() || args.servers == Servers::Reference {
            bail!("--tls starts msgi over TLS itself: leave out --addr and --servers reference");
        }
        if !matches!(args.mode, Mode::Throughput | Mode::Latency | Mode::Idle) {
            bail!("--tls measures throughput, latency and idle sessions");
        }
        Some(BenchTls::new()?)
    } else if let (Some(ca), Some(addr)) = (&args.tls_ca, args.addr) {
        if args.ws || !matches!(args.mode, Mode::Throughput | Mode::Latency | Mode::Idle) {
            bail!("--tls-ca measures throughput, latency and idle sessions, not with --ws");
        }
        Some(BenchTls::to_server(ca, addr)?)
    } else {
        None
    };
    if args.ws {
        if args.servers == Servers::Reference || args.tls || args.ack {
            bail!("--ws runs msgi over WebSocket: not with --servers reference, --tls or --ack");
        }
        if !matches!(args.mode, Mode::Throughput | Mode::Latency) {
            bail!("--ws measures throughput and latency");
        }
        if args.wire.psk()?.is_some() {
            bail!("--key-file runs the pre-shared-key handshake on TCP only: not with --ws");
        }
    }
    if args.stream
        && (args.mode != Mode::Throughput
            || args.tls
            || args.ws
            || args.ack
            || args.servers == Servers::Reference)
    {
        bail!("--stream measures msgi's throughput over TCP: not with --tls, --ws, --ack or --servers reference");
    }
    if args.mode == Mode::Fanout {
        // Before the server starts: it inherits the limit.
        fanout::prepare(args.sessions)?;
    }
    let mut results = Vec::new();
    if let Some(addr) = args.addr {
        for round in 0..args.rounds {
            let dial = match &tls {
                Some(tls) => Dial::Tls(tls),
                None if args.ws => Dial::Ws,
                None => Dial::Tcp,
            };
            results.push(measure(&args, size, "target", round, addr, args.pid, dial).await?);
        }
    } else {
        let kinds: &[&str] = match (args.servers, tls.is_some()) {
            // The reference server does not broadcast.
            _ if args.mode == Mode::Fanout => &["fanout"],
            _ if args.ack => &[bench_ack::PLAIN, bench_ack::ACKED],
            _ if args.stream => &[bench_stream::STREAM],
            _ if args.ws && args.servers == Servers::Both => &["msgi", MSGI_WS, "reference"],
            _ if args.ws => &["msgi", MSGI_WS],
            (Servers::Both, false) => &["msgi", "reference"],
            (Servers::Both, true) => &["msgi", MSGI_TLS, "reference"],
            (Servers::Msgi, false) => &["msgi"],
            (Servers::Msgi, true) => &["msgi", MSGI_TLS],
            (Servers::Reference, _) => &["reference"],
        };
        for round in 0..args.rounds {
            for kind in kinds {
                let tls = tls.as_ref().filter(|_| *kind == MSGI_TLS);
                let server = ChildServer::start(kind, &args, tls)?;
                let pid = Some(server.pid());
                let dial = match tls {
                    Some(tls) => Dial::Tls(tls),
                    None if *kind == MSGI_WS => Dial::Ws,
                    None => Dial::Tcp,
                };
                let m = measure(&args, size, kind, round, server.addr, pid, dial).await?;
                results.push(m);
            }
        }
    }
    report(&args, size, &results)
}

async fn measure(
    args: &BenchArgs,
    size: usize,
    server: &str,
    round: usize,
    addr: SocketAddr,
    pid: Option<u32>,
    dial: Dial<'_>,
) -> Result<Measurement> {
    let label = format!("{server} #{}", round + 1);
    let tls = match dial {
        Dial::Tls(tls) => Some(tls),
        Dial::Tcp | Dial::Ws => None,
    };
    let cpu_before = pid.and_then(cpu_time);
    let mut m = match args.mode {
        Mode::Throughput if args.stream => bench_stream::throughput(args, addr, size).await?,
        Mode::Throughput if args.ack => {
            bench_ack::throughput(args, addr, size, server == bench_ack::ACKED, round).await?
        }
        Mode::Throughput => {
            throughput(
                args,
                addr,
                size,
                args.connections,
                args.depth,
                args.one_way,
                &label,
                dial,
            )
            .await?
        }
        Mode::Latency => throughput(args, addr, size, 1, 1, false, &label, dial).await?,
        Mode::Connect => connect_loops(args, addr, &label).await?,
        Mode::Idle => idle(args, addr, pid, &label, tls).await?,
        Mode::Fanout => fanout::fanout(args, size, addr, pid).await?,
    };
    if let (Some(before), Some(after)) = (cpu_before, pid.and_then(cpu_time)) {
        // Fanout times the server's CPU over the publishing only.
        if m.messages > 0 && !matches!(args.mode, Mode::Idle | Mode::Fanout) {
            m.server_cpu_us_per_msg =
                Some((after - before).as_secs_f64() * 1e6 / m.messages as f64);
        }
    }
    m.server = server.into();
    m.round = round + 1;
    Ok(m)
}

fn progress(
    label: &str,
    seconds: f64,
    done: Arc<AtomicU64>,
) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = ProgressBar::new((seconds * 1000.0) as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>14} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut last = 0;
            let mut interval = tokio::time::interval(Duration::from_millis(250));
            loop {
                interval.tick().await;
                let now = done.load(Ordering::Relaxed);
                bar.set_position(start.elapsed().as_millis() as u64);
                bar.set_message(format!("{:>10.0} /s", (now - last) as f64 * 4.0));
                last = now;
            }
        })
    };
    (bar, ticker)
}

/// A fresh client-side framing: one connection's (or one direction's) state.
fn framing(wire: &WireArgs) -> Result<crate::stack::Framing> {
    Ok(wire.framing()?.make_framing(Side::Client))
}

/// With --key-file, runs the pre-shared-key handshake on `stream` and keys
/// `framings` (a connection's sending and receiving states); else nothing.
async fn handshake<Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    wire: &WireArgs,
    stream: &mut Io,
    framings: &mut [&mut crate::stack::Framing],
) -> Result<()> {
    if let Some(psk) = wire.psk()? {
        let keys = psk.client_handshake(stream).await?;
        for framing in framings {
            framing.set_session_keys(&keys);
        }
    }
    Ok(())
}

/// C connections, each keeping D frames in flight, verifying every answer.
#[allow(clippy::too_many_arguments)]
async fn throughput(
    args: &BenchArgs,
    addr: SocketAddr,
    size: usize,
    connections: usize,
    depth: usize,
    one_way: bool,
    label: &str,
    dial: Dial<'_>,
) -> Result<Measurement> {
    let payload = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let run = Run::begin(args, label)?;
    let (done, errors, deadline) = (run.done.clone(), run.errors.clone(), run.deadline);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let conn = Connection {
            payload: payload.clone(),
            depth,
            one_way,
            deadline,
            done: done.clone(),
            errors: errors.clone(),
        };
        // The writer and the reader each get their own state (their own
        // sequence, and nonce prefix), as the sending and receiving halves
        // of one connection.
        let (mut enc, mut dec) = (framing(&args.wire)?, framing(&args.wire)?);
        let task = match dial {
            Dial::Tls(tls) => {
                let mut io = tls.connect(addr).await?;
                handshake(&args.wire, &mut io, &mut [&mut enc, &mut dec]).await?;
                let (rd, wr) = tokio::io::split(io);
                tokio::spawn(conn.run(Bytewise(rd), Bytewise(wr), enc, dec))
            }
            Dial::Tcp => {
                let mut stream = TcpStream::connect(addr).await.context("connecting")?;
                stream.set_nodelay(true)?;
                handshake(&args.wire, &mut stream, &mut [&mut enc, &mut dec]).await?;
                let (rd, wr) = stream.into_split();
                tokio::spawn(conn.run(Bytewise(rd), Bytewise(wr), enc, dec))
            }
            Dial::Ws => {
                let (rd, wr) = bench_ws::connect(addr).await?;
                tokio::spawn(conn.run(rd, wr, enc, dec))
            }
        };
        tasks.push(task);
    }
    run.finish(tasks, size).await
}

/// What a timed run shares between its tasks, and its summary at the end.
struct Run {
    start: Instant,
    deadline: Instant,
    done: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Run {
    /// Starts the clock and the progress bar.
    fn begin(args: &BenchArgs, label: &str) -> Result<Run> {
        let start = Instant::now();
        let deadline = start
            .checked_add(Duration::from_secs_f64(args.duration))
            .context("--duration is too long for this system's clock")?;
        let done = Arc::new(AtomicU64::new(0));
        let (bar, ticker) = if args.json {
            (ProgressBar::hidden(), tokio::spawn(async {}))
        } else {
            progress(label, args.duration, done.clone())
        };
        Ok(Run {
            start,
            deadline,
            done,
            errors: Arc::new(AtomicU64::new(0)),
            bar,
            ticker,
        })
    }

    /// Waits for the tasks (each returns its latency histogram) and sums up.
    async fn finish(
        self,
        tasks: Vec<tokio::task::JoinHandle<Result<Histogram<u64>>>>,
        payload: usize,
    ) -> Result<Measurement> {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for task in tasks {
            hist.add(task.await??)?;
        }
        let seconds = self.start.elapsed().as_secs_f64();
        self.ticker.abort();
        self.bar.finish_and_clear();
        let messages = self.done.load(Ordering::Relaxed);
        Ok(Measurement {
            messages,
            seconds,
            msgs_per_sec: messages as f64 / seconds,
            mb_per_sec: messages as f64 * payload as f64 / seconds / 1e6,
            p50_us: hist.value_at_quantile(0.5) as f64 / 1e3,
            p99_us: hist.value_at_quantile(0.99) as f64 / 1e3,
            p999_us: hist.value_at_quantile(0.999) as f64 / 1e3,
            errors: self.errors.load(Ordering::Relaxed),
            ..Measurement::default()
        })
    }
}

/// How the generator reaches the server under test.
#[derive(Clone, Copy)]
enum Dial<'a> {
    /// Plain TCP.
    Tcp,
    /// TLS with the throwaway certificate of `msgi+tls`.
    Tls(&'a BenchTls),
    /// WebSocket: one frame per binary message (`msgi+ws`).
    Ws,
}

/// Where a bench connection's frames go.
trait FrameSink: Send + 'static {
    /// Sends the frames encoded in `out`, the `n`th ending at `ends[n]`.
    fn send(
        &mut self,
        out: &mut BytesMut,
        ends: &[usize],
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    /// Nothing more will be sent (the answers may still be coming).
    fn stop(&mut self) -> impl std::future::Future<Output = ()> + Send;
    /// Every answer has come.
    fn finish(self) -> impl std::future::Future<Output = ()> + Send;
}

/// Where a bench connection's answers come from.
trait FrameSource: Send + 'static {
    /// Appends what arrived to `buf`: 0 at the end of the stream.
    fn read_into(
        &mut self,
        buf: &mut BytesMut,
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send;
}

/// A byte stream's half: frames go out in one write, answers are read in chunks.
struct Bytewise<T>(T);

impl<W: AsyncWrite + Unpin + Send + 'static> FrameSink for Bytewise<W> {
    async fn send(&mut self, out: &mut BytesMut, _ends: &[usize]) -> std::io::Result<()> {
        self.0.write_all(out).await?;
        // A TLS stream may keep what the socket did not take yet until
        // flushed (a TCP stream's flush does nothing).
        self.0.flush().await
    }

    async fn stop(&mut self) {
        // A half-close: the server answers what it read, then closes.
        let _ = self.0.shutdown().await;
    }

    async fn finish(self) {}
}

impl<R: AsyncRead + Unpin + Send + 'static> FrameSource for Bytewise<R> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        self.0.read_buf(buf).await
    }
}

struct Connection {
    payload: Bytes,
    depth: usize,
    one_way: bool,
    deadline: Instant,
    done: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

impl Connection {
    /// Runs one connection; returns its latency histogram (nanoseconds).
    async fn run<R: FrameSource, W: FrameSink>(
        self,
        mut rd: R,
        mut wr: W,
        mut enc: crate::stack::Framing,
        mut dec: crate::stack::Framing,
    ) -> Result<Histogram<u64>> {
        // Request ids are slots 0..depth; a slot is free again once answered.
        let (free_tx, mut free_rx) = mpsc::unbounded_channel::<u32>();
        for id in 0..self.depth as u32 {
            let _ = free_tx.send(id);
        }
        let sent: Arc<Mutex<SentTimes>> = Arc::new(Mutex::new(SentTimes::new(self.depth)));
        let writer = {
            let sent = sent.clone();
            let payload = self.payload.clone();
            let one_way = self.one_way;
            let deadline = self.deadline;
            tokio::spawn(async move {
                let mut out = BytesMut::new();
                // Where each frame of `out` ends (a WebSocket sends one
                // message per frame).
                let mut ends = Vec::with_capacity(32);
                while let Some(first) = free_rx.recv().await {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let mut id = Some(first);
                    while let Some(slot) = id {
                        let mut frame = Frame::data(payload.clone());
                        if !one_way {
                            frame.set_request_id(Some(slot));
                        }
                        sent.lock()
                            .map_err(|_| anyhow::anyhow!("poisoned"))?
                            .record(slot, one_way);
                        enc.encode(frame, &mut out)?;
                        ends.push(out.len());
                        id = free_rx.try_recv().ok();
                    }
                    wr.send(&mut out, &ends).await?;
                    out.clear();
                    ends.clear();
                }
                wr.stop().await;
                Ok::<_, anyhow::Error>(wr)
            })
        };
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut outstanding;
        'read: loop {
            loop {
                let frame = match dec.decode(&mut buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => bail!("bad frame from server: {e}"),
                };
                if frame.kind() == Kind::HEARTBEAT {
                    continue;
                }
                let slot = frame.request_id();
                let ok = frame.kind() == Kind::DATA
                    && frame.payload() == &self.payload
                    && slot.is_some() != self.one_way;
                let started = sent
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .take(slot.unwrap_or(0), self.one_way);
                match (ok, started) {
                    (true, Some(t)) => {
                        hist.saturating_record(t.elapsed().as_nanos() as u64);
                        self.done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        self.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let _ = free_tx.send(slot.unwrap_or(0));
            }
            outstanding = sent
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .outstanding();
            if writer.is_finished() && outstanding == 0 {
                break 'read;
            }
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            // Wake up now and then to notice the writer has stopped.
            let read =
                tokio::time::timeout(Duration::from_millis(100), rd.read_into(&mut buf)).await;
            match read {
                Ok(Ok(0)) => break 'read,
                Err(_) if Instant::now() > self.deadline + Duration::from_secs(10) => break 'read,
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
        drop(free_tx);
        writer.await??.finish().await;
        self.errors.fetch_add(outstanding as u64, Ordering::Relaxed);
        Ok(hist)
    }
}

/// When each outstanding frame was sent: by slot for calls, in order for
/// one-way frames (their echoes come back in order).
struct SentTimes {
    by_slot: Vec<Option<Instant>>,
    fifo: VecDeque<Instant>,
}

impl SentTimes {
    fn new(depth: usize) -> Self {
        SentTimes {
            by_slot: vec![None; depth],
            fifo: VecDeque::with_capacity(depth),
        }
    }

    fn record(&mut self, slot: u32, one_way: bool) {
        if one_way {
            self.fifo.push_back(Instant::now());
        } else if let Some(s) = self.by_slot.get_mut(slot as usize) {
            *s = Some(Instant::now());
        }
    }

    fn take(&mut self, slot: u32, one_way: bool) -> Option<Instant> {
        if one_way {
            self.fifo.pop_front()
        } else {
            self.by_slot.get_mut(slot as usize)?.take()
        }
    }

    fn outstanding(&self) -> usize {
        self.fifo.len() + self.by_slot.iter().filter(|s| s.is_some()).count()
    }
}

/// One PING/PONG on a fresh connection with `framing`.
async fn ping_once(
    addr: SocketAddr,
    wire: &WireArgs,
    framing: &mut crate::stack::Framing,
) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    handshake(wire, &mut stream, &mut [&mut *framing]).await?;
    ping_on(&mut stream, framing).await?;
    Ok(stream)
}

/// One PING/PONG on `stream` with `framing`.
async fn ping_on<S>(stream: &mut S, framing: &mut crate::stack::Framing) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    framing.encode(Frame::ping("p"), &mut out)?;
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if let Some(f) = framing.decode(&mut buf)? {
            if f.kind() == Kind::PONG {
                return Ok(());
            }
            continue;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("closed before PONG");
        }
    }
}

async fn connect_loops(args: &BenchArgs, addr: SocketAddr, label: &str) -> Result<Measurement> {
    let run = Run::begin(args, label)?;
    let deadline = run.deadline;
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let done = run.done.clone();
        let errors = run.errors.clone();
        let wire = args.wire.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            while Instant::now() < deadline {
                let mut f = framing(&wire)?;
                let t = Instant::now();
                match ping_once(addr, &wire, &mut f).await {
                    Ok(stream) => {
                        hist.saturating_record(t.elapsed().as_nanos() as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                        // Reset instead of FIN: no TIME_WAIT piling up on either side.
                        let _ = stream.set_zero_linger();
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok::<_, anyhow::Error>(hist)
        }));
    }
    run.finish(tasks, 0).await
}

/// A session that stays open, over TCP or TLS.
type Held = Box<dyn std::any::Any + Send>;

/// Opens a session (TLS with `tls`), checks it with PING/PONG, keeps it.
async fn open_idle(
    addr: SocketAddr,
    wire: WireArgs,
    tls: Option<msgi_tls::TlsConnector>,
) -> Result<Held> {
    let mut f = framing(&wire)?;
    match tls {
        Some(connector) => {
            let mut stream = BenchTls::open(connector, addr).await?;
            handshake(&wire, &mut stream, &mut [&mut f]).await?;
            ping_on(&mut stream, &mut f).await?;
            Ok(Box::new(stream))
        }
        None => Ok(Box::new(ping_once(addr, &wire, &mut f).await?)),
    }
}

async fn idle(
    args: &BenchArgs,
    addr: SocketAddr,
    pid: Option<u32>,
    label: &str,
    tls: Option<&BenchTls>,
) -> Result<Measurement> {
    let done = Arc::new(AtomicU64::new(0));
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(args.sessions as u64);
        bar.set_prefix(label.to_owned());
        bar.set_style(
            ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} sessions")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    };
    // Settle the server first: one session, then measure the baseline.
    let connector = tls.map(BenchTls::connector);
    let warm = open_idle(addr, args.wire.clone(), connector.clone()).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = pid.and_then(rss);
    let start = Instant::now();
    let mut streams = Vec::with_capacity(args.sessions);
    let mut pending = tokio::task::JoinSet::new();
    let mut opened = 0;
    while opened < args.sessions || !pending.is_empty() {
        while opened < args.sessions && pending.len() < 64 {
            pending.spawn(open_idle(addr, args.wire.clone(), connector.clone()));
            opened += 1;
        }
        if let Some(joined) = pending.join_next().await {
            streams.push(joined??);
            done.fetch_add(1, Ordering::Relaxed);
            bar.set_position(streams.len() as u64);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // Let the server finish freeing per-request buffers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = pid.and_then(rss);
    bar.finish_and_clear();
    let per_session = match (before, after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / streams.len().max(1) as f64),
        _ => None,
    };
    drop(streams);
    drop(warm);
    Ok(Measurement {
        messages: done.load(Ordering::Relaxed),
        seconds,
        msgs_per_sec: args.sessions as f64 / seconds,
        server_rss_per_session: per_session,
        ..Measurement::default()
    })
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

#[derive(Serialize)]
struct Report<'a> {
    mode: Mode,
    size: usize,
    connections: usize,
    depth: usize,
    one_way: bool,
    /// Fanout only: the receiving sessions, whom publishes go to, the
    /// offered rate (none: one publish at a time).
    #[serde(skip_serializing_if = "Option::is_none")]
    sessions: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<fanout::Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    layers: String,
    runs: &'a [Measurement],
    medians: Vec<Measurement>,
}

fn report(args: &BenchArgs, size: usize, results: &[Measurement]) -> Result<()> {
    let mut servers: Vec<String> = Vec::new();
    for r in results {
        if !servers.contains(&r.server) {
            servers.push(r.server.clone());
        }
    }
    let medians: Vec<Measurement> = servers
        .iter()
        .map(|s| {
            let runs: Vec<&Measurement> = results.iter().filter(|r| &r.server == s).collect();
            let med = |f: fn(&Measurement) -> f64| {
                median(runs.iter().map(|r| f(r)).collect()).unwrap_or(0.0)
            };
            let med_opt = |f: fn(&Measurement) -> Option<f64>| {
                median(runs.iter().filter_map(|r| f(r)).collect())
            };
            Measurement {
                server: s.clone(),
                round: 0,
                messages: runs.iter().map(|r| r.messages).sum(),
                seconds: runs.iter().map(|r| r.seconds).sum(),
                msgs_per_sec: med(|r| r.msgs_per_sec),
                mb_per_sec: med(|r| r.mb_per_sec),
                p50_us: med(|r| r.p50_us),
                p99_us: med(|r| r.p99_us),
                p999_us: med(|r| r.p999_us),
                errors: runs.iter().map(|r| r.errors).sum(),
                server_cpu_us_per_msg: med_opt(|r| r.server_cpu_us_per_msg),
                server_rss_per_session: med_opt(|r| r.server_rss_per_session),
                fanout: fanout_median(&runs),
            }
        })
        .collect();
    if args.json {
        let report = Report {
            mode: args.mode,
            size,
            // What the run used: latency runs one connection, one frame at a time.
            connections: if args.mode == Mode::Latency {
                1
            } else {
                args.connections
            },
            depth: if args.mode == Mode::Latency {
                1
            } else {
                args.depth
            },
            one_way: args.one_way,
            sessions: (args.mode == Mode::Fanout).then_some(args.sessions),
            target: (args.mode == Mode::Fanout).then_some(args.target),
            rate: args.rate.filter(|_| args.mode == Mode::Fanout),
            layers: args.wire.describe(),
            runs: results,
            medians,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "\nmode {:?}, {}, layers: {}, {} round(s)",
        args.mode,
        shape(args, size),
        args.wire.describe(),
        args.rounds
    );
    println!("runs:");
    for r in results {
        print_row(r, &format!("{} #{}", r.server, r.round));
    }
    println!("medians:");
    for m in &medians {
        print_row(m, &m.server);
    }
    if let (Some(a), Some(b)) = (
        medians.iter().find(|m| m.server == "msgi"),
        medians.iter().find(|m| m.server == "reference"),
    ) {
        let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
        print!(
            "msgi / reference: rate {:.2}",
            ratio(a.msgs_per_sec, b.msgs_per_sec)
        );
        print!(", p50 {:.2}", ratio(a.p50_us, b.p50_us));
        if let (Some(x), Some(y)) = (a.server_cpu_us_per_msg, b.server_cpu_us_per_msg) {
            print!(", cpu/msg {:.2}", ratio(x, y));
        }
        if let (Some(x), Some(y)) = (a.server_rss_per_session, b.server_rss_per_session) {
            print!(", rss/session {:.2}", ratio(x, y));
        }
        println!();
    }
    if let (Some(t), Some(a)) = (
        medians.iter().find(|m| m.server == MSGI_TLS),
        medians.iter().find(|m| m.server == "msgi"),
    ) {
        let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
        print!(
            "msgi+tls / msgi: rate {:.2}, p50 {:.2}",
            ratio(t.msgs_per_sec, a.msgs_per_sec),
            ratio(t.p50_us, a.p50_us)
        );
        if let (Some(x), Some(y)) = (t.server_cpu_us_per_msg, a.server_cpu_us_per_msg) {
            print!(", cpu/msg {:.2}", ratio(x, y));
        }
        println!();
    }
    if let (Some(w), Some(a)) = (
        medians.iter().find(|m| m.server == MSGI_WS),
        medians.iter().find(|m| m.server == "msgi"),
    ) {
        let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
        print!(
            "msgi+ws / msgi: rate {:.2}, p50 {:.2}",
            ratio(w.msgs_per_sec, a.msgs_per_sec),
            ratio(w.p50_us, a.p50_us)
        );
        if let (Some(x), Some(y)) = (w.server_cpu_us_per_msg, a.server_cpu_us_per_msg) {
            print!(", cpu/msg {:.2}", ratio(x, y));
        }
        println!();
    }
    Ok(())
}

/// What a run did, in the words of its mode.
fn shape(args: &BenchArgs, size: usize) -> String {
    match args.mode {
        Mode::Throughput if args.stream => format!(
            "{size} B payload, {} connection(s) streaming one-way frames into a server that \
             opens and drops them, confirmed by PING",
            args.connections
        ),
        Mode::Throughput => format!(
            "{size} B payload, {} connection(s) x {} in flight{}",
            args.connections,
            args.depth,
            if args.one_way { ", one-way" } else { "" }
        ),
        Mode::Latency => format!("{size} B payload, 1 connection, one frame at a time"),
        Mode::Connect => format!("{} connect-PING-close loop(s)", args.connections),
        Mode::Idle => format!("{} idle session(s)", args.sessions),
        Mode::Fanout => format!(
            "{size} B payload, {} session(s), target {:?}{}, {}",
            args.sessions,
            args.target,
            if args.target == fanout::Target::Subset {
                format!(" ({})", args.subset.min(args.sessions))
            } else {
                String::new()
            },
            match args.rate {
                Some(r) => format!("{r:.0} deliveries/s offered"),
                None => "one publish at a time".to_owned(),
            }
        ),
    }
}

fn print_row(m: &Measurement, name: &str) {
    let cpu = m
        .server_cpu_us_per_msg
        .map_or_else(|| "-".into(), |c| format!("{c:.2} µs"));
    let rss = m
        .server_rss_per_session
        .map_or_else(String::new, |r| format!("  rss/session {:.0} B", r));
    let fan = m.fanout.as_ref().map_or_else(String::new, |f| {
        format!(
            "  offered {:.0}/s  lost {}  refused (slow) {}  refused (other) {}  sessions closed {}",
            f.offered_per_sec, f.lost, f.refused_slow, f.refused_other, f.sessions_closed
        ) + if f.publisher_closed {
            "  PUBLISHER CLOSED by the server"
        } else {
            ""
        }
    });
    println!(
        "  {name:<14} {:>10.0} msg/s {:>9.1} MB/s  p50 {:>8.1} µs  p99 {:>8.1} µs  p99.9 {:>8.1} µs  cpu/msg {cpu:>9}  errors {}{rss}{fan}",
        m.msgs_per_sec, m.mb_per_sec, m.p50_us, m.p99_us, m.p999_us, m.errors
    );
}

/// The fanout figures of several runs: the median offered rate, the
/// counts summed (a loss in any run shows).
fn fanout_median(runs: &[&Measurement]) -> Option<fanout::Fanout> {
    let all: Vec<&fanout::Fanout> = runs.iter().filter_map(|r| r.fanout.as_ref()).collect();
    let first = all.first()?;
    let sum = |f: fn(&fanout::Fanout) -> u64| all.iter().map(|x| f(x)).sum();
    Some(fanout::Fanout {
        recipients: first.recipients,
        publishes: sum(|f| f.publishes),
        offered_per_sec: median(all.iter().map(|f| f.offered_per_sec).collect()).unwrap_or(0.0),
        queued: sum(|f| f.queued),
        lost: sum(|f| f.lost),
        refused_slow: sum(|f| f.refused_slow),
        refused_other: sum(|f| f.refused_other),
        sessions_closed: sum(|f| f.sessions_closed),
        publisher_closed: all.iter().any(|f| f.publisher_closed),
    })
}
