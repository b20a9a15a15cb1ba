//! Review 2 of the client: late answers, calls held while disconnected,
//! the reason a closing client gives. In-memory pipes (paused time only
//! over them), no real-time sleeps.

#![allow(clippy::unwrap_used)]

mod support;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use msgi::Framing as _;
use msgi::{Client, ClientError, Frame, FrameCodec, Reconnect};
use support::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tower::ServiceExt;

type Dial = Pin<Box<dyn Future<Output = io::Result<DuplexStream>> + Send>>;

/// A connector whose first dial gives a pipe of `size` bytes (the server's
/// end goes to `ends`) and whose later dials are refused; every dial is
/// reported on `dials` (which closes when the client task is gone).
fn pipe_once(
    size: usize,
    ends: mpsc::UnboundedSender<DuplexStream>,
    dials: mpsc::UnboundedSender<u32>,
) -> impl FnMut() -> Dial + Send + 'static {
    let mut n = 0u32;
    move || {
        n += 1;
        let _ = dials.send(n);
        if n == 1 {
            let (client_end, server_end) = tokio::io::duplex(size);
            let _ = ends.send(server_end);
            return Box::pin(async move { Ok(client_end) });
        }
        Box::pin(async { Err(io::ErrorKind::ConnectionRefused.into()) })
    }
}

/// Reconnecting after an hour: the client stays disconnected.
fn slow_reconnect() -> Reconnect {
    Reconnect {
        initial_delay: Duration::from_secs(3600),
        max_delay: Duration::from_secs(3600),
        ..Reconnect::default()
    }
}

async fn read_frame(io: &mut DuplexStream, buf: &mut BytesMut) -> Option<Frame> {
    loop {
        if let Some(frame) = FrameCodec::new().decode(buf).unwrap() {
            return Some(frame);
        }
        if io.read_buf(buf).await.unwrap() == 0 {
            return None;
        }
    }
}

async fn write_frame(io: &mut DuplexStream, frame: Frame) {
    let mut out = BytesMut::new();
    FrameCodec::new().encode(frame, &mut out).unwrap();
    io.write_all(&out).await.unwrap();
}

/// A connected client whose server has gone: the task is waiting to
/// reconnect, for an hour.
async fn disconnected(builder: msgi::ClientBuilder) -> (Client, mpsc::UnboundedReceiver<u32>) {
    let (ends_tx, mut ends) = mpsc::unbounded_channel();
    let (dials_tx, mut dials) = mpsc::unbounded_channel();
    let client = within(builder.reconnect(slow_reconnect()).connect_with(pipe_once(
        64 * 1024,
        ends_tx,
        dials_tx,
    )))
    .await
    .unwrap();
    assert_eq!(within(dials.recv()).await, Some(1));
    drop(within(ends.recv()).await.unwrap());
    within(async {
        while client.is_connected() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    (client, dials)
}

/// Review 2, item 1: an answer (DATA or ERROR) to a call its caller
/// abandoned is dropped: it never shows up on `incoming()` as a push, and a
/// late ERROR is not taken for the server's last word.
#[tokio::test]
async fn a_late_answer_to_an_abandoned_call_is_not_a_push() {
    let (ends_tx, mut ends) = mpsc::unbounded_channel();
    let (dials_tx, _dials) = mpsc::unbounded_channel();
    let client = within(Client::builder().connect_with(pipe_once(64 * 1024, ends_tx, dials_tx)))
        .await
        .unwrap();
    let mut incoming = client.incoming().unwrap();
    let mut server = within(ends.recv()).await.unwrap();
    let mut buf = BytesMut::new();
    let id = {
        let call = client.call(Frame::data("x"));
        tokio::pin!(call);
        tokio::select! {
            r = &mut call => panic!("answered unanswered: {r:?}"),
            frame = read_frame(&mut server, &mut buf) => frame.unwrap().request_id().unwrap(),
        }
    }; // abandoned
    write_frame(&mut server, Frame::data("late").with_request_id(id)).await;
    write_frame(&mut server, Frame::error("late error").with_request_id(id)).await;
    write_frame(&mut server, Frame::data("push")).await;
    let first = within(incoming.recv()).await.unwrap();
    assert_eq!(first.payload_text(), "push", "{first:?}");
    drop(server); // the server closes: the reason names no late ERROR
    let reason = within(client.closed()).await;
    assert!(!reason.to_string().contains("late error"), "{reason}");
    assert_eq!(client.in_flight(), 0);
}

/// Review 2, item 3a: calls abandoned while the client is disconnected are
/// forgotten at once (no queue timeout here): they neither fill the outbox
/// nor block `send`.
#[tokio::test(start_paused = true)]
async fn calls_abandoned_while_disconnected_do_not_fill_the_outbox() {
    let (client, _dials) = disconnected(
        Client::builder()
            .outbox_capacity(4)
            .max_concurrent_requests(100)
            .queue_timeout(None),
    )
    .await;
    for _ in 0..8 {
        let r =
            tokio::time::timeout(Duration::from_millis(10), client.call(Frame::data("x"))).await;
        assert!(r.is_err(), "{r:?}");
    }
    assert_eq!(client.in_flight(), 0);
    within(client.send(Frame::data("one-way"))).await.unwrap();
    within(client.close()).await;
    assert_eq!(client.take_unsent().len(), 1);
}

/// Review 2, item 3b: with every handle dropped and only abandoned calls
/// held, the task ends instead of reconnecting for nobody.
#[tokio::test(start_paused = true)]
async fn a_disconnected_client_with_only_abandoned_calls_ends_with_its_handles() {
    let (client, mut dials) = disconnected(Client::builder().queue_timeout(None)).await;
    let r = tokio::time::timeout(Duration::from_millis(10), client.call(Frame::data("x"))).await;
    assert!(r.is_err(), "{r:?}");
    drop(client);
    // The connector goes with the task: no further dial, the channel ends.
    assert_eq!(within(dials.recv()).await, None);
}

/// Review 2, item 5: while a graceful close is under way, `send`,
/// `try_send` and `poll_ready` say the application closed the client.
#[tokio::test]
async fn senders_refused_during_a_close_learn_why() {
    let (ends_tx, mut ends) = mpsc::unbounded_channel();
    let (dials_tx, _dials) = mpsc::unbounded_channel();
    // A small pipe the server does not read: the close cannot finish.
    let mut client = within(
        Client::builder()
            .outbox_capacity(1024)
            .connect_with(pipe_once(1024, ends_tx, dials_tx)),
    )
    .await
    .unwrap();
    let server = within(ends.recv()).await.unwrap();
    within(client.send(Frame::data(vec![0u8; 64 * 1024])))
        .await
        .unwrap();
    let closing = client.close();
    let refused = within(async {
        loop {
            match client.try_send(Frame::data("more")) {
                Ok(()) | Err(ClientError::OutboxFull) => tokio::task::yield_now().await,
                Err(e) => return e,
            }
        }
    })
    .await;
    assert!(!client.is_closed(), "the close is still under way");
    for e in [
        refused,
        within(client.send(Frame::data("more"))).await.unwrap_err(),
        within(client.ready()).await.unwrap_err(),
    ] {
        assert!(e.to_string().contains("closed by the application"), "{e}");
    }
    drop(server);
    within(closing).await;
}
/// Review 2, item 2: a call made while disconnected behind one-way frames
/// that fill what the task holds still fails with `NotConnected` after the
/// queue timeout.
#[tokio::test(start_paused = true)]
async fn a_call_behind_held_one_way_frames_keeps_its_queue_timeout() {
    let (client, _dials) = disconnected(
        Client::builder()
            .outbox_capacity(2)
            .queue_timeout(Some(Duration::from_millis(100))),
    )
    .await;
    for _ in 0..2 {
        within(client.send(Frame::data("one-way"))).await.unwrap();
    }
    let start = tokio::time::Instant::now();
    let r = within(client.call(Frame::data("x"))).await;
    assert!(matches!(r, Err(ClientError::NotConnected)), "{r:?}");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(1),
        "{waited:?}"
    );
    within(client.close()).await;
    assert_eq!(client.take_unsent().len(), 2);
}

/// Review 2, item 2: a call made while connected that waits in the outbox
/// when the connection drops, behind more unwritten one-way frames than the
/// outbox holds, is still taken by the task and fails with `NotConnected`
/// after the queue timeout (frames given back by the lost connection do
/// not stop the task from taking work).
#[tokio::test(start_paused = true)]
async fn a_call_queued_when_the_connection_drops_keeps_its_queue_timeout() {
    let (ends_tx, mut ends) = mpsc::unbounded_channel();
    let (dials_tx, _dials) = mpsc::unbounded_channel();
    let client = within(
        Client::builder()
            .outbox_capacity(3)
            .queue_timeout(Some(Duration::from_millis(100)))
            .reconnect(slow_reconnect())
            .connect_with(pipe_once(1024, ends_tx, dials_tx)),
    )
    .await
    .unwrap();
    // The server reads nothing: three 512 KiB frames take the write queue
    // past its high-water mark (1 MiB, the maximum frame size), two more
    // wait in the outbox.
    let server = within(ends.recv()).await.unwrap();
    for _ in 0..5 {
        within(client.send(Frame::data(vec![0u8; 512 * 1024])))
            .await
            .unwrap();
    }
    let caller = client.clone();
    let call = tokio::spawn(async move { caller.call(Frame::data("x")).await });
    tokio::task::yield_now().await;
    drop(server);
    let r = within(call).await.unwrap();
    assert!(matches!(r, Err(ClientError::NotConnected)), "{r:?}");
    within(client.close()).await;
    assert_eq!(client.take_unsent().len(), 5);
}
