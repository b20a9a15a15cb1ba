//! The handshake on a byte stream: the server's accept step and the
//! client's connector.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use msgi::{
    Accepted, BoxError, ClientError, Connected, Frame, FrameCodec, Framing, Kind, SessionKeys,
    HEADER_LEN, MAGIC,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tower::Service;

use super::{AuthenticatedKey, ClientHandshake, Psk, PskError, ServerHandshake};

/// The largest frame read during the handshake: a hello is at most 346
/// bytes; an ERROR reason longer than this is refused as malformed.
const MAX_FRAME: usize = 4096;

/// How long a refusing end keeps reading (and discarding) after its ERROR,
/// so that closing with unread input does not reset the connection and
/// destroy the ERROR in flight.
const LINGER: Duration = Duration::from_secs(1);

/// The most bytes discarded while lingering.
const LINGER_BYTES: usize = 64 * 1024;

/// Which end reads: what a first frame that is no handshake message means.
#[derive(Clone, Copy)]
enum End {
    Server,
    Client,
}

/// Reads exactly one frame (never a byte more: what follows belongs to
/// the session).
async fn read_frame<R: AsyncRead + Unpin>(io: &mut R, end: End) -> Result<Frame, PskError> {
    let mut head = [0u8; HEADER_LEN];
    io.read_exact(&mut head).await.map_err(PskError::Io)?;
    if head[..4] != MAGIC {
        return Err(PskError::Malformed {
            what: "frame (bad magic: not MSGI)",
        });
    }
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if !(HEADER_LEN..=MAX_FRAME).contains(&len) {
        let type_field = u16::from_be_bytes([head[8], head[9]]);
        let kind = Kind::new(type_field & 0x0fff);
        return Err(match (end, kind) {
            (End::Server, Some(kind)) if kind != Kind::CONTROL => PskError::HandshakeRequired(kind),
            (End::Client, Some(kind)) if kind != Kind::CONTROL && kind != Kind::ERROR => {
                PskError::NotSupported(kind.to_string())
            }
            _ => PskError::Malformed {
                what: "handshake frame (length)",
            },
        });
    }
    let mut buf = BytesMut::zeroed(len);
    buf[..HEADER_LEN].copy_from_slice(&head);
    io.read_exact(&mut buf[HEADER_LEN..])
        .await
        .map_err(PskError::Io)?;
    match FrameCodec::with_max_frame_size(MAX_FRAME).decode(&mut buf) {
        Ok(Some(frame)) => Ok(frame),
        _ => Err(PskError::Malformed {
            what: "handshake frame",
        }),
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(io: &mut W, frame: Frame) -> Result<(), PskError> {
    let mut buf = BytesMut::new();
    FrameCodec::new()
        .encode(frame, &mut buf)
        .map_err(|_| PskError::Malformed {
            what: "outgoing handshake frame",
        })?;
    io.write_all(&buf).await.map_err(PskError::Io)?;
    io.flush().await.map_err(PskError::Io)
}

/// Tells the peer why (an ERROR in the clear), closes the write side, and
/// reads what is left for a moment, bounded, so the ERROR is not lost to a
/// reset.
async fn refuse<Io: AsyncRead + AsyncWrite + Unpin>(io: &mut Io, error: &PskError) {
    let Some(frame) = error.to_error_frame() else {
        return;
    };
    if write_frame(io, frame).await.is_err() {
        return;
    }
    let _ = io.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

/// Runs the server's half on `io`: the session's keys and the client's key id.
pub(crate) async fn server_handshake<Io>(
    psk: &Psk,
    io: &mut Io,
) -> Result<(SessionKeys, u16), PskError>
where
    Io: AsyncRead + AsyncWrite + Unpin,
{
    let result = async {
        let first = read_frame(io, End::Server).await?;
        let (handshake, hello) = ServerHandshake::start(psk, psk.draw()?, &first)?;
        write_frame(io, hello).await?;
        let finished = read_frame(io, End::Server).await?;
        let key_id = handshake.key_id();
        Ok((handshake.finish(&finished)?, key_id))
    }
    .await;
    if let Err(e) = &result {
        refuse(io, e).await;
    }
    result
}

/// Runs the client's half on `io`: the session's keys.
pub(crate) async fn client_handshake<Io>(psk: &Psk, io: &mut Io) -> Result<SessionKeys, PskError>
where
    Io: AsyncRead + AsyncWrite + Unpin,
{
    let result = async {
        let (handshake, hello) = ClientHandshake::start(psk, psk.draw()?)?;
        write_frame(io, hello).await?;
        let answer = read_frame(io, End::Client).await?;
        let (keys, finished) = handshake.finish(&answer)?;
        write_frame(io, finished).await?;
        Ok(keys)
    }
    .await;
    if let Err(e) = &result {
        refuse(io, e).await;
    }
    result
}

/// The server's accept step (`Server::builder().accept(psk.acceptor())`):
/// runs the handshake on each accepted connection, in its own task, under
/// the connection cap and the handshake timeout; records the session's
/// [`SessionKeys`] (taken out by the server for the transforms) and the
/// client's [`AuthenticatedKey`] in its [`ConnectInfo`](msgi::ConnectInfo). A refused
/// handshake ends that connection only, after an ERROR naming why.
#[derive(Clone, Debug)]
pub struct PskAcceptor {
    psk: Psk,
}

impl PskAcceptor {
    pub(crate) fn new(psk: Psk) -> Self {
        PskAcceptor { psk }
    }
}

impl<Io> Service<Accepted<Io>> for PskAcceptor
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Response = Accepted<Io>;
    type Error = PskError;
    type Future = Pin<Box<dyn Future<Output = Result<Accepted<Io>, PskError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), PskError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut accepted: Accepted<Io>) -> Self::Future {
        let psk = self.psk.clone();
        Box::pin(async move {
            let (keys, key_id) = server_handshake(&psk, accepted.io_mut()).await?;
            accepted.info_mut().insert(keys);
            accepted.info_mut().insert(AuthenticatedKey(key_id));
            Ok(accepted)
        })
    }
}

/// A client connector: opens the stream with the connector it wraps, then
/// runs the handshake on it, and answers the stream with the session's
/// [`SessionKeys`] in its [`ConnectInfo`](msgi::ConnectInfo) (an [`Accepted`], which the
/// client takes apart). For
/// `ClientBuilder::connect_with_connector(psk.connector(TcpConnector::new()), addr)`.
///
/// A refused handshake fails the connection with
/// [`ClientError::Handshake`] carrying the reason (the server's, or this
/// end's, which it also told the server).
#[derive(Clone, Debug)]
pub struct PskConnector<C> {
    psk: Psk,
    inner: C,
}

impl<C> PskConnector<C> {
    pub(crate) fn new(psk: Psk, inner: C) -> Self {
        PskConnector { psk, inner }
    }
}

impl<C, A> Service<A> for PskConnector<C>
where
    C: Service<A>,
    C::Response: Connected,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    /// The stream, and the inner connector's connection info (a TLS
    /// connector's `TlsInfo`, say) with the session keys added.
    type Response = Accepted<<C::Response as Connected>::Io>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: A) -> Self::Future {
        let opening = self.inner.call(target);
        let psk = self.psk.clone();
        Box::pin(async move {
            let (mut io, mut info) = opening.await.map_err(Into::into)?.into_connected();
            let keys = client_handshake(&psk, &mut io)
                .await
                .map_err(|e| ClientError::Handshake(e.reason()))?;
            info.insert(keys);
            Ok(Accepted::new(io, info))
        })
    }
}
