//! The `msgi` binary as a user runs it: the demo, and two processes talking
//! through `serve` and `send`, plain and through every wire layer.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const MSGI: &str = env!("CARGO_BIN_EXE_msgi");

/// Runs `msgi` with `args` to completion, within a time limit.
fn run(args: &[&str]) -> Output {
    run_with(args, &[], Duration::from_secs(30))
}

/// Runs `msgi` with `args` and extra environment variables; panics if it
/// has not finished within `limit`.
fn run_with(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let child = tokio::process::Command::new(MSGI)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        tokio::time::timeout(limit, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("msgi {args:?} did not finish"))
            .unwrap()
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `msgi serve` on 127.0.0.1:0; killed on drop.
struct Serve {
    child: Child,
    addr: String,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        let mut child = Command::new(MSGI)
            .args(["serve", "--listen", "127.0.0.1:0", "--announce"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().strip_prefix("LISTENING ").unwrap().to_owned();
        Serve { child, addr }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_demo_runs_to_a_graceful_shutdown() {
    let out = run(&["demo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "received push: \"alice: hello everyone\"",
        "received push: \"bob (private): lunch at noon?\"",
        "asked who is here: alice, bob, carol",
        "got the slow answer",
        "alice    disconnected by the server: server shutdown",
        "stopped; every session drained",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // The story in the order it happened: carol's answer, then her session's end.
    let answer = text.find("got the slow answer").unwrap();
    let ended = text.find("(carol) ended").unwrap();
    assert!(
        answer < ended,
        "carol's session ended before her answer:\n{text}"
    );
    assert!(!text.contains("client closed: connection lost"), "{text}");
}

#[test]
fn send_talks_to_serve() {
    let server = Serve::start(&[]);
    let out = run(&["send", "--addr", &server.addr, "--correlated", "hello"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "DATA id=1 hello\n");
    let out = run(&["send", "--addr", &server.addr, "--kind", "0x123", "app"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Kind(0x123) app\n");
}

#[test]
fn send_builds_a_container_from_json_and_prints_the_answer_as_json() {
    let server = Serve::start(&[]);
    let json = r#"{"message_type":"user_login","target_id":"server","values":{"user":"alice","n":-3,"tags":["a",null],"geo":{"x":1.5}}}"#;
    let out = run(&[
        "send",
        "--addr",
        &server.addr,
        "--correlated",
        "--container",
        json,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // `msgi serve` echoes the payload; `send` decodes it and prints it in full, in order.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"message_type\":\"user_login\",\"source_id\":\"\",\"source_sub_id\":\"\",\"target_id\":\"server\",\"target_sub_id\":\"\",\"values\":{\"user\":\"alice\",\"n\":-3,\"tags\":[\"a\",null],\"geo\":{\"x\":1.5}}}\n"
    );
    // One-way works too (the echo is the answer).
    let out = run(&[
        "send",
        "--addr",
        &server.addr,
        "--container",
        r#"{"message_type":"ping"}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("{\"message_type\":\"ping\""));

    // Not a container: said before connecting, with serde's reason.
    let out = run(&[
        "send",
        "--addr",
        &server.addr,
        "--container",
        r#"{"values":{}}"#,
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--container is not a container in JSON"),
        "{err}"
    );
    assert!(err.contains("missing field `message_type`"), "{err}");
    // Before connecting: with nothing listening at the address, the JSON is still what
    // is reported.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = run(&[
        "send",
        "--addr",
        &closed_addr,
        "--container",
        r#"{"values":{}}"#,
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("missing field `message_type`"), "{err}");
    assert!(!err.contains("connect"), "{err}");
    // A text payload and --container together are refused by the parser.
    let out = run(&["send", "--container", r#"{"message_type":"t"}"#, "text"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn send_container_says_when_the_answer_is_not_a_container() {
    use std::io::Write;
    // A peer that answers the first DATA request with plain text.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        loop {
            let (ty, id, _) = read_frame(&mut stream);
            if ty == 0x010 {
                stream.write_all(&frame(0x010, id, b"plain text")).unwrap();
                return;
            }
        }
    });
    let out = run(&[
        "send",
        "--addr",
        &addr,
        "--correlated",
        "--container",
        r#"{"message_type":"t"}"#,
    ]);
    peer.join().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("the answer is not a container (unsupported container version 112"),
        "{err}"
    );
    assert!(err.contains("DATA plain text"), "{err}");
}

#[test]
fn send_talks_to_serve_through_every_layer() {
    let dir = std::env::temp_dir().join(format!("msgi-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.hex");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let key = key.to_str().unwrap();
    let layers = ["--compress", "--key-file", key, "--hmac"];

    let server =
        Serve::start(&[&layers[..], &["--timeout-ms", "500", "--rate-limit", "100"]].concat());
    let big = "x".repeat(5000);
    let out = run(&[
        &["send", "--addr", &server.addr, "--correlated"],
        &layers[..],
        &[big.as_str()],
    ]
    .concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("DATA id=1 {big}\n")
    );

    // Without the key the server refuses to talk, and `send` says why.
    for correlated in [true, false] {
        let mut args = vec!["send", "--addr", &server.addr, "--wait", "2", "plain"];
        if correlated {
            args.push("--correlated");
        }
        let out = run(&args);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("psk: this server requires the pre-shared-key handshake"),
            "{err}"
        );
    }
    // With the key but other layers, both stacks are named.
    let out = run(&[
        "send",
        "--addr",
        &server.addr,
        "--wait",
        "2",
        "--key-file",
        key,
        "plain",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "handshake refused: psk: transforms differ \
             (client encrypt; server deflate,encrypt,sign)"
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn send_names_the_kinds_it_can_send() {
    let out = run(&["send", "--kind", "error", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("'error'"), "{err}");
    assert!(
        err.contains("data, control, ping, or an application kind 0x100-0xfff"),
        "{err}"
    );
}

#[test]
fn help_names_every_command() {
    let out = run(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let about = text.lines().next().unwrap();
    for command in ["serve", "send", "demo", "bench"] {
        assert!(about.contains(command), "{command} missing from {about:?}");
        assert!(
            text.contains(&format!("\n  {command} ")),
            "{command} missing:\n{text}"
        );
    }
}

#[test]
fn errors_print_their_causes_without_a_backtrace() {
    // Nothing listens on the port of a listener just closed.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = run_with(
        &["send", "--addr", &addr, "x"],
        &[("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "1")],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("error: could not connect to {addr}")),
        "{err}"
    );
    assert_eq!(err.matches(&addr).count(), 1, "the address once: {err}");
    assert!(err.contains("caused by: "), "{err}");
    assert!(err.contains("refused"), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    assert!(err.lines().count() <= 4, "{err}");
}

#[test]
fn serve_refuses_zero_rates_and_timeouts_without_panicking() {
    for flags in [
        &["--rate-limit", "0", "--rate-limit-policy", "delay"][..],
        &["--rate-limit=-5"],
        &["--rate-limit", "NaN"],
        &["--timeout-ms", "0"],
        &["--max-connections", "0"],
        &["--max-connections-per-ip", "0"],
    ] {
        let args = [&["serve", "--listen", "127.0.0.1:0"][..], flags].concat();
        // The old binary started serving: it would not finish at all.
        let out = run_with(&args, &[], Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        let err = stderr(&out);
        let flag = flags[0].split('=').next().unwrap();
        assert!(err.contains(flag), "{flags:?}: {err}");
        assert!(!err.contains("panicked"), "{flags:?}: {err}");
    }
}

#[test]
fn bench_refuses_zero_durations_and_counts() {
    let server = Serve::start(&[]);
    for flags in [
        &["-t", "0"][..],
        &["--duration=-1"],
        &["-c", "0"],
        &["-d", "0"],
        &["--rounds", "0"],
        &["--sessions", "0"],
    ] {
        let args = [&["bench", "--addr", &server.addr][..], flags].concat();
        let out = run_with(&args, &[], Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{flags:?} printed results");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn serve_stops_gracefully_on_sigterm() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .unwrap_or_else(|_| panic!("{what} timed out"))
    }
    /// Reads one frame: (type field, payload).
    async fn read_frame(stream: &mut tokio::net::TcpStream) -> (u16, Vec<u8>) {
        let mut header = [0u8; 10];
        stream.read_exact(&mut header).await.unwrap();
        assert_eq!(&header[..4], b"MSGI");
        let len = u32::from_be_bytes(header[4..8].try_into().unwrap()) as usize;
        let ty = u16::from_be_bytes(header[8..10].try_into().unwrap());
        assert!((10..=1 << 20).contains(&len));
        let mut rest = vec![0u8; len - 10];
        stream.read_exact(&mut rest).await.unwrap();
        (ty, rest)
    }

    let mut child = tokio::process::Command::new(MSGI)
        .args(["serve", "--listen", "127.0.0.1:0", "--announce"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    within("announce", stdout.read_line(&mut line))
        .await
        .unwrap();
    let addr = line.trim().strip_prefix("LISTENING ").unwrap().to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();

    // PING `up`, and its PONG: the session is running.
    stream
        .write_all(b"MSGI\x00\x00\x00\x0c\x00\x01up")
        .await
        .unwrap();
    assert_eq!(
        within("pong", read_frame(&mut stream)).await,
        (0x002, b"up".to_vec())
    );

    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());

    let (ty, reason) = within("disconnect", read_frame(&mut stream)).await;
    assert_eq!((ty, reason.as_slice()), (0x050, &b"server shutdown"[..]));
    let status = within("exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

/// One frame as bytes: type field, optional request id, payload.
fn frame(ty: u16, id: Option<u32>, payload: &[u8]) -> Vec<u8> {
    let header = if id.is_some() { 14 } else { 10 };
    let mut out = b"MSGI".to_vec();
    out.extend_from_slice(&u32::try_from(header + payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&(ty | if id.is_some() { 0x1000 } else { 0 }).to_be_bytes());
    if let Some(id) = id {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// A raw connection to `addr`, every read bounded.
fn raw(addr: &str) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads one frame: (type field, request id, payload).
fn read_frame(stream: &mut std::net::TcpStream) -> (u16, Option<u32>, Vec<u8>) {
    use std::io::Read;
    let mut header = [0u8; 10];
    stream.read_exact(&mut header).unwrap();
    assert_eq!(&header[..4], b"MSGI");
    let len = u32::from_be_bytes(header[4..8].try_into().unwrap()) as usize;
    let ty = u16::from_be_bytes(header[8..10].try_into().unwrap());
    assert!((10..=1 << 20).contains(&len));
    let mut rest = vec![0u8; len - 10];
    stream.read_exact(&mut rest).unwrap();
    if ty & 0x1000 != 0 {
        let id = u32::from_be_bytes(rest[..4].try_into().unwrap());
        (ty & !0x1000, Some(id), rest.split_off(4))
    } else {
        (ty, None, rest)
    }
}

// docs/PROTOCOL.md, section 3: a refused HELLO uses up the handshake.
#[test]
fn a_refused_hello_uses_up_the_handshake() {
    use std::io::Write;
    let server = Serve::start(&[]);
    let mut stream = raw(&server.addr);
    stream
        .write_all(&frame(0x020, Some(1), b"HELLO a\nb"))
        .unwrap();
    let (ty, id, reason) = read_frame(&mut stream);
    assert_eq!((ty, id), (0x030, Some(1)));
    assert!(reason.starts_with(b"invalid client id: "), "{reason:?}");
    // The second HELLO is the application's: the echo server echoes it.
    stream
        .write_all(&frame(0x020, Some(2), b"HELLO alice"))
        .unwrap();
    assert_eq!(
        read_frame(&mut stream),
        (0x020, Some(2), b"HELLO alice".to_vec())
    );
}

// docs/PROTOCOL.md, section 4: N in `decompressed payload exceeds the
// maximum frame size (N bytes)` is the maximum frame size minus the header.
#[test]
fn the_decompression_limit_names_the_largest_payload() {
    use std::io::Write;
    let server = Serve::start(&["--compress", "--max-frame-size", "1000"]);
    let bomb = msgi_middleware::compression::compress(&[b'a'; 2000], 6).unwrap();
    for (id, n) in [(None, 990), (Some(7), 986)] {
        let mut stream = raw(&server.addr);
        stream.write_all(&frame(0x8010, id, &bomb)).unwrap();
        let (ty, _, reason) = read_frame(&mut stream);
        assert_eq!(ty, 0x030);
        assert_eq!(
            String::from_utf8_lossy(&reason),
            format!("decompressed payload exceeds the maximum frame size ({n} bytes)")
        );
    }
}

// docs/PROTOCOL.md, section 4: key files are 32 raw bytes or 64 hex digits
// with whitespace around them; another key is refused with the reason.
#[test]
fn key_files_and_a_wrong_key() {
    let dir = std::env::temp_dir().join(format!("msgi-cli-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, contents: &str| {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let hex = "0f".repeat(32);
    let server_key = file("server.key", &format!("{hex}\n"));
    let client_key = file("client.key", &format!("  {hex}"));
    let raw_key = file("raw.key", &"\x0f".repeat(32));
    let other_key = file("other.key", &"0e".repeat(32));
    let server = Serve::start(&["--key-file", &server_key, "--hmac"]);
    let send = |key: &str| {
        run(&[
            "send",
            "--addr",
            &server.addr,
            "--correlated",
            "--wait",
            "5",
            "--key-file",
            key,
            "--hmac",
            "hi",
        ])
    };
    for key in [&client_key, &raw_key] {
        let out = send(key);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "DATA id=1 hi\n");
    }
    let out = send(&other_key);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "handshake refused: psk: wrong key (the server's finished MAC does not verify)"
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_latency_describes_what_it_ran() {
    let server = Serve::start(&[]);
    let out = run(&[
        "bench",
        "latency",
        "--addr",
        &server.addr,
        "--rounds",
        "1",
        "-t",
        "0.2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mode Latency, 64 B payload, 1 connection, one frame at a time,"),
        "{text}"
    );
    assert!(!text.contains("in flight"), "{text}");
}

#[test]
fn send_fails_when_a_one_way_frame_is_answered_with_error() {
    use std::io::Write;
    // A server that answers the first frame with an uncorrelated ERROR
    // whose reason carries control characters.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut stream = stream;
        let _ = read_frame(&mut stream);
        stream
            .write_all(&frame(0x030, None, b"nope\n\x1b[2J"))
            .unwrap();
        // Keep the connection open until the client has gone.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut rest);
    });
    let out = run(&["send", "--addr", &addr, "hi"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(
        err.starts_with("error: server error: nope\\n\\u{1b}[2J\n"),
        "{err}"
    );
    server.join().unwrap();
}

#[test]
fn serve_limits_connections_per_address() {
    use std::io::Read;
    let server = Serve::start(&["--max-connections-per-ip", "1"]);
    // Each connection takes its address's place in its own task, once
    // accepted: a PING answered on the first means it holds the place before
    // the second connects (two connections at once race for it).
    let mut first = std::net::TcpStream::connect(&server.addr).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    std::io::Write::write_all(&mut first, &frame(0x001, None, b"hold")).unwrap();
    assert_eq!(read_frame(&mut first), (0x002, None, b"hold".to_vec()));
    // The second connection from 127.0.0.1 is refused with ERROR and closed.
    let mut second = std::net::TcpStream::connect(&server.addr).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut bytes = Vec::new();
    second.read_to_end(&mut bytes).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(bytes.get(..4), Some(&b"MSGI"[..]), "{text}");
    assert!(
        text.contains("too many connections from this address"),
        "{text}"
    );
    drop(first);
}

#[test]
fn send_says_when_the_peer_does_not_speak_msgi() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let http = std::thread::spawn(move || {
        let (mut peer, _) = listener.accept().unwrap();
        let mut request = [0u8; 64];
        let _ = peer.read(&mut request);
        peer.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        // Keep the socket open until msgi has read the answer and gone.
        let _ = peer.read(&mut request);
    });
    let out = run(&["send", "--addr", &addr, "--correlated", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("does not speak MSGI"), "{err}");
    assert!(!err.contains("--key-file"), "not a layer mismatch: {err}");
    http.join().unwrap();
}

/// `msgi bench fanout` end to end at a tiny scale: 20 sessions, a child
/// `fanout-server`, every target; every delivery the server queued is
/// received, counted once, and the counts add up exactly.
#[test]
fn bench_fanout_counts_every_delivery() {
    // With `--key-file`, the server seals every copy for its session
    // (encryption under the pre-shared key) and each receiver opens it.
    let dir = std::env::temp_dir().join(format!("msgi-cli-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.hex");
    std::fs::write(&key, "cd".repeat(32)).unwrap();
    let key = key.to_str().unwrap();
    let runs = [
        ("all", 21u64, None),
        ("filter", 20, None),
        ("subset", 5, None),
        ("all", 21, Some(key)),
    ];
    for (target, recipients, key) in runs {
        let mut args = vec![
            "bench",
            "fanout",
            "--sessions",
            "20",
            "--target",
            target,
            "--subset",
            "5",
            "--rate",
            "2000",
            "-t",
            "0.3",
            "--rounds",
            "1",
            "--json",
        ];
        if let Some(key) = key {
            args.extend(["--key-file", key]);
        }
        let out = run(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let run = &report["runs"][0];
        let fan = &run["fanout"];
        assert_eq!(fan["recipients"], recipients, "{report}");
        let publishes = fan["publishes"].as_u64().unwrap();
        assert!(publishes > 0, "{report}");
        // Every publish reached every recipient, once.
        assert_eq!(
            fan["queued"].as_u64().unwrap(),
            publishes * recipients,
            "{report}"
        );
        assert_eq!(run["messages"], fan["queued"], "{report}");
        assert_eq!(fan["lost"], 0, "{report}");
        assert_eq!(fan["refused_slow"], 0, "{report}");
        assert_eq!(fan["sessions_closed"], 0, "{report}");
        assert_eq!(fan["publisher_closed"], false, "{report}");
        assert_eq!(run["errors"], 0, "{report}");
        assert!(run["p99_us"].as_f64().unwrap() > 0.0, "{report}");
        assert_eq!(report["target"], target, "{report}");
        let layers = if key.is_some() {
            "encryption + psk handshake"
        } else {
            "none"
        };
        assert_eq!(report["layers"], layers, "{report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `msgi bench --stream` end to end, plain and with `--key-file`: one-way
/// frames into `msgi serve --discard`, counted once the server confirmed
/// them, with the server's CPU per frame; a server that cannot open them
/// (another key) fails the run with its refusal instead of counting them.
#[test]
fn bench_stream_counts_what_the_server_opened() {
    let dir = std::env::temp_dir().join(format!("msgi-cli-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.hex");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let key = key.to_str().unwrap();
    for key in [None, Some(key)] {
        let mut args = vec![
            "bench",
            "--stream",
            "--servers",
            "msgi",
            "-c",
            "2",
            "-s",
            "65536",
            "-t",
            "0.3",
            "--rounds",
            "1",
            "--json",
        ];
        if let Some(key) = key {
            args.extend(["--key-file", key]);
        }
        let out = run(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let run = &report["runs"][0];
        assert_eq!(run["server"], "msgi stream", "{report}");
        let messages = run["messages"].as_u64().unwrap();
        assert!(messages > 0, "{report}");
        let mb = run["mb_per_sec"].as_f64().unwrap();
        let seconds = run["seconds"].as_f64().unwrap();
        let expected = messages as f64 * 65536.0 / seconds / 1e6;
        assert!((mb - expected).abs() < 1e-6 * expected.max(1.0), "{report}");
        assert!(
            run["server_cpu_us_per_msg"].as_f64().unwrap() > 0.0,
            "{report}"
        );
        assert_eq!(run["errors"], 0, "{report}");
    }
    // Against a discarding server that holds another key: the handshake
    // is refused, and the run fails saying so.
    let other = dir.join("other.hex");
    std::fs::write(&other, "cd".repeat(32)).unwrap();
    let server = Serve::start(&["--discard", "--key-file", other.to_str().unwrap()]);
    let out = run(&[
        "bench",
        "--stream",
        "--addr",
        &server.addr,
        "-c",
        "1",
        "-s",
        "1024",
        "-t",
        "0.2",
        "--rounds",
        "1",
        "--key-file",
        key,
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("wrong key"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
