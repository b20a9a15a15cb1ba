//! The server side of one session: moves bytes between a [`Transport`] and
//! the sans-IO [`Connection`], polls the user's service and its futures, and
//! acts on what the connection says.
//!
//! Every session rule (close phases, exactly one answer per request, the
//! requests in flight, when to stop reading, timers) lives in
//! `msgi_proto::server::Connection`; this file only does what needs tokio.
//! One task per session polls everything itself (reads, answers, pushes,
//! writes, timers), so a frame goes from socket to service and back without
//! crossing a channel or waking another task.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tower::Service;

use crate::observer::{Activity, Counts, Depths, ErrorCause, Observer, LATENCIES};
use crate::registry::Registry;
use crate::session::{CloseReason, Session, IDLE_OUTBOX_SLOTS};
use crate::transport::{now, Alarm, ReadError, Transport};
use crate::BoxError;
use msgi_proto::server::{
    can_answer, Cause, Close, Closed, Connection, Event, Phase, Request, Token,
};
use msgi_proto::text::PeerText;
use msgi_proto::Frame;

/// Per-session settings, taken from the server builder; one copy shared by
/// all of a server's sessions.
pub(crate) type SessionConfig = msgi_proto::server::Config;

/// Rounds of work before the driver yields to other tasks.
const BUDGET: usize = 32;

pin_project_lite::pin_project! {
    /// A service call and the token its answer needs.
    struct Call<F> {
        #[pin]
        fut: F,
        // Taken when the call finishes (a finished call is never polled again).
        token: Option<Token>,
        // When its request was read (only with an observer).
        read_at: Option<Instant>,
        // The request's span (DEBUG), entered while the call is polled;
        // `Span::none()` (nothing to enter) when DEBUG is off.
        span: tracing::Span,
    }
}

/// A finished call: its token, its result, when its request was read (only
/// with an observer).
type Finished = (
    Option<Token>,
    Result<Option<Frame>, BoxError>,
    Option<Instant>,
);

impl<F, E> Future for Call<F>
where
    F: Future<Output = Result<Option<Frame>, E>>,
    E: Into<BoxError>,
{
    type Output = Finished;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        this.fut
            .poll(cx)
            .map(|r| (this.token.take(), r.map_err(Into::into), *this.read_at))
    }
}

impl<F> Call<F> {
    /// The call of `fut`, in the box of a finished call (no allocation, and
    /// no move of a whole `Call`: the old future is dropped in place).
    #[inline]
    fn reuse(
        self: Pin<&mut Self>,
        fut: F,
        token: Token,
        read_at: Option<Instant>,
        span: tracing::Span,
    ) {
        let mut this = self.project();
        this.fut.set(fut);
        *this.token = Some(token);
        *this.read_at = read_at;
        *this.span = span;
    }
}

type BoxedCall<F> = Pin<Box<Call<F>>>;

/// A session's counts for its observer, made only when the server has one
/// (so a session without holds one null pointer, and counts nothing).
struct Tally {
    observer: Arc<dyn Observer>,
    activity: Counts,
    /// Bytes were waiting for the socket at the last write attempt.
    stalled: bool,
    /// When the request waiting in the connection's slot was read.
    read_at: Instant,
    /// When each request answered since the last report was read.
    started: [Instant; LATENCIES],
    answered: usize,
    /// The depths the last report gave (write queue, outbox, in flight).
    reported: Depths,
}

impl Tally {
    /// Counts a frame read at `now` (the request waiting, if it is one).
    #[cold]
    #[inline(never)]
    fn frame_in(&mut self, frame: &Frame, now: Instant) {
        self.activity.frames_in.add(frame.kind(), frame.wire_len());
        self.read_at = now;
    }

    fn new(observer: Arc<dyn Observer>, now: Instant) -> Box<Tally> {
        Box::new(Tally {
            observer,
            activity: Counts::default(),
            stalled: false,
            read_at: now,
            started: [now; LATENCIES],
            answered: 0,
            reported: Depths::default(),
        })
    }
}

pub(crate) struct Driver<X, S>
where
    S: Service<Frame>,
{
    transport: X,
    conn: Connection,
    service: S,
    session: Session,
    /// The session as the requests' extensions carry it: one `Arc` made at
    /// the first request and cloned into each (no allocation per request).
    /// A thin pointer (made `dyn Any` as it is cloned), so the driver stays
    /// as small as before it held an observer's counts.
    shared: Option<Arc<Session>>,
    registry: Registry,
    /// Calls still pending after their first poll; made when first needed
    /// and dropped whenever the session goes quiet, so an idle session does
    /// not hold it.
    in_flight: Option<FuturesUnordered<BoxedCall<S::Future>>>,
    /// A box kept from a call that finished on its first poll, reused for
    /// the next call: a service that answers at once costs no allocation
    /// and no trip through `in_flight`.
    spare: Option<BoxedCall<S::Future>>,
    alarm: Alarm,
    /// Pushes moved out of the outbox since the session last went quiet
    /// (saturating). Only more than [`IDLE_OUTBOX_SLOTS`] can have grown
    /// its buffer past what an idle session keeps.
    pushes_taken: u8,
    /// Counts for the server's observer; `None` without one.
    tally: Option<Box<Tally>>,
}

impl<X, S> Driver<X, S>
where
    X: Transport,
    S: Service<Frame, Response = Option<Frame>>,
    S::Error: Into<BoxError>,
{
    /// A driver for one session; [`poll`](Driver::poll) it to its end.
    pub(crate) fn new(
        transport: X,
        service: S,
        session: Session,
        registry: Registry,
        cfg: Arc<SessionConfig>,
        observer: Option<Arc<dyn Observer>>,
    ) -> Self {
        let now = now();
        let conn = Connection::new(cfg, transport.is_binary(), now);
        Driver {
            transport,
            conn,
            service,
            session,
            shared: None,
            registry,
            in_flight: None,
            spare: None,
            alarm: Alarm::new(),
            pushes_taken: 0,
            tally: observer.map(|observer| Tally::new(observer, now)),
        }
    }

    /// Runs the session until it ends, and says why it ended.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        // One registration per wake-up: pushes and close requests wake us.
        self.session.register(cx);
        for _ in 0..BUDGET {
            let now = now();
            let mut progress = false;

            if let Some(reason) = self.session.closing() {
                if reason == CloseReason::SlowConsumer {
                    self.conn.handle_close(Close::Abort, now);
                } else if self.conn.phase() == Phase::Open {
                    tracing::debug!(session = %self.session.id(), %reason, "session draining");
                    self.conn.handle_close(Close::GracefulHandingOnRead, now);
                    progress = true;
                }
            }

            while let Some(set) = &mut self.in_flight {
                let Poll::Ready(Some(finished)) = set.poll_next_unpin(cx) else {
                    break;
                };
                self.answer(finished);
                progress = true;
            }

            if self.take_pushes() {
                progress = true;
            }

            match self.conn.phase() {
                Phase::Open => progress |= self.read_requests(cx, now),
                Phase::Draining => progress |= self.hand_on_read(cx, now),
                _ => {}
            }

            let flushed = match self.conn.phase() {
                Phase::Lingering | Phase::Closed => true,
                _ => match self.transport.poll_write(cx) {
                    Poll::Ready(Ok(())) => true,
                    Poll::Ready(Err(e)) => {
                        self.conn.handle_peer_reset(e.kind());
                        true
                    }
                    Poll::Pending => {
                        if self.tally.is_some() {
                            self.count_stall();
                        }
                        false
                    }
                },
            };
            let written = self.transport.take_written();
            if written > 0 {
                self.conn.handle_written(now);
                progress = true;
                if self.tally.is_some() {
                    self.count_written(written);
                }
            }

            match self.conn.phase() {
                Phase::Closed => {}
                // Calls done: no push is taken from now on. Those taken
                // before are written before the farewell (`take_pushes`
                // moves them as the write queue drains), so a push that got
                // `Ok` is written unless the session ends abnormally.
                Phase::Draining if self.conn.answered_all() && self.session.seal_outbox() => {
                    let session = &self.session;
                    self.conn.handle_pushes_done(|| {
                        let reason = session.closing().unwrap_or(CloseReason::Aborted);
                        session.farewell(&reason).into_payload()
                    });
                    self.pump();
                    progress = true;
                }
                // Errors here only mean the peer is gone already.
                Phase::Flushing if flushed && self.transport.poll_shutdown(cx).is_ready() => {
                    self.conn.handle_write_closed(now);
                    progress = true;
                }
                Phase::Lingering if self.transport.poll_discard(cx).is_ready() => {
                    self.conn.handle_peer_closed(now);
                }
                _ => {}
            }

            if let Some(deadline) = self.conn.poll_timeout() {
                if deadline <= now {
                    // Progress only if a timer fired: were the deadline and
                    // the timers ever to disagree, this must not spin.
                    if self.conn.handle_timeout(now) {
                        self.pump();
                        progress = true;
                    }
                } else {
                    progress |= self.alarm.poll_at(deadline, cx);
                }
            }
            if let Some(closed) = self.conn.closed() {
                let reason = self.finish(closed);
                if self.tally.is_some() {
                    self.report_end();
                }
                return Poll::Ready(reason);
            }
            if !progress {
                if self
                    .in_flight
                    .as_ref()
                    .is_some_and(FuturesUnordered::is_empty)
                {
                    self.in_flight = None;
                }
                self.spare = None;
                if usize::from(std::mem::take(&mut self.pushes_taken)) > IDLE_OUTBOX_SLOTS {
                    // Quiet after a burst of pushes: give back the buffer
                    // the burst grew (one lock, only after such a burst).
                    // A session that takes a few pushes at a time keeps its
                    // small buffer, so a broadcast allocates nothing.
                    self.session.free_outbox();
                }
                if self.tally.is_some() {
                    self.report();
                }
                return Poll::Pending;
            }
        }
        // Plenty done in one go: let other sessions run.
        cx.waker().wake_by_ref();
        if self.tally.is_some() {
            self.report();
        }
        Poll::Pending
    }

    /// Tells the observer what this wake-up did (if anything), with the
    /// depths it left, and starts counting afresh.
    #[inline(never)]
    fn report(&mut self) {
        self.report_depths(false);
    }

    /// The session's last report: its depths are zero from now on.
    #[inline(never)]
    fn report_end(&mut self) {
        self.report_depths(true);
    }

    fn report_depths(&mut self, ended: bool) {
        let Some(tally) = &mut self.tally else {
            return;
        };
        let stalled = std::mem::take(&mut tally.stalled);
        let counted = tally.answered > 0 || stalled || !tally.activity.is_empty();
        // Depths are read only when something was counted or the last
        // report left some (a quiet session with nothing queued reads none).
        if !counted && tally.reported == Depths::default() {
            return;
        }
        let depths = if ended {
            Depths::default()
        } else {
            Depths {
                write_queue: self.transport.pending_write(),
                outbox: self.session.outbox_len(),
                in_flight: self.conn.outstanding(),
            }
        };
        if !counted && depths == tally.reported {
            return;
        }
        let started = tally.started.get(..tally.answered).unwrap_or_default();
        let mut activity = Activity::new(&tally.activity, started, now(), u32::from(stalled));
        activity.set_depths(depths, tally.reported);
        tally.reported = depths;
        tally.observer.session_activity(&self.session, &activity);
        tally.answered = 0;
        tally.activity.clear();
    }

    #[cold]
    #[inline(never)]
    fn count_stall(&mut self) {
        if let Some(tally) = &mut self.tally {
            tally.stalled = true;
        }
    }

    #[cold]
    #[inline(never)]
    fn count_written(&mut self, written: usize) {
        if let Some(tally) = &mut self.tally {
            tally.activity.bytes_written += written as u64;
        }
    }

    /// Counts an answer for the observer: its latency (reported at the end
    /// of the wake-up) and the error it tells the peer, if any.
    #[cold]
    #[inline(never)]
    fn count_answer(
        &mut self,
        token: &Token,
        result: &Result<Option<Frame>, BoxError>,
        read_at: Option<Instant>,
    ) {
        // An answer the connection will drop (it was cut) is not counted.
        if !matches!(self.conn.phase(), Phase::Open | Phase::Draining) {
            return;
        }
        if self.tally.as_ref().is_some_and(|t| t.answered == LATENCIES) {
            self.report();
        }
        let Some(tally) = &mut self.tally else {
            return;
        };
        let cause = match (result, token.request_id()) {
            (Err(_), _) => Some(ErrorCause::Handler),
            (Ok(None), Some(_)) => Some(ErrorCause::NoResponse),
            (Ok(Some(frame)), Some(_)) if !can_answer(frame.kind()) => Some(ErrorCause::AnswerKind),
            _ => None,
        };
        if let Some(cause) = cause {
            tally.activity.error(cause);
        }
        if let (Some(read_at), Some(slot)) = (read_at, tally.started.get_mut(tally.answered)) {
            *slot = read_at;
            tally.answered += 1;
        }
    }

    /// The runtime's reason for a cause of the connection's.
    fn reason(&self, cause: Cause) -> CloseReason {
        match cause {
            // Asked through the session (shutdown, the application, a
            // takeover, a slow consumer): the session keeps why.
            Cause::Local => self.session.closing().unwrap_or(CloseReason::Aborted),
            Cause::PeerDisconnect(why) => CloseReason::PeerDisconnect(why),
            Cause::PeerClosed => CloseReason::PeerClosed,
            Cause::PeerReset(why) => CloseReason::PeerReset(why),
            Cause::IdleTimeout => CloseReason::IdleTimeout,
            Cause::HandshakeTimeout => CloseReason::HandshakeTimeout,
            Cause::ProtocolViolation(kind, detail) => {
                CloseReason::ProtocolViolation { kind, detail }
            }
            Cause::ServiceFailed(why) => CloseReason::ServiceFailed(why),
            // A cause added to msgi-proto later, before msgi maps it.
            _ => CloseReason::Aborted,
        }
    }

    fn finish(&mut self, closed: Closed) -> CloseReason {
        let mut reason = self.reason(closed.cause);
        if closed.drain_timed_out {
            // Cut short: the reason says so, and why it was closing.
            reason = CloseReason::DrainTimeout(Box::new(reason));
        }
        if closed.unanswered > 0 {
            tracing::debug!(session = %self.session.id(), %reason, unanswered = closed.unanswered, "requests not answered");
        }
        self.session.close_with(reason.clone());
        self.drop_pushes(&reason);
        reason
    }

    /// Refuses further pushes and drops those not written: the session
    /// ends abnormally, and its close reason says why they were lost.
    fn drop_pushes(&self, reason: &CloseReason) {
        let lost = self.session.close_outbox();
        if lost > 0 {
            tracing::debug!(session = %self.session.id(), %reason, lost, "pushed frames not written");
        }
    }

    /// Writes what the connection has to send and acts on its events.
    fn pump(&mut self) {
        loop {
            while let Some(frame) = self.conn.poll_transmit() {
                self.queue(frame);
            }
            match self.conn.poll_event() {
                None => return,
                Some(Event::Hello {
                    client_id,
                    request_id,
                }) => {
                    match self.registry.set_client_id(&self.session, client_id) {
                        Ok(()) => {
                            record_client_id(&self.session);
                            self.conn.welcome(request_id, self.session.id());
                        }
                        // The cluster did not take the id: the session
                        // keeps its session id as client id.
                        Err(e) => self.conn.refuse_client_id(request_id, e),
                    }
                }
                Some(Event::PeerError(payload)) => {
                    if let Some(tally) = &mut self.tally {
                        tally.activity.error(ErrorCause::Peer);
                    }
                    tracing::debug!(session = %self.session.id(), reason = %PeerText(&payload), "peer reported an error");
                }
                Some(Event::Closing { cause, drain }) => {
                    let reason = self.reason(cause);
                    tracing::debug!(session = %self.session.id(), %reason, drain, "session closing");
                    // The session is closing, whoever began it: a later
                    // `Session::close` returns false rather than being ignored.
                    self.session.close_with(reason.clone());
                    if !drain {
                        self.in_flight = None;
                        self.drop_pushes(&reason);
                    }
                }
                // `finish` reads it through `Connection::closed`.
                Some(Event::Closed(_)) => {}
                // An event added to msgi-proto later: nothing to act on yet.
                Some(_) => {}
            }
        }
    }

    #[inline]
    fn queue(&mut self, frame: Frame) {
        if self.tally.is_some() {
            self.queue_counted(frame);
        } else {
            let _ = self.queue_frame(frame);
        }
    }

    /// [`queue`](Driver::queue), counted for the observer.
    #[inline(never)]
    fn queue_counted(&mut self, frame: Frame) {
        let (kind, len) = (frame.kind(), frame.wire_len());
        let queued = self.queue_frame(frame);
        if let Some(tally) = &mut self.tally {
            match queued {
                Ok(()) => tally.activity.frames_out.add(kind, len),
                Err(error) => {
                    tally.activity.error(ErrorCause::AnswerNotSent);
                    if let Some(len) = error {
                        tally.activity.frames_out.add(msgi_proto::Kind::ERROR, len);
                    }
                }
            }
        }
    }

    /// Queues `frame`; if it cannot be encoded, an ERROR in its place
    /// (`Err` with that ERROR's length, `None` if it failed too).
    fn queue_frame(&mut self, frame: Frame) -> Result<(), Option<usize>> {
        let request_id = frame.request_id();
        if let Err(e) = self.transport.queue(frame) {
            // A frame over the maximum size (or one a transform refused)
            // fails to encode. Encoding is transactional, so it wrote
            // nothing and spent no transform sequence number: the ERROR
            // below is the next frame the peer sees and can read.
            let mut error = Frame::error(format!("answer not sent: {e}"));
            error.set_request_id(request_id);
            let len = error.wire_len();
            if self.transport.queue(error).is_err() {
                tracing::warn!(session = %self.session.id(), "error frame could not be encoded");
                return Err(None);
            }
            return Err(Some(len));
        }
        Ok(())
    }

    #[inline]
    fn answer(&mut self, (token, result, read_at): Finished) {
        if let Some(token) = token {
            if self.tally.is_some() {
                self.count_answer(&token, &result, read_at);
            }
            if let (Some(id), Ok(Some(frame))) = (token.request_id(), &result) {
                if !can_answer(frame.kind()) {
                    tracing::debug!(session = %self.session.id(), request_id = id, kind = %frame.kind(), "handler answered with a kind that cannot answer; the peer gets an ERROR");
                }
            }
            // Nothing queued before it (the common case): straight to the
            // transport, not through the connection's transmit queue.
            if let Some(frame) = self.conn.take_answer(token, result) {
                self.queue(frame);
            }
            if self.conn.has_output() {
                self.pump();
            }
        }
    }

    /// Moves pushed frames (broadcasts, sends) into the write queue while
    /// the connection takes them (below the high-water mark).
    fn take_pushes(&mut self) -> bool {
        let conn = &self.conn;
        if !conn.takes_pushes(self.transport.pending_write()) {
            return false;
        }
        let transport = &mut self.transport;
        let session = &self.session;
        let taken = &mut self.pushes_taken;
        let tally = &mut self.tally;
        session.drain_outbox(|frame| {
            *taken = taken.saturating_add(1);
            let counted = tally.as_ref().map(|_| (frame.kind(), frame.wire_len()));
            // `Session::send` refused every push too large for the framing,
            // so only a transform's own failure is left here. It consumed
            // nothing (encoding is transactional); the session goes on.
            let queued = transport.queue(frame);
            if let (Some(tally), Some((kind, len))) = (tally.as_mut(), counted) {
                match &queued {
                    Ok(()) => tally.activity.frames_out.add(kind, len),
                    Err(_) => tally.activity.error(ErrorCause::PushDropped),
                }
            }
            if let Err(e) = queued {
                tracing::warn!(session = %session.id(), error = %e, "pushed frame could not be encoded; dropped");
            }
            conn.takes_pushes(transport.pending_write())
        })
    }

    /// Hands the request that waits for the service to it, once the
    /// service is ready.
    fn call_waiting(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        if !self.conn.has_request() {
            return false;
        }
        match self.service.poll_ready(cx) {
            Poll::Pending => false,
            Poll::Ready(Err(e)) => {
                let e: BoxError = e.into();
                self.conn.handle_service_failed(e.to_string(), now);
                self.pump();
                true
            }
            Poll::Ready(Ok(())) => {
                let Some(Request { mut frame, token }) = self.conn.poll_request() else {
                    return false;
                };
                let session = &self.session;
                let shared: Arc<dyn Any + Send + Sync> = self
                    .shared
                    .get_or_insert_with(|| Arc::new(session.clone()))
                    .clone();
                frame.extensions_mut().set_shared(shared);
                // Its fields are read only when DEBUG is on.
                let span =
                    tracing::debug_span!("request", kind = %frame.kind(), id = frame.request_id());
                let fut = span.in_scope(|| self.service.call(frame));
                let read_at = self.tally.as_ref().map(|tally| tally.read_at);
                let mut boxed = match self.spare.take() {
                    Some(mut spare) => {
                        spare.as_mut().reuse(fut, token, read_at, span);
                        spare
                    }
                    None => Box::pin(Call {
                        token: Some(token),
                        read_at,
                        fut,
                        span,
                    }),
                };
                match boxed.as_mut().poll(cx) {
                    Poll::Ready(finished) => {
                        self.answer(finished);
                        self.spare = Some(boxed);
                    }
                    Poll::Pending => self
                        .in_flight
                        .get_or_insert_with(FuturesUnordered::new)
                        .push(boxed),
                }
                true
            }
        }
    }

    /// While draining: the waiting request, then the complete frames read
    /// before the close began (never reading more from the peer).
    fn hand_on_read(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut progress = self.call_waiting(cx, now);
        while self.conn.takes_buffered() {
            let Some(permit) = self.conn.poll_read_buffered(self.transport.pending_write()) else {
                return progress;
            };
            match self.transport.buffered_frame() {
                Ok(Some(frame)) => {
                    if let Some(tally) = &mut self.tally {
                        tally.frame_in(&frame, now);
                    }
                    permit.handle_frame(frame, now);
                }
                Ok(None) => self.conn.handle_buffered_done(),
                Err(ReadError::Codec(e)) => self.conn.handle_decode_error(&e, now),
                Err(ReadError::Reset(e)) => self.conn.handle_peer_reset(e.kind()),
            }
            if self.conn.has_output() {
                self.pump();
            }
            progress = true;
            progress |= self.call_waiting(cx, now);
        }
        progress
    }

    fn read_requests(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut read = false;
        let progress = self.read_frames(cx, now, &mut read);
        if read {
            // Once per wake-up, not per frame: all were read at `now`.
            self.session.touch(now);
        }
        progress
    }

    fn read_frames(&mut self, cx: &mut Context<'_>, now: Instant, read: &mut bool) -> bool {
        let mut progress = false;
        let mut pushes = crate::session::pushes_on_this_thread();
        loop {
            if self.call_waiting(cx, now) {
                progress = true;
                // The handler pushed (a broadcast reaches this session
                // too): this session's pushes go to the write queue before
                // the next request is read. Otherwise the requests of one
                // read (a publisher's pipelined burst) filled the session's
                // own outbox with nothing taken out, and the session was
                // closed as a slow consumer although its peer read
                // everything. One check of a thread-local per request; one
                // outbox lock only after a handler pushed.
                let now_pushes = crate::session::pushes_on_this_thread();
                if now_pushes != pushes {
                    pushes = now_pushes;
                    self.take_pushes();
                }
            }
            // The connection decides whether to read, and tells the idle
            // clock why not.
            let Some(permit) = self.conn.poll_read(self.transport.pending_write(), now) else {
                return progress;
            };
            let frame = match self.transport.poll_frame(cx) {
                Poll::Pending => return progress,
                Poll::Ready(Ok(Some(frame))) => frame,
                Poll::Ready(Ok(None)) => {
                    self.conn.handle_peer_closed(now);
                    self.pump();
                    return true;
                }
                Poll::Ready(Err(ReadError::Codec(e))) => {
                    self.conn.handle_decode_error(&e, now);
                    self.pump();
                    return true;
                }
                Poll::Ready(Err(ReadError::Reset(e))) => {
                    self.conn.handle_peer_reset(e.kind());
                    return true;
                }
            };
            progress = true;
            *read = true;
            if let Some(tally) = &mut self.tally {
                tally.frame_in(&frame, now);
            }
            permit.handle_frame(frame, now);
            // A request (the common case) leaves nothing to write or report.
            if self.conn.has_output() {
                self.pump();
            }
        }
    }
}

/// Records an announced client id on the session's span (escaped and cut
/// short: it is the peer's text), if that span is on.
#[cold]
fn record_client_id(session: &Session) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    if let Some(id) = session.announced_client_id() {
        span.record("client", tracing::field::display(PeerText(id.as_bytes())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver lives in every session's task, idle ones included
    /// (about 1.8 KB a session, 2 KiB the limit): it was 576 bytes before
    /// the session rules moved into `Connection`, and must stay about that.
    #[test]
    fn the_driver_stays_small() {
        fn size_of_driver<S: Service<Frame>>(_: &S) -> usize {
            std::mem::size_of::<
                Driver<
                    crate::transport::ByteStream<tokio::net::TcpStream, msgi_proto::FrameCodec>,
                    S,
                >,
            >()
        }
        let echo = tower::service_fn(|frame: Frame| async move { Ok::<_, BoxError>(Some(frame)) });
        let size = size_of_driver(&echo);
        assert!(size <= 584, "the driver takes {size} bytes");
    }
}
