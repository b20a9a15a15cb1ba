//! A line-based chat: connect with `nc 127.0.0.1 7001` (or telnet) and type.
//! Shows the registry (broadcast, private messages) and per-session data
//! (the nickname), over the text-line framing instead of MSGI frames.
//!
//! Commands: `/nick NAME`, `/msg NAME TEXT`, `/who`; anything else is said
//! to everyone.
//!
//! ```text
//! cargo run --example chat -- 127.0.0.1:7001
//! ```

use msgi::{Frame, LineCodec, Registry, Server, Session};
use tower::service_fn;

#[derive(Clone)]
struct Nick(String);

fn nick(session: &Session) -> String {
    session
        .data::<Nick>()
        .map_or_else(|| format!("guest{}", session.id()), |n| n.0)
}

fn handle(registry: &Registry, session: &Session, line: &str) -> Option<String> {
    let me = nick(session);
    if let Some(name) = line.strip_prefix("/nick ") {
        session.insert_data(Nick(name.trim().to_owned()));
        registry.broadcast(Frame::data(format!("* {me} is now {}", name.trim())));
        return None;
    }
    if let Some(rest) = line.strip_prefix("/msg ") {
        let (to, text) = rest.split_once(' ')?;
        let target = registry.sessions().into_iter().find(|s| nick(s) == to);
        return Some(match target {
            Some(target) => match target.send(Frame::data(format!("[{me} -> you] {text}"))) {
                Ok(()) => format!("[you -> {to}] {text}"),
                Err(e) => format!("* not delivered: {e}"),
            },
            None => format!("* nobody called {to}"),
        });
    }
    if line == "/who" {
        let names: Vec<_> = registry.sessions().iter().map(nick).collect();
        return Some(format!("* here: {}", names.join(", ")));
    }
    registry.broadcast_filter(Frame::data(format!("<{me}> {line}")), |s| s != session);
    None
}

#[tokio::main]
async fn main() -> Result<(), msgi::BoxError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7001".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    println!("chat on {local} (try: nc {} {})", local.ip(), local.port());

    let server = Server::builder()
        .framing(LineCodec::new())
        .idle_timeout(None)
        .heartbeat_interval(None)
        .on_connect(|s| {
            let _ = s.send(Frame::data(format!("* welcome, you are guest{}", s.id())));
        })
        .build()?;
    let registry = server.registry();
    let service = service_fn(move |frame: Frame| {
        let registry = registry.clone();
        async move {
            let session = frame
                .extensions()
                .get::<Session>()
                .cloned()
                .ok_or("no session")?;
            let answer = handle(&registry, &session, &frame.payload_text());
            Ok::<_, msgi::BoxError>(answer.map(Frame::data))
        }
    });
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    server
        .serve(listener, service)
        .with_graceful_shutdown(ctrl_c)
        .await?;
    Ok(())
}
