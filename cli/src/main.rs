//! `msgi`: serve, send, demo and bench for the MSGI wire protocol.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use msgi::proto::client::{ConnectionError, Violation};
use msgi::{Client, ClientError, Frame, Kind, Reconnect, Server};
use msgi_container::Container;
use tracing_subscriber::EnvFilter;

mod admin;
mod bench;
mod demo;
mod flags;
mod gateway;
mod http;
mod metrics;
mod numbered;
mod reference;
mod stack;
mod tls;
mod top;

#[derive(Parser, Debug)]
#[command(
    name = "msgi",
    version,
    about = "Framed TCP messaging: serve, send, gateway, demo, bench, top"
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
    /// Write a throwaway CA, a server and a client certificate (PEM) to try
    /// TLS with: serve --tls-cert server.pem --tls-key server.key
    /// [--client-ca ca.pem], send --tls-ca ca.pem [--tls-cert client.pem
    /// --tls-key client.key].
    Certs(tls::CertsArgs),
    /// Spread requests over upstream msgi servers (p2c on load, or by client
    /// id), with routes by kind; answers ERROR when no upstream is up.
    Gateway(gateway::GatewayArgs),
    /// Measure an MSGI server: throughput, connection rate, idle memory, latency, fan-out.
    Bench(bench::BenchArgs),
    /// Show the sessions of `msgi serve --admin ADDR` in the terminal,
    /// refreshing (s: sort by the next column, q: quit; --once: one frame).
    Top(top::TopArgs),
    /// The broadcasting server `msgi bench fanout` measures.
    #[command(hide = true)]
    FanoutServer(bench::FanoutServerArgs),
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
    #[arg(long, default_value_t = 10_000, value_parser = flags::count)]
    max_connections: usize,
    /// Most concurrent sessions from one IP address (no limit unless given).
    #[arg(long, value_parser = flags::count)]
    max_connections_per_ip: Option<usize>,
    /// Largest frame accepted, header included, in bytes.
    #[arg(long, default_value_t = msgi::DEFAULT_MAX_FRAME_SIZE)]
    max_frame_size: usize,
    /// Close sessions silent for this many seconds (0 disables).
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    #[command(flatten)]
    wire: stack::WireArgs,
    /// Answer requests not handled within this many milliseconds with ERROR.
    #[arg(long, value_parser = flags::positive)]
    timeout_ms: Option<u64>,
    /// Print `LISTENING <addr>` on stdout once listening (for scripts).
    #[arg(long)]
    announce: bool,
    /// Limit each session to this many frames per second (above 0).
    #[arg(long, value_parser = flags::rate)]
    rate_limit: Option<f64>,
    /// What to do with frames over the rate limit.
    #[arg(long, value_enum, default_value_t = stack::Policy::Reject)]
    rate_limit_policy: stack::Policy,
    #[command(flatten)]
    tls: tls::ServeTls,
    /// Also serve MSGI over WebSocket on this address (one frame per binary
    /// message: browsers connect to ws://ADDR/), with the same settings,
    /// handler and registry (plain WebSocket: TLS applies to --listen).
    /// Limits apply per listener: --max-connections N allows N TCP and N
    /// WebSocket connections.
    #[arg(long, value_name = "ADDR")]
    ws_listen: Option<SocketAddr>,
    /// An origin whose pages may open WebSocket sessions (repeat for more;
    /// `*` for any). Default: the WebSocket address's own origin only.
    #[arg(long, value_name = "ORIGIN", requires = "ws_listen")]
    ws_allow_origin: Vec<String>,
    /// Acknowledged delivery (docs/RELIABILITY.md): acknowledge the one-way
    /// frames of clients that ask for it and drop the ones sent again.
    #[arg(long)]
    ack: bool,
    /// Answer nothing: read every frame, undo its wire layers (open and
    /// verify it, with --key-file) and drop it; PING is still answered.
    /// The server of `msgi bench --stream`.
    #[arg(long, conflicts_with_all = ["ack", "record", "timeout_ms", "rate_limit"])]
    discard: bool,
    /// Push recovery (docs/RELIABILITY.md; needs --ack): a push to a
    /// client that asked for it (`msgi send --receive`) is kept until the
    /// client has it, and sent again when it reconnects within
    /// --push-grace; a push that cannot be kept is refused to the pusher.
    /// Pushes are asked for with `msgi send --push-to ID` (a request of
    /// kind 0x110, payload `<client id> <text>`, answered `pushed <n> <pid>` or
    /// ERROR `push refused (<why>): ...`). Any connected client may push
    /// to any client id this way: a tool for testing, not for an open
    /// port. Kept in memory: a restarted server starts empty, and its
    /// clients are told so.
    #[arg(long, requires = "ack")]
    recover_pushes: bool,
    /// With --recover-pushes: pushes kept per client id (below the session
    /// outbox's 1024).
    #[arg(long, default_value_t = 1000, value_parser = flags::count)]
    push_frames: usize,
    /// With --recover-pushes: bytes of pushes kept per client id (their
    /// wire length; plus 4 per frame, below the session outbox's 4 MiB).
    #[arg(long, default_value_t = 256 * 1024, value_parser = flags::count)]
    push_bytes: usize,
    /// With --recover-pushes: seconds a client may be away before what was
    /// kept for it is dropped (and counted as missed).
    #[arg(long, default_value_t = 30.0, value_parser = flags::seconds)]
    push_grace: f64,
    /// With --recover-pushes: client ids pushes are kept for, at most (at
    /// most this many times --push-bytes of memory).
    #[arg(long, default_value_t = 1000, value_parser = flags::count)]
    push_clients: usize,
    /// Append the payload of every one-way DATA frame handed to the echo
    /// service to this file, one per line (for scripts/ack_restarts.sh).
    #[arg(long, value_name = "FILE")]
    record: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (connections, frames
    /// and bytes by kind, errors, closes, request latency, queue depths,
    /// refused requests).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Serve a live view of the sessions as JSON over HTTP on this address:
    /// GET /varz (totals), GET /connz?sort=COLUMN&limit=N&offset=M (the
    /// sessions), POST /connz/ID/disconnect (with --admin-token-file). It
    /// shows client ids and peer addresses to whoever reaches it: bind it
    /// to loopback or a private network. `msgi top` renders it.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Enable POST /connz/ID/disconnect for requests that present this
    /// file's contents (surrounding white space removed) as
    /// `Authorization: Bearer TOKEN`. Without it the view is read-only.
    #[arg(long, value_name = "FILE", requires = "admin")]
    admin_token_file: Option<std::path::PathBuf>,
}

#[derive(clap::Args, Debug)]
struct SendArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: String,
    /// Send with a request id and wait for the answer carrying it.
    #[arg(long)]
    correlated: bool,
    /// Frame kind: data, control, ping, or an application kind 0x100-0xfff
    /// (as hex 0x123 or decimal 291).
    #[arg(long, default_value = "data", value_parser = parse_kind)]
    kind: Kind,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5, value_parser = flags::positive)]
    wait: u64,
    /// Milliseconds to wait for the answer (overrides --wait).
    #[arg(long, value_parser = flags::positive)]
    timeout_ms: Option<u64>,
    #[command(flatten)]
    wire: stack::WireArgs,
    #[command(flatten)]
    tls: tls::SendTls,
    /// Send a container built from JSON instead of text, and print the answer as JSON:
    /// '{"message_type": "...", "values": {...}}' (also source_id, source_sub_id,
    /// target_id, target_sub_id; docs/PROTOCOL.md section 6).
    #[arg(long, value_name = "JSON", conflicts_with = "text")]
    container: Option<String>,
    /// Announce this client id (needed by --ack).
    #[arg(long)]
    client_id: Option<String>,
    /// Send N numbered one-way frames (payloads 0 .. N-1) instead of a
    /// payload, reconnecting as needed; prints what was acknowledged.
    #[arg(long, value_name = "N", conflicts_with_all = ["text", "container", "correlated"])]
    count: Option<u64>,
    /// With --count: acknowledged delivery (the server needs --ack); waits
    /// up to --wait seconds for the last acknowledgement.
    #[arg(long, requires_all = ["count", "client_id"])]
    ack: bool,
    /// With --count: push N numbered frames (0 .. N-1) to this client id
    /// through a server run with --recover-pushes, one request at a time;
    /// a refused push is asked again (for up to --wait seconds), one whose
    /// request was lost with the connection is not (it is printed as
    /// `unknown <n>`). Prints `pushed <n> <number> <server pid>` for each push made.
    #[arg(long, value_name = "ID", requires = "count", conflicts_with = "ack")]
    push_to: Option<String>,
    /// Receive pushes with push recovery as --client-id (the server needs
    /// --ack --recover-pushes), reconnecting as needed: prints each push's
    /// payload on a line until N came or none came for --wait seconds,
    /// then `received N fresh F missed M dropped D`.
    #[arg(long, value_name = "N", requires = "client_id",
          conflicts_with_all = ["text", "container", "correlated", "count"])]
    receive: Option<u64>,
    /// The payload, as text.
    #[arg(required_unless_present_any = ["container", "count", "receive"])]
    text: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    // Bad flags end here, with clap's usage error and exit code 2.
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
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Send(args) => send(args).await,
        Command::Demo => demo::run().await,
        Command::Gateway(args) => gateway::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Top(args) => top::run(args).await,
        Command::Certs(args) => tls::certs(args),
        Command::ReferenceServer { listen } => reference_server(listen).await,
        Command::FanoutServer(args) => bench::fanout_serve(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

/// Prints an error for a person: its message and each cause once, with
/// Display (never Debug, so no backtrace whatever `RUST_BACKTRACE` says),
/// then the advice of any [`Hint`] in the chain.
fn report(error: &anyhow::Error) {
    eprintln!("error: {error}");
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    for hint in error.chain().filter_map(|e| e.downcast_ref::<Hint>()) {
        eprintln!("hint: {}", hint.hint);
    }
}

/// An error that comes with advice on its likely cause.
#[derive(Debug)]
struct Hint {
    message: String,
    hint: String,
    source: Option<ClientError>,
}

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Hint {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

async fn reference_server(listen: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    announce(listener.local_addr()?)?;
    reference::run(listener).await?;
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    // Without wire flags, run the plain codec: no transform stack per session.
    if args.wire.is_empty() {
        serve_with(args, |_| Ok(msgi::FrameCodec::new())).await
    } else {
        serve_with(args, |args| args.wire.framing()).await
    }
}

async fn serve_with<C: msgi::MakeFraming>(
    args: ServeArgs,
    framing: impl Fn(&ServeArgs) -> Result<C>,
) -> Result<()> {
    // Every setting is checked before anything is bound or announced.
    let idle = (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout));
    // One registry and the same settings for every listener (TCP, WebSocket).
    let registry = msgi::Registry::new();
    // One set of metrics for every listener.
    let metrics = args.metrics.map(|_| msgi_metrics::Metrics::new());
    // The live view, which shows each listener's sessions with their transport.
    let admin = match args.admin {
        Some(_) => Some(admin::AdminView::new(args.admin_token_file.as_deref())?),
        None => None,
    };
    let builder = |framing: C, transport: &'static str| {
        let builder = Server::builder();
        let builder = match (&metrics, &admin) {
            (Some(metrics), Some(view)) => {
                builder.observer((metrics.clone(), view.observer(transport)))
            }
            (Some(metrics), None) => builder.observer(metrics.clone()),
            (None, Some(view)) => builder.observer(view.observer(transport)),
            (None, None) => builder,
        };
        builder
            .framing(framing)
            .registry(registry.clone())
            .max_connections(args.max_connections)
            .max_connections_per_ip(args.max_connections_per_ip)
            .max_frame_size(args.max_frame_size)
            .idle_timeout(idle)
            .on_connect(|s| tracing::info!(session = %s.id(), peer = ?s.peer_addr(), "connected"))
            .on_disconnect(|s, reason| tracing::info!(session = %s.id(), client = %s.client_id(), %reason, "disconnected"))
    };
    // The pre-shared-key handshake runs on byte streams (TCP) only.
    let psk = args.wire.psk()?;
    if psk.is_some() && args.ws_listen.is_some() {
        bail!("--key-file runs the pre-shared-key handshake on TCP only: not with --ws-listen");
    }
    let ws_server = match args.ws_listen {
        Some(_) => Some(
            builder(framing(&args)?, "ws")
                .accept(ws_accept(&args)?)
                .build()?,
        ),
        None => None,
    };
    // The TLS handshake, or the pre-shared-key handshake, runs in each
    // connection's accept step.
    let transport = if args.tls.tls_cert.is_some() {
        "tls"
    } else {
        "tcp"
    };
    let tcp = builder(framing(&args)?, transport);
    match (args.tls.acceptor()?, psk) {
        // Both: the pre-shared-key handshake inside TLS, in the same accept
        // step (TlsInfo and AuthenticatedKey both in the session's info).
        (Some(tls), Some(psk)) => {
            use tower::ServiceExt as _;
            let psk = psk
                .acceptor()
                .map_response(|a: msgi::Accepted<_>| a.map_io(msgi::Plain));
            let server = tcp.accept(tls.then(psk)).build()?;
            run_server(server, ws_server, args, metrics, admin).await
        }
        (Some(tls), None) => {
            let server = tcp.accept(tls).build()?;
            run_server(server, ws_server, args, metrics, admin).await
        }
        (None, Some(psk)) => {
            let server = tcp.accept(psk.acceptor()).build()?;
            run_server(server, ws_server, args, metrics, admin).await
        }
        (None, None) => run_server(tcp.build()?, ws_server, args, metrics, admin).await,
    }
}

/// The WebSocket accept step of `--ws-allow-origin` (none: same origin).
fn ws_accept(args: &ServeArgs) -> Result<msgi::ws::WebSocketAccept> {
    let mut step = msgi::ws::WebSocketAccept::builder().max_message_size(args.max_frame_size);
    for origin in &args.ws_allow_origin {
        step = if origin == "*" {
            step.allow_any_origin()
        } else {
            step.allow_origin(origin)
        };
    }
    Ok(step.build()?)
}

async fn run_server<C, A, Io>(
    server: Server<C, A>,
    ws_server: Option<Server<C, msgi::ws::WebSocketAccept>>,
    args: ServeArgs,
    metrics: Option<msgi_metrics::Metrics>,
    admin: Option<std::sync::Arc<admin::AdminView>>,
) -> Result<()>
where
    C: msgi::MakeFraming,
    A: tower::Service<msgi::Accepted<tokio::net::TcpStream>, Response = msgi::Accepted<Io>>
        + Send
        + 'static,
    A::Error: Into<msgi::BoxError>,
    A::Future: Send + 'static,
    Io: msgi::IntoTransport<C::Framing>,
{
    // The frame itself is the answer: same kind, flags, payload and request
    // id (its extensions never reach the wire).
    let echo =
        tower::service_fn(
            |frame: Frame| async move { Ok::<_, std::convert::Infallible>(Some(frame)) },
        );
    let recorder = args
        .record
        .as_deref()
        .map(numbered::Recorder::open)
        .transpose()?;
    if args.discard {
        let discard = tower::service_fn(|_: Frame| async {
            Ok::<Option<Frame>, std::convert::Infallible>(None)
        });
        return serve_echo(server, ws_server, args, metrics, admin, discard).await;
    }
    // With no layer asked for, the bare echo: a session does not pay for
    // a stack of absent layers (each an `Either` the call, the future and
    // its drop go through: about 180 instructions per request). The
    // metrics layer counts only what the layers below refuse: none here.
    if recorder.is_none() && !args.ack && args.timeout_ms.is_none() && args.rate_limit.is_none() {
        return serve_echo(server, ws_server, args, metrics, admin, echo).await;
    }
    let store = if args.recover_pushes {
        msgi::delivery::AckStore::builder().recover_pushes(
            args.push_frames,
            args.push_bytes,
            Duration::from_secs_f64(args.push_grace),
            args.push_clients,
        )
    } else {
        msgi::delivery::AckStore::builder()
    }
    .build()
    .context("push recovery (--push-frames, --push-bytes, --push-grace, --push-clients)")?;
    // With push recovery, a PUSH_TO request pushes; anything else is echoed.
    let relay = args.recover_pushes.then(|| store.clone());
    let echo = tower::service_fn(move |frame: Frame| {
        let answer = match &relay {
            Some(store)
                if frame.kind().get() == numbered::PUSH_TO && frame.request_id().is_some() =>
            {
                let id = frame.request_id();
                let mut answer = numbered::relay(store, &frame);
                if let Some(id) = id {
                    answer = answer.with_request_id(id);
                }
                answer
            }
            _ => frame,
        };
        async move { Ok::<_, std::convert::Infallible>(Some(answer)) }
    });
    let echo = tower::ServiceBuilder::new()
        // Counts what the layers below refuse (rate limit, timeout).
        .option_layer(metrics.as_ref().map(msgi_metrics::Metrics::layer))
        // Acknowledged delivery numbers every frame handed on.
        .option_layer(
            args.ack
                .then(|| msgi::delivery::AckLayer::new(store.clone())),
        )
        .map_request(move |frame: Frame| {
            if let Some(recorder) = &recorder {
                recorder.record(&frame);
            }
            frame
        })
        .layer(stack::request_layers(
            args.timeout_ms,
            args.rate_limit,
            args.rate_limit_policy,
        )?)
        .service(echo);
    serve_echo(server, ws_server, args, metrics, admin, echo).await
}

/// Serves `echo` on the listeners of `args` until a signal stops it.
async fn serve_echo<C, A, Io, S>(
    server: Server<C, A>,
    ws_server: Option<Server<C, msgi::ws::WebSocketAccept>>,
    args: ServeArgs,
    metrics: Option<msgi_metrics::Metrics>,
    admin: Option<std::sync::Arc<admin::AdminView>>,
    echo: S,
) -> Result<()>
where
    C: msgi::MakeFraming,
    A: tower::Service<msgi::Accepted<tokio::net::TcpStream>, Response = msgi::Accepted<Io>>
        + Send
        + 'static,
    A::Error: Into<msgi::BoxError>,
    A::Future: Send + 'static,
    Io: msgi::IntoTransport<C::Framing>,
    S: msgi::MakeSessionService,
{
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let ws_listener = bind_optional(args.ws_listen, "--ws-listen").await?;
    let metrics_listener = bind_optional(args.metrics, "--metrics").await?;
    let admin_listener = bind_optional(args.admin, "--admin").await?;
    // Watch the signals before announcing: a SIGTERM sent as soon as the
    // address is known must already stop the server gracefully.
    let shutdown = shutdown_signal()?;
    if args.announce {
        announce(listener.local_addr()?)?;
        if let Some(ws) = &ws_listener {
            announce_ws(ws.local_addr()?)?;
        }
        if let Some(endpoint) = &metrics_listener {
            metrics::announce(endpoint.local_addr()?)?;
        }
        if let Some(endpoint) = &admin_listener {
            admin::announce(endpoint.local_addr()?)?;
        }
    }
    // Stops the endpoints once the servers have stopped.
    let endpoints = tokio_util::sync::CancellationToken::new();
    let metrics_task = match (metrics, metrics_listener) {
        (Some(metrics), Some(endpoint)) => {
            tracing::info!(addr = %endpoint.local_addr()?, path = "/metrics", "metrics endpoint listening");
            Some(tokio::spawn(http::serve(
                endpoint,
                metrics::endpoint(metrics),
                endpoints.clone().cancelled_owned(),
            )))
        }
        _ => None,
    };
    // The live view stays up while the sessions drain.
    let admin_task = match (admin, admin_listener) {
        (Some(view), Some(endpoint)) => {
            tracing::info!(addr = %endpoint.local_addr()?, writable = view.writable(), "admin view listening");
            Some(tokio::spawn(admin::serve(
                view,
                endpoint,
                endpoints.clone().cancelled_owned(),
            )))
        }
        _ => None,
    };
    let tls = if args.tls.client_ca.is_some() {
        "mutual TLS"
    } else if args.tls.tls_cert.is_some() {
        "TLS"
    } else {
        "none"
    };
    tracing::info!(addr = %listener.local_addr()?, layers = %args.wire.describe(), tls, "msgi echo server listening");
    match (ws_server, ws_listener) {
        (Some(ws_server), Some(ws_listener)) => {
            tracing::info!(addr = %ws_listener.local_addr()?, "msgi WebSocket listening");
            // One signal stops both; each drains its own sessions.
            let stop = tokio_util::sync::CancellationToken::new();
            let signal = stop.clone();
            tokio::spawn(async move {
                shutdown.await;
                signal.cancel();
            });
            tokio::try_join!(
                server
                    .serve(listener, echo.clone())
                    .with_graceful_shutdown(stop.clone().cancelled_owned()),
                ws_server
                    .serve(ws_listener, echo)
                    .with_graceful_shutdown(stop.cancelled_owned()),
            )?;
        }
        _ => {
            server
                .serve(listener, echo)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
    }
    endpoints.cancel();
    if let Some(task) = metrics_task {
        task.await
            .context("the metrics endpoint")?
            .context("the metrics endpoint")?;
    }
    if let Some(task) = admin_task {
        task.await
            .context("the admin view")?
            .context("the admin view")?;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves when the server is asked to stop: Ctrl-C (SIGINT), or SIGTERM on
/// Unix (what systemd, Docker and Kubernetes send).
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("watching SIGTERM")?;
    Ok(async move {
        let ctrl_c = async {
            // If Ctrl-C cannot be watched, wait for the other signal.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let term = term.recv();
        #[cfg(not(unix))]
        let term = std::future::pending::<Option<()>>();
        let signal = tokio::select! {
            () = ctrl_c => "SIGINT",
            _ = term => "SIGTERM",
        };
        tracing::info!(signal, "shutting down");
    })
}

/// `LISTENING ws://<addr>/`, after the TCP line (for scripts).
fn announce_ws(addr: SocketAddr) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "LISTENING ws://{addr}/")?;
    out.flush()?;
    Ok(())
}

fn announce(addr: SocketAddr) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "LISTENING {addr}")?;
    out.flush()?;
    Ok(())
}

/// The kinds `msgi send` can send, for error messages.
const SENDABLE_KINDS: &str =
    "data, control, ping, or an application kind 0x100-0xfff (hex 0x123 or decimal 291)";

fn parse_kind(text: &str) -> Result<Kind, String> {
    let kind = match text.to_ascii_lowercase().as_str() {
        "data" => Kind::DATA,
        "control" => Kind::CONTROL,
        "ping" => Kind::PING,
        other => {
            let value = match other.strip_prefix("0x") {
                Some(hex) => u16::from_str_radix(hex, 16).ok(),
                None => other.parse().ok(),
            };
            match value.and_then(Kind::new) {
                Some(kind) if kind.is_delivered() => kind,
                _ => {
                    return Err(format!(
                        "not a kind msgi send can send; use {SENDABLE_KINDS}"
                    ))
                }
            }
        }
    };
    Ok(kind)
}

/// No reconnect: `msgi send` is one frame on one connection, and when that
/// connection is lost its reason is the answer to give the user.
const NO_RECONNECT: Reconnect = Reconnect {
    initial_delay: Duration::ZERO,
    max_delay: Duration::ZERO,
    multiplier: 1.0,
    max_attempts: Some(0),
};

/// What the user should check when layers are the likely cause.
const LAYERS_HINT: &str =
    "if the server runs with --compress, --key-file, --hmac or --no-encrypt, \
     give the same flags and the same key file here";

async fn send(args: SendArgs) -> Result<()> {
    let wait = args
        .timeout_ms
        .map_or(Duration::from_secs(args.wait), Duration::from_millis);
    if let (Some(count), Some(target)) = (args.count, &args.push_to) {
        return numbered::push(&args.addr, args.client_id, target, count, wait).await;
    }
    if let (Some(count), Some(id)) = (args.receive, &args.client_id) {
        return numbered::receive(&args.addr, id.clone(), count, wait).await;
    }
    if let Some(count) = args.count {
        return numbered::send(&args.addr, args.client_id, count, args.ack, wait).await;
    }
    // The payload first: a mistake in it is said without connecting.
    let payload: Bytes = match (&args.container, args.text) {
        (Some(json), _) => Container::from_json_str(json)
            .context("--container is not a container in JSON")?
            .encode(),
        (None, Some(text)) => text.into(),
        // clap requires one of them.
        (None, None) => bail!("give a payload, or --container"),
    };
    let builder = Client::builder()
        .framing(args.wire.framing()?)
        .connect_timeout(wait)
        .reconnect(NO_RECONNECT);
    // With TLS or a pre-shared key, the handshake runs in the connector; a
    // refusal (wrong key, other transforms) is the server's or this end's reason.
    let connected = match (args.tls.connector(&args.addr)?, args.wire.psk()?) {
        // Both: TLS first, then the pre-shared-key handshake inside it.
        (Some(tls), Some(psk)) => {
            builder
                .connect_with_connector(psk.connector(tls), args.addr.clone())
                .await
        }
        (Some(tls), None) => builder.connect_with_connector(tls, args.addr.clone()).await,
        (None, Some(psk)) => {
            let connector = psk.connector(msgi::TcpConnector::new());
            builder
                .connect_with_connector(connector, args.addr.clone())
                .await
        }
        (None, None) => builder.connect(args.addr.clone()).await,
    };
    let client = connected.map_err(|e| {
        if let Some(hint) = tls_hint(&e, &args.addr) {
            return anyhow::Error::new(hint);
        }
        // Name the address once: the library's error may already.
        if e.to_string().contains(&args.addr) {
            anyhow::Error::new(e)
        } else {
            anyhow::Error::new(e).context(format!("could not connect to {}", args.addr))
        }
    })?;
    let frame = Frame::new(args.kind, payload);
    let answer = if args.correlated || args.kind == Kind::PING {
        match tokio::time::timeout(wait, client.call(frame)).await {
            Err(_) => bail!("no answer within {wait:?}"),
            Ok(Ok(answer)) => Some(answer),
            Ok(Err(e)) if ends_connection(&e) => None,
            Ok(Err(e)) => return Err(e.into()),
        }
    } else {
        let mut incoming = client.incoming().context("incoming stream taken")?;
        match client.send(frame).await {
            Ok(()) => tokio::time::timeout(wait, incoming.recv())
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {wait:?}"))?,
            Err(e) if ends_connection(&e) => None,
            Err(e) => return Err(e.into()),
        }
    };
    let Some(answer) = answer else {
        return Err(lost(&client, &args.wire).await.into());
    };
    if answer.kind() == Kind::ERROR {
        // A one-way frame's failure comes back as an uncorrelated ERROR.
        let reason: String = answer.payload_text().chars().take(200).collect();
        bail!("server error: {}", reason.escape_debug());
    }
    if args.container.is_some() {
        match msgi_container::decode(answer.payload()) {
            Ok(c) => println!("{}", c.to_json_string()),
            Err(e) => bail!(
                "the answer is not a container ({e}): {} {}",
                answer.kind(),
                answer
                    .payload_text()
                    .chars()
                    .take(200)
                    .collect::<String>()
                    .escape_debug()
            ),
        }
    } else {
        match answer.request_id() {
            Some(id) => println!("{} id={id} {}", answer.kind(), answer.payload_text()),
            None => println!("{} {}", answer.kind(), answer.payload_text()),
        }
    }
    client.close().await;
    Ok(())
}

/// True for the errors that mean the connection ended before the answer.
fn ends_connection(e: &ClientError) -> bool {
    matches!(e, ClientError::ConnectionLost(_) | ClientError::Closed(_))
}

/// The connection ended before the answer: why, and what to check.
async fn lost(client: &Client, wire: &stack::WireArgs) -> Hint {
    // Without reconnect the client has stopped or is stopping; its reason
    // names the cause.
    let reason = tokio::time::timeout(Duration::from_secs(1), client.closed())
        .await
        .ok();
    let violation = reason.as_ref().and_then(ClientError::violation);
    let bad_magic = matches!(
        violation,
        Some(Violation::Codec(e)) if matches!(**e, msgi::CodecError::BadMagic)
    );
    let (message, hint) = if bad_magic {
        // Not a layer mismatch: what answered is not an MSGI server at all.
        (
            "what answered does not speak MSGI (its bytes do not start with `MSGI`)".to_owned(),
            "check the address and port: is `msgi serve` (or another MSGI server) listening there? \
             (a TLS port needs --tls-ca)",
        )
    } else if tls_alert(reason.as_ref()) {
        // The server's TLS refused this client after the handshake (TLS
        // 1.3 says so then): mutual TLS without an accepted certificate.
        (
            // The alert itself is in the cause, printed after this.
            "the server ended the TLS session with an alert".to_owned(),
            "under mutual TLS, give --tls-cert and --tls-key with a certificate \
             signed by a CA in the server's --client-ca",
        )
    } else if violation.is_some() {
        (
            format!(
                "the server's frames could not be decoded with this side's layers ({})",
                wire.describe()
            ),
            LAYERS_HINT,
        )
    } else {
        (
            "the server closed the connection before answering".to_owned(),
            LAYERS_HINT,
        )
    };
    Hint {
        message,
        hint: hint.to_owned(),
        source: reason,
    }
}

/// Whether a TLS alert ended the connection.
fn tls_alert(reason: Option<&ClientError>) -> bool {
    matches!(
        reason.and_then(ClientError::connection_error),
        Some(ConnectionError::Transport(text)) if text.contains("fatal alert")
    )
}

/// A failed TLS handshake: what it means and what to check.
fn tls_hint(error: &ClientError, addr: &str) -> Option<Hint> {
    let handshake = msgi_tls::HandshakeError::of(error)?;
    let hint = match handshake {
        msgi_tls::HandshakeError::NotTls(_) => {
            "the server does not speak TLS: leave out the --tls-* flags for a plain msgi port"
        }
        msgi_tls::HandshakeError::Tls(msgi_tls::rustls::Error::InvalidCertificate(_)) => {
            "check that --tls-ca holds the CA that signed the server's certificate, and that \
             the certificate names the host of --addr (or give --tls-server-name)"
        }
        _ => "check the TLS flags on both sides",
    };
    Some(Hint {
        message: format!("TLS handshake with {addr} failed"),
        hint: hint.to_owned(),
        source: Some(error.clone()),
    })
}

/// Binds the listener of an optional address flag (`--ws-listen`,
/// `--metrics`, `--admin`), naming the flag in the error.
async fn bind_optional(
    addr: Option<SocketAddr>,
    flag: &str,
) -> Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} ({flag})"))?;
    Ok(Some(listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse() {
        let refused = parse_kind("error").unwrap_err();
        assert!(refused.contains("data, control, ping"), "{refused}");
        assert_eq!(parse_kind("DATA").unwrap(), Kind::DATA);
        assert_eq!(parse_kind("0x123").unwrap().get(), 0x123);
        assert_eq!(parse_kind("4095").unwrap().get(), 0xFFF);
        assert!(parse_kind("0x0ab").is_err());
        assert!(parse_kind("heartbeat").is_err());
    }
}
