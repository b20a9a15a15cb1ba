//! Correlated calls across a lost transport on the client machine: a call
//! marked idempotent is sent again on the next transport; any other call
//! whose bytes were written is reported lost, never sent twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use bytes::BytesMut;
use msgi_proto::client::{CallError, Caller, Config, Connection, ConnectionError, Event};
use msgi_proto::{Frame, FrameCodec, Framing};

struct Call {
    name: &'static str,
    idempotent: bool,
}

impl Caller for Call {
    fn is_abandoned(&self) -> bool {
        false
    }

    fn is_idempotent(&self) -> bool {
        self.idempotent
    }
}

/// What the client wrote, decoded.
fn transmit(conn: &mut Connection<Call>, now: Instant) -> Vec<Frame> {
    let mut wire = BytesMut::new();
    let mut codec = FrameCodec::new();
    conn.poll_transmit(now, |frame| {
        let before = wire.len();
        codec.encode(frame, &mut wire)?;
        Ok(wire.len() - before)
    });
    let n = wire.len();
    conn.handle_written(n, now);
    conn.handle_flushed(now);
    let mut out = Vec::new();
    while let Ok(Some(frame)) = codec.decode(&mut wire) {
        out.push(frame);
    }
    out
}

/// Answers delivered: (call name, Ok payload or the error's name).
fn answers(conn: &mut Connection<Call>) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    while let Some(event) = conn.poll_event() {
        if let Event::Answer(call, result) = event {
            let text = match result {
                Ok(frame) => frame.payload_text().into_owned(),
                Err(CallError::ConnectionLost(_)) => "connection lost".to_owned(),
                Err(e) => format!("{e}"),
            };
            out.push((call.name, text));
        }
    }
    out
}

#[test]
fn an_idempotent_call_is_sent_again_after_a_lost_transport_and_no_other_is() {
    let now = Instant::now();
    let mut conn = Connection::new(Config::builder().build().unwrap(), now);
    conn.handle_connected(now, None);
    for (name, idempotent) in [("read", true), ("charge", false), ("read2", true)] {
        conn.call(Frame::data(name), Call { name, idempotent }, None, now);
    }
    let written = transmit(&mut conn, now);
    assert_eq!(written.len(), 3);
    answers(&mut conn);
    // The transport is lost before any answer: the server may have
    // received every one of them.
    conn.handle_connection_lost(ConnectionError::Transport("cut".into()), now);
    assert_eq!(
        answers(&mut conn),
        [("charge", "connection lost".to_owned())]
    );
    // On the next transport the idempotent ones go again, in their order.
    conn.handle_connected(now, None);
    let again = transmit(&mut conn, now);
    let texts: Vec<_> = again
        .iter()
        .map(|f| f.payload_text().into_owned())
        .collect();
    assert_eq!(texts, ["read", "read2"]);
    for frame in again {
        let answer = Frame::data(format!("{} ok", frame.payload_text()))
            .with_request_id(frame.request_id().unwrap());
        conn.handle_frame(answer, now);
    }
    assert_eq!(
        answers(&mut conn),
        [
            ("read", "read ok".to_owned()),
            ("read2", "read2 ok".to_owned())
        ]
    );
    // Answered: a later loss sends nothing again.
    conn.handle_connection_lost(ConnectionError::Transport("cut".into()), now);
    conn.handle_connected(now, None);
    assert!(transmit(&mut conn, now).is_empty());
}
