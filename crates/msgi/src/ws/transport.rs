//! [`WebSocketTransport`]: a [`Transport`] that carries one MSGI frame per
//! binary WebSocket message, and maps the session's end to a close code.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::stream::FusedStream;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::accept::WebSocketAccept;
use crate::transport::{IntoTransport, ReadError, Transport};
use msgi_proto::{CodecError, Frame, Framing, Kind};

/// The longest close reason a close frame carries (125 bytes of payload
/// less the 2-byte code).
const MAX_CLOSE_REASON: usize = 123;

/// An upgraded WebSocket connection, on its way to a session: what
/// [`WebSocketAccept`] hands the server, and what you make with
/// [`from_upgraded`](WebSocket::from_upgraded) from a stream your own HTTP
/// server upgraded. It becomes a [`WebSocketTransport`] with the server's
/// framing ([`IntoTransport`]).
pub struct WebSocket<S> {
    ws: WebSocketStream<S>,
}

impl<S> fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket").finish_non_exhaustive()
    }
}

impl<S> WebSocket<S> {
    pub(crate) fn new(ws: WebSocketStream<S>) -> Self {
        WebSocket { ws }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// The server side of a stream on which your HTTP server (hyper, axum)
    /// has already answered `101 Switching Protocols` (with
    /// [`accept_key`] of the request's `Sec-WebSocket-Key`), with the
    /// message limit of `settings`. Hand it to
    /// [`Server::serve_connection`](crate::Server::serve_connection), with a
    /// [`ConnectInfo`](crate::ConnectInfo) holding what you know (the peer
    /// address, a [`WebSocketRequest`](super::WebSocketRequest)). Check the
    /// `Origin` first ([`WebSocketAccept::origin_allowed`]).
    pub async fn from_upgraded(io: S, settings: &WebSocketAccept) -> Self {
        let config = settings.settings().config();
        WebSocket {
            ws: WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await,
        }
    }
}

/// The `Sec-WebSocket-Accept` value answering a request's
/// `Sec-WebSocket-Key` (RFC 6455, section 4.2.2): what an HTTP server
/// upgrading a request itself puts in its `101` response.
pub fn accept_key(sec_websocket_key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(sec_websocket_key)
}

impl<S, C> IntoTransport<C> for WebSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Framing + Send + 'static,
{
    type Transport = WebSocketTransport<S, C>;

    fn into_transport(self, framing: C) -> WebSocketTransport<S, C> {
        WebSocketTransport {
            ws: self.ws,
            codec: framing,
            scratch: BytesMut::new(),
            queue: VecDeque::new(),
            queued: 0,
            unflushed: 0,
            written: 0,
            refused: None,
            last: None,
            close_sent: false,
            read_failed: false,
        }
    }
}

/// Why a WebSocket message was refused (the source of
/// [`CodecError::Message`]); the session answers ERROR with this text and
/// closes with the close code of docs/PROTOCOL.md ("MSGI over WebSocket").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// A text message (close code 1003).
    #[error("text message refused: MSGI over WebSocket takes binary messages")]
    Text,
    /// A binary message that ends inside a frame (close code 1007).
    #[error("binary message holds part of a frame ({0} bytes)")]
    PartialFrame(usize),
    /// A binary message with bytes after its first frame (close code 1007).
    #[error("binary message holds more than one frame ({0} bytes after the first)")]
    TrailingBytes(usize),
    /// A message the WebSocket protocol refuses (close code 1002): an
    /// unmasked client frame, a bad opcode, a fragmented control frame.
    #[error("WebSocket protocol error: {0}")]
    Protocol(String),
}

/// One MSGI frame per binary WebSocket message: a [`Transport`] for the
/// session driver. Made from a [`WebSocket`] with the server's framing, so
/// each message is decoded (and wire transforms run) as a TCP frame is.
///
/// - Reading: a binary message must hold exactly one whole frame; a text
///   message, part of a frame, several frames, a message over the maximum
///   size or a WebSocket protocol error is a protocol violation (ERROR with
///   the reason, then a close frame with the matching code). Pings are
///   answered with pongs by the WebSocket layer and are not MSGI activity:
///   the idle timeout counts MSGI frames.
/// - Writing: each frame is one binary message; everything queued is
///   written and flushed per wake-up.
/// - Closing: after the session's last frame a close frame goes out whose
///   code and reason follow from why the session ended (its last frame:
///   DISCONNECT 1000 or 1001, ERROR 1008, 1011 or 1013; a refused message
///   its own code), then the peer's close is awaited within the session's
///   linger.
pub struct WebSocketTransport<S, C> {
    ws: WebSocketStream<S>,
    codec: C,
    /// Where frames are encoded; freed once the queue is written.
    scratch: BytesMut,
    /// Encoded frames not yet handed to the WebSocket.
    queue: VecDeque<Bytes>,
    /// Bytes in `queue`.
    queued: usize,
    /// Bytes handed to the WebSocket and not yet flushed.
    unflushed: usize,
    written: usize,
    /// The close code and reason of a message this transport refused.
    refused: Option<(CloseCode, String)>,
    /// The last DISCONNECT or ERROR queued, while nothing else followed it.
    last: Option<(Kind, Bytes)>,
    close_sent: bool,
    /// The message stream ended with an error: bytes of the refused message
    /// may still be unread.
    read_failed: bool,
}

impl<S, C> fmt::Debug for WebSocketTransport<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketTransport")
            .field("pending_write", &(self.queued + self.unflushed))
            .field("close_sent", &self.close_sent)
            .finish_non_exhaustive()
    }
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl<S, C> WebSocketTransport<S, C>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: Framing,
{
    fn refuse(&mut self, code: CloseCode, error: CodecError) -> ReadError {
        self.refused = Some((code, error.to_string()));
        ReadError::Codec(error)
    }

    fn decode(&mut self, message: Bytes) -> Result<Option<Frame>, ReadError> {
        let len = message.len();
        // Copies the payload: tungstenite's payload shares its read buffer,
        // so `BytesMut::from` cannot take it over (one copy per message).
        let mut buf = BytesMut::from(message);
        match self.codec.decode(&mut buf) {
            Ok(Some(frame)) if buf.is_empty() => Ok(Some(frame)),
            Ok(Some(_)) => Err(self.refuse(
                CloseCode::Invalid,
                CodecError::Message(Box::new(MessageError::TrailingBytes(buf.len()))),
            )),
            Ok(None) => Err(self.refuse(
                CloseCode::Invalid,
                CodecError::Message(Box::new(MessageError::PartialFrame(len))),
            )),
            Err(e @ CodecError::FrameTooLarge { .. }) => Err(self.refuse(CloseCode::Size, e)),
            Err(e) => Err(self.refuse(CloseCode::Invalid, e)),
        }
    }

    fn read_error(&mut self, e: WsError) -> ReadError {
        self.read_failed = true;
        match e {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => self.refuse(
                CloseCode::Size,
                CodecError::FrameTooLarge {
                    length: u64::try_from(size).unwrap_or(u64::MAX),
                    max: max_size,
                },
            ),
            WsError::Utf8(_) => self.refuse(
                CloseCode::Unsupported,
                CodecError::Message(Box::new(MessageError::Text)),
            ),
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                ReadError::Reset(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed without a WebSocket close",
                ))
            }
            WsError::Protocol(p) => self.refuse(
                CloseCode::Protocol,
                CodecError::Message(Box::new(MessageError::Protocol(p.to_string()))),
            ),
            WsError::Capacity(c) => self.refuse(
                CloseCode::Size,
                CodecError::Message(Box::new(MessageError::Protocol(c.to_string()))),
            ),
            other => ReadError::Reset(to_io(other)),
        }
    }

    /// The close frame that says why the session ended.
    fn close_frame(&self) -> CloseFrame {
        let (code, reason) = match (&self.refused, &self.last) {
            (Some((code, reason)), _) => (*code, reason.clone()),
            (None, Some((kind, text))) => {
                let text = String::from_utf8_lossy(text).into_owned();
                (close_code(*kind, &text), text)
            }
            (None, None) => (CloseCode::Normal, String::new()),
        };
        CloseFrame {
            code,
            reason: cut(reason).into(),
        }
    }
}

/// The close code for a session whose last frame was `kind` with `text`
/// (docs/PROTOCOL.md, "MSGI over WebSocket").
fn close_code(kind: Kind, text: &str) -> CloseCode {
    if kind == Kind::DISCONNECT {
        if text == "server shutdown" {
            CloseCode::Away
        } else {
            CloseCode::Normal
        }
    } else if text.starts_with("server full") {
        CloseCode::Again
    } else if text == "service unavailable" {
        CloseCode::Error
    } else {
        CloseCode::Policy
    }
}

/// `reason` cut at a character boundary to what a close frame carries.
fn cut(mut reason: String) -> String {
    if reason.len() > MAX_CLOSE_REASON {
        let mut end = MAX_CLOSE_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

impl<S, C> Transport for WebSocketTransport<S, C>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Framing + Send + 'static,
{
    fn is_binary(&self) -> bool {
        self.codec.is_binary()
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame>, ReadError>> {
        loop {
            let message = match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None => return Poll::Ready(Ok(None)),
                Some(Ok(message)) => message,
                Some(Err(e)) => return Poll::Ready(Err(self.read_error(e))),
            };
            match message {
                Message::Binary(bytes) => return Poll::Ready(self.decode(bytes)),
                Message::Text(_) => {
                    let e = CodecError::Message(Box::new(MessageError::Text));
                    return Poll::Ready(Err(self.refuse(CloseCode::Unsupported, e)));
                }
                // Pongs are queued by tungstenite; a close is answered by it
                // and the stream ends on the next poll.
                Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
            }
        }
    }

    fn queue(&mut self, frame: Frame) -> Result<(), CodecError> {
        let kind = frame.kind();
        let last =
            (kind == Kind::DISCONNECT || kind == Kind::ERROR).then(|| frame.payload().clone());
        self.codec.encode(frame, &mut self.scratch)?;
        let message = self.scratch.split().freeze();
        self.queued += message.len();
        self.queue.push_back(message);
        self.last = last.map(|text| (kind, text));
        Ok(())
    }

    fn pending_write(&self) -> usize {
        self.queued + self.unflushed
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
            let Some(message) = self.queue.pop_front() else {
                break;
            };
            self.queued -= message.len();
            self.unflushed += message.len();
            Pin::new(&mut self.ws)
                .start_send(Message::Binary(message))
                .map_err(to_io)?;
        }
        if self.unflushed > 0 {
            ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(to_io)?;
            self.written += std::mem::take(&mut self.unflushed);
        }
        // Quiet connection: give the buffers back.
        self.scratch = BytesMut::new();
        if self.queue.capacity() > 8 {
            self.queue = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }

    fn take_written(&mut self) -> usize {
        std::mem::take(&mut self.written)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.close_sent {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
            let frame = self.close_frame();
            self.close_sent = true;
            match Pin::new(&mut self.ws).start_send(Message::Close(Some(frame))) {
                Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {}
                Err(WsError::Protocol(ProtocolError::SendAfterClosing)) => {}
                Err(e) => return Poll::Ready(Err(to_io(e))),
            }
        }
        match ready!(Pin::new(&mut self.ws).poll_flush(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }

    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Until the peer's close (the closing handshake): then the server
        // closes the connection first, as RFC 6455 says it should.
        while !self.ws.is_terminated() {
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(_)) => {}
                Some(Err(_)) => self.read_failed = true,
                None => return Poll::Ready(()),
            }
        }
        if !self.read_failed {
            return Poll::Ready(());
        }
        // The stream stopped at a refused message whose bytes may still
        // come: read them raw until the peer closes, so that our close does
        // not become a reset that destroys the ERROR in flight.
        let mut scratch = [0u8; 1024];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(self.ws.get_mut()).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_follow_the_last_frame() {
        assert_eq!(
            close_code(Kind::DISCONNECT, "server shutdown"),
            CloseCode::Away
        );
        assert_eq!(
            close_code(Kind::DISCONNECT, "idle timeout"),
            CloseCode::Normal
        );
        assert_eq!(close_code(Kind::DISCONNECT, "bye"), CloseCode::Normal);
        assert_eq!(
            close_code(Kind::ERROR, "server full: too many connections"),
            CloseCode::Again
        );
        assert_eq!(
            close_code(Kind::ERROR, "service unavailable"),
            CloseCode::Error
        );
        assert_eq!(
            close_code(Kind::ERROR, "unsupported flags COMPRESSED"),
            CloseCode::Policy
        );
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(100);
        let cut = cut(long);
        assert!(cut.len() <= MAX_CLOSE_REASON);
        assert_eq!(cut.len(), 122);
        assert_eq!(super::cut("short".into()), "short");
    }
}
