//! `msgi serve --ws-listen`: the echo server answers over WebSocket too,
//! one frame per binary message, and refuses pages of other origins.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use msgi::{Frame, FrameCodec, Framing};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

mod support;
use support::first_lines;

const MSGI: &str = env!("CARGO_BIN_EXE_msgi");
const LIMIT: Duration = Duration::from_secs(10);

/// `msgi serve` with a WebSocket listener; killed on drop.
struct Serve {
    child: Child,
    ws: String,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        let mut child = Command::new(MSGI)
            .args(["serve", "--listen", "127.0.0.1:0", "--announce"])
            .args(["--ws-listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = first_lines(&mut child, 2);
        let (tcp, ws) = (&lines[0], &lines[1]);
        assert!(tcp.starts_with("LISTENING 127.0.0.1:"), "{tcp}");
        let ws = ws.trim().strip_prefix("LISTENING ").unwrap().to_owned();
        assert!(ws.starts_with("ws://127.0.0.1:"), "{ws}");
        Serve { child, ws }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(
    url: &str,
    origin: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    WsError,
> {
    let mut request = url.into_client_request()?;
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    let (ws, _) = tokio::time::timeout(LIMIT, tokio_tungstenite::connect_async(request))
        .await
        .unwrap()?;
    Ok(ws)
}

#[tokio::test]
async fn serve_answers_over_websocket() {
    let serve = Serve::start(&["--ws-allow-origin", "http://chat.example"]);
    let mut ws = connect(&serve.ws, Some("http://chat.example"))
        .await
        .unwrap();
    let mut codec = FrameCodec::new();
    let mut out = BytesMut::new();
    codec
        .encode(Frame::data("echo me").with_request_id(3), &mut out)
        .unwrap();
    ws.send(Message::binary(out.to_vec())).await.unwrap();
    let answer = loop {
        match tokio::time::timeout(LIMIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Binary(bytes))) => {
                let mut buf = BytesMut::from(&bytes[..]);
                let frame = codec.decode(&mut buf).unwrap().unwrap();
                if frame.kind() != msgi::Kind::HEARTBEAT {
                    break frame;
                }
            }
            other => panic!("expected a binary message, got {other:?}"),
        }
    };
    assert_eq!(answer.payload(), "echo me");
    assert_eq!(answer.request_id(), Some(3));

    match connect(&serve.ws, Some("http://evil.example")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        Err(e) => panic!("expected 403, got {e}"),
        Ok(_) => panic!("another origin was let in"),
    }
}

#[test]
fn bench_runs_msgi_over_websocket_next_to_plain_msgi() {
    let run = |mode: &str, extra: &[&str]| {
        let out = Command::new(MSGI)
            .args(["bench", mode, "--servers", "msgi", "--ws", "--rounds", "1"])
            .args(["-t", "0.2", "--json"])
            .args(extra)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["runs"].as_array().unwrap().clone()
    };
    for (mode, extra) in [
        ("throughput", &["-c", "2", "-d", "4"][..]),
        (
            "throughput",
            &["-c", "1", "-d", "4", "--one-way", "--compress"][..],
        ),
        ("latency", &[][..]),
    ] {
        let runs = run(mode, extra);
        let servers: Vec<&str> = runs.iter().map(|r| r["server"].as_str().unwrap()).collect();
        assert_eq!(servers, ["msgi", "msgi+ws"], "{mode} {extra:?}");
        for run in &runs {
            assert!(run["messages"].as_u64().unwrap() > 0, "{run}");
            assert_eq!(
                run["errors"].as_u64(),
                Some(0),
                "every echo verified: {run}"
            );
        }
    }
    // Modes it does not measure are refused before any server starts.
    let out = Command::new(MSGI)
        .args(["bench", "idle", "--ws"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ws measures throughput and latency"));
}
