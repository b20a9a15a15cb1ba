//! Real `msgi serve --ack` processes stopped with SIGKILL and SIGINT.
//!
//! Push recovery against real `msgi serve --ack --recover-pushes`
//! processes (docs/RELIABILITY.md, *Server to client*): a pusher pushes
//! numbered frames at full speed (one request at a time) to a client that
//! reconnects, while the server is killed with SIGKILL and stopped with
//! SIGINT and restarted on the same port, and then, with the last server
//! living on, the client's connection is cut twice (a proxy between them
//! drops both sockets).
//!
//! What a real process can be held to, deterministically:
//! - across reconnects to a live server: every push it took reaches the
//!   client once, in order (0 lost, 0 duplicates), and the client is told
//!   `recovered`;
//! - across a crash or a restart (the pushes kept die with the process):
//!   no duplicates, and every push lost was taken by a server that is gone,
//!   after which the client was told `fresh` (one `fresh` per server
//!   process: `Client::fresh_resumes`), or was reported to the pusher (its
//!   request lost with the connection: `ConnectionLost`) or refused to it.
//!   Which pushes a crash loses depends on timing; that each is reported
//!   does not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msgi::{Client, ClientError, Frame, Kind, Reconnect};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const MSGI: &str = env!("CARGO_BIN_EXE_msgi");
const LIMIT: Duration = Duration::from_secs(20);
/// `msgi serve`'s push request kind (`msgi serve --help`, --recover-pushes).
const PUSH_TO: u16 = 0x110;
/// Pushes sent: the five steps need 2,000 counted, and each stopped server
/// loses what it had not delivered yet (at most `--push-frames`, 1000):
/// room for the worst case of all three stops.
const TOTAL: u64 = 6000;

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} timed out"))
}

/// A port on 127.0.0.1 kept for the test's servers while they are stopped
/// and started again on it (one address for the reconnecting clients),
/// never released until the test drops it: no other program can take it
/// between a server's stop and the next one's start.
///
/// How (Linux, socket(7)): it holds a socket bound with `SO_REUSEADDR` that
/// never listens. `msgi serve`'s listener also sets `SO_REUSEADDR` (tokio's
/// does on Unix), and such a socket may bind a port unless another socket
/// listens on it: each server process in turn binds and listens. Meanwhile
/// the kernel never hands the port to an outgoing connection or to a
/// `bind` to port 0 (it is bound), and refuses it to a `bind` without
/// `SO_REUSEADDR`. Elsewhere (BSD semantics would refuse the servers too)
/// the port is probed and released, and another program could take it in
/// between.
struct Port {
    addr: SocketAddr,
    _held: Option<tokio::net::TcpSocket>,
}

impl Port {
    fn reserve() -> Port {
        if cfg!(target_os = "linux") {
            let held = tokio::net::TcpSocket::new_v4().unwrap();
            held.set_reuseaddr(true).unwrap();
            held.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
            let addr = held.local_addr().unwrap();
            return Port {
                addr,
                _held: Some(held),
            };
        }
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        Port { addr, _held: None }
    }
}

/// On Linux, a bind without `SO_REUSEADDR` (as most programs' would be)
/// is refused the port. Checked before the first server: once a server
/// has had connections, their TIME_WAIT would refuse it by itself.
fn assert_kept(port: &Port) {
    if cfg!(target_os = "linux") {
        let another_program = tokio::net::TcpSocket::new_v4().unwrap();
        assert_eq!(
            another_program.bind(port.addr).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::AddrInUse),
            "another program took the port"
        );
    }
}

/// `msgi serve --ack --recover-pushes` on `port`, once it listens.
async fn serve(port: &Port) -> Child {
    serve_with(port, &["--recover-pushes"]).await
}

/// `msgi serve --ack` with `extra` on `port`, once it listens there.
async fn serve_with(port: &Port, extra: &[&str]) -> Child {
    let addr = port.addr;
    let mut child = Command::new(MSGI)
        .args(["serve", "--listen", &addr.to_string(), "--announce"])
        .args(["--ack", "--idle-timeout", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = within("announce", lines.next_line()).await.unwrap();
    assert_eq!(line, Some(format!("LISTENING {addr}")));
    child
}

fn signal(child: &Child, name: &str) {
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args([name, &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// A TCP proxy to `upstream` whose connections the test can cut at once
/// (both sockets dropped: the server sees its session end while it lives on).
struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepting: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links = Arc::new(Mutex::new(Vec::<JoinHandle<()>>::new()));
        let kept = links.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    // The server down (restarting): the client's connection
                    // fails, and it tries again.
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                kept.lock().unwrap().push(link);
            }
        });
        Proxy {
            addr,
            links,
            accepting,
        }
    }

    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

fn reconnect() -> Reconnect {
    Reconnect {
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(40),
        multiplier: 2.0,
        max_attempts: None,
    }
}

/// What the pusher learnt of each push: taken (by the server process with
/// this pid) or lost with its connection (`None`: may or may not be made).
type Outcomes = Arc<Mutex<Vec<(u64, Option<u32>)>>>;

async fn push_all(pusher: Client, outcomes: Outcomes) {
    let kind = Kind::app(PUSH_TO).unwrap();
    for n in 0..TOTAL {
        loop {
            match pusher.call(Frame::new(kind, format!("rita {n}"))).await {
                Ok(answer) => {
                    let text = answer.payload_text();
                    let pid = text.split(' ').nth(2).and_then(|p| p.parse().ok());
                    assert!(pid.is_some(), "answer {text:?}");
                    outcomes.lock().unwrap().push((n, pid));
                    break;
                }
                // The receiver not resumed at this server yet, or behind:
                // refused, and the pusher asks again (its own backoff).
                Err(ClientError::Remote(why))
                    if why.contains("(unknown-client)") || why.contains("(full)") =>
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(ClientError::NotConnected) => {}
                Err(ClientError::ConnectionLost(_)) => {
                    outcomes.lock().unwrap().push((n, None));
                    break;
                }
                Err(e) => panic!("push {n}: {e}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_across_server_crashes_and_cut_connections_are_delivered_once_or_reported() {
    let port = Port::reserve();
    assert_kept(&port);
    let addr = port.addr;
    let mut server = serve(&port).await;
    let mut pids = vec![server.id().unwrap()];
    let proxy = Proxy::start(addr).await;

    let receiver = within(
        "receiver",
        Client::builder()
            .client_id("rita")
            .reconnect(reconnect())
            .acknowledged(64, 64 << 10)
            .recover_pushes(true)
            .incoming_capacity(1 << 16)
            .incoming_bytes(64 << 20)
            .connect(proxy.addr),
    )
    .await
    .unwrap();
    let mut incoming = receiver.incoming().unwrap();
    // (pushes received, the last one's number)
    let (count, mut counted) = watch::channel((0usize, 0u64));
    let receiving = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(frame) = incoming.recv().await {
            let n = frame.payload_text().parse::<u64>().unwrap();
            seen.push(n);
            count.send_replace((seen.len(), n));
        }
        seen
    });
    let pusher = within(
        "pusher",
        Client::builder()
            .reconnect(reconnect())
            .queue_timeout(Some(LIMIT))
            .connect(addr),
    )
    .await
    .unwrap();
    let outcomes = Outcomes::default();
    let pushing = tokio::spawn(push_all(pusher.clone(), outcomes.clone()));

    // Each step once the receiver has 400 more pushes: from the server
    // running then (the one before is gone), so every server process is
    // resumed by the receiver before the next stop.
    let steps = ["-KILL", "-INT", "-KILL", "cut", "cut"];
    for step in steps {
        let at = counted.borrow().0 + 400;
        within("pushes", counted.wait_for(|(n, _)| *n >= at))
            .await
            .unwrap();
        // Pushes counted since the last stop may still be the stopped
        // server's (in flight when it went): the step also waits until the
        // receiver has resumed at the server running now (a counter of the
        // client's, nothing to await: polled).
        within("the resume", async {
            while receiver.fresh_resumes() < pids.len() as u64 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        if step == "cut" {
            // The last server lives on: its connection to the receiver is cut.
            proxy.cut();
        } else {
            signal(&server, step);
            within("the server's exit", server.wait()).await.unwrap();
            server = serve(&port).await;
            pids.push(server.id().unwrap());
        }
    }
    within("the pusher", pushing).await.unwrap();
    let outcomes = outcomes.lock().unwrap().clone();
    let last_pid = *pids.last().unwrap();
    let by_last: Vec<u64> = outcomes
        .iter()
        .filter(|(_, pid)| *pid == Some(last_pid))
        .map(|(n, _)| *n)
        .collect();
    // The last push is the live server's: once it is in, so is the rest.
    let last_taken = *by_last.last().unwrap();
    assert_eq!(last_taken, TOTAL - 1);
    within("the last push", counted.wait_for(|(_, n)| *n >= last_taken))
        .await
        .unwrap();
    assert_eq!(
        receiver.fresh_resumes(),
        pids.len() as u64,
        "one fresh start per server process, the first connection included"
    );
    assert!(receiver.recovered(), "the cuts: the live server kept them");
    assert_eq!(receiver.missed_pushes(), 0);
    assert_eq!(receiver.pushes_dropped(), 0);
    within("close", receiver.close()).await;
    drop(receiver);
    let seen = within("the receiver", receiving).await.unwrap();
    signal(&server, "-INT");
    within("the server's exit", server.wait()).await.unwrap();
    proxy.accepting.abort();

    // No duplicates, in order.
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, once each");
    let seen: HashSet<u64> = seen.into_iter().collect();
    let taken: HashMap<u64, Option<u32>> = outcomes.iter().copied().collect();
    assert_eq!(
        taken.len() as u64,
        TOTAL,
        "every push reported to the pusher"
    );
    // Nothing the pusher was not told of.
    assert!(seen.iter().all(|n| taken.contains_key(n)));
    // The live server: 0 lost across the two cuts.
    let lost_by_last: Vec<u64> = by_last
        .iter()
        .copied()
        .filter(|n| !seen.contains(n))
        .collect();
    assert_eq!(
        lost_by_last,
        [] as [u64; 0],
        "lost by the server that lived on"
    );
    // A crash's losses: taken by a server that is gone, and the client
    // was told `fresh` by each server that followed.
    for (n, pid) in &taken {
        if seen.contains(n) {
            continue;
        }
        match pid {
            None => {} // reported to the pusher
            Some(pid) => assert!(pids[..pids.len() - 1].contains(pid), "push {n} lost"),
        }
    }
    eprintln!(
        "{} pushes: {} received, {} lost in crashes, {} unknown to the pusher",
        TOTAL,
        seen.len(),
        taken
            .iter()
            .filter(|(n, p)| p.is_some() && !seen.contains(n))
            .count(),
        taken.values().filter(|p| p.is_none()).count()
    );
}

/// The push recovery flags are checked before the server starts: a buffer
/// that would not fit the session outbox is refused with the setting named;
/// push recovery without acknowledged delivery is a usage error.
#[tokio::test]
async fn push_recovery_flags_are_checked_before_serving() {
    let run = |args: &'static [&'static str]| async move {
        within(
            "msgi serve",
            Command::new(MSGI)
                .args(["serve", "--listen", "127.0.0.1:0"])
                .args(args)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .unwrap()
    };
    let out = run(&["--ack", "--recover-pushes", "--push-frames", "1024"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--push-frames"), "{err}");
    assert!(
        err.contains("1024 frames kept must be below the session outbox's 1024"),
        "{err}"
    );
    let out = run(&["--recover-pushes"]).await;
    assert_eq!(out.status.code(), Some(2), "needs --ack");
    let out = run(&["--ack", "--recover-pushes", "--push-grace", "0"]).await;
    assert_eq!(out.status.code(), Some(2), "a zero grace period");
}

/// The other direction against real processes: a client sends numbered
/// one-way frames at full speed with acknowledged delivery to `msgi serve
/// --ack --record FILE` (a file per server process), while the server is
/// SIGKILLed, SIGINTed and SIGKILLed and restarted, then, the last server
/// living on, the client's connection is cut twice. Every frame reaches a
/// handler (0 lost), none twice within one server process (exactly once
/// across reconnects to a live server), none again after a SIGINT (the
/// DISCONNECT said which it took); only a SIGKILL may repeat frames (at
/// least once: taken and not yet acknowledged when it died).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_frames_across_server_crashes_and_cut_connections_are_lost_never() {
    const FRAMES: u64 = 20_000;
    let port = Port::reserve();
    assert_kept(&port);
    let addr = port.addr;
    let dir = std::env::temp_dir().join(format!("msgi-ack-restarts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let record = |i: usize| dir.join(format!("handed.{i}"));
    let start = |i: usize| {
        let file = record(i);
        let port = &port;
        async move { serve_with(port, &["--record", file.to_str().unwrap()]).await }
    };
    let mut server = start(0).await;
    let proxy = Proxy::start(addr).await;
    let client = within(
        "client",
        Client::builder()
            .client_id("sam")
            .reconnect(reconnect())
            .acknowledged(1024, 1 << 20)
            .connect(proxy.addr),
    )
    .await
    .unwrap();
    let (sent, mut progress) = watch::channel(0u64);
    let sender = client.clone();
    let sending = tokio::spawn(async move {
        for n in 0..FRAMES {
            sender.send(Frame::data(n.to_string())).await.unwrap();
            sent.send_replace(n + 1);
        }
    });
    // Each step once 2,000 more frames were taken into a window of 1,024:
    // the server then running acknowledged some (the one before is gone).
    let steps = ["-KILL", "-INT", "-KILL", "cut", "cut"];
    let mut processes = 1;
    for step in steps {
        let at = *progress.borrow() + 2000;
        within("frames", progress.wait_for(|n| *n >= at))
            .await
            .unwrap();
        if step == "cut" {
            proxy.cut();
        } else {
            signal(&server, step);
            within("the server's exit", server.wait()).await.unwrap();
            server = start(processes).await;
            processes += 1;
        }
    }
    within("sending", sending).await.unwrap();
    within("the last acknowledgement", client.wait_acknowledged())
        .await
        .unwrap();
    assert_eq!(client.acknowledged(), FRAMES);
    within("close", client.close()).await;
    signal(&server, "-INT");
    within("the server's exit", server.wait()).await.unwrap();
    proxy.accepting.abort();

    let handed: Vec<Vec<u64>> = (0..processes)
        .map(|i| {
            let text = std::fs::read_to_string(record(i)).unwrap_or_default();
            text.lines().map(|l| l.parse().unwrap()).collect()
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    let mut all = HashSet::new();
    for (i, numbers) in handed.iter().enumerate() {
        let distinct: HashSet<u64> = numbers.iter().copied().collect();
        assert_eq!(distinct.len(), numbers.len(), "process {i}: a frame twice");
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "process {i}: in order"
        );
        all.extend(distinct);
    }
    let missing: Vec<u64> = (0..FRAMES).filter(|n| !all.contains(n)).collect();
    assert_eq!(missing, [] as [u64; 0], "lost");
    // After the SIGINT (process 1 stopped gracefully), process 2 repeats
    // nothing process 1 took.
    let taken_by_1: HashSet<u64> = handed[1].iter().copied().collect();
    assert!(
        handed[2].iter().all(|n| !taken_by_1.contains(n)),
        "a graceful stop said what it took"
    );
    let total: usize = handed.iter().map(Vec::len).sum();
    eprintln!(
        "{FRAMES} frames: handed on {total} times by {processes} processes ({} again after a SIGKILL)",
        total - FRAMES as usize
    );
}
