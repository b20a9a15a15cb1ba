//! Per-session transform state comes from a factory, never from a cloned
//! template: a transform whose state sits behind an `Arc` gets a fresh one
//! for every accepted session and for every client connection,
//! reconnections included. Over real loopback sockets.
//!
//! Under "clone the template, then reset it" every session would hold the
//! template's `Arc`: the second session's first frame would carry the first
//! session's count, and the peer (whose state is new) would refuse it.

#![allow(clippy::unwrap_used)]

#[path = "../../msgi/tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msgi::{
    BoxError, Client, Frame, FrameCodec, FrameTransform, MakeTransform, Reconnect, Server,
    SessionParams, Side, Wire,
};
use support::{echo, serve, within, TestServer};
use tokio::sync::watch;

/// One session's counts, shared (through the `Arc`) with whoever made it.
#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU32,
    received: AtomicU32,
}

/// Appends a 4-byte sequence number to every payload it sends and checks
/// and removes it on receipt: frame k of a connection must say k.
struct Stamp {
    counts: Arc<Counts>,
}

impl FrameTransform for Stamp {
    fn decode(&mut self, mut frame: Frame) -> Result<Frame, BoxError> {
        let payload = frame.payload().clone();
        let len = payload.len().checked_sub(4).ok_or("no stamp")?;
        let stamp = u32::from_be_bytes(payload[len..].try_into()?);
        let expected = self.counts.received.load(Ordering::SeqCst);
        if stamp != expected {
            return Err(format!("stamp {stamp}, expected {expected}").into());
        }
        self.counts.received.fetch_add(1, Ordering::SeqCst);
        *frame.payload_mut() = payload.slice(..len);
        Ok(frame)
    }

    fn encode(&self, mut frame: Frame) -> Result<Frame, BoxError> {
        let mut payload = frame.payload().to_vec();
        payload.extend_from_slice(&self.counts.sent.load(Ordering::SeqCst).to_be_bytes());
        *frame.payload_mut() = payload.into();
        Ok(frame)
    }

    fn commit(&mut self) {
        self.counts.sent.fetch_add(1, Ordering::SeqCst);
    }

    fn max_overhead(&self) -> usize {
        4
    }
}

/// A transform made: for which side, and its counts.
type Made = (Side, Arc<Counts>);

/// The factory; it keeps every session's counts (shared on purpose) so the
/// test can look at them, and says how many it made.
#[derive(Debug, Clone)]
struct MakeStamp {
    made: Arc<Mutex<Vec<Made>>>,
    count: Arc<watch::Sender<usize>>,
}

impl Default for MakeStamp {
    fn default() -> Self {
        MakeStamp {
            made: Arc::default(),
            count: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl MakeStamp {
    fn made(&self) -> Vec<Made> {
        self.made.lock().unwrap().clone()
    }
}

impl MakeTransform for MakeStamp {
    type Transform = Stamp;

    fn make_transform(&self, params: SessionParams) -> Stamp {
        let counts = Arc::new(Counts::default());
        self.made
            .lock()
            .unwrap()
            .push((params.side, counts.clone()));
        self.count.send_modify(|n| *n += 1);
        Stamp { counts }
    }

    fn max_overhead(&self) -> usize {
        4
    }
}

async fn call(client: &Client, text: &str) {
    let answer = within(client.call(Frame::data(text.to_owned())))
        .await
        .unwrap();
    assert_eq!(answer.payload_text(), text);
}

async fn stamped_server(make: &MakeStamp) -> TestServer {
    serve(
        Server::builder().framing(Wire::new(FrameCodec::new()).transform(make.clone())),
        echo(),
    )
    .await
}

#[tokio::test]
async fn each_accepted_session_gets_fresh_transform_state() {
    let on_server = MakeStamp::default();
    let mut server = stamped_server(&on_server).await;
    let connect = |make: &MakeStamp| {
        Client::builder()
            .framing(Wire::new(FrameCodec::new()).transform(make.clone()))
            .connect(server.addr)
    };
    let (on_a, on_b) = (MakeStamp::default(), MakeStamp::default());
    let a = within(connect(&on_a)).await.unwrap();
    call(&a, "a1").await;
    call(&a, "a2").await;
    let b = within(connect(&on_b)).await.unwrap();
    // B's first frames are its connection's frames 0 and 1, both ways.
    call(&b, "b1").await;
    call(&a, "a3").await;
    call(&b, "b2").await;

    let sessions = on_server.made();
    assert_eq!(sessions.len(), 2, "one transform per accepted session");
    assert!(sessions.iter().all(|(side, _)| *side == Side::Server));
    assert!(!Arc::ptr_eq(&sessions[0].1, &sessions[1].1));
    let sent = |c: &Counts| c.sent.load(Ordering::SeqCst);
    assert_eq!((sent(&sessions[0].1), sent(&sessions[1].1)), (3, 2));
    for (make, calls) in [(&on_a, 3), (&on_b, 2)] {
        let made = make.made();
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].0, Side::Client);
        assert_eq!(made[0].1.received.load(Ordering::SeqCst), calls);
    }
    a.close().await;
    b.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_reconnecting_client_gets_fresh_transform_state() {
    let on_server = MakeStamp::default();
    let mut server = stamped_server(&on_server).await;
    let on_client = MakeStamp::default();
    let mut made = on_client.count.subscribe();
    let client = within(
        Client::builder()
            .framing(Wire::new(FrameCodec::new()).transform(on_client.clone()))
            .reconnect(Reconnect {
                initial_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(20),
                multiplier: 2.0,
                max_attempts: Some(50),
            })
            .connect(server.addr),
    )
    .await
    .unwrap();
    call(&client, "one").await;
    call(&client, "two").await;

    let first = server.registry.sessions().pop().unwrap();
    assert!(server.registry.disconnect(first.id(), "go away"));
    server.next_end().await;
    // The client makes a second framing once it has reconnected.
    within(made.wait_for(|n| *n == 2)).await.unwrap();
    // Its frame 0 again, on a connection whose server side starts at 0.
    call(&client, "three").await;
    call(&client, "four").await;

    let made = on_client.made();
    assert_eq!(made.len(), 2, "one transform per connection");
    assert!(!Arc::ptr_eq(&made[0].1, &made[1].1));
    let sent = |c: &Counts| c.sent.load(Ordering::SeqCst);
    assert_eq!((sent(&made[0].1), sent(&made[1].1)), (2, 2));
    let sessions = on_server.made();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[1].1.received.load(Ordering::SeqCst), 2);
    client.close().await;
    server.shutdown().await;
}
