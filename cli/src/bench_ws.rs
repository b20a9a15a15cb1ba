//! `msgi bench --ws`: the generator's connections speak MSGI over
//! WebSocket (tokio-tungstenite's client), one frame per binary message,
//! as a browser does, against `msgi serve --ws-listen`.

use std::io;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::BytesMut;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{FrameSink, FrameSource};

type Ws = WebSocketStream<TcpStream>;

/// The sending half of a WebSocket bench connection.
pub(super) struct WsSink(SplitSink<Ws, Message>);

/// The receiving half.
pub(super) struct WsSource(SplitStream<Ws>);

/// Opens a WebSocket session to `ws://addr/` (no `Origin`: not a browser,
/// which the server lets in).
pub(super) async fn connect(addr: SocketAddr) -> Result<(WsSource, WsSink)> {
    let stream = TcpStream::connect(addr).await.context("connecting")?;
    stream.set_nodelay(true)?;
    let request = format!("ws://{addr}/").into_client_request()?;
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .context("WebSocket handshake")?;
    let (sink, source) = ws.split();
    Ok((WsSource(source), WsSink(sink)))
}

fn to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl FrameSink for WsSink {
    async fn send(&mut self, out: &mut BytesMut, ends: &[usize]) -> io::Result<()> {
        // Each frame becomes one message, split off `out` without a copy.
        let mut start = 0;
        for &end in ends {
            let frame = out.split_to(end - start).freeze();
            start = end;
            self.0.feed(Message::Binary(frame)).await.map_err(to_io)?;
        }
        self.0.flush().await.map_err(to_io)
    }

    async fn stop(&mut self) {
        // A WebSocket close ends the session at once (answers still owed
        // are not written after it): sent in `finish`, once all came.
    }

    async fn finish(mut self) {
        let _ = self.0.close().await;
    }
}

impl FrameSource for WsSource {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match self.0.next().await {
                Some(Ok(Message::Binary(frame))) => {
                    buf.extend_from_slice(&frame);
                    return Ok(frame.len());
                }
                // Pings are answered by tungstenite; a close ends the stream.
                Some(Ok(Message::Close(_))) | None => return Ok(0),
                Some(Ok(Message::Text(_))) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text message from an MSGI server",
                    ))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(to_io(e)),
            }
        }
    }
}
