//! What the CLI's integration tests share.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::Duration;

/// The first `n` lines of the child's stdout, read on a thread: bounded by
/// a timeout (the child is killed if it does not announce in time).
pub(crate) fn first_lines(child: &mut Child, n: usize) -> Vec<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = BufReader::new(stdout);
        for _ in 0..n {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap_or(0) == 0 || tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    for _ in 0..n {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => lines.push(line),
            Err(e) => {
                let _ = child.kill();
                panic!("msgi serve did not announce its address: {e}");
            }
        }
    }
    lines
}
