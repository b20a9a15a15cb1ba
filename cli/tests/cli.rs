//! The `msgi` binary as a user runs it: the demo, and two processes talking
//! through `serve` and `send`, plain and through every wire layer.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const MSGI: &str = env!("CARGO_BIN_EXE_msgi");

/// Runs `msgi` with `args` to completion, within a time limit.
fn run(args: &[&str]) -> Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let child = tokio::process::Command::new(MSGI)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("msgi {args:?} did not finish"))
            .unwrap()
    })
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
        "stopped; every session drained",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
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
fn send_talks_to_serve_through_every_layer() {
    let dir = std::env::temp_dir().join(format!("msgi-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.hex");
    let hmac = dir.join("hmac.key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    std::fs::write(&hmac, "shared secret\n").unwrap();
    let (key, hmac) = (key.to_str().unwrap(), hmac.to_str().unwrap());
    let layers = ["--compress", "--key-file", key, "--hmac-key-file", hmac];

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

    // Without the layers the server refuses to talk.
    let out = run(&[
        "send",
        "--addr",
        &server.addr,
        "--correlated",
        "--wait",
        "2",
        "plain",
    ]);
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
