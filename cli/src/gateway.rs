//! `msgi gateway`: a server whose handler spreads requests over upstream
//! msgi servers (msgi-balance): p2c on load, or key affinity, with routes
//! by kind, an idempotent retry and a bounded wait when no upstream is up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use msgi::{BoxError, Client, Frame, FrameCodec, Kind, MakeFraming, Server};
use msgi_balance::{by_kind, client_id_key, Builder, RetryIdempotent, Settings, Upstreams};
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::stack::WireArgs;

#[derive(clap::Args, Debug)]
pub(crate) struct GatewayArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Upstream servers (IP:port, or host:port re-resolved every
    /// --resolve-every seconds). Frames no --route names go to these.
    #[arg(long, required = true, num_args = 1..)]
    upstream: Vec<String>,
    /// Frames of KIND go to these upstreams instead: KIND=ADDR[,ADDR...]
    /// (KIND: data, control, or an application kind 0x100-0xfff). Repeatable.
    #[arg(long, value_name = "KIND=ADDRS", value_parser = parse_route)]
    route: Vec<Route>,
    /// Route by the client id (rendezvous hashing): one client's frames stay
    /// on one upstream while it is up, instead of p2c on load.
    #[arg(long)]
    affinity: bool,
    /// Requests of this kind are idempotent: retried once on another
    /// upstream if theirs dies with them in flight (within a budget). Repeatable.
    #[arg(long, value_name = "KIND", value_parser = super::parse_kind)]
    retry_kind: Vec<Kind>,
    /// Connections to each upstream.
    #[arg(long, default_value_t = 1, value_parser = crate::flags::count)]
    connections: usize,
    /// Milliseconds a request waits for an upstream to be up before it is
    /// answered with ERROR.
    #[arg(long, default_value_t = 2000, value_parser = crate::flags::positive)]
    fail_after_ms: u64,
    /// Seconds between DNS lookups of upstream names.
    #[arg(long, default_value_t = 30, value_parser = crate::flags::positive)]
    resolve_every: u64,
    /// Most concurrent downstream sessions.
    #[arg(long, default_value_t = 10_000, value_parser = crate::flags::count)]
    max_connections: usize,
    /// Largest frame accepted or sent, header included, in bytes (both sides).
    #[arg(long, default_value_t = msgi::DEFAULT_MAX_FRAME_SIZE)]
    max_frame_size: usize,
    /// Close downstream sessions silent for this many seconds (0 disables).
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Answer requests not answered within this many milliseconds with ERROR.
    #[arg(long, value_parser = crate::flags::positive)]
    timeout_ms: Option<u64>,
    /// Wire transforms towards downstream clients.
    #[command(flatten)]
    wire: WireArgs,
    /// TLS towards downstream clients.
    #[command(flatten)]
    tls: crate::tls::ServeTls,
    /// Wire transforms towards the upstreams, as the serve/send flags in one
    /// argument: --upstream-wire "--compress --key-file k.key --hmac".
    #[arg(long, value_name = "FLAGS", value_parser = parse_upstream_wire, allow_hyphen_values = true)]
    upstream_wire: Option<UpstreamWire>,
    /// The pre-shared key of the upstreams (as `--key-file` of `msgi serve`
    /// there): each upstream connection runs the handshake and encrypts.
    /// The same as --key-file inside --upstream-wire.
    #[arg(long, value_name = "FILE")]
    upstream_key_file: Option<std::path::PathBuf>,
    /// TLS towards the upstreams.
    #[command(flatten)]
    upstream_tls: UpstreamTls,
    /// Print `LISTENING <addr>` on stdout once listening (for scripts).
    #[arg(long)]
    announce: bool,
}

#[derive(Debug, Clone)]
struct Route {
    kind: Kind,
    upstreams: Vec<String>,
}

fn parse_route(text: &str) -> Result<Route, String> {
    let Some((kind, addrs)) = text.split_once('=') else {
        return Err("expected KIND=ADDR[,ADDR...]".into());
    };
    let kind = super::parse_kind(kind)?;
    if kind == Kind::PING {
        return Err("PING is answered by the gateway itself".into());
    }
    let upstreams: Vec<String> = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    if upstreams.is_empty() {
        return Err("a route needs at least one upstream".into());
    }
    Ok(Route { kind, upstreams })
}

/// The transform flags of the upstream side, as given (parsed by
/// `WireArgs` itself, with --upstream-key-file added, in `upstream_wire`).
#[derive(Debug, Clone)]
struct UpstreamWire(Vec<String>);

/// `msgi gateway --upstream-tls-ca`: TLS on the upstream connections.
#[derive(clap::Args, Debug, Clone)]
struct UpstreamTls {
    /// Connect to the upstreams with TLS, verifying their certificates with
    /// the CA certificates in this file (PEM).
    #[arg(long, value_name = "FILE")]
    upstream_tls_ca: Option<std::path::PathBuf>,
    /// Present this client certificate chain (PEM) to upstreams that
    /// require one (mutual TLS).
    #[arg(long, value_name = "FILE", requires_all = ["upstream_tls_ca", "upstream_tls_key"])]
    upstream_tls_cert: Option<std::path::PathBuf>,
    /// The private key of --upstream-tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "upstream_tls_cert")]
    upstream_tls_key: Option<std::path::PathBuf>,
    /// The name every upstream's certificate must carry (default: the host
    /// of the first --upstream).
    #[arg(long, value_name = "NAME", requires = "upstream_tls_ca")]
    upstream_tls_server_name: Option<String>,
}

impl UpstreamTls {
    /// The connector, if TLS was asked for; `first` names the default
    /// server name.
    fn connector(&self, first: &str) -> Result<Option<msgi_tls::TlsConnector>> {
        let Some(ca) = &self.upstream_tls_ca else {
            return Ok(None);
        };
        let name = self
            .upstream_tls_server_name
            .clone()
            .unwrap_or_else(|| crate::tls::host_of(first).to_owned());
        let mut builder =
            msgi_tls::TlsConnector::builder(name).root_certificates(msgi_tls::load_certs(ca)?);
        if let (Some(cert), Some(key)) = (&self.upstream_tls_cert, &self.upstream_tls_key) {
            builder =
                builder.client_certificate(msgi_tls::load_certs(cert)?, msgi_tls::load_key(key)?);
        }
        Ok(Some(builder.build().context("upstream TLS settings")?))
    }
}

#[derive(Parser, Debug)]
#[command(name = "--upstream-wire", no_binary_name = true)]
struct UpstreamWireFlags {
    #[command(flatten)]
    wire: WireArgs,
}

fn parse_upstream_wire(text: &str) -> Result<UpstreamWire, String> {
    // Checked with --upstream-key-file added (`upstream_wire`): --hmac
    // alone here is fine with a key given there.
    Ok(UpstreamWire(
        text.split_whitespace().map(str::to_owned).collect(),
    ))
}

/// The upstream side's transforms: --upstream-wire, with
/// --upstream-key-file as its --key-file.
fn upstream_wire(args: &GatewayArgs) -> Result<Option<WireArgs>> {
    let parse = |words: &[String]| {
        UpstreamWireFlags::try_parse_from(words)
            .map(|f| f.wire)
            .map_err(|e| anyhow::anyhow!("--upstream-wire: {e}"))
    };
    let mut words = args
        .upstream_wire
        .as_ref()
        .map(|UpstreamWire(words)| words.clone())
        .unwrap_or_default();
    if let Some(path) = &args.upstream_key_file {
        if !words.is_empty() && parse(&words).is_ok_and(|w| w.uses_psk()) {
            bail!("--upstream-key-file and --key-file in --upstream-wire: give one");
        }
        words.push("--key-file".into());
        words.push(path.display().to_string());
    }
    if words.is_empty() {
        return Ok(None);
    }
    parse(&words).map(Some)
}

/// One group of upstreams: the set, with literal addresses in it and names
/// resolved periodically.
fn upstream_set(addrs: &[String], every: Duration) -> Upstreams {
    let set = Upstreams::new();
    for addr in addrs {
        match addr.parse::<SocketAddr>() {
            Ok(addr) => set.insert(addr),
            Err(_) => {
                // The task lives as long as the set does.
                drop(set.resolve(addr.clone(), every));
            }
        }
    }
    set
}

pub(crate) async fn run(args: GatewayArgs) -> Result<()> {
    for name in args
        .upstream
        .iter()
        .chain(args.route.iter().flat_map(|r| &r.upstreams))
    {
        if name.parse::<SocketAddr>().is_err() && !name.contains(':') {
            bail!("upstream {name:?}: give host:port");
        }
    }
    let first = args.upstream.first().cloned().unwrap_or_default();
    let tls = args.upstream_tls.connector(&first)?;
    let max = args.max_frame_size;
    // Upstream connections: the framing (wire transforms) in the client
    // builder; TLS or the pre-shared-key handshake in its connector.
    match upstream_wire(&args)? {
        Some(wire) => {
            let psk = wire.psk()?;
            let settings = Settings::new(
                Client::builder()
                    .framing(wire.framing()?)
                    .max_frame_size(max),
            );
            let settings = match (tls, psk) {
                (Some(_), Some(_)) => bail!(
                    "upstream TLS and an upstream pre-shared key together are not supported: \
                     choose one"
                ),
                (Some(tls), None) => settings.connector(tls),
                (None, Some(psk)) => settings.connector(psk.connector(msgi::TcpConnector::new())),
                (None, None) => settings,
            };
            with_upstream(args, settings).await
        }
        None => {
            let settings = Settings::new(
                Client::builder()
                    .framing(FrameCodec::new())
                    .max_frame_size(max),
            );
            let settings = match tls {
                Some(tls) => settings.connector(tls),
                None => settings,
            };
            with_upstream(args, settings).await
        }
    }
}

async fn with_upstream<U>(args: GatewayArgs, up: Settings<U>) -> Result<()>
where
    U: MakeFraming + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    if args.wire.is_empty() {
        with_downstream(args, up, FrameCodec::new()).await
    } else {
        let framing = args.wire.framing()?;
        with_downstream(args, up, framing).await
    }
}

async fn with_downstream<U, C>(args: GatewayArgs, up: Settings<U>, down: C) -> Result<()>
where
    U: MakeFraming + Clone + std::fmt::Debug + Send + Sync + 'static,
    C: MakeFraming,
{
    let idle = (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout));
    let builder = Server::builder()
        .framing(down)
        .max_connections(args.max_connections)
        .max_frame_size(args.max_frame_size)
        .idle_timeout(idle);
    // The TLS handshake, or the pre-shared-key handshake, runs in each
    // downstream connection's accept step.
    match (args.tls.acceptor()?, args.wire.psk()?) {
        (Some(_), Some(_)) => {
            bail!("--key-file and --tls-cert together are not supported: choose one")
        }
        (Some(tls), None) => serve(builder.accept(tls).build()?, args, up).await,
        (None, Some(psk)) => serve(builder.accept(psk.acceptor()).build()?, args, up).await,
        (None, None) => serve(builder.build()?, args, up).await,
    }
}

type Handler = BoxCloneService<Frame, Option<Frame>, BoxError>;

async fn serve<C, A, Io, U>(server: Server<C, A>, args: GatewayArgs, up: Settings<U>) -> Result<()>
where
    C: MakeFraming,
    A: Service<msgi::Accepted<tokio::net::TcpStream>, Response = msgi::Accepted<Io>>
        + Send
        + 'static,
    A::Error: Into<BoxError>,
    A::Future: Send + 'static,
    Io: msgi::IntoTransport<C::Framing>,
    U: MakeFraming + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let builder = Builder::new(up)
        .connections_per_upstream(args.connections)
        .fail_after(Duration::from_millis(args.fail_after_ms));
    let every = Duration::from_secs(args.resolve_every);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let shutdown = super::shutdown_signal()?;
    let layers = crate::stack::request_layers(args.timeout_ms, None, crate::stack::Policy::Reject)?;
    let plain = args.route.is_empty() && !args.affinity && args.retry_kind.is_empty();
    if plain {
        // The common case, unboxed: p2c over one set.
        let balanced = builder.build(&upstream_set(&args.upstream, every))?;
        let handler = layers.service(balanced);
        if args.announce {
            super::announce(listener.local_addr()?)?;
        }
        log_start(&args, &listener)?;
        server
            .serve(listener, handler)
            .with_graceful_shutdown(shutdown)
            .await?;
    } else {
        let group = |addrs: &[String]| -> Result<Handler> {
            let set = upstream_set(addrs, every);
            let service: Handler = if args.affinity {
                BoxCloneService::new(builder.clone().build_affinity(&set, client_id_key)?)
            } else {
                BoxCloneService::new(builder.clone().build(&set)?)
            };
            if args.retry_kind.is_empty() {
                return Ok(service);
            }
            let kinds: Arc<[Kind]> = args.retry_kind.clone().into();
            let policy = RetryIdempotent::new(move |f: &Frame| kinds.contains(&f.kind()), 10, 0.2)?;
            Ok(BoxCloneService::new(
                ServiceBuilder::new()
                    .layer(policy.into_layer())
                    .service(service),
            ))
        };
        let default = group(&args.upstream)?;
        let mut routes = Vec::new();
        for route in &args.route {
            routes.push((vec![route.kind], group(&route.upstreams)?));
        }
        let handler = layers.service(by_kind(routes, default).map_err(|e: BoxError| e));
        if args.announce {
            super::announce(listener.local_addr()?)?;
        }
        log_start(&args, &listener)?;
        server
            .serve(listener, handler)
            .with_graceful_shutdown(shutdown)
            .await?;
    }
    tracing::info!("stopped");
    Ok(())
}

fn log_start(args: &GatewayArgs, listener: &tokio::net::TcpListener) -> Result<()> {
    tracing::info!(
        addr = %listener.local_addr()?,
        upstreams = ?args.upstream,
        routes = args.route.len(),
        affinity = args.affinity,
        downstream_layers = %args.wire.describe(),
        upstream_layers = %upstream_wire(args)?.map_or("none".into(), |w| w.describe()),
        upstream_tls = args.upstream_tls.upstream_tls_ca.is_some(),
        "msgi gateway listening"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_upstream_wire_flags_parse() {
        let r = parse_route("0x101=127.0.0.1:1,h:2").unwrap();
        assert_eq!(r.kind, Kind::app(0x101).unwrap());
        assert_eq!(r.upstreams, ["127.0.0.1:1", "h:2"]);
        assert!(parse_route("data=").is_err());
        assert!(parse_route("ping=1.2.3.4:5").is_err());
        assert!(parse_route("nokind").is_err());
    }

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: GatewayArgs,
    }

    fn args(words: &[&str]) -> GatewayArgs {
        let all = ["gw", "--upstream", "127.0.0.1:1"].iter().chain(words);
        Cmd::try_parse_from(all).unwrap().args
    }

    #[test]
    fn upstream_wire_flags_are_checked_with_the_upstream_key_file() {
        assert!(upstream_wire(&args(&[])).unwrap().is_none());
        let w = upstream_wire(&args(&["--upstream-wire", "--compress"])).unwrap();
        assert!(w.is_some_and(|w| !w.is_empty() && !w.uses_psk()));
        assert!(upstream_wire(&args(&["--upstream-wire", "--no-such-flag"])).is_err());
        // --hmac needs a key: from --upstream-key-file, or refused.
        assert!(upstream_wire(&args(&["--upstream-wire", "--hmac"])).is_err());
        let keyed = ["--upstream-wire", "--hmac", "--upstream-key-file", "k.key"];
        assert!(upstream_wire(&args(&keyed))
            .unwrap()
            .is_some_and(|w| w.uses_psk()));
        let twice = [
            "--upstream-wire",
            "--key-file a.key",
            "--upstream-key-file",
            "k.key",
        ];
        let err = upstream_wire(&args(&twice)).unwrap_err().to_string();
        assert!(err.contains("give one"), "{err}");
    }
}
