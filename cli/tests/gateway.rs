//! `msgi gateway` as a user runs it: in front of `msgi serve` processes,
//! with routes by kind and different wire layers on each side.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const MSGI: &str = env!("CARGO_BIN_EXE_msgi");

/// A `msgi` process that announced its address; killed on drop.
struct Running {
    child: Child,
    addr: String,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(MSGI)
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--announce"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().strip_prefix("LISTENING ").unwrap().to_owned();
        Running { child, addr }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `msgi send` to completion within a time limit.
fn send(args: &[&str]) -> Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let child = tokio::process::Command::new(MSGI)
            .arg("send")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .expect("msgi send did not finish")
            .unwrap()
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn gateway_forwards_to_compressed_upstreams_and_routes_by_kind() {
    // Upstreams speak compression; the downstream side is plain.
    let a = Running::start(&["serve", "--compress"]);
    let b = Running::start(&["serve", "--compress"]);
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let route = format!("0x123={nowhere}");
    let gateway = Running::start(&[
        "gateway",
        "--upstream",
        &a.addr,
        &b.addr,
        "--upstream-wire",
        "--compress",
        "--route",
        &route,
        "--fail-after-ms",
        "1500",
    ]);
    let big = "x".repeat(4000);
    for payload in ["hello", big.as_str()] {
        let out = send(&[
            "--addr",
            &gateway.addr,
            "--correlated",
            "--wait",
            "10",
            payload,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("DATA id=1 {payload}\n"));
    }
    // Kind 0x123 is routed to an upstream that is down: an ERROR after the
    // bounded wait, not a hang.
    let out = send(&[
        "--addr",
        &gateway.addr,
        "--correlated",
        "--kind",
        "0x123",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no upstream ready within 1.5s"),
        "{}",
        text(&out.stderr)
    );
}

/// A scratch folder for one test's files, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("msgi-gw-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `msgi send` through `gateway`, correlated; the answer line or the error.
fn through(gateway: &Running) -> Result<String, String> {
    let out = send(&[
        "--addr",
        &gateway.addr,
        "--correlated",
        "--wait",
        "10",
        "hello",
    ]);
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

#[test]
fn gateway_reaches_upstreams_over_tls_and_with_a_pre_shared_key() {
    let dir = Scratch::new("up-secure");
    let folder = dir.path("pki");
    let certs = std::process::Command::new(MSGI)
        .args(["certs", &folder])
        .output()
        .unwrap();
    assert!(certs.status.success(), "{}", text(&certs.stderr));
    let pki = |name: &str| format!("{folder}/{name}");
    // TLS upstream: the gateway verifies it with the CA (server name: the
    // host of --upstream, 127.0.0.1, which `msgi certs` puts in the
    // certificate); the downstream side stays plain.
    let tls_up = Running::start(&[
        "serve",
        "--tls-cert",
        &pki("server.pem"),
        "--tls-key",
        &pki("server.key"),
    ]);
    let gateway = Running::start(&[
        "gateway",
        "--upstream",
        &tls_up.addr,
        "--upstream-tls-ca",
        &pki("ca.pem"),
        "--fail-after-ms",
        "1000",
    ]);
    assert_eq!(through(&gateway).unwrap(), "DATA id=1 hello\n");
    // Without TLS towards it, that upstream cannot be reached: the request
    // waits for it and fails, or fails with the connection it was sent on.
    let plain = Running::start(&[
        "gateway",
        "--upstream",
        &tls_up.addr,
        "--fail-after-ms",
        "300",
    ]);
    let err = through(&plain).unwrap_err();
    assert!(
        err.contains("no upstream ready") || err.contains("bad magic"),
        "{err}"
    );

    // Pre-shared-key upstream (handshake, encryption and HMAC).
    let key = dir.path("k.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    let other = dir.path("other.key");
    std::fs::write(&other, "22".repeat(32)).unwrap();
    let psk_up = Running::start(&["serve", "--key-file", &key, "--hmac"]);
    let gateway = Running::start(&[
        "gateway",
        "--upstream",
        &psk_up.addr,
        "--upstream-key-file",
        &key,
        "--upstream-wire",
        "--hmac",
        "--fail-after-ms",
        "1000",
    ]);
    assert_eq!(through(&gateway).unwrap(), "DATA id=1 hello\n");
    // Another key: the handshake fails, the upstream is never up.
    let wrong = Running::start(&[
        "gateway",
        "--upstream",
        &psk_up.addr,
        "--upstream-wire",
        &format!("--key-file {other} --hmac"),
        "--fail-after-ms",
        "300",
    ]);
    let err = through(&wrong).unwrap_err();
    assert!(err.contains("no upstream ready"), "{err}");
}
