//! `msgi`: serve, send and demo for the MSGI wire protocol.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use msgi::{Client, Frame, Kind, Server};
use tracing_subscriber::EnvFilter;

mod bench;
mod demo;
mod reference;
mod stack;

#[derive(Parser, Debug)]
#[command(
    name = "msgi",
    version,
    about = "Framed TCP messaging: serve, send, demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an echo server: DATA, CONTROL and application frames are answered
    /// with the same kind, flags, payload and request id.
    Serve(ServeArgs),
    /// Send one frame and print the answer.
    Send(SendArgs),
    /// Start a chat server on loopback, connect clients and show broadcast,
    /// a private message, request/response and a graceful shutdown.
    Demo,
    /// Measure an MSGI server: throughput, connection rate, idle memory, latency.
    Bench(bench::BenchArgs),
    /// The raw-tokio reference echo server `msgi bench` measures msgi against.
    #[command(hide = true)]
    ReferenceServer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Most concurrent sessions.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Largest frame accepted, header included, in bytes.
    #[arg(long, default_value_t = msgi::DEFAULT_MAX_FRAME_SIZE)]
    max_frame_size: usize,
    /// Close sessions silent for this many seconds (0 disables).
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    #[command(flatten)]
    wire: stack::WireArgs,
    /// Answer requests not handled within this many milliseconds with ERROR.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Print `LISTENING <addr>` on stdout once listening (for scripts).
    #[arg(long)]
    announce: bool,
    /// Limit each session to this many frames per second.
    #[arg(long)]
    rate_limit: Option<f64>,
    /// What to do with frames over the rate limit.
    #[arg(long, value_enum, default_value_t = stack::Policy::Reject)]
    rate_limit_policy: stack::Policy,
}

#[derive(clap::Args, Debug)]
struct SendArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: String,
    /// Send with a request id and wait for the answer carrying it.
    #[arg(long)]
    correlated: bool,
    /// Frame kind: data, control, ping, or a number (291 or 0x123).
    #[arg(long, default_value = "data")]
    kind: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5)]
    wait: u64,
    /// Milliseconds to wait for the answer (overrides --wait).
    #[arg(long)]
    timeout_ms: Option<u64>,
    #[command(flatten)]
    wire: stack::WireArgs,
    /// The payload, as text.
    text: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let default = if matches!(cli.command, Command::Demo) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Send(args) => send(args).await,
        Command::Demo => demo::run().await,
        Command::Bench(args) => bench::run(args).await,
        Command::ReferenceServer { listen } => {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            announce(listener.local_addr()?)?;
            reference::run(listener).await?;
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    // Without wire flags, run the plain codec: no transform stack per session.
    if args.wire.is_empty() {
        serve_with(args, msgi::FrameCodec::new()).await
    } else {
        let framing = args.wire.framing()?;
        serve_with(args, framing).await
    }
}

async fn serve_with<C: msgi::Framing + Clone>(args: ServeArgs, framing: C) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let idle = (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout));
    let server = Server::builder()
        .framing(framing)
        .max_connections(args.max_connections)
        .max_frame_size(args.max_frame_size)
        .idle_timeout(idle)
        .on_connect(|s| tracing::info!(session = %s.id(), remote = %s.remote_addr(), "connected"))
        .on_disconnect(|s, reason| tracing::info!(session = %s.id(), client = %s.client_id(), %reason, "disconnected"))
        .build();
    if args.announce {
        announce(listener.local_addr()?)?;
    }
    tracing::info!(addr = %listener.local_addr()?, layers = %args.wire.describe(), "msgi echo server listening");
    // The frame itself is the answer: same kind, flags, payload and request
    // id (its extensions never reach the wire).
    let echo =
        tower::service_fn(
            |frame: Frame| async move { Ok::<_, std::convert::Infallible>(Some(frame)) },
        );
    let echo = stack::request_layers(args.timeout_ms, args.rate_limit, args.rate_limit_policy)
        .service(echo);
    let shutdown = async {
        // If Ctrl-C cannot be watched, run until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down");
    };
    server.serve_with_shutdown(listener, echo, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

fn announce(addr: SocketAddr) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "LISTENING {addr}")?;
    out.flush()?;
    Ok(())
}

fn parse_kind(text: &str) -> Result<Kind> {
    let kind = match text.to_ascii_lowercase().as_str() {
        "data" => Kind::DATA,
        "control" => Kind::CONTROL,
        "ping" => Kind::PING,
        other => {
            let value = match other.strip_prefix("0x") {
                Some(hex) => u16::from_str_radix(hex, 16),
                None => other.parse(),
            }
            .with_context(|| format!("unknown kind {text:?}"))?;
            match Kind::new(value) {
                Some(kind) if kind.is_delivered() => kind,
                _ => bail!("kind {value:#x} is not DATA, CONTROL, PING or 0x100-0xFFF"),
            }
        }
    };
    Ok(kind)
}

async fn send(args: SendArgs) -> Result<()> {
    let kind = parse_kind(&args.kind)?;
    let wait = args
        .timeout_ms
        .map_or(Duration::from_secs(args.wait), Duration::from_millis);
    let client = Client::builder()
        .framing(args.wire.framing()?)
        .connect_timeout(wait)
        .connect(args.addr.clone())
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let frame = Frame::new(kind, args.text.into_bytes());
    let answer = if args.correlated || kind == Kind::PING {
        tokio::time::timeout(wait, client.call(frame))
            .await
            .context("no answer in time")??
    } else {
        let mut incoming = client.incoming().context("incoming stream taken")?;
        client.send(frame).await?;
        tokio::time::timeout(wait, incoming.recv())
            .await
            .context("no answer in time")?
            .context("connection closed without an answer")?
    };
    match answer.request_id() {
        Some(id) => println!("{} id={id} {}", answer.kind(), answer.payload_text()),
        None => println!("{} {}", answer.kind(), answer.payload_text()),
    }
    client.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse() {
        assert_eq!(parse_kind("DATA").unwrap(), Kind::DATA);
        assert_eq!(parse_kind("0x123").unwrap().get(), 0x123);
        assert_eq!(parse_kind("4095").unwrap().get(), 0xFFF);
        assert!(parse_kind("0x0ab").is_err());
        assert!(parse_kind("heartbeat").is_err());
    }
}
