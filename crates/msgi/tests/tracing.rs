//! Log lines correlate: what a session and its requests log carries the
//! session's span (id, client id once announced, peer, transport) and, at
//! DEBUG, the request's (kind, request id).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use msgi::{Client, Frame, Server};
use support::{serve, within};
use tracing::Level;

/// Log output, shared with the subscriber's writer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Runs a session that announces `alice` and makes one call whose handler
/// logs at INFO; returns the log at `level`.
async fn run_at(level: Level) -> String {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let handler = tower::service_fn(|frame: Frame| async move {
        tracing::info!("handled a request");
        Ok::<_, std::convert::Infallible>(Some(frame))
    });
    let mut server = serve(Server::builder(), handler).await;
    let client = Client::builder()
        .client_id("alice")
        .connect(server.addr)
        .await
        .unwrap();
    let answer = within(client.call(Frame::data("x"))).await.unwrap();
    assert_eq!(answer.payload_text(), "x");
    client.close().await;
    server.shutdown().await;
    captured.text()
}

#[tokio::test]
async fn at_info_no_span_is_kept_per_session_or_request() {
    let log = run_at(Level::INFO).await;
    let line = log
        .lines()
        .find(|l| l.contains("handled a request"))
        .unwrap_or_else(|| panic!("no line from the handler in:\n{log}"));
    // Nothing per session (a live span costs memory in the subscriber for
    // as long as the session lives) and nothing per request or frame.
    assert!(!line.contains("session{"), "{line}");
    assert!(!line.contains("request{"), "{line}");
}

#[tokio::test]
async fn at_debug_a_handlers_line_carries_the_session_span() {
    let log = run_at(Level::DEBUG).await;
    let line = log
        .lines()
        .find(|l| l.contains("handled a request"))
        .unwrap_or_else(|| panic!("no line from the handler in:\n{log}"));
    // The session's span, its fields recorded as they became known.
    assert!(line.contains("session{id="), "{line}");
    assert!(line.contains(" client=alice"), "{line}");
    assert!(line.contains(" peer=127.0.0.1:"), "{line}");
    assert!(line.contains(" transport=\"tcp\""), "{line}");
}

#[tokio::test]
async fn at_debug_a_request_span_nests_in_the_session_span() {
    let log = run_at(Level::DEBUG).await;
    let line = log
        .lines()
        .find(|l| l.contains("handled a request"))
        .unwrap_or_else(|| panic!("no line from the handler in:\n{log}"));
    let session = line.find("session{").unwrap_or_else(|| panic!("{line}"));
    let request = line
        .find("request{kind=DATA id=")
        .unwrap_or_else(|| panic!("{line}"));
    assert!(session < request, "{line}");
}
