//! [`TlsStream`]: a TLS byte stream on rustls's unbuffered API, over any
//! byte stream (TCP in practice).
//!
//! Why not tokio-rustls: with rustls's buffered connection a TLS session
//! read its ciphertext in 4 KiB steps into a deframer buffer that grows
//! (zero-filled) and shrinks on every burst, so msgi put a read-ahead
//! buffer under it (one more copy of every byte). Here the socket is read
//! straight into the thread's read scratch of [`READ_CHUNK`] bytes, rustls
//! decrypts the records where they lie, the plaintext is copied to the
//! reader and only a record left in part is kept by the stream;
//! outbound, each slice of a vectored write is encrypted into the thread's
//! scratch buffer (zeroed once, reused: rustls's unbuffered API encrypts
//! into initialized memory only) that leaves with one write. Every buffer
//! is bounded and released when the connection goes quiet.
//!
//! What rustls 0.23 still does on its side: each record's plaintext goes
//! through a `Vec` of its own on the way in (`ReadTraffic::next_record`)
//! and on the way out (`WriteTraffic::encrypt` encodes a record, then
//! copies it into the caller's buffer); its in-place decryption is
//! announced for a later version.

use std::fmt;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::ops::DerefMut;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedConnectionCommon, UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The room each read of the transport gets (as much as a plain session's
/// read): a burst of records up to this size is one read system call.
pub const READ_CHUNK: usize = 64 * 1024;

/// The most ciphertext held before it is processed: room for a handshake
/// message of up to 64 KiB (rustls's own limit) and a record in progress.
/// A TLS record is at most 16 KiB plus 256 bytes of expansion, and rustls
/// refuses a longer one as soon as its header is read, so an honest peer
/// never reaches this; one that does is refused.
const INCOMING_LIMIT: usize = 96 * 1024;

/// Plaintext taken per write call at most: the ciphertext waiting to be
/// written stays under this plus one call's record overhead.
const OUTGOING_LIMIT: usize = 64 * 1024;

/// What each record adds to its plaintext, at most (TLS 1.2 AES-GCM: a
/// 5-byte header, an 8-byte explicit nonce, a 16-byte tag; TLS 1.3: header,
/// content type, tag): the first guess of the room an encryption needs
/// (rustls says exactly how much if the guess is short).
const RECORD_OVERHEAD: usize = 32;

/// The largest plaintext of one record (TLS's limit, rustls's default).
const MAX_FRAGMENT: usize = 16 * 1024;

mod sealed {
    pub trait Sealed {}
    impl Sealed for rustls::server::UnbufferedServerConnection {}
    impl Sealed for rustls::client::UnbufferedClientConnection {}
}

/// One end of a TLS connection on rustls's unbuffered API: rustls's
/// `UnbufferedServerConnection` or `UnbufferedClientConnection`. Sealed.
pub trait Endpoint:
    sealed::Sealed + DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> + Send + Unpin + 'static
{
    /// rustls's per-side state.
    type Data;

    /// rustls's `process_tls_records` for this side.
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Endpoint for UnbufferedServerConnection {
    type Data = ServerConnectionData;

    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
}

impl Endpoint for UnbufferedClientConnection {
    type Data = ClientConnectionData;

    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
}

/// A TLS connection over the byte stream `T`, itself a byte stream
/// (`AsyncRead + AsyncWrite`, vectored writes): what
/// [`TlsAcceptor`](crate::TlsAcceptor) gives the session (`E` =
/// `UnbufferedServerConnection`) and [`TlsConnector`](crate::TlsConnector)
/// gives the client (`E` = `UnbufferedClientConnection`), the handshake
/// done.
///
/// Reads take up to [`READ_CHUNK`] bytes of ciphertext from `T` in one
/// call, into the thread's read scratch (zeroed once, shared by every
/// stream the thread reads); rustls decrypts each record there and its
/// plaintext is copied to the reader. Only what is left (a record in
/// part, or one the reader had no room for) is copied into the stream's
/// own buffer, which takes the next reads until it is used up, so a busy
/// stream receiving whole records allocates nothing per burst (plaintext
/// the reader had no room for waits in a buffer of its own). A write encrypts each slice it is given (up to 64 KiB of
/// plaintext per call) into the thread's scratch buffer and writes it with
/// one call of `T`; only what `T` does not take is copied into the
/// stream's own outgoing buffer (at most 64 KiB with what already waits). Ciphertext not yet processed is bounded (96 KiB; more
/// without a complete record is refused as `InvalidData`). The input
/// buffers are released whenever a read would block with nothing buffered,
/// the output buffer once it is written, so an idle connection holds none.
///
/// Shutting down sends TLS `close_notify`. A peer's `close_notify` reads
/// as the end of the stream; the transport closing without one is an
/// [`UnexpectedEof`](io::ErrorKind::UnexpectedEof) error (a truncation
/// could otherwise pass for a clean end). A TLS error is an
/// [`InvalidData`](io::ErrorKind::InvalidData) error around the
/// [`rustls::Error`], after the alert rustls queued was offered to the
/// peer.
pub struct TlsStream<T, E> {
    io: T,
    conn: E,
    /// Ciphertext read and not yet processed.
    incoming: BytesMut,
    /// Plaintext decrypted and not yet read.
    plaintext: BytesMut,
    /// Ciphertext to write, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer's `close_notify` arrived: no more plaintext.
    peer_closed: bool,
    /// Our `close_notify` is queued.
    closed: bool,
    /// A decrypted record waits in rustls for a reader with room.
    held_record: bool,
    /// The waker of the last write, flush or shutdown that returned
    /// `Pending`. A read that writes to the transport (a record rustls
    /// answered on its own) registers the reader's waker there, which
    /// replaces the writer's: the reader wakes the writer, so a split
    /// stream's writer is never left asleep.
    write_waker: Option<std::task::Waker>,
}

impl<T, E: Endpoint> fmt::Debug for TlsStream<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("incoming", &self.incoming.len())
            .field("plaintext", &self.plaintext.len())
            .field("outgoing", &(self.outgoing.len() - self.sent))
            .field("peer_closed", &self.peer_closed)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// What a caller of [`TlsStream::process`] wants done.
enum Want<'a, 'b> {
    /// Plaintext, into this buffer.
    Read(&'a mut ReadBuf<'b>),
    /// These bytes encrypted into the target, from its `end` on (the
    /// thread's scratch buffer, or the stream's own outgoing buffer when
    /// the scratch is in use: a TLS stream under this one is writing).
    Write(&'a [IoSlice<'a>], Target<'a>),
    /// `close_notify` queued.
    Close,
    /// The handshake's progress.
    Handshake,
}

/// Where a write's ciphertext goes: `buf[..end]` is ciphertext, and
/// `buf` may be longer (initialized room kept for the next write).
struct Target<'a> {
    buf: &'a mut Vec<u8>,
    end: &'a mut usize,
    /// Ciphertext already waiting in the stream's own buffer: the
    /// plaintext taken keeps the two under [`OUTGOING_LIMIT`].
    waiting: usize,
}

thread_local! {
    /// Each thread's room for the ciphertext of one write, zeroed once and
    /// reused by every stream the thread writes (at most 64 KiB plus
    /// record overhead). A stream's own outgoing buffer takes only what
    /// the socket did not: under back-pressure, never per write.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

thread_local! {
    /// Each thread's room for one read of ciphertext ([`READ_CHUNK`]),
    /// zeroed once and reused by every stream the thread reads: rustls
    /// decrypts the records where they lie and the plaintext goes to the
    /// reader, so a busy stream receiving whole records allocates nothing
    /// per burst. Only what is left (a record in part, or one the reader
    /// had no room for) is copied into the stream's own buffer. A cell of
    /// its own: a read inside a write on the same thread finds it free.
    static READ_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where processing the buffered input stopped.
enum Outcome {
    /// The input is used up: read more from the peer (or, during the
    /// handshake, wait for its next flight).
    NeedInput,
    /// Application data may be written (the buffered input is used up).
    Writable,
    /// The reader's buffer is full.
    Delivered,
    /// This much plaintext was encrypted (or `close_notify` queued).
    Wrote(usize),
    /// Both sides sent `close_notify`.
    Closed,
}

/// What one state of rustls came to, once its borrows are over.
enum Next {
    Again,
    Stop(Outcome),
}

/// The transport ended without the peer's `close_notify`.
fn bare_eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the peer closed the connection without TLS close_notify",
    )
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// A handshake record (or an alert) rustls has ready, appended to
/// `outgoing` (in as much room as rustls asks for: at most a flight of
/// handshake messages, which rustls keeps under 64 KiB).
fn encode<D>(outgoing: &mut Vec<u8>, data: &mut EncodeTlsData<'_, D>) -> io::Result<()> {
    let start = outgoing.len();
    let mut room = 4096;
    loop {
        grow(outgoing, start, room);
        match data.encode(&mut outgoing[start..]) {
            Ok(n) => {
                outgoing.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > room =>
            {
                room = required_size;
            }
            Err(e) => {
                outgoing.truncate(start);
                return Err(io::Error::other(e));
            }
        }
    }
}

/// Room of `len` more initialized bytes at the end of `buf`.
fn grow(buf: &mut Vec<u8>, start: usize, len: usize) {
    if buf.len() < start + len {
        buf.resize(start + len, 0);
    }
}

impl<T, E> TlsStream<T, E>
where
    T: AsyncRead + AsyncWrite + Unpin,
    E: Endpoint,
{
    /// `conn` (fresh) over `io`; [`handshake`](Self::handshake) next.
    pub(crate) fn new(io: T, conn: E) -> Self {
        TlsStream {
            io,
            conn,
            incoming: BytesMut::new(),
            plaintext: BytesMut::new(),
            outgoing: Vec::new(),
            sent: 0,
            peer_closed: false,
            closed: false,
            held_record: false,
            write_waker: None,
        }
    }

    /// The transport.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The rustls connection (its `CommonState`: the peer's certificates,
    /// the ALPN protocol, the version and suite agreed).
    pub fn connection(&self) -> &E {
        &self.conn
    }

    /// Ciphertext read and not yet processed, plaintext not yet read, and
    /// ciphertext not yet written, in bytes (what the connection holds
    /// besides rustls's own state).
    pub fn buffered(&self) -> (usize, usize, usize) {
        (
            self.incoming.len(),
            self.plaintext.len(),
            self.outgoing.len() - self.sent,
        )
    }

    /// The bytes read so far and not processed (the server's ClientHello
    /// probe reads them too).
    pub(crate) fn incoming(&self) -> &[u8] {
        &self.incoming
    }

    /// Runs the handshake to its end (both sides' Finished sent or
    /// received and every certificate verified), with what it wrote
    /// flushed.
    ///
    /// # Errors
    ///
    /// The peer was refused or refused us (`InvalidData` around the
    /// [`rustls::Error`]), or the transport failed or closed
    /// (`UnexpectedEof`).
    pub(crate) async fn handshake(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_handshake(cx)).await
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let outcome = match self.process(Want::Handshake) {
                Ok(outcome) => outcome,
                Err(e) => return self.fail(cx, e),
            };
            let done = matches!(outcome, Outcome::Writable) && !self.conn.is_handshaking();
            // What we have for the peer goes before we wait for it.
            ready!(self.poll_flush_outgoing(cx))?;
            if done {
                // Reads go through the thread's scratch from here on.
                self.release_input();
                return Poll::Ready(Ok(()));
            }
            if self.peer_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed TLS during the handshake",
                )));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed during the TLS handshake",
                )));
            }
        }
    }

    /// Reads more ciphertext from the transport: `Ok(0)` at its end.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() >= INCOMING_LIMIT {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more than 96 KiB of TLS input without a complete record",
            )));
        }
        if self.incoming.capacity() - self.incoming.len() < READ_CHUNK / 8 {
            self.incoming.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.incoming)
    }

    /// Writes the outgoing ciphertext: `Ready` once all of it is written.
    fn poll_flush_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        // All written: an idle connection keeps no buffer.
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// A TLS error: the alert rustls queued (if any) is offered to the
    /// peer without waiting, then the error is returned.
    fn fail<R>(&mut self, cx: &mut Context<'_>, error: io::Error) -> Poll<io::Result<R>> {
        let _ = self.poll_flush_outgoing(cx);
        self.wake_writer();
        Poll::Ready(Err(error))
    }

    /// Wakes the task whose write, flush or shutdown is waiting (see
    /// `write_waker`).
    fn wake_writer(&mut self) {
        if let Some(waker) = self.write_waker.take() {
            waker.wake();
        }
    }

    /// `Pending` from the write side: its waker is kept for the reader.
    fn write_pending<R>(&mut self, cx: &Context<'_>) -> Poll<R> {
        match &self.write_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.write_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Feeds the buffered ciphertext to rustls and does what `want` asks,
    /// until the input is used up or the request is served.
    fn process(&mut self, want: Want<'_, '_>) -> io::Result<Outcome> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let mut used = 0;
        let result = self.process_in(&mut incoming, &mut used, want);
        incoming.advance(used);
        self.incoming = incoming;
        result
    }

    /// [`process`](Self::process) on `input` (the stream's own buffer or
    /// the thread's read scratch): `*used` bytes of it are consumed.
    fn process_in(
        &mut self,
        input: &mut [u8],
        used: &mut usize,
        mut want: Want<'_, '_>,
    ) -> io::Result<Outcome> {
        let filled_at_start = match &want {
            Want::Read(out) => out.filled().len(),
            _ => 0,
        };
        loop {
            let TlsStream {
                held_record,
                conn,
                plaintext,
                outgoing,
                peer_closed,
                closed,
                ..
            } = self;
            let UnbufferedStatus { discard, state } = conn.process(&mut input[*used..]);
            let mut discard = discard;
            let next = match state {
                Err(e) => {
                    *used += discard;
                    self.queue_alert();
                    return Err(tls_error(e));
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut full = false;
                    *held_record = false;
                    loop {
                        // A record the reader has no room for waits in
                        // rustls for the next read (no second copy of its
                        // rest), unless the reader got nothing yet.
                        if let (Want::Read(out), Some(len)) = (&want, traffic.peek_len()) {
                            if len.get() > out.remaining() && out.filled().len() > filled_at_start {
                                *held_record = true;
                                full = true;
                                break;
                            }
                        }
                        let Some(record) = traffic.next_record() else {
                            break;
                        };
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        let mut payload = record.payload;
                        if let Want::Read(out) = &mut want {
                            let n = out.remaining().min(payload.len());
                            out.put_slice(&payload[..n]);
                            payload = &payload[n..];
                            full = out.remaining() == 0;
                        }
                        // What the reader has no room for (bounded by
                        // the ciphertext it came from).
                        plaintext.extend_from_slice(payload);
                    }
                    if full {
                        Next::Stop(Outcome::Delivered)
                    } else {
                        Next::Again
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode(outgoing, &mut data)?;
                    Next::Again
                }
                // Our outgoing buffer keeps the order: marked sent now,
                // written before anything queued later.
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    data.done();
                    Next::Again
                }
                Ok(ConnectionState::BlockedHandshake) => Next::Stop(Outcome::NeedInput),
                Ok(ConnectionState::PeerClosed) => {
                    *peer_closed = true;
                    Next::Again
                }
                Ok(ConnectionState::Closed) => {
                    *peer_closed = true;
                    Next::Stop(Outcome::Closed)
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match &mut want {
                    Want::Read(_) => Next::Stop(Outcome::NeedInput),
                    Want::Handshake => Next::Stop(Outcome::Writable),
                    Want::Close => {
                        let start = outgoing.len();
                        grow(outgoing, start, 64);
                        let n = traffic
                            .queue_close_notify(&mut outgoing[start..])
                            .map_err(io::Error::other)?;
                        outgoing.truncate(start + n);
                        *closed = true;
                        Next::Stop(Outcome::Wrote(0))
                    }
                    Want::Write(bufs, target) => {
                        let mut accepted = 0;
                        'slices: for buf in bufs.iter() {
                            let mut data: &[u8] = buf;
                            while !data.is_empty() {
                                let room =
                                    OUTGOING_LIMIT.saturating_sub(*target.end + target.waiting);
                                if room == 0 {
                                    break 'slices;
                                }
                                let take = data.len().min(room);
                                let start = *target.end;
                                let mut need = take + take.div_ceil(MAX_FRAGMENT) * RECORD_OVERHEAD;
                                loop {
                                    grow(target.buf, start, need);
                                    match traffic.encrypt(&data[..take], &mut target.buf[start..]) {
                                        Ok(n) => {
                                            *target.end = start + n;
                                            break;
                                        }
                                        Err(EncryptError::InsufficientSize(
                                            InsufficientSizeError { required_size },
                                        )) if required_size > need => need = required_size,
                                        Err(e) => {
                                            if accepted > 0 {
                                                // Say what went; the error comes next call.
                                                break 'slices;
                                            }
                                            return Err(io::Error::other(e));
                                        }
                                    }
                                }
                                accepted += take;
                                data = &data[take..];
                            }
                        }
                        Next::Stop(Outcome::Wrote(accepted))
                    }
                },
                Ok(ConnectionState::ReadEarlyData(_)) => {
                    // The acceptor never enables early data.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS early data, which this server does not accept",
                    ));
                }
                Ok(_) => {
                    return Err(io::Error::other("a TLS state this version does not know"));
                }
            };
            *used += discard;
            match next {
                Next::Again => {}
                Next::Stop(outcome) => return Ok(outcome),
            }
        }
    }

    /// After a TLS error: the records rustls queued (its alert) go to the
    /// outgoing buffer. rustls hands queued records out before it looks at
    /// the input again, so asking only while some are queued never makes
    /// it process the input that failed a second time.
    fn queue_alert(&mut self) {
        while self.conn.wants_write() {
            let TlsStream {
                conn,
                incoming,
                outgoing,
                ..
            } = self;
            match conn.process(&mut incoming[..]).state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    if encode(outgoing, &mut data).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    /// With nothing buffered: one read of the transport into the thread's
    /// read scratch, processed there for `out`; what rustls did not consume
    /// is copied into the stream's own buffer. `None` if the scratch is in
    /// use on this thread (the caller reads into its own buffer instead).
    fn poll_burst(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Option<Poll<io::Result<Outcome>>> {
        READ_SCRATCH.with(|cell| {
            let mut scratch = cell.try_borrow_mut().ok()?;
            if scratch.len() < READ_CHUNK {
                scratch.resize(READ_CHUNK, 0);
            }
            let mut buf = ReadBuf::new(&mut scratch[..READ_CHUNK]);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => return Some(Poll::Pending),
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Ready(Ok(())) => {}
            }
            let n = buf.filled().len();
            if n == 0 {
                return Some(Poll::Ready(Err(bare_eof())));
            }
            let input = &mut scratch[..n];
            let mut used = 0;
            let result = self.process_in(input, &mut used, Want::Read(out));
            if let Some(rest) = input.get(used..).filter(|rest| !rest.is_empty()) {
                // Kept contiguous: later reads go into this buffer until
                // it is used up.
                self.incoming.reserve(READ_CHUNK);
                self.incoming.extend_from_slice(rest);
            }
            Some(match result {
                Ok(outcome) => Poll::Ready(Ok(outcome)),
                Err(e) => self.fail(cx, e),
            })
        })
    }

    /// The plaintext a write's processing took, or what the write returns
    /// instead (the connection closed, or a TLS error after its alert).
    fn accepted(
        &mut self,
        cx: &mut Context<'_>,
        outcome: io::Result<Outcome>,
    ) -> Result<usize, Poll<io::Result<usize>>> {
        match outcome {
            Ok(Outcome::Wrote(n)) => Ok(n),
            Ok(_) => Err(Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection is closed",
            )))),
            Err(e) => Err(self.fail(cx, e)),
        }
    }

    /// A write encrypted into the stream's own outgoing buffer, behind
    /// what already waits there (when the thread's scratch is in use),
    /// then flushed as far as the transport takes it.
    fn write_into_own(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.sent > 0 {
            self.outgoing.drain(..self.sent);
            self.sent = 0;
        }
        let mut own = std::mem::take(&mut self.outgoing);
        let waited = own.len();
        let mut end = waited;
        let target = Target {
            buf: &mut own,
            end: &mut end,
            waiting: 0,
        };
        let outcome = self.process(Want::Write(bufs, target));
        own.truncate(end);
        // Records rustls queued before it took the data (a key update)
        // went into `self.outgoing`: they go out before the data.
        let queued = std::mem::take(&mut self.outgoing);
        own.splice(waited..waited, queued);
        self.outgoing = own;
        let accepted = match self.accepted(cx, outcome) {
            Ok(n) => n,
            Err(done) => return done,
        };
        if let Poll::Ready(Err(e)) = self.poll_flush_outgoing(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(accepted))
    }

    /// Releases the input buffers when nothing is in them.
    fn release_input(&mut self) {
        if self.incoming.is_empty() {
            self.incoming = BytesMut::new();
        }
        if self.plaintext.is_empty() {
            self.plaintext = BytesMut::new();
        }
    }
}

impl<T, E> AsyncRead for TlsStream<T, E>
where
    T: AsyncRead + AsyncWrite + Unpin,
    E: Endpoint,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.plaintext.is_empty() {
                let n = out.remaining().min(this.plaintext.len());
                out.put_slice(&this.plaintext[..n]);
                this.plaintext.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                // The end of the stream: `out` stays as it is.
                return Poll::Ready(Ok(()));
            }
            let before = out.filled().len();
            let mut burst = false;
            let outcome = if this.incoming.is_empty() && !this.held_record {
                match this.poll_burst(cx, out) {
                    Some(Poll::Ready(Ok(outcome))) => {
                        burst = true;
                        outcome
                    }
                    Some(Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
                    Some(Poll::Pending) => {
                        // Nothing to read: an idle connection keeps no buffer.
                        this.release_input();
                        return Poll::Pending;
                    }
                    None => Outcome::NeedInput,
                }
            } else {
                match this.process(Want::Read(out)) {
                    Ok(outcome) => outcome,
                    Err(e) => return this.fail(cx, e),
                }
            };
            // Whatever rustls answered on its own (a key update) goes
            // out with the next write, or now if the socket takes it.
            if this.sent < this.outgoing.len() {
                let flushed = this.poll_flush_outgoing(cx);
                // The transport now holds our waker for writing, not the
                // writer's (if another task writes): wake that one.
                this.wake_writer();
                if let Poll::Ready(Err(e)) = flushed {
                    return Poll::Ready(Err(e));
                }
            }
            if out.filled().len() > before || matches!(outcome, Outcome::Delivered) {
                return Poll::Ready(Ok(()));
            }
            if burst || this.peer_closed || matches!(outcome, Outcome::Closed) {
                continue;
            }
            match this.poll_fill(cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(bare_eof())),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing to read: an idle connection keeps no buffer.
                    this.release_input();
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<T, E> AsyncWrite for TlsStream<T, E>
where
    T: AsyncRead + AsyncWrite + Unpin,
    E: Endpoint,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS close_notify was sent: no more writes",
            )));
        }
        // No room: wait until the transport takes some.
        if this.outgoing.len() - this.sent >= OUTGOING_LIMIT {
            if let Poll::Ready(Err(e)) = this.poll_flush_outgoing(cx) {
                return Poll::Ready(Err(e));
            }
            if this.outgoing.len() - this.sent >= OUTGOING_LIMIT {
                return this.write_pending(cx);
            }
        }
        SCRATCH.with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                // This thread's scratch is taken (a TLS stream under this
                // one is writing it): encrypt into our own buffer.
                return this.write_into_own(cx, bufs);
            };
            let mut end = 0;
            let target = Target {
                buf: &mut scratch,
                end: &mut end,
                waiting: this.outgoing.len() - this.sent,
            };
            let outcome = this.process(Want::Write(bufs, target));
            let accepted = match this.accepted(cx, outcome) {
                Ok(n) => n,
                Err(done) => return done,
            };
            // Ciphertext already waiting (or a record rustls queued just
            // now, a key update) goes first: append behind it.
            let mut written = 0;
            if this.sent == this.outgoing.len() {
                // One write for all of it, straight from the scratch.
                while written < end {
                    match Pin::new(&mut this.io).poll_write(cx, &scratch[written..end]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                        }
                        Poll::Ready(Ok(n)) => written += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => break,
                    }
                }
            }
            if written < end {
                // What the socket did not take is ours to write later
                // (poll_flush): the stream's own buffer, bounded by the
                // room check above.
                if this.sent > 0 {
                    this.outgoing.drain(..this.sent);
                    this.sent = 0;
                }
                this.outgoing.extend_from_slice(&scratch[written..end]);
                if let Poll::Ready(Err(e)) = this.poll_flush_outgoing(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            Poll::Ready(Ok(accepted))
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_flush_outgoing(cx)?.is_pending() {
            return this.write_pending(cx);
        }
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.write_pending(cx),
            done => done,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closed {
            match this.process(Want::Close) {
                Ok(Outcome::Wrote(_) | Outcome::Closed) => this.closed = true,
                Ok(_) => this.closed = true,
                Err(e) => return this.fail(cx, e),
            }
        }
        if this.poll_flush_outgoing(cx)?.is_pending() {
            return this.write_pending(cx);
        }
        match Pin::new(&mut this.io).poll_shutdown(cx) {
            Poll::Pending => this.write_pending(cx),
            done => done,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{TlsAcceptor, TlsConnector};
    use rcgen::{CertificateParams, KeyPair};
    use rustls_pki_types::{PrivateKeyDer, ServerName};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("test step timed out")
    }

    /// Counts the reads of the transport that returned bytes.
    struct Counted {
        io: DuplexStream,
        reads: usize,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = out.filled().len();
            let polled = Pin::new(&mut self.io).poll_read(cx, out);
            if out.filled().len() > before {
                self.reads += 1;
            }
            polled
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    type Server = TlsStream<Counted, UnbufferedServerConnection>;
    type Client = TlsStream<DuplexStream, UnbufferedClientConnection>;

    /// A server and a client stream over an in-memory pipe, handshake done.
    async fn pair() -> (Server, Client) {
        pair_with(1 << 20).await
    }

    /// An acceptor with a throwaway certificate for `localhost`, and a
    /// connector that trusts it.
    fn endpoints() -> (TlsAcceptor, TlsConnector) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let acceptor = TlsAcceptor::builder(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .build()
        .unwrap();
        let connector = TlsConnector::builder("localhost")
            .root_certificates(vec![cert.der().clone()])
            .build()
            .unwrap();
        (acceptor, connector)
    }

    /// The same over a pipe that holds `room` bytes each way.
    async fn pair_with(room: usize) -> (Server, Client) {
        let (acceptor, connector) = endpoints();
        let (a, b) = tokio::io::duplex(room);
        let mut server = TlsStream::new(
            Counted { io: a, reads: 0 },
            UnbufferedServerConnection::new(acceptor.config().clone()).unwrap(),
        );
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = TlsStream::new(
            b,
            UnbufferedClientConnection::new(connector.config().clone(), name).unwrap(),
        );
        let (s, c) = within(async { tokio::join!(server.handshake(), client.handshake()) }).await;
        s.unwrap();
        c.unwrap();
        (server, client)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// A burst of records (three of them here) reaches the server with one
    /// read of its transport and is decrypted into the reader's buffer in
    /// one read call; then, nothing left to read, the stream holds no
    /// buffer.
    #[tokio::test]
    async fn a_burst_of_records_is_one_read_and_an_idle_stream_keeps_no_buffer() {
        let (mut server, mut client) = pair().await;
        let sent = pattern(40_000);
        within(client.write_all(&sent)).await.unwrap();
        within(client.flush()).await.unwrap();
        let reads = server.io.reads;
        let mut buf = vec![0u8; 64 * 1024];
        let n = within(server.read(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], &sent[..], "all of it in one read call");
        assert_eq!(server.io.reads - reads, 1, "one read of the transport");
        let blocked = std::future::poll_fn(|cx| {
            let mut out = ReadBuf::new(&mut buf);
            Poll::Ready(Pin::new(&mut server).poll_read(cx, &mut out).is_pending())
        })
        .await;
        assert!(blocked, "nothing more was sent");
        assert_eq!(server.buffered(), (0, 0, 0));
        assert_eq!(server.incoming.capacity(), 0, "idle: no input buffer");
        assert_eq!(server.plaintext.capacity(), 0);
        assert_eq!(client.outgoing.capacity(), 0, "written: no output buffer");
    }

    /// A busy stream receiving bursts of whole records keeps no input
    /// buffer of its own between them (not only once idle): each burst is
    /// read into the thread's scratch and decrypted there.
    #[tokio::test]
    async fn a_busy_stream_keeps_no_input_buffer_between_bursts() {
        let (mut server, mut client) = pair().await;
        let mut buf = vec![0u8; 64 * 1024];
        for round in 0..4 {
            let sent = pattern(30_000 + round);
            within(client.write_all(&sent)).await.unwrap();
            within(client.flush()).await.unwrap();
            let reads = server.io.reads;
            let n = within(server.read(&mut buf)).await.unwrap();
            assert_eq!(&buf[..n], &sent[..], "round {round}");
            assert_eq!(server.io.reads - reads, 1, "one read of the transport");
            assert_eq!(
                server.incoming.capacity(),
                0,
                "round {round}: no own buffer"
            );
            assert_eq!(server.plaintext.capacity(), 0, "round {round}");
        }
    }

    /// A record split across two reads of the transport: its first part
    /// waits in the stream's own buffer, and it is delivered whole, in
    /// order, once the rest arrives; then that buffer is released.
    #[tokio::test]
    async fn a_record_split_across_two_reads_is_delivered_whole() {
        let (mut server, mut client) = pair().await;
        // The client writes into a pipe of ours; we hand its ciphertext
        // to the server in two parts.
        let (tap, mut tapped) = tokio::io::duplex(1 << 20);
        let mut wire = std::mem::replace(&mut client.io, tap);
        let sent = pattern(12_000);
        within(client.write_all(&sent[..2_000])).await.unwrap();
        within(client.write_all(&sent[2_000..])).await.unwrap();
        within(client.flush()).await.unwrap();
        let mut cipher = vec![0u8; 64 * 1024];
        let len = within(tapped.read(&mut cipher)).await.unwrap();
        assert!(len > sent.len(), "{len}");
        // The first record whole and the second in part.
        let cut = len - 4_000;
        within(wire.write_all(&cipher[..cut])).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = within(server.read(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], &sent[..2_000], "the whole record only");
        assert_eq!(server.buffered().0, cut - 2_000 - 22, "the part waits");
        within(wire.write_all(&cipher[cut..len])).await.unwrap();
        let m = within(server.read(&mut buf)).await.unwrap();
        assert_eq!(&buf[..m], &sent[2_000..], "then the second, whole");
        let blocked = std::future::poll_fn(|cx| {
            let mut out = ReadBuf::new(&mut buf);
            Poll::Ready(Pin::new(&mut server).poll_read(cx, &mut out).is_pending())
        })
        .await;
        assert!(blocked);
        assert_eq!(server.incoming.capacity(), 0);
    }

    /// A reader with less room than a burst gets all of it, in order,
    /// over several reads.
    #[tokio::test]
    async fn a_reader_smaller_than_the_burst_gets_all_of_it_in_order() {
        let (mut server, mut client) = pair().await;
        let sent = pattern(30_000);
        for chunk in sent.chunks(3_000) {
            within(client.write_all(chunk)).await.unwrap();
        }
        within(client.flush()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4_500];
        while got.len() < sent.len() {
            let n = within(server.read(&mut buf)).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, sent);
    }

    /// Ciphertext that reaches 96 KiB without rustls consuming it is
    /// refused, not read further.
    #[tokio::test]
    async fn more_than_96_kib_unprocessed_is_refused() {
        let (mut server, _client) = pair().await;
        server
            .incoming
            .extend_from_slice(&vec![0u8; INCOMING_LIMIT]);
        let polled = std::future::poll_fn(|cx| Poll::Ready(server.poll_fill(cx))).await;
        let Poll::Ready(Err(error)) = polled else {
            panic!("not refused");
        };
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }

    /// A key update rustls queued goes out before the data written after
    /// it (that data is encrypted under the new key), also when the write
    /// goes straight from the scratch to the socket: the peer decrypts it.
    #[tokio::test]
    async fn a_queued_key_update_goes_out_before_later_data() {
        let (mut server, mut client) = pair().await;
        let Ok(ConnectionState::WriteTraffic(traffic)) =
            client.conn.process_tls_records(&mut []).state
        else {
            panic!("not writable");
        };
        traffic.refresh_traffic_keys().unwrap();
        let sent = pattern(5_000);
        within(client.write_all(&sent)).await.unwrap();
        within(client.flush()).await.unwrap();
        let mut got = vec![0u8; sent.len()];
        within(server.read_exact(&mut got)).await.unwrap();
        assert_eq!(got, sent);
        // Both directions still work after it.
        within(server.write_all(&sent)).await.unwrap();
        within(client.read_exact(&mut got)).await.unwrap();
        assert_eq!(got, sent);
    }

    /// A reader with less room than a record gets the rest on later reads.
    #[tokio::test]
    async fn a_small_reader_gets_a_record_in_pieces() {
        let (mut server, mut client) = pair().await;
        let sent = pattern(10_000);
        within(client.write_all(&sent)).await.unwrap();
        let mut got = vec![0u8; sent.len()];
        for chunk in got.chunks_mut(700) {
            within(server.read_exact(chunk)).await.unwrap();
        }
        assert_eq!(got, sent);
        // And the other way.
        within(server.write_all(&sent)).await.unwrap();
        let mut back = vec![0u8; sent.len()];
        within(client.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, sent);
    }

    /// A record that does not fit what is left of the reader's buffer
    /// stays in rustls for the next read instead of being split and its
    /// rest copied a second time.
    #[tokio::test]
    async fn a_record_that_does_not_fit_waits_for_the_next_read() {
        let (mut server, mut client) = pair().await;
        let sent = pattern(10_000);
        // Two records of 5,000 bytes (one per write).
        within(client.write_all(&sent[..5_000])).await.unwrap();
        within(client.write_all(&sent[5_000..])).await.unwrap();
        let mut buf = vec![0u8; 6_000];
        let n = within(server.read(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], &sent[..5_000], "the first record only");
        assert!(server.held_record);
        assert_eq!(server.buffered().1, 0, "no rest copied aside");
        let m = within(server.read(&mut buf)).await.unwrap();
        assert_eq!(&buf[..m], &sent[5_000..]);
    }

    /// One write takes at most 64 KiB of plaintext: the ciphertext waiting
    /// for the transport is bounded however much the writer offers.
    #[tokio::test]
    async fn one_write_takes_at_most_64_kib() {
        let (mut server, mut client) = pair().await;
        let big = pattern(1 << 20);
        let n = within(client.write(&big)).await.unwrap();
        assert!(n > 0 && n <= OUTGOING_LIMIT, "{n}");
        within(client.flush()).await.unwrap();
        let mut got = vec![0u8; n];
        within(server.read_exact(&mut got)).await.unwrap();
        assert_eq!(got, big[..n]);
    }

    /// A transport that takes a few hundred bytes at a time: what a write
    /// could not hand over waits in the stream's own buffer, goes out in
    /// order on later writes and flushes, and arrives intact.
    #[tokio::test]
    async fn what_the_socket_does_not_take_goes_out_later_in_order() {
        let (mut server, mut client) = pair().await;
        // Swap the client's pipe for a narrow one.
        let (narrow, far) = tokio::io::duplex(300);
        let mut far = Counted { io: far, reads: 0 };
        std::mem::swap(&mut server.io, &mut far);
        let wide = std::mem::replace(&mut client.io, narrow);
        drop((wide, far));
        let sent = pattern(100_000);
        let writer = async {
            for chunk in sent.chunks(7_000) {
                client.write_all(chunk).await.unwrap();
            }
            client.flush().await.unwrap();
            client.shutdown().await.unwrap();
        };
        let reader = async {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = within(async { tokio::join!(writer, reader) }).await;
        assert_eq!(got, sent);
    }

    /// Shutting down sends close_notify: the peer reads the end of the
    /// stream. A transport that ends without it is an UnexpectedEof error.
    #[tokio::test]
    async fn close_notify_is_a_clean_end_and_a_bare_eof_is_not() {
        let (mut server, mut client) = pair().await;
        within(client.write_all(b"last words")).await.unwrap();
        within(client.shutdown()).await.unwrap();
        let mut got = Vec::new();
        within(server.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, b"last words");

        let (mut server, client) = pair().await;
        drop(client);
        let error = within(server.read(&mut [0u8; 16])).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
    }

    /// A record header claiming more than TLS allows (64 KiB here) is
    /// refused as soon as it is read: InvalidData around rustls's error,
    /// and nothing allocated for its length.
    #[tokio::test]
    async fn a_record_claiming_64_kib_is_refused() {
        let (mut server, mut client) = pair().await;
        let mut lie = vec![0x17, 0x03, 0x03, 0xff, 0xff];
        lie.extend_from_slice(&[0u8; 100]);
        within(client.io.write_all(&lie)).await.unwrap();
        let error = within(server.read(&mut [0u8; 16])).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert!(
            error
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .is_some(),
            "{error}"
        );
        assert!(server.incoming.capacity() <= 2 * READ_CHUNK);
    }

    /// A split stream: the read half flushes what the write half left
    /// (registering its own waker with the transport); the write half,
    /// waiting for room, must still be woken and finish.
    #[tokio::test]
    async fn a_split_streams_writer_is_woken_when_its_reader_flushed() {
        let (mut server, client) = pair_with(1024).await;
        let (mut rd, mut wr) = tokio::io::split(client);
        let sent = pattern(300_000);
        let expect = sent.clone();
        let writer = tokio::spawn(async move {
            wr.write_all(&sent).await.unwrap();
            wr.flush().await.unwrap();
            wr
        });
        let reader = tokio::spawn(async move {
            let mut b = [0u8; 16];
            let r = rd.read(&mut b).await;
            (rd, r)
        });
        let mut got = vec![0u8; expect.len()];
        let res = tokio::time::timeout(Duration::from_secs(10), server.read_exact(&mut got)).await;
        writer.abort();
        reader.abort();
        assert!(
            res.is_ok(),
            "the server got only part: the writer was never woken"
        );
        assert_eq!(got, expect);
    }

    /// TLS over TLS: the outer stream's write finds the thread's scratch
    /// taken by the inner one's and encrypts into its own buffer.
    #[tokio::test]
    async fn tls_over_tls_writes_and_reads() {
        let (outer_s, outer_c) = pair().await;
        let (acceptor, connector) = endpoints();
        let mut s = TlsStream::new(
            outer_s,
            UnbufferedServerConnection::new(acceptor.config().clone()).unwrap(),
        );
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = TlsStream::new(
            outer_c,
            UnbufferedClientConnection::new(connector.config().clone(), name).unwrap(),
        );
        let (a, b) = within(async { tokio::join!(s.handshake(), c.handshake()) }).await;
        a.unwrap();
        b.unwrap();
        let sent = pattern(100_000);
        let (w, got) = within(async {
            let mut got = vec![0u8; sent.len()];
            tokio::join!(
                async {
                    c.write_all(&sent).await?;
                    c.flush().await
                },
                async { s.read_exact(&mut got).await.map(|_| got) }
            )
        })
        .await;
        w.unwrap();
        assert_eq!(got.unwrap(), sent);
    }
}
