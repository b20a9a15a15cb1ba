//! `msgi serve --metrics`: a Prometheus scrape of a real server over
//! loopback moves by exactly what a client did.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use msgi::{Frame, FrameCodec, Framing, Kind};

const MSGI: &str = env!("CARGO_BIN_EXE_msgi");
const LIMIT: Duration = Duration::from_secs(10);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on `addr`: (status line, headers, body).
fn get(addr: &str, path: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap();
    (
        status.to_owned(),
        headers.to_ascii_lowercase(),
        body.to_owned(),
    )
}

/// The value of the sample `name` (with its labels) in a scrape; 0 when
/// absent (a counter family leaves out its zero entries).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    FrameCodec::new().encode(frame.clone(), &mut out).unwrap();
    out.to_vec()
}

/// Reads `n` frames (each read bounded by the stream's timeout).
fn read_frames(stream: &mut TcpStream, n: usize) -> Vec<Frame> {
    let mut codec = FrameCodec::new();
    let mut buf = bytes::BytesMut::new();
    let mut frames = Vec::new();
    while frames.len() < n {
        if let Some(frame) = codec.decode(&mut buf).unwrap() {
            frames.push(frame);
            continue;
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).unwrap();
        assert!(read > 0, "closed after {} frames", frames.len());
        buf.extend_from_slice(&chunk[..read]);
    }
    frames
}

#[test]
fn a_scrape_counts_exactly_what_a_client_did() {
    let mut child = Command::new(MSGI)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--announce",
        ])
        .args([
            "--rate-limit",
            "2",
            "--max-connections",
            "1",
            "--idle-timeout",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = support::first_lines(&mut child, 2);
    let server = Killed(child);
    let addr = lines[0]
        .trim()
        .strip_prefix("LISTENING ")
        .unwrap()
        .to_owned();
    let url = lines[1].trim().strip_prefix("METRICS http://").unwrap();
    let (endpoint, path) = url.split_once('/').unwrap();
    assert_eq!(path, "metrics");

    let (status, headers, before) = get(endpoint, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    assert_eq!(
        sample(&before, "msgi_connections_opened_total"),
        0.0,
        "{before}"
    );
    let (status, _, _) = get(endpoint, "/nope");
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // Three requests, the third over the rate of 2 per second, and a PING.
    let sent = [
        Frame::data("one").with_request_id(1),
        Frame::data("two").with_request_id(2),
        Frame::data("three").with_request_id(3),
        Frame::ping("p"),
    ];
    let mut client = TcpStream::connect(&addr).unwrap();
    client.set_read_timeout(Some(LIMIT)).unwrap();
    client
        .write_all(&sent.iter().flat_map(encoded).collect::<Vec<u8>>())
        .unwrap();
    let answers = read_frames(&mut client, 4);
    assert_eq!(
        answers
            .iter()
            .filter(|f| f.payload_text() == "rate limited")
            .count(),
        1,
        "{answers:?}"
    );

    // A second connection finds the one place taken.
    let mut second = TcpStream::connect(&addr).unwrap();
    second.set_read_timeout(Some(LIMIT)).unwrap();
    assert_eq!(read_frames(&mut second, 1)[0].kind(), Kind::ERROR);

    // The client leaves; its close is counted once the server saw it.
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    let start = Instant::now();
    let text = loop {
        let (_, _, text) = get(endpoint, "/metrics");
        if sample(
            &text,
            "msgi_connections_closed_total{reason=\"peer_closed\"}",
        ) == 1.0
        {
            break text;
        }
        assert!(
            start.elapsed() < LIMIT,
            "the close was never counted:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    let of = |frames: &[Frame], kind: Kind| {
        let of_kind: Vec<&Frame> = frames.iter().filter(|f| f.kind() == kind).collect();
        (
            of_kind.len() as f64,
            of_kind.iter().map(|f| f.wire_len() as f64).sum::<f64>(),
        )
    };
    assert_eq!(sample(&text, "msgi_connections"), 0.0, "{text}");
    assert_eq!(sample(&text, "msgi_connections_opened_total"), 1.0);
    assert_eq!(
        sample(
            &text,
            "msgi_connections_rejected_total{reason=\"server_full\"}"
        ),
        1.0
    );
    for (kind, label) in [(Kind::DATA, "data"), (Kind::PING, "ping")] {
        let (n, bytes) = of(&sent, kind);
        assert_eq!(
            sample(
                &text,
                &format!("msgi_frames_received_total{{kind=\"{label}\"}}")
            ),
            n
        );
        assert_eq!(
            sample(
                &text,
                &format!("msgi_received_bytes_total{{kind=\"{label}\"}}")
            ),
            bytes
        );
    }
    for (kind, label) in [
        (Kind::DATA, "data"),
        (Kind::ERROR, "error"),
        (Kind::PONG, "pong"),
    ] {
        let (n, bytes) = of(&answers, kind);
        assert_eq!(
            sample(
                &text,
                &format!("msgi_frames_sent_total{{kind=\"{label}\"}}")
            ),
            n
        );
        assert_eq!(
            sample(&text, &format!("msgi_sent_bytes_total{{kind=\"{label}\"}}")),
            bytes
        );
    }
    let written: usize = answers.iter().map(|f| encoded(f).len()).sum();
    assert_eq!(sample(&text, "msgi_written_bytes_total"), written as f64);
    assert_eq!(
        sample(&text, "msgi_requests_rejected_total{layer=\"rate_limit\"}"),
        1.0
    );
    assert_eq!(sample(&text, "msgi_request_duration_seconds_count"), 3.0);
    assert_eq!(sample(&text, "msgi_requests_in_flight"), 0.0);
    drop(server);
}

/// `msgi bench --metrics` runs its msgi server with metrics on (the
/// overhead figure is this run against one without).
#[test]
fn bench_runs_its_server_with_metrics_on() {
    let mut child = Command::new(MSGI)
        .args(["bench", "throughput", "--servers", "msgi", "--metrics"])
        .args([
            "--rounds", "1", "-t", "0.2", "-c", "1", "-d", "4", "-s", "64",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "bench did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("msgi"), "{text}");
}

/// What `msgi serve` logs for one client that pings and leaves, under `RUST_LOG`.
fn serve_log(rust_log: &str) -> String {
    let mut child = Command::new(MSGI)
        .args(["serve", "--listen", "127.0.0.1:0", "--announce"])
        .env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = support::first_lines(&mut child, 1);
    let addr = lines[0].trim().strip_prefix("LISTENING ").unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(LIMIT)).unwrap();
    client.write_all(&encoded(&Frame::ping("p"))).unwrap();
    assert_eq!(read_frames(&mut client, 1)[0].kind(), Kind::PONG);
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    // The session has ended (the server closed its side): stop the server
    // gracefully, so the session's last line ("disconnected", logged after
    // its socket closed) is written before the process exits.
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("msgi serve did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn rust_log_filters_and_session_lines_carry_the_session_span() {
    // At the default `info` a session keeps no span (memory); with
    // `msgi::server` at DEBUG its lines carry it.
    let plain = serve_log("info");
    let connected = plain
        .lines()
        .find(|l| l.contains("connected") && !l.contains("disconnected"))
        .unwrap_or_else(|| panic!("no connected line in:\n{plain}"));
    assert!(!connected.contains("session{"), "{connected}");

    let log = serve_log("info,msgi::server=debug");
    let connected = log
        .lines()
        .find(|l| l.contains("connected") && !l.contains("disconnected"))
        .unwrap_or_else(|| panic!("no connected line in:\n{log}"));
    assert!(connected.contains("session{id="), "{connected}");
    assert!(connected.contains("transport=\"tcp\""), "{connected}");
    assert!(log.contains("disconnected"), "{log}");

    let quiet = serve_log("warn");
    assert!(!quiet.contains("connected"), "{quiet}");
    assert!(!quiet.contains("listening"), "{quiet}");
}
