//! The task that owns the connection: [`ClientTask`] runs one [`Link`] per
//! connection, and between connections waits (reconnect backoff) while it
//! keeps taking what handles queue, within bounds.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};

use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use crate::transport::now;

use super::builder::{finite, ClientBuilder, Connector, HANDSHAKE_ID};
use super::{ClientError, DoneGuard, Shared, Status};
use crate::transport::{Alarm, ReadError, Transport};
use msgi_proto::session::{Expired, Inbound, Protocol, Reading, Role};
use msgi_proto::text::PeerText;
use msgi_proto::Framing;
use msgi_proto::{Frame, Kind};

pub(super) type Reply = oneshot::Sender<Result<Frame, ClientError>>;

/// What handles put in the outbox.
pub(super) enum Command {
    Send(Frame),
    /// A call, stamped if it was made while the client was not connected.
    Call(Frame, Reply, Option<Arc<Stamp>>),
}

/// A call made while the client was not connected: its queue deadline, and
/// who had it first, the task (took it off the outbox) or its caller (gave
/// up at the deadline while it still waited in the outbox, unsent).
pub(super) struct Stamp {
    pub(super) deadline: Instant,
    state: AtomicU8,
}

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Stamp {
    pub(super) fn new(deadline: Instant) -> Arc<Stamp> {
        Arc::new(Stamp {
            deadline,
            state: AtomicU8::new(QUEUED),
        })
    }

    /// The caller gives up; false if the task took the call first (the task
    /// then answers it, `NotConnected` at the same deadline if unsent).
    pub(super) fn withdraw(&self) -> bool {
        self.swap_from_queued(WITHDRAWN)
    }

    fn swap_from_queued(&self, to: u8) -> bool {
        self.state
            .compare_exchange(QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// The task takes a call off the outbox; false if its caller withdrew it.
fn take(stamp: Option<&Arc<Stamp>>) -> bool {
    stamp.is_none_or(|stamp| stamp.swap_from_queued(TAKEN))
}

/// Work the task holds outside the outbox, in order.
enum Held {
    /// A one-way frame to (re)send first on the next connection; `true`
    /// if it was taken off the outbox while disconnected (counted in
    /// `Queue::taken`).
    Resend(Frame, bool),
    /// A call taken off the outbox while disconnected, failed with
    /// [`ClientError::NotConnected`] at its deadline (`None`: never).
    Call(Frame, Reply, Option<Instant>),
}

/// The task's side of the queues, apart from the connection.
pub(super) struct Queue {
    pub(super) rx: mpsc::Receiver<Command>,
    pub(super) incoming: mpsc::Sender<Frame>,
    pub(super) shared: Arc<Shared>,
    carry: VecDeque<Held>,
    /// Every handle is gone (the outbox reported its end).
    handles_gone: bool,
    /// At most this many one-way frames taken off the outbox while
    /// disconnected are held in `carry` (calls taken do not count: the call
    /// limit bounds them, and a call must not wait unseen behind one-way
    /// frames past its queue timeout).
    carry_cap: usize,
    /// One-way frames taken off the outbox while disconnected and still in
    /// `carry`.
    taken: usize,
    incoming_bytes: usize,
    queue_timeout: Option<std::time::Duration>,
    /// Declared last: dropped after everything above.
    _done: DoneGuard,
}

impl Queue {
    pub(super) fn new(
        rx: mpsc::Receiver<Command>,
        incoming: mpsc::Sender<Frame>,
        shared: Arc<Shared>,
        cfg: &ClientBuilder<impl Sized>,
        done: DoneGuard,
    ) -> Queue {
        Queue {
            rx,
            incoming,
            shared,
            carry: VecDeque::new(),
            handles_gone: false,
            carry_cap: cfg.outbox,
            taken: 0,
            incoming_bytes: cfg.incoming_bytes,
            queue_timeout: finite(cfg.queue_timeout),
            _done: done,
        }
    }

    /// Hands a server push to the application's queue, or drops it (and
    /// counts it) when the queue is full in frames or bytes, or nobody
    /// can read it any more. Never waits: pushes never hold up answers.
    fn push(&self, frame: Frame) {
        let len = frame.wire_len();
        let held = self.shared.incoming_held.fetch_add(len, Ordering::AcqRel);
        let refused = if held > 0 && held.saturating_add(len) > self.incoming_bytes {
            Some(frame)
        } else {
            self.incoming.try_send(frame).err().map(|e| e.into_inner())
        };
        if refused.is_some() {
            self.shared.incoming_held.fetch_sub(len, Ordering::AcqRel);
            let dropped = self.shared.pushes_dropped.fetch_add(1, Ordering::Relaxed);
            if dropped.is_power_of_two() || dropped == 0 {
                tracing::debug!(dropped = dropped + 1, "push dropped: incoming queue full");
            }
        }
    }

    /// A held call whose caller still waits (abandoned ones do not count:
    /// nobody is left to answer).
    fn holds_calls(&self) -> bool {
        self.carry
            .iter()
            .any(|h| matches!(h, Held::Call(_, reply, _) if !reply.is_closed()))
    }

    /// Runs `fut` while disconnected: keeps taking commands off the outbox
    /// (at most `carry_cap` held), fails calls whose queue deadline passed,
    /// and gives up (`None`) when the application closes the client or
    /// every handle is gone with no call waiting.
    async fn while_disconnected<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            if self.shared.close_requested.is_cancelled()
                || (self.handles_gone && !self.holds_calls())
            {
                return None;
            }
            let next_expiry = self
                .carry
                .iter()
                .filter_map(|h| match h {
                    Held::Call(_, _, deadline) => *deadline,
                    Held::Resend(..) => None,
                })
                .min();
            let can_take = !self.handles_gone && self.taken < self.carry_cap;
            let shared = self.shared.clone();
            tokio::select! {
                biased;
                () = shared.close_requested.cancelled() => return None,
                out = &mut fut => return Some(out),
                () = sleep_until_some(next_expiry) => self.expire(now()),
                // A caller gave up: its held call goes now, freeing its
                // place (and, with every handle gone, maybe the task).
                () = abandoned(&shared) => self.expire(now()),
                command = self.rx.recv(), if can_take => match command {
                    Some(Command::Send(frame)) => {
                        self.taken += 1;
                        self.carry.push_back(Held::Resend(frame, true));
                    }
                    Some(Command::Call(frame, reply, stamp)) => {
                        if take(stamp.as_ref()) && !reply.is_closed() {
                            // The deadline runs from the call if it was made
                            // while disconnected, else from now.
                            let deadline = match stamp {
                                Some(stamp) => Some(stamp.deadline),
                                None => self.queue_timeout.and_then(|t| now().checked_add(t)),
                            };
                            self.carry.push_back(Held::Call(frame, reply, deadline));
                        }
                    }
                    None => self.handles_gone = true,
                },
            }
        }
    }

    /// Fails the held calls whose deadline has passed, and forgets the ones
    /// their caller abandoned.
    fn expire(&mut self, now: Instant) {
        let mut kept = VecDeque::with_capacity(self.carry.len());
        for held in self.carry.drain(..) {
            match held {
                Held::Call(_, reply, _) if reply.is_closed() => {}
                Held::Call(_, reply, Some(deadline)) if deadline <= now => {
                    let _ = reply.send(Err(ClientError::NotConnected));
                }
                held => kept.push_back(held),
            }
        }
        self.carry = kept;
    }
}

/// Why the client closes gracefully.
fn closed_reason(shared: &Shared) -> ClientError {
    if shared.close_requested.is_cancelled() {
        ClientError::Closed("closed by the application".into())
    } else {
        ClientError::Closed("every handle was dropped".into())
    }
}

/// A frame answering no pending call (its caller gave up, or the server
/// made the id up): dropped, never delivered as a push.
fn late_answer(id: Option<u32>, kind: Kind) {
    tracing::debug!(id, %kind, "answer to no pending call dropped");
}

/// Resolves once a caller has abandoned a call since the last look.
async fn abandoned(shared: &Shared) {
    std::future::poll_fn(|cx| {
        shared.task_waker.register(cx.waker());
        if shared.abandoned.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}

/// How a connection ended, for the client task.
enum LinkEnd {
    /// The application closed the client, or every handle is gone and no
    /// answer is outstanding.
    Closed,
    /// The connection was lost; reconnect if allowed.
    Lost(String),
}

pub(super) struct ClientTask<T, C> {
    pub(super) cfg: ClientBuilder<C>,
    pub(super) connector: Connector<T>,
    pub(super) queue: Queue,
}

impl<T, C> ClientTask<T, C>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Framing + Clone + fmt::Debug + Sync,
{
    pub(super) async fn run(mut self, first: Transport<T, C>, early: Vec<Frame>) {
        let mut transport = first;
        let mut early = early;
        let reason = loop {
            for frame in early.drain(..) {
                self.queue.push(frame);
            }
            let mut link = Link::new(transport, &self.cfg);
            self.queue.shared.set_status(Status::Connected);
            let end = std::future::poll_fn(|cx| link.poll(cx, &mut self.queue)).await;
            self.queue.shared.set_status(Status::Connecting);
            let why = match end {
                LinkEnd::Closed => {
                    link.fail_calls("the client closed");
                    break self.closed_reason();
                }
                LinkEnd::Lost(why) => why,
            };
            link.fail_calls(&why);
            link.give_back(&mut self.queue.carry);
            // Closes the socket now, not after the reconnect.
            drop(link);
            tracing::debug!(reason = %why, "connection lost");
            match self.reconnect(&why).await {
                Ok((next, next_early)) => {
                    transport = next;
                    early = next_early;
                }
                Err(reason) => break reason,
            }
        };
        self.finish(reason);
    }

    fn closed_reason(&self) -> ClientError {
        closed_reason(&self.queue.shared)
    }

    /// Tries to connect again under the reconnect policy, racing the
    /// application's close; the error is why the client stops.
    async fn reconnect(&mut self, why: &str) -> Result<(Transport<T, C>, Vec<Frame>), ClientError> {
        let lost = || ClientError::Closed(format!("connection lost: {why}"));
        let Some(policy) = self.cfg.reconnect else {
            return Err(lost());
        };
        let mut attempt = 0u32;
        loop {
            if policy.max_attempts.is_some_and(|max| attempt >= max) {
                tracing::debug!(attempts = attempt, last = %why, "giving up reconnecting");
                return Err(lost());
            }
            let delay = policy.delay(attempt);
            attempt = attempt.saturating_add(1);
            if self
                .queue
                .while_disconnected(tokio::time::sleep(delay))
                .await
                .is_none()
            {
                return Err(self.closed_reason());
            }
            let opened = self
                .queue
                .while_disconnected(self.cfg.open(&mut self.connector))
                .await;
            match opened {
                None => return Err(self.closed_reason()),
                Some(Ok(opened)) => return Ok(opened),
                Some(Err(ClientError::Handshake(reason))) => {
                    tracing::debug!(%reason, "handshake refused while reconnecting");
                }
                Some(Err(e)) => tracing::debug!(error = %e, attempt, "reconnect failed"),
            }
        }
    }

    /// Stops for good: returns unsent one-way frames to the application and
    /// fails everything else still queued.
    fn finish(mut self, reason: ClientError) {
        let shared = self.queue.shared.clone();
        let _ = shared.stop_reason.set(reason.clone());
        shared.calls.close();
        self.queue.rx.close();
        let mut unsent = Vec::new();
        for held in self.queue.carry.drain(..) {
            match held {
                Held::Resend(frame, _) => unsent.push(frame),
                Held::Call(_, reply, _) => {
                    let _ = reply.send(Err(reason.clone()));
                }
            }
        }
        while let Ok(command) = self.queue.rx.try_recv() {
            match command {
                Command::Send(frame) => unsent.push(frame),
                Command::Call(_, reply, _) => {
                    let _ = reply.send(Err(reason.clone()));
                }
            }
        }
        if !unsent.is_empty() {
            tracing::debug!(count = unsent.len(), "one-way frames left unsent");
            shared
                .unsent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(unsent);
        }
        // Last: whoever waits for the end (`close`, `closed`) finds the
        // unsent frames in place.
        shared.set_status(Status::Done(reason));
    }
}

/// One connection's worth of client state.
struct Link<T, C> {
    transport: Transport<T, C>,
    proto: Protocol,
    calls: HashMap<u32, Reply>,
    next_id: u32,
    /// One-way frames queued for writing with the stream offset where each
    /// ends; they are resent on the next connection if the write did not
    /// complete.
    unwritten: VecDeque<(u64, Frame)>,
    queued_bytes: u64,
    written_bytes: u64,
    alarm: Alarm,
    /// Bytes queued for writing above which the link neither reads nor
    /// takes more from the outbox until some are written.
    high_water: usize,
    /// Set once the link is closing: by then the outbox is drained.
    closing: Option<Option<Instant>>,
    close_linger: Option<std::time::Duration>,
    /// The reason of the last uncorrelated ERROR from the server.
    last_error: Option<String>,
}

/// The least write-queue high-water mark, as the server's.
const MIN_HIGH_WATER: usize = 64 * 1024;

impl<T, C> Link<T, C>
where
    T: AsyncRead + AsyncWrite + Unpin,
    C: Framing + Clone + fmt::Debug + Sync,
{
    fn new(transport: Transport<T, C>, cfg: &ClientBuilder<C>) -> Self {
        let now = now();
        Link {
            high_water: cfg.framing.max_frame_size().max(MIN_HIGH_WATER),
            transport,
            proto: Protocol::new(Role::Client, cfg.timers(), true, now),
            calls: HashMap::new(),
            next_id: HANDSHAKE_ID + 1,
            unwritten: VecDeque::new(),
            queued_bytes: 0,
            written_bytes: 0,
            alarm: Alarm::new(),
            closing: None,
            close_linger: finite(Some(cfg.connect_timeout)),
            last_error: None,
        }
    }

    fn below_high_water(&self) -> bool {
        self.transport.pending_write() < self.high_water
    }

    /// Reading stops at twice the high-water mark. What the application
    /// sends stops being taken at the mark, so it stays below
    /// `high_water + max_frame_size <= 2 * high_water` and never stops the
    /// reading by itself (which, with a server that also stops reading
    /// under backpressure, would deadlock); only replies the client owes
    /// (PONGs, ERRORs) can reach it.
    fn may_read(&self) -> bool {
        self.transport.pending_write() < self.high_water.saturating_mul(2)
    }

    fn poll(&mut self, cx: &mut Context<'_>, q: &mut Queue) -> Poll<LinkEnd> {
        q.shared.task_waker.register(cx.waker());
        for _ in 0..32 {
            let now = now();
            let mut progress = false;

            if q.shared.abandoned.swap(false, Ordering::AcqRel) {
                // A caller dropped its answer: forget every such call, so
                // abandoned calls never hold a place.
                self.calls.retain(|_, reply| !reply.is_closed());
            }
            if self.closing.is_none()
                && (q.shared.close_requested.is_cancelled()
                    || (q.handles_gone && self.calls.is_empty() && q.carry.is_empty()))
            {
                self.begin_close(q, now);
                progress = true;
            }

            // What the previous connection left, and what was taken while
            // disconnected, goes first, in order.
            while self.below_high_water() {
                match q.carry.pop_front() {
                    Some(Held::Resend(frame, taken)) => {
                        q.taken = q.taken.saturating_sub(usize::from(taken));
                        self.queue_one_way(frame)
                    }
                    Some(Held::Call(frame, reply, _)) => self.queue_call(frame, reply),
                    None => break,
                }
                progress = true;
            }
            if self.closing.is_none() && !q.handles_gone && q.carry.is_empty() {
                while self.below_high_water() {
                    match q.rx.poll_recv(cx) {
                        Poll::Ready(Some(Command::Send(frame))) => self.queue_one_way(frame),
                        Poll::Ready(Some(Command::Call(frame, reply, stamp))) => {
                            if take(stamp.as_ref()) {
                                self.queue_call(frame, reply)
                            }
                        }
                        Poll::Ready(None) => {
                            q.handles_gone = true;
                            break;
                        }
                        Poll::Pending => break,
                    }
                    progress = true;
                }
            }

            // Stop reading while replies we owe (PONGs) pile up: a peer
            // that does not read cannot grow us. The idle clock keeps
            // running then, and every write the peer takes counts as a sign
            // of life (a peer that neither sends nor reads is idle).
            if self.may_read() {
                self.proto.set_reading(Reading::Open, now);
                match self.read(cx, now, q) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(end)) => return Poll::Ready(end),
                    Poll::Pending => {}
                }
            } else {
                self.proto.set_reading(Reading::BlockedOnPeer, now);
            }

            let flushed = match self.transport.poll_write(cx) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(e)) => return Poll::Ready(LinkEnd::Lost(e.to_string())),
                Poll::Pending => false,
            };
            let written = self.transport.take_written();
            if written > 0 {
                self.proto.on_sent(now);
                self.written_bytes += written as u64;
                while self
                    .unwritten
                    .front()
                    .is_some_and(|(end, _)| *end <= self.written_bytes)
                {
                    self.unwritten.pop_front();
                }
                progress = true;
            }
            if let Some(linger) = self.closing {
                if flushed {
                    let _ = self.transport.poll_shutdown(cx);
                    return Poll::Ready(LinkEnd::Closed);
                }
                if linger.is_some_and(|deadline| deadline <= now) {
                    tracing::debug!("close: queued bytes not written in time, dropped");
                    return Poll::Ready(LinkEnd::Closed);
                }
            }

            let linger = self.closing.flatten();
            let deadline = match (self.proto.next_deadline(), linger) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(deadline) = deadline {
                if deadline <= now {
                    match self.proto.on_timeout(now) {
                        Some(Expired::Heartbeat) => self.queue(Frame::heartbeat()),
                        Some(Expired::Idle) => {
                            return Poll::Ready(LinkEnd::Lost(
                                "server silent for the idle timeout".into(),
                            ))
                        }
                        Some(_) | None => {}
                    }
                    progress = true;
                } else {
                    progress |= self.alarm.poll_at(deadline, cx);
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Closes the outbox and writes what it holds: one-way frames sent
    /// before the close go out; calls not yet written fail unsent; then
    /// DISCONNECT.
    fn begin_close(&mut self, q: &mut Queue, now: Instant) {
        // The reason first: a sender the closed outbox refuses learns why.
        let _ = q.shared.stop_reason.set(closed_reason(&q.shared));
        q.rx.close();
        let not_sent = || ClientError::Closed("the client closed before the call was sent".into());
        for held in q.carry.drain(..) {
            match held {
                Held::Resend(frame, _) => self.queue_one_way(frame),
                Held::Call(_, reply, _) => {
                    let _ = reply.send(Err(not_sent()));
                }
            }
        }
        while let Ok(command) = q.rx.try_recv() {
            match command {
                Command::Send(frame) => self.queue_one_way(frame),
                Command::Call(_, reply, _) => {
                    let _ = reply.send(Err(not_sent()));
                }
            }
        }
        self.queue(Frame::disconnect("client closed"));
        self.closing = Some(self.close_linger.and_then(|t| now.checked_add(t)));
    }

    /// Reads and dispatches frames until the transport has nothing more or
    /// the write queue reaches twice its high-water mark.
    fn read(
        &mut self,
        cx: &mut Context<'_>,
        now: Instant,
        q: &mut Queue,
    ) -> Poll<Result<(), LinkEnd>> {
        let mut progress = false;
        while self.may_read() {
            let frame = match self.transport.poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(Ok(Some(frame))) => frame,
                Poll::Ready(Ok(None)) => {
                    let why = match self.last_error.take() {
                        Some(error) => format!("closed by server after ERROR \"{error}\""),
                        None => "closed by server".into(),
                    };
                    return Poll::Ready(Err(LinkEnd::Lost(why)));
                }
                Poll::Ready(Err(ReadError::Codec(e))) => {
                    let reason = e.to_string();
                    self.queue(Frame::error(reason.clone()));
                    // Best effort: the error frame may not get out.
                    let _ = self.transport.poll_write(cx);
                    return Poll::Ready(Err(LinkEnd::Lost(format!(
                        "protocol violation by server: {reason}"
                    ))));
                }
                Poll::Ready(Err(ReadError::Reset(why))) => {
                    return Poll::Ready(Err(LinkEnd::Lost(why)))
                }
            };
            progress = true;
            let kind = frame.kind();
            let request_id = frame.request_id();
            // One lookup per answer: the call is taken out at once.
            let call = request_id.and_then(|id| self.calls.remove(&id).map(|reply| (id, reply)));
            match self.proto.on_frame(frame, now) {
                Inbound::Deliver(frame) | Inbound::Pong(frame) => match call {
                    Some((_, reply)) => {
                        let _ = reply.send(Ok(frame));
                    }
                    None if kind == Kind::PONG => {}
                    // Pushes are uncorrelated: a request id that matches no
                    // pending call is a late answer to an abandoned call.
                    None if request_id.is_some() => late_answer(request_id, kind),
                    None => q.push(frame),
                },
                Inbound::PeerError(frame) => {
                    let reason = PeerText(frame.payload()).to_string();
                    match call {
                        Some((_, reply)) => {
                            let _ = reply.send(Err(ClientError::Remote(reason)));
                        }
                        None if request_id.is_some() => late_answer(request_id, kind),
                        None => {
                            // Kept to explain a close that may follow
                            // (`server full`, a protocol violation).
                            self.last_error = Some(reason);
                            q.push(frame);
                        }
                    }
                }
                // Any other frame carrying the id of a pending call is that
                // call's answer, of a kind that cannot answer: the call
                // fails instead of waiting for ever, and the frame is not
                // acted on (no PONG, no ERROR back).
                Inbound::Reply(_) | Inbound::Nothing | Inbound::Hello { .. } if call.is_some() => {
                    if let Some((id, reply)) = call {
                        let why = format!("call {id} answered with a {kind} frame");
                        let _ = reply.send(Err(ClientError::Protocol(why)));
                    }
                }
                Inbound::Reply(frame) => self.queue(frame),
                Inbound::PeerDisconnect(why) => {
                    self.put_back(call);
                    return Poll::Ready(Err(LinkEnd::Lost(format!(
                        "server disconnected: {}",
                        PeerText(why.as_bytes())
                    ))));
                }
                Inbound::Violation(reason) => {
                    self.put_back(call);
                    self.queue(Frame::error(reason.clone()));
                    let _ = self.transport.poll_write(cx);
                    return Poll::Ready(Err(LinkEnd::Lost(format!(
                        "protocol violation by server: {reason}"
                    ))));
                }
                Inbound::Hello { .. } | Inbound::Nothing => {}
            }
        }
        if progress {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// A call taken out for a frame that ends the connection instead of
    /// answering it goes back, to fail with the others.
    fn put_back(&mut self, call: Option<(u32, Reply)>) {
        if let Some((id, reply)) = call {
            self.calls.insert(id, reply);
        }
    }

    /// Queues a frame of the client's own (HEARTBEAT, PONG, ERROR,
    /// DISCONNECT).
    fn queue(&mut self, frame: Frame) {
        let len = frame.wire_len() as u64;
        if let Err(e) = self.transport.queue(frame) {
            tracing::warn!(error = %e, "frame not sent");
            return;
        }
        self.queued_bytes += len;
    }

    fn queue_one_way(&mut self, frame: Frame) {
        let len = frame.wire_len() as u64;
        if let Err(e) = self.transport.queue(frame.clone()) {
            // `Client::send` refuses frames over the maximum size; this is
            // a wire transform refusing one.
            tracing::warn!(len, error = %e, "one-way frame could not be encoded, dropped");
            return;
        }
        self.queued_bytes += len;
        self.unwritten.push_back((self.queued_bytes, frame));
    }

    fn queue_call(&mut self, mut frame: Frame, reply: Reply) {
        if reply.is_closed() {
            return; // the caller gave up before the call was sent
        }
        let id = loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(HANDSHAKE_ID + 1);
            if !self.calls.contains_key(&id) {
                break id;
            }
        };
        frame.set_request_id(Some(id));
        let len = frame.wire_len() as u64;
        match self.transport.queue(frame) {
            Ok(()) => {
                self.queued_bytes += len;
                self.calls.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(ClientError::Encode(e.into())));
            }
        }
    }

    /// One-way frames not fully written go back to the front of `carry`
    /// for the next connection.
    fn give_back(&mut self, carry: &mut VecDeque<Held>) {
        for (_, frame) in self.unwritten.drain(..).rev() {
            carry.push_front(Held::Resend(frame, false));
        }
    }

    /// Fails every call written on this connection and not yet answered.
    fn fail_calls(&mut self, why: &str) {
        for (_, reply) in self.calls.drain() {
            let _ = reply.send(Err(ClientError::ConnectionLost(format!(
                "connection dropped before the answer arrived ({why})"
            ))));
        }
    }
}
