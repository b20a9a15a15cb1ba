//! The client against hostile or broken servers: a raw server written in
//! the test that speaks bytes, over TCP, or over in-memory pipes for the
//! tests on paused time.

#![allow(clippy::unwrap_used)]

mod support;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use msgi::Framing as _;
use msgi::{Client, ClientError, Frame, FrameCodec, Kind, Reconnect};
use support::within;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

async fn listener() -> (TcpListener, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn encode(frame: Frame) -> BytesMut {
    let mut out = BytesMut::new();
    FrameCodec::new().encode(frame, &mut out).unwrap();
    out
}

/// The next frame the client sent, or `None` once it closed.
async fn next_frame(stream: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> Option<Frame> {
    loop {
        if let Some(frame) = FrameCodec::new().decode(buf).unwrap() {
            return Some(frame);
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Item 15 (client half): a frame carrying the id of a pending call is that
/// call's answer whatever its kind; a kind that cannot answer fails the
/// call with a typed error instead of leaving it waiting for ever.
#[tokio::test]
async fn any_frame_with_a_pending_id_completes_the_call() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        while let Some(frame) = next_frame(&mut stream, &mut buf).await {
            let Some(id) = frame.request_id() else {
                continue;
            };
            let answer = match frame.payload_text().as_ref() {
                "ping" => Frame::ping("p"),
                "heartbeat" => Frame::heartbeat(),
                "zero" => Frame::default(),
                "reserved" => Frame::new(Kind::new(0x0AB).unwrap(), ""),
                _ => Frame::data(frame.payload().clone()),
            };
            let bytes = encode(answer.with_request_id(id));
            if stream.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let client = within(Client::connect(addr)).await.unwrap();
    for what in ["ping", "heartbeat", "zero", "reserved"] {
        let err = within(client.call(Frame::data(what))).await.unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{what}: {err:?}");
    }
    let answer = within(client.call(Frame::data("fine"))).await.unwrap();
    assert_eq!(answer.payload_text(), "fine");
    assert_eq!(client.in_flight(), 0);
    within(client.close()).await;
    within(server).await.unwrap();
}

/// Item 20: a server that floods PINGs and never reads cannot grow the
/// client: the PONGs it owes stay below twice the write queue's high-water
/// mark, because the client stops reading there (as the server does at its
/// mark). The flood stalls once the client's queue and the socket buffers
/// are full.
#[tokio::test(start_paused = true)]
async fn a_ping_flood_from_a_server_that_does_not_read_is_bounded() {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 128 * 1024 * 1024;
    // Pipes, not loopback: on paused time the clock jumps whenever the
    // runtime parks, and bytes still in the OS would look like a stall.
    let (mut stream, connector) = one_pipe();
    let flood = tokio::spawn(async move {
        let ping = encode(Frame::ping(vec![0u8; CHUNK]));
        let mut written = 0;
        while written < TOTAL {
            // Paused time: this fires only once every task is stuck.
            match tokio::time::timeout(Duration::from_secs(1), stream.write_all(&ping)).await {
                Ok(Ok(())) => written += ping.len(),
                Ok(Err(_)) | Err(_) => break,
            }
        }
        (written, stream)
    });
    let client = within(
        Client::builder()
            .idle_timeout(Some(Duration::from_secs(5)))
            .connect_with(connector),
    )
    .await
    .unwrap();
    let (written, _stream) = within(flood).await.unwrap();
    // The client stops reading at twice its high-water mark (1 MiB, its
    // maximum frame size); the rest is what the pipe buffers.
    assert!(
        written < 48 * 1024 * 1024,
        "the server wrote {} MiB before stalling",
        written >> 20
    );
    // A server that neither reads nor lets the client read is idle: the
    // client gives up on it after the idle timeout (paused time).
    let reason = within(client.closed()).await;
    assert!(reason.to_string().contains("idle timeout"), "{reason}");
}

/// The raw server for the handshake tests: reads HELLO, then floods
/// `frame` (never WELCOME) until the client goes away.
async fn flood_before_welcome(mut stream: DuplexStream, frame: Frame) {
    let mut buf = BytesMut::new();
    let hello = next_frame(&mut stream, &mut buf).await.unwrap();
    assert_eq!(hello.kind(), Kind::CONTROL);
    let bytes = encode(frame);
    for _ in 0..(64 * 1024) {
        if stream.write_all(&bytes).await.is_err() {
            return;
        }
    }
    // Keep the connection open: only the client's bound may end this.
    let _ = stream.read_to_end(&mut Vec::new()).await;
}

/// Items 5 and 20: frames before WELCOME are bounded in frames; past the
/// bound the connect fails with a typed error instead of buffering.
#[tokio::test(start_paused = true)]
async fn frames_before_welcome_are_bounded_in_frames() {
    let (stream, connector) = one_pipe();
    let server = tokio::spawn(flood_before_welcome(stream, Frame::data("early")));
    let result = within(
        Client::builder()
            .client_id("me")
            .incoming_capacity(16)
            .connect_with(connector),
    )
    .await;
    match result {
        Err(ClientError::Protocol(
            what @ msgi::proto::client::Violation::TooManyBeforeWelcome { frames: 16, .. },
        )) => assert!(what.to_string().contains("before WELCOME"), "{what}"),
        other => panic!("{other:?}"),
    }
    within(server).await.unwrap();
}

/// Items 5 and 20: the same bound in bytes.
#[tokio::test(start_paused = true)]
async fn frames_before_welcome_are_bounded_in_bytes() {
    let (stream, connector) = one_pipe();
    let server = tokio::spawn(flood_before_welcome(stream, Frame::data(vec![b'x'; 1024])));
    let result = within(
        Client::builder()
            .client_id("me")
            .incoming_bytes(8 * 1024)
            .connect_with(connector),
    )
    .await;
    assert!(
        matches!(result, Err(ClientError::Protocol(_))),
        "{result:?}"
    );
    within(server).await.unwrap();
}

type Dial = Pin<Box<dyn Future<Output = io::Result<DuplexStream>> + Send>>;

/// The server's end of an in-memory pipe, and a connector whose first dial
/// gets the client's end (later dials are refused). For the tests on paused
/// time: nothing crosses the OS, so the clock moves only when every task
/// waits for a timer.
fn one_pipe() -> (DuplexStream, impl FnMut() -> Dial + Send + 'static) {
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let mut client_end = Some(client_end);
    let connector = move || -> Dial {
        let end = client_end.take();
        Box::pin(async move { end.ok_or_else(|| io::ErrorKind::ConnectionRefused.into()) })
    };
    (server_end, connector)
}

/// What dials after the first do.
#[derive(Clone, Copy)]
enum Later {
    /// Never complete (a connect that hangs until the connect timeout).
    Hang,
    /// Fail at once.
    Refuse,
}

/// A connector over in-memory pipes: the first dial connects (the server's
/// end goes to `ends`), later ones do what `later` says; every dial is
/// reported on `dials`.
fn pipes(
    ends: mpsc::UnboundedSender<DuplexStream>,
    dials: mpsc::UnboundedSender<u32>,
    later: Later,
) -> impl FnMut() -> Dial + Send + 'static {
    let mut n = 0u32;
    move || {
        n += 1;
        let _ = dials.send(n);
        if n == 1 {
            let (client_end, server_end) = tokio::io::duplex(64 * 1024);
            let _ = ends.send(server_end);
            return Box::pin(async move { Ok(client_end) });
        }
        match later {
            Later::Hang => Box::pin(std::future::pending()),
            Later::Refuse => Box::pin(async { Err(io::ErrorKind::ConnectionRefused.into()) }),
        }
    }
}

fn quick_reconnect() -> Reconnect {
    Reconnect {
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        ..Reconnect::default()
    }
}

/// Item 18: `close` is raced with a reconnect attempt under way; it does
/// not wait for the connect timeout.
#[tokio::test(start_paused = true)]
async fn close_does_not_wait_for_a_connect_attempt() {
    let (ends_tx, mut ends) = mpsc::unbounded_channel();
    let (dials_tx, mut dials) = mpsc::unbounded_channel();
    let client = within(
        Client::builder()
            .reconnect(quick_reconnect())
            .connect_timeout(Duration::from_secs(30))
            .connect_with(pipes(ends_tx, dials_tx, Later::Hang)),
    )
    .await
    .unwrap();
    assert_eq!(within(dials.recv()).await, Some(1));
    drop(within(ends.recv()).await.unwrap()); // the server goes away
    assert_eq!(within(dials.recv()).await, Some(2)); // a hanging attempt
    let start = Instant::now();
    within(client.close()).await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "close took {:?}",
        start.elapsed()
    );
    assert!(matches!(client.closed().await, ClientError::Closed(_)));
}

/// Item 18: a `close` whose future is dropped before it finished still
/// closes the client (it does not leave a client that will not reconnect).
#[tokio::test(start_paused = true)]
async fn a_dropped_close_still_closes() {
    let (ends_tx, mut ends) = mpsc::unbounded_channel();
    let (dials_tx, _dials) = mpsc::unbounded_channel();
    let client = within(
        Client::builder()
            .reconnect(quick_reconnect())
            .max_concurrent_requests(1)
            .outbox_capacity(1)
            .connect_with(pipes(ends_tx, dials_tx, Later::Refuse)),
    )
    .await
    .unwrap();
    let mut server_end = within(ends.recv()).await.unwrap();
    // The server reads and never answers.
    let reader = tokio::spawn(async move {
        let _ = server_end.read_to_end(&mut Vec::new()).await;
    });
    let caller = client.clone();
    let _hung = tokio::spawn(async move { caller.call(Frame::data("hang")).await });
    tokio::task::yield_now().await;
    let _ = client.try_send(Frame::data("fills the outbox"));
    // Give up on the close almost at once.
    let _ = tokio::time::timeout(Duration::from_millis(1), client.close()).await;
    let reason = within(client.closed()).await;
    assert!(
        reason.to_string().contains("closed by the application"),
        "{reason}"
    );
    within(reader).await.unwrap();
}

/// Item 21: a call queued while the client is disconnected waits at most
/// the queue timeout, then fails unsent with `NotConnected`.
#[tokio::test(start_paused = true)]
async fn calls_queued_while_disconnected_wait_at_most_the_queue_timeout() {
    let (ends_tx, mut ends) = mpsc::unbounded_channel();
    let (dials_tx, mut dials) = mpsc::unbounded_channel();
    let client = within(
        Client::builder()
            .reconnect(quick_reconnect())
            .queue_timeout(Some(Duration::from_secs(2)))
            .connect_with(pipes(ends_tx, dials_tx, Later::Refuse)),
    )
    .await
    .unwrap();
    assert_eq!(within(dials.recv()).await, Some(1));
    drop(within(ends.recv()).await.unwrap());
    assert_eq!(within(dials.recv()).await, Some(2));
    assert!(!client.is_connected());
    let start = Instant::now();
    let err = within(client.call(Frame::data("late"))).await.unwrap_err();
    assert!(matches!(err, ClientError::NotConnected), "{err:?}");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    within(client.close()).await;
}
