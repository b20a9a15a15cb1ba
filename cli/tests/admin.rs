//! `msgi serve --admin`: the live view as a user runs it. Sessions over
//! TCP and WebSocket, counted exactly; the disconnect action refused
//! without a token and closing the session (with its reason) with one;
//! `msgi top --once` showing the sessions; SIGTERM stopping it all.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use msgi::{Frame, FrameCodec, Framing, Kind};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

const MSGI: &str = env!("CARGO_BIN_EXE_msgi");
const LIMIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} timed out"))
}

/// `msgi serve` with TCP, WebSocket and admin listeners; killed on drop.
struct Serve {
    child: Child,
    tcp: String,
    ws: String,
    admin: String,
}

impl Serve {
    async fn start(extra: &[&str]) -> Serve {
        let mut child = Command::new(MSGI)
            .args(["serve", "--listen", "127.0.0.1:0", "--announce"])
            .args(["--ws-listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // TCP, WebSocket, then METRICS (if asked), then ADMIN.
        let mut announced = Vec::new();
        while announced.len() < 3 {
            let line = within("announce", lines.next_line())
                .await
                .unwrap()
                .unwrap();
            let (what, addr) = line.split_once(' ').unwrap();
            if what != "METRICS" {
                announced.push(addr.to_owned());
            }
        }
        let [tcp, ws, admin] = <[String; 3]>::try_from(announced).unwrap();
        let admin = admin
            .strip_prefix("http://")
            .unwrap()
            .trim_end_matches('/')
            .to_owned();
        Serve {
            child,
            tcp,
            ws,
            admin,
        }
    }

    /// `method path` on the admin endpoint: (status, JSON body).
    async fn http(&self, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut stream = within("connect", TcpStream::connect(&self.admin))
            .await
            .unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        within("answer", stream.read_to_end(&mut answer))
            .await
            .unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        assert!(head.contains("content-type: application/json"), "{head}");
        (status, serde_json::from_str(body).unwrap())
    }

    /// Waits (bounded) until `/connz` satisfies `done`: a session reports
    /// what it did at the end of the wake-up that wrote the answer, just
    /// after its peer may have read it.
    async fn connz_until(&self, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let (status, connz) = self.http("GET", "/connz", None).await;
            assert_eq!(status, 200);
            if done(&connz) {
                return connz;
            }
            assert!(tokio::time::Instant::now() < deadline, "never: {connz:#}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A TCP peer writing raw frames.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
}

impl Peer {
    async fn connect(addr: &str) -> Peer {
        Peer {
            stream: within("connect", TcpStream::connect(addr)).await.unwrap(),
            buf: BytesMut::new(),
            codec: FrameCodec::new(),
        }
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.codec.encode(frame, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Option<Frame> {
        within("a frame", async {
            loop {
                if let Some(frame) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(frame);
                }
                if self.stream.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        })
        .await
    }
}

fn session<'a>(connz: &'a Value, transport: &str) -> &'a Value {
    connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["transport"] == transport)
        .unwrap_or_else(|| panic!("no {transport} session in {connz:#}"))
}

/// A directory of its own for test `name`, holding a token file.
fn write_token(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("msgi-admin-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, "tok-3f9a\n").unwrap();
    (dir, path.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn the_admin_view_counts_disconnects_and_shows_in_top() {
    let (dir, token_file) = write_token("view");
    let serve = Serve::start(&["--admin-token-file", &token_file]).await;
    std::fs::remove_dir_all(dir).unwrap();

    // TCP: HELLO alice, WELCOME, three calls answered.
    let mut tcp = Peer::connect(&serve.tcp).await;
    let hello = msgi::proto::session::hello_frame("alice");
    let (mut tcp_in, mut tcp_out) = (hello.wire_len() as u64, 0);
    tcp.send(hello).await;
    let welcome = tcp.recv().await.unwrap();
    assert_eq!(welcome.kind(), Kind::CONTROL);
    tcp_out += welcome.wire_len() as u64;
    for (id, size) in [(1, 10), (2, 200), (3, 3000)] {
        let frame = Frame::data(vec![b'a'; size]).with_request_id(id);
        tcp_in += frame.wire_len() as u64;
        tcp.send(frame).await;
        let answer = tcp.recv().await.unwrap();
        assert_eq!(answer.request_id(), Some(id));
        tcp_out += answer.wire_len() as u64;
    }
    // WebSocket: two frames, one binary message each, echoed.
    let (mut ws, _) = within("ws", tokio_tungstenite::connect_async(&serve.ws))
        .await
        .unwrap();
    let mut ws_bytes = 0;
    let mut codec = FrameCodec::new();
    for payload in ["one", "two!"] {
        let frame = Frame::data(payload);
        ws_bytes += frame.wire_len() as u64;
        let mut out = BytesMut::new();
        codec.encode(frame, &mut out).unwrap();
        ws.send(Message::Binary(out.freeze())).await.unwrap();
        let echoed = within("ws echo", ws.next()).await.unwrap().unwrap();
        assert!(matches!(echoed, Message::Binary(_)), "{echoed:?}");
    }

    let connz = serve
        .connz_until(|c| {
            c["total"] == 2
                && c["connections"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["frames_out"].as_u64().unwrap())
                    .sum::<u64>()
                    == 6
        })
        .await;
    let t = session(&connz, "tcp");
    assert_eq!(t["client_id"], "alice");
    assert_eq!(t["peer"], tcp.stream.local_addr().unwrap().to_string());
    assert_eq!(
        (t["frames_in"].as_u64(), t["bytes_in"].as_u64()),
        (Some(4), Some(tcp_in))
    );
    assert_eq!(
        (t["frames_out"].as_u64(), t["bytes_out"].as_u64()),
        (Some(4), Some(tcp_out))
    );
    assert_eq!(t["bytes_written"].as_u64(), Some(tcp_out));
    assert_eq!(
        (t["write_queue"].as_u64(), t["in_flight"].as_u64()),
        (Some(0), Some(0))
    );
    let w = session(&connz, "ws");
    assert_eq!(
        (w["frames_in"].as_u64(), w["bytes_in"].as_u64()),
        (Some(2), Some(ws_bytes))
    );
    assert_eq!(
        (w["frames_out"].as_u64(), w["bytes_out"].as_u64()),
        (Some(2), Some(ws_bytes))
    );
    let tcp_id = t["id"].as_str().unwrap().to_owned();
    let ws_id = w["id"].as_str().unwrap().to_owned();

    let (status, varz) = serve.http("GET", "/varz", None).await;
    assert_eq!(status, 200);
    assert_eq!(varz["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        (
            varz["connections"].as_u64(),
            varz["total_connections"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(varz["frames_in"].as_u64(), Some(6));
    assert_eq!(varz["bytes_in"].as_u64(), Some(tcp_in + ws_bytes));
    assert_eq!(varz["bytes_out"].as_u64(), Some(tcp_out + ws_bytes));
    assert_eq!(varz["disconnect_enabled"], true);

    // Sorted by frames in: the TCP session first; a page of one.
    let (_, page) = serve
        .http("GET", "/connz?sort=frames_in&limit=1", None)
        .await;
    assert_eq!(page["connections"].as_array().unwrap().len(), 1);
    assert_eq!(page["connections"][0]["id"], tcp_id.as_str());
    assert_eq!(page["total"], 2);

    // `msgi top --once`: both sessions, alice among them.
    let top = within(
        "top",
        Command::new(MSGI)
            .args([
                "top",
                "--admin",
                &serve.admin,
                "--once",
                "--sort",
                "frames_in",
            ])
            .output(),
    )
    .await
    .unwrap();
    let text = String::from_utf8(top.stdout).unwrap();
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    assert!(text.contains("2 session(s)"), "{text}");
    assert!(text.contains("sorted by frames_in"), "{text}");
    let tcp_line = text.lines().position(|l| l.starts_with(&tcp_id)).unwrap();
    let ws_line = text.lines().position(|l| l.starts_with(&ws_id)).unwrap();
    assert!(tcp_line < ws_line, "{text}");
    let line = text.lines().nth(tcp_line).unwrap();
    assert!(line.contains("alice") && line.contains(" tcp "), "{line}");
    assert!(
        !text.contains('\x1b'),
        "--once prints no escape codes: {text:?}"
    );

    // Disconnect: refused without the token, or with another.
    let path = format!("/connz/{tcp_id}/disconnect");
    assert_eq!(serve.http("POST", &path, None).await.0, 401);
    assert_eq!(serve.http("POST", &path, Some("tok-3f9b")).await.0, 401);
    assert_eq!(serve.http("GET", &path, Some("tok-3f9a")).await.0, 405);
    // Still served.
    tcp.send(Frame::data("still").with_request_id(9)).await;
    assert_eq!(tcp.recv().await.unwrap().request_id(), Some(9));
    let (status, body) = serve.http("POST", &path, Some("tok-3f9a")).await;
    assert_eq!((status, &body["closing"]), (200, &Value::Bool(true)));
    let farewell = tcp.recv().await.unwrap();
    assert_eq!(farewell.kind(), Kind::DISCONNECT);
    assert_eq!(farewell.payload_text(), "disconnected by the administrator");
    assert!(tcp.recv().await.is_none(), "closed after the farewell");
    let connz = serve.connz_until(|c| c["total"] == 1).await;
    assert_eq!(connz["connections"][0]["id"], ws_id.as_str());
    let (_, varz) = serve.http("GET", "/varz", None).await;
    assert_eq!(varz["closed"]["closed"], 1);
    assert_eq!(varz["total_connections"], 2);
    // Gone: a second disconnect finds nothing.
    assert_eq!(serve.http("POST", &path, Some("tok-3f9a")).await.0, 404);

    // SIGTERM stops the listeners and the admin view; the process exits.
    let mut serve = serve;
    let pid = serve.child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = within("exit", serve.child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn without_a_token_the_view_is_read_only_and_metrics_watch_too() {
    // Two observers on one server: the metrics and the live view.
    let serve = Serve::start(&["--metrics", "127.0.0.1:0"]).await;
    let mut tcp = Peer::connect(&serve.tcp).await;
    tcp.send(Frame::data("x").with_request_id(1)).await;
    tcp.recv().await.unwrap();
    let connz = serve.connz_until(|c| c["total"] == 1).await;
    let id = connz["connections"][0]["id"].as_str().unwrap();
    let path = format!("/connz/{id}/disconnect");
    for token in [None, Some("anything")] {
        let (status, body) = serve.http("POST", &path, token).await;
        assert_eq!(status, 403, "{body}");
    }
    let (_, varz) = serve.http("GET", "/varz", None).await;
    assert_eq!(varz["disconnect_enabled"], false);
    // The session goes on.
    tcp.send(Frame::data("y").with_request_id(2)).await;
    assert_eq!(tcp.recv().await.unwrap().request_id(), Some(2));
    serve
        .connz_until(|c| c["connections"][0]["frames_in"] == 2)
        .await;
}

#[test]
fn a_token_file_without_admin_or_empty_is_refused() {
    let out = std::process::Command::new(MSGI)
        .args(["serve", "--admin-token-file", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap: requires --admin");
    let (dir, _) = write_token("refused");
    let empty = dir.join("empty");
    std::fs::write(&empty, " \n").unwrap();
    let out = std::process::Command::new(MSGI)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--admin-token-file")
        .arg(&empty)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is empty"), "{stderr}");
}
