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
