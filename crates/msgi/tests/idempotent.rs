//! Correlated calls across a dropped connection over loopback: a server
//! that reads a request and drops the connection before answering; the
//! client reconnects. A call marked idempotent is sent again and answered;
//! any other is reported lost, not sent twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::BytesMut;
use msgi::{Client, ClientError, Frame, Kind, Reconnect};
use support::{read_frame, within, write_frame};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Accepts two connections: reads the first request of the first and drops
/// it unanswered, answers the request of the second. Reports each request
/// read.
async fn drop_then_answer(listener: TcpListener, seen: mpsc::UnboundedSender<String>) {
    for answer in [false, true] {
        let (mut io, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        while let Some(frame) = read_frame(&mut io, &mut buf).await {
            if frame.kind() != Kind::DATA {
                continue;
            }
            seen.send(frame.payload_text().into_owned()).unwrap();
            if answer {
                let reply = Frame::data("done").with_request_id(frame.request_id().unwrap());
                write_frame(&mut io, reply).await;
                // Until the client goes.
                while read_frame(&mut io, &mut buf).await.is_some() {}
            }
            break;
        }
    }
}

async fn client(listener: &TcpListener) -> Client {
    within(
        Client::builder()
            .reconnect(Reconnect {
                initial_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(20),
                multiplier: 2.0,
                max_attempts: None,
            })
            .connect(listener.local_addr().unwrap()),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn an_idempotent_call_is_sent_again_after_the_connection_drops() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = client(&listener).await;
    let (tx, mut seen) = mpsc::unbounded_channel();
    let server = tokio::spawn(drop_then_answer(listener, tx));
    let answer = within(client.call_idempotent(Frame::data("read"))).await;
    assert_eq!(answer.unwrap().payload_text(), "done");
    assert_eq!(within(seen.recv()).await.unwrap(), "read");
    assert_eq!(within(seen.recv()).await.unwrap(), "read", "sent twice");
    within(client.close()).await;
    within(server).await.unwrap();
}

#[tokio::test]
async fn any_other_call_written_before_the_drop_is_reported_not_sent_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = client(&listener).await;
    let (tx, mut seen) = mpsc::unbounded_channel();
    let server = tokio::spawn(drop_then_answer(listener, tx));
    let answer = within(client.call(Frame::data("charge"))).await;
    assert!(
        matches!(answer, Err(ClientError::ConnectionLost(_))),
        "{answer:?}"
    );
    assert_eq!(within(seen.recv()).await.unwrap(), "charge");
    // The next call goes on the new connection; "charge" never went again.
    let answer = within(client.call(Frame::data("after"))).await;
    assert_eq!(answer.unwrap().payload_text(), "done");
    assert_eq!(within(seen.recv()).await.unwrap(), "after");
    within(client.close()).await;
    within(server).await.unwrap();
}
