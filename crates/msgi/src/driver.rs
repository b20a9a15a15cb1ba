//! The server side of one session: drives a [`Transport`] and a user service
//! according to the rules in [`Protocol`].
//!
//! One task per session polls everything itself (reads, answers, pushes,
//! writes, timers), so a frame goes from socket to service and back without
//! crossing a channel or waking another task.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::transport::now;
use tower::Service;

use crate::registry::Registry;
use crate::session::{CloseReason, Session, IDLE_OUTBOX_SLOTS};
use crate::transport::{Alarm, ReadError, Transport};
use crate::BoxError;
use msgi_proto::session::{Expired, Inbound, Protocol, Reading, Role, Timers, WELCOME_PREFIX};
use msgi_proto::text::PeerText;
use msgi_proto::Framing;
use msgi_proto::{Frame, Kind};

/// Per-session settings, taken from the server builder; one copy shared by
/// all of a server's sessions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionConfig {
    pub(crate) timers: Timers,
    pub(crate) max_in_flight: usize,
    /// Payload bytes (as decoded: after decompression) of the requests in
    /// the service at or above which the session stops reading.
    pub(crate) max_in_flight_bytes: usize,
    pub(crate) drain_deadline: Duration,
    /// Queued output bytes above which the session stops reading requests
    /// and taking pushes until the peer has read some.
    pub(crate) high_water: usize,
}

/// How long a closing session keeps reading (and discarding) after its
/// last frame, waiting for the peer to close first. Closing with unread
/// input makes the kernel send a reset, which can destroy that last frame
/// before the peer reads it.
const LINGER: Duration = Duration::from_secs(1);

/// Rounds of work before the driver yields to other tasks.
const BUDGET: usize = 32;

pin_project_lite::pin_project! {
    /// A service call, the request id its answer must carry and the payload
    /// bytes its request counts against the in-flight budget.
    struct Call<F> {
        #[pin]
        fut: F,
        request_id: Option<u32>,
        bytes: usize,
    }
}

/// A finished call: its request id, its request's bytes, its result.
type Finished = (Option<u32>, usize, Result<Option<Frame>, BoxError>);

impl<F, E> Future for Call<F>
where
    F: Future<Output = Result<Option<Frame>, E>>,
    E: Into<BoxError>,
{
    type Output = Finished;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.fut
            .poll(cx)
            .map(|r| (*this.request_id, *this.bytes, r.map_err(Into::into)))
    }
}

type BoxedCall<F> = Pin<Box<Call<F>>>;

enum Phase {
    /// Reading requests.
    Open,
    /// No more reading; answering what was received, then sending `farewell`.
    Draining { farewell: Option<Frame> },
    /// Writing what is queued, then shutting the write side.
    Flushing,
    /// Write side shut; discarding input until the peer closes.
    Lingering,
}

pub(crate) struct Driver<T, C, S>
where
    S: Service<Frame>,
{
    transport: Transport<T, C>,
    proto: Protocol,
    service: S,
    session: Session,
    /// The session as the requests' extensions carry it: one `Arc` made at
    /// the first request and cloned into each (no allocation per request).
    shared: Option<Arc<dyn Any + Send + Sync>>,
    registry: Registry,
    /// The server's settings, shared (a pointer here, not 40 bytes of copies).
    cfg: Arc<SessionConfig>,
    /// Payload bytes of the requests handed to the service (or waiting
    /// for it) and not yet answered.
    in_flight_bytes: usize,
    /// Calls still pending after their first poll; made when first needed
    /// and dropped whenever the session goes quiet, so an idle session does
    /// not hold it.
    in_flight: Option<FuturesUnordered<BoxedCall<S::Future>>>,
    /// A box kept from a call that finished on its first poll, reused for
    /// the next call: a service that answers at once costs no allocation
    /// and no trip through `in_flight`.
    spare: Option<BoxedCall<S::Future>>,
    waiting: Option<Frame>,
    alarm: Alarm,
    phase: Phase,
    reason: Option<CloseReason>,
    aborted: bool,
    /// Pushes moved out of the outbox since the session last went quiet
    /// (saturating). Only more than [`IDLE_OUTBOX_SLOTS`] can have grown
    /// its buffer past what an idle session keeps.
    pushes_taken: u8,
}

impl<T, C, S> Driver<T, C, S>
where
    T: AsyncRead + AsyncWrite + Unpin,
    C: Framing,
    S: Service<Frame, Response = Option<Frame>>,
    S::Error: Into<BoxError>,
{
    /// A driver for one session; [`poll`](Driver::poll) it to its end.
    pub(crate) fn new(
        io: T,
        codec: C,
        service: S,
        session: Session,
        registry: Registry,
        cfg: Arc<SessionConfig>,
    ) -> Self {
        let transport = Transport::new(io, codec);
        let now = now();
        let proto = Protocol::new(Role::Server, cfg.timers, transport.is_binary(), now);
        Driver {
            transport,
            proto,
            service,
            session,
            shared: None,
            registry,
            cfg,
            in_flight_bytes: 0,
            in_flight: None,
            spare: None,
            waiting: None,
            alarm: Alarm::new(),
            phase: Phase::Open,
            reason: None,
            aborted: false,
            pushes_taken: 0,
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
                    self.abort(reason);
                } else if matches!(self.phase, Phase::Open) {
                    let farewell = self.session.farewell(&reason);
                    self.begin_drain(now, reason, Some(farewell));
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

            if matches!(self.phase, Phase::Open | Phase::Draining { .. }) && self.take_pushes() {
                progress = true;
            }

            match self.phase {
                Phase::Open => progress |= self.read_requests(cx, now),
                Phase::Draining { .. } => progress |= self.call_waiting(cx),
                _ => {}
            }

            let flushed = if matches!(self.phase, Phase::Lingering) || self.aborted {
                true
            } else {
                match self.transport.poll_write(cx) {
                    Poll::Ready(Ok(())) => true,
                    Poll::Ready(Err(e)) => {
                        self.abort(CloseReason::PeerReset(e.to_string()));
                        true
                    }
                    Poll::Pending => false,
                }
            };
            if self.transport.take_written() > 0 {
                self.proto.on_sent(now);
                progress = true;
            }

            if self.aborted {
                return Poll::Ready(self.take_reason());
            }

            match &mut self.phase {
                Phase::Draining { farewell }
                    if self
                        .in_flight
                        .as_ref()
                        .is_none_or(FuturesUnordered::is_empty)
                        && self.waiting.is_none()
                        // Calls done: no push is taken from now on. Those
                        // taken before are written before the farewell
                        // (`take_pushes` moves them as the write queue
                        // drains), so a push that got `Ok` is written
                        // unless the session ends abnormally.
                        && self.session.seal_outbox() =>
                {
                    if let Some(frame) = farewell.take() {
                        self.queue(frame);
                    }
                    self.phase = Phase::Flushing;
                    progress = true;
                }
                // Errors here only mean the peer is gone already.
                Phase::Flushing if flushed && self.transport.poll_shutdown(cx).is_ready() => {
                    self.phase = Phase::Lingering;
                    self.proto.shorten_drain(now, LINGER);
                    progress = true;
                }
                Phase::Lingering if self.transport.poll_discard(cx).is_ready() => {
                    return Poll::Ready(self.take_reason());
                }
                _ => {}
            }

            if let Some(deadline) = self.proto.next_deadline() {
                if deadline <= now {
                    progress |= self.on_timer(now);
                } else {
                    progress |= self.alarm.poll_at(deadline, cx);
                }
            }
            if self.aborted {
                return Poll::Ready(self.take_reason());
            }
            if !progress {
                if self.in_flight_len() == 0 {
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
                return Poll::Pending;
            }
        }
        // Plenty done in one go: let other sessions run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn in_flight_len(&self) -> usize {
        self.in_flight.as_ref().map_or(0, FuturesUnordered::len)
    }

    fn take_reason(&mut self) -> CloseReason {
        let reason = self.reason.take().unwrap_or(CloseReason::Aborted);
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

    /// Ends the session at once, writing nothing more.
    fn abort(&mut self, reason: CloseReason) {
        if !self.aborted {
            self.session.close_with(reason.clone());
            self.aborted = true;
            self.reason = Some(reason);
        }
    }

    /// Stops reading; answers what was received, then sends `farewell`.
    fn begin_drain(&mut self, now: Instant, reason: CloseReason, farewell: Option<Frame>) {
        tracing::debug!(session = %self.session.id(), %reason, "session draining");
        // The session is closing, whoever began it: a later
        // `Session::close` returns false rather than being ignored.
        self.session.close_with(reason.clone());
        self.reason = Some(reason);
        self.phase = Phase::Draining { farewell };
        self.proto.start_drain(now, self.cfg.drain_deadline);
    }

    /// Drops pending work, sends `last` and closes.
    fn close_now(&mut self, now: Instant, reason: CloseReason, last: Frame) {
        tracing::debug!(session = %self.session.id(), %reason, "session closing");
        self.session.close_with(reason.clone());
        self.in_flight = None;
        self.waiting = None;
        self.in_flight_bytes = 0;
        self.queue(last);
        self.drop_pushes(&reason);
        self.reason = Some(reason);
        self.phase = Phase::Flushing;
        self.proto.start_drain(now, self.cfg.drain_deadline);
    }

    fn queue(&mut self, frame: Frame) {
        let request_id = frame.request_id();
        if let Err(e) = self.transport.queue(frame) {
            // A frame over the maximum size (or one a transform refused)
            // fails to encode. Encoding is transactional, so it wrote
            // nothing and spent no transform sequence number: the ERROR
            // below is the next frame the peer sees and can read.
            let mut error = Frame::error(format!("answer not sent: {e}"));
            error.set_request_id(request_id);
            if self.transport.queue(error).is_err() {
                tracing::warn!(session = %self.session.id(), "error frame could not be encoded");
            }
        }
    }

    fn answer(&mut self, (request_id, bytes, result): Finished) {
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(bytes);
        let frame = match (request_id, result) {
            // Only what a client can take as an answer answers a request:
            // a PING, PONG, HEARTBEAT, DISCONNECT or reserved kind (0
            // included) would never complete the caller's call.
            (Some(id), Ok(Some(frame)))
                if !(frame.kind().is_delivered() || frame.kind() == Kind::ERROR) =>
            {
                tracing::debug!(session = %self.session.id(), kind = %frame.kind(), "handler answered with a kind that cannot answer");
                Frame::error(format!("handler answered with kind {}", frame.kind()))
                    .with_request_id(id)
            }
            (Some(id), Ok(Some(mut frame))) => {
                frame.set_request_id(Some(id));
                frame
            }
            (None, Ok(Some(frame))) => frame,
            (Some(id), Ok(None)) => Frame::error("no response").with_request_id(id),
            (None, Ok(None)) => return,
            (id, Err(error)) => {
                let mut frame = Frame::error(error.to_string());
                frame.set_request_id(id);
                frame
            }
        };
        self.queue(frame);
    }

    /// Moves pushed frames (broadcasts, sends) into the write queue while
    /// it is below the high-water mark.
    fn take_pushes(&mut self) -> bool {
        let high_water = self.cfg.high_water;
        if self.transport.pending_write() >= high_water {
            return false;
        }
        let transport = &mut self.transport;
        let session = &self.session;
        let taken = &mut self.pushes_taken;
        session.drain_outbox(|frame| {
            *taken = taken.saturating_add(1);
            // `Session::send` refused every push too large for the framing,
            // so only a transform's own failure is left here. It consumed
            // nothing (encoding is transactional); the session goes on.
            if let Err(e) = transport.queue(frame) {
                tracing::warn!(session = %session.id(), error = %e, "pushed frame could not be encoded; dropped");
            }
            transport.pending_write() < high_water
        })
    }

    /// Hands the decoded frame that waits for the service to it, once the
    /// service is ready.
    fn call_waiting(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(frame) = self.waiting.take() else {
            return false;
        };
        match self.service.poll_ready(cx) {
            Poll::Pending => {
                self.waiting = Some(frame);
                false
            }
            Poll::Ready(Err(e)) => {
                let e: BoxError = e.into();
                self.close_now(
                    now(),
                    CloseReason::ServiceFailed(e.to_string()),
                    Frame::error("service unavailable"),
                );
                true
            }
            Poll::Ready(Ok(())) => {
                let call = Call {
                    request_id: frame.request_id(),
                    bytes: frame.payload().len(),
                    fut: self.service.call(frame),
                };
                let mut boxed = match self.spare.take() {
                    Some(mut spare) => {
                        spare.as_mut().set(call);
                        spare
                    }
                    None => Box::pin(call),
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

    fn read_requests(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut progress = false;
        loop {
            progress |= self.call_waiting(cx);
            if !matches!(self.phase, Phase::Open) {
                return progress;
            }
            // The idle timer must measure the peer, not this backpressure:
            // tell the protocol why we stop reading.
            let reading = if self.transport.pending_write() >= self.cfg.high_water {
                Reading::BlockedOnPeer
            } else if self.waiting.is_some()
                || self.in_flight_len() >= self.cfg.max_in_flight
                || self.in_flight_bytes >= self.cfg.max_in_flight_bytes
            {
                Reading::HeldBack
            } else {
                Reading::Open
            };
            self.proto.set_reading(reading, now);
            if reading != Reading::Open {
                return progress;
            }
            let frame = match self.transport.poll_frame(cx) {
                Poll::Pending => return progress,
                Poll::Ready(Ok(Some(frame))) => frame,
                Poll::Ready(Ok(None)) => {
                    self.begin_drain(now, CloseReason::PeerClosed, None);
                    return true;
                }
                Poll::Ready(Err(ReadError::Codec(e))) => {
                    let reason = e.to_string();
                    self.close_now(
                        now,
                        CloseReason::ProtocolViolation(reason.clone()),
                        Frame::error(reason),
                    );
                    return true;
                }
                Poll::Ready(Err(ReadError::Reset(why))) => {
                    self.abort(CloseReason::PeerReset(why));
                    return true;
                }
            };
            progress = true;
            self.session.touch(now);
            match self.proto.on_frame(frame, now) {
                Inbound::Deliver(mut frame) => {
                    // Counted from here until the call is answered; the
                    // payload is as decoded, so after decompression.
                    self.in_flight_bytes =
                        self.in_flight_bytes.saturating_add(frame.payload().len());
                    let session = &self.session;
                    let shared = self
                        .shared
                        .get_or_insert_with(|| Arc::new(session.clone()))
                        .clone();
                    frame.extensions_mut().set_shared(shared);
                    self.waiting = Some(frame);
                }
                Inbound::Reply(frame) => self.queue(frame),
                Inbound::Hello {
                    client_id,
                    request_id,
                } => {
                    let mut answer = match client_id {
                        Ok(id) => {
                            self.registry.set_client_id(&self.session, id);
                            Frame::control(format!("{WELCOME_PREFIX}{}", self.session.id()))
                        }
                        Err(why) => Frame::error(format!("invalid client id: {why}")),
                    };
                    answer.set_request_id(request_id);
                    self.queue(answer);
                }
                Inbound::PeerError(frame) => {
                    tracing::debug!(session = %self.session.id(), reason = %PeerText(frame.payload()), "peer reported an error");
                }
                Inbound::PeerDisconnect(why) => {
                    self.begin_drain(now, CloseReason::PeerDisconnect(why), None);
                }
                Inbound::Violation(reason) => {
                    self.close_now(
                        now,
                        CloseReason::ProtocolViolation(reason.clone()),
                        Frame::error(reason),
                    );
                    return true;
                }
                Inbound::Pong(_) | Inbound::Nothing => {}
            }
        }
    }

    fn on_timer(&mut self, now: Instant) -> bool {
        let Some(expired) = self.proto.on_timeout(now) else {
            return false;
        };
        match expired {
            Expired::Heartbeat => self.queue(Frame::heartbeat()),
            Expired::Idle => self.close_now(
                now,
                CloseReason::IdleTimeout,
                Frame::disconnect(CloseReason::IdleTimeout.to_string()),
            ),
            Expired::Handshake => self.close_now(
                now,
                CloseReason::HandshakeTimeout,
                Frame::disconnect(CloseReason::HandshakeTimeout.to_string()),
            ),
            Expired::Drain => {
                if matches!(self.phase, Phase::Lingering) {
                    // Lingering ran out: a normal end, keep the reason.
                    self.aborted = true;
                } else {
                    // Cut short: the reason says so, and why it was closing.
                    let reason = self.reason.take().unwrap_or(CloseReason::Aborted);
                    self.abort(CloseReason::DrainTimeout(Box::new(reason)));
                }
            }
        }
        true
    }
}
