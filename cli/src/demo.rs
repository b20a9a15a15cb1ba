//! `msgi demo`: a chat server and three clients on loopback, narrated.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use msgi::{Client, Frame, Incoming, Kind, Registry, Server, Session};

/// Application kind for a private message: payload `<to> <text>`.
const PRIVATE: u16 = 0x101;

fn say(start: Instant, who: &str, what: impl std::fmt::Display) {
    println!(
        "[{:>7.1} ms] {who:<8} {what}",
        start.elapsed().as_secs_f64() * 1e3
    );
}

/// The chat: DATA is broadcast to everyone else, PRIVATE goes to one
/// client, CONTROL `who` lists who is here, CONTROL `slow` answers late
/// (and tells `slow_started` when it has begun).
async fn chat(
    registry: Registry,
    slow_started: Arc<tokio::sync::Notify>,
    frame: Frame,
) -> Result<Option<Frame>, msgi::BoxError> {
    let from = frame
        .extensions()
        .get::<Session>()
        .cloned()
        .ok_or("frame without a session")?;
    let text = frame.payload_text().into_owned();
    match frame.kind() {
        Kind::DATA => {
            let line = Frame::data(format!("{}: {text}", from.client_id()));
            registry.broadcast_filter(line, |s| s.id() != from.id());
            Ok(None)
        }
        k if k.get() == PRIVATE => {
            let (to, body) = text.split_once(' ').ok_or("usage: <to> <text>")?;
            let line = Frame::data(format!("{} (private): {body}", from.client_id()));
            registry.send_to_client(to, line)?;
            Ok(Some(frame.reply(Kind::CONTROL, "delivered")))
        }
        Kind::CONTROL if text == "who" => {
            let mut names: Vec<_> = registry.sessions().iter().map(Session::client_id).collect();
            names.sort();
            Ok(Some(frame.reply(Kind::CONTROL, names.join(", "))))
        }
        Kind::CONTROL if text == "slow" => {
            slow_started.notify_one();
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(Some(frame.reply(
                Kind::CONTROL,
                "slow answer, sent before the shutdown completes",
            )))
        }
        _ => Err("unknown command".into()),
    }
}

async fn next_push(name: &str, incoming: &mut Incoming, start: Instant) -> Result<()> {
    let frame = tokio::time::timeout(Duration::from_secs(5), incoming.recv())
        .await
        .context("push did not arrive")?
        .context("connection closed")?;
    say(
        start,
        name,
        format!("received push: {:?}", frame.payload_text()),
    );
    Ok(())
}

pub(crate) async fn run() -> Result<()> {
    let start = Instant::now();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // Sessions end while clients are still handling what they received;
    // the narrator reports them once the server has stopped, so that the
    // story reads in the order things were observed.
    let ended = Arc::new(Mutex::new(Vec::new()));
    let ended_in_hook = ended.clone();
    let server = Server::builder()
        .drain_timeout(Duration::from_secs(2))
        .on_connect(move |s| {
            say(
                start,
                "server",
                match s.peer_addr() {
                    Some(addr) => format!("session {} connected from {addr}", s.id()),
                    None => format!("session {} connected", s.id()),
                },
            )
        })
        .on_disconnect(move |s, reason| {
            let line = format!("session {} ({}) ended: {reason}", s.id(), s.client_id());
            if let Ok(mut ended) = ended_in_hook.lock() {
                ended.push(line);
            }
        })
        .build()?;
    let registry = server.registry();
    let handler_registry = registry.clone();
    let slow_started = Arc::new(tokio::sync::Notify::new());
    let handler_started = slow_started.clone();
    let service = tower::service_fn(move |frame| {
        chat(handler_registry.clone(), handler_started.clone(), frame)
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        server
            .serve(listener, service)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            }),
    );
    say(start, "server", format!("chat server listening on {addr}"));

    let mut clients = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let client = Client::builder().client_id(name).connect(addr).await?;
        let incoming = client.incoming().context("incoming taken")?;
        say(start, name, "connected and announced its client id");
        clients.push((name, client, incoming));
    }
    say(
        start,
        "server",
        format!("{} sessions in the registry", registry.connection_count()),
    );

    let [(_, alice, alice_in), (_, bob, bob_in), (_, carol, carol_in)] = &mut clients[..] else {
        unreachable!("three clients were connected above");
    };

    say(start, "alice", "broadcasts \"hello everyone\"");
    alice.send(Frame::data("hello everyone")).await?;
    next_push("bob", bob_in, start).await?;
    next_push("carol", carol_in, start).await?;

    say(
        start,
        "bob",
        "sends a private message to alice (correlated)",
    );
    let ack = bob
        .call(Frame::new(
            Kind::app(PRIVATE).context("kind")?,
            "alice lunch at noon?",
        ))
        .await?;
    say(
        start,
        "bob",
        format!("server answered {:?}", ack.payload_text()),
    );
    next_push("alice", alice_in, start).await?;

    let who = carol.call(Frame::control("who")).await?;
    say(
        start,
        "carol",
        format!("asked who is here: {}", who.payload_text()),
    );
    let rtt = alice.ping().await?;
    say(
        start,
        "alice",
        format!("ping round trip {:.0} µs", rtt.as_secs_f64() * 1e6),
    );

    say(
        start,
        "carol",
        "sends a slow request, then the server shuts down",
    );
    let slow = {
        let carol = carol.clone();
        tokio::spawn(async move { carol.call(Frame::control("slow")).await })
    };
    // The shutdown begins once the request is in the handler.
    tokio::time::timeout(Duration::from_secs(5), slow_started.notified())
        .await
        .context("the slow request did not reach the handler")?;
    say(start, "server", "graceful shutdown begins");
    let _ = stop_tx.send(());
    let answer = slow.await??;
    say(
        start,
        "carol",
        format!("got the slow answer: {:?}", answer.payload_text()),
    );
    for (name, client, _) in &clients {
        let reason = client.closed().await.to_string();
        // The client's reason nests what happened ("client closed:
        // connection lost: server disconnected: <why>"); say it plainly.
        let line = match reason.rsplit_once("server disconnected: ") {
            Some((_, why)) => format!("disconnected by the server: {why}"),
            None => format!("closed: {reason}"),
        };
        say(start, name, line);
    }
    serving.await??;
    let ended = std::mem::take(&mut *ended.lock().map_err(|_| anyhow::anyhow!("hook panicked"))?);
    for line in ended {
        say(start, "server", line);
    }
    say(start, "server", "stopped; every session drained");
    Ok(())
}
