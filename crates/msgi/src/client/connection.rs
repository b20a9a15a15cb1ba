//! The task that owns the connection: [`ClientTask`] drives one
//! [`msgi_proto::client::Connection`] (every client rule lives there) over
//! successive transports. It only does I/O: it opens transports with the
//! connector (reconnect backoff), reads and writes frames, arms one timer,
//! moves work from the outbox into the machine, and hands the machine's
//! events to callers and to the incoming queue.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use super::builder::{finite, ClientBuilder};
use super::connector::{Connecting, Connector};
use super::{ClientError, CloseCause, DoneGuard, Shared, Status};
use crate::transport::{now, Alarm, ByteStream as Transport, ReadError};
use msgi_proto::client::{
    AckWindow, CallError, Caller, Config, Connection, ConnectionError, Event, Phase, Violation,
    DEFAULT_MAX_EVENTS, MIN_HIGH_WATER,
};
use msgi_proto::text::PeerText;
use msgi_proto::{CodecError, ConfigError, Frame, Framing, MakeFraming, Side};

/// Where a call's answer goes; abandoned once its caller dropped the
/// receiving end.
pub(super) struct Reply {
    tx: oneshot::Sender<Result<Frame, ClientError>>,
    /// An ERROR answer is the answer (for [`Forward`](super::Forward)),
    /// not a [`ClientError::Remote`].
    raw: bool,
    /// Sent again after a lost connection ([`Client::call_idempotent`](super::Client::call_idempotent)).
    idempotent: bool,
}

impl Reply {
    pub(super) fn new(tx: oneshot::Sender<Result<Frame, ClientError>>, raw: bool) -> Self {
        Reply {
            tx,
            raw,
            idempotent: false,
        }
    }

    pub(super) fn idempotent(mut self, on: bool) -> Self {
        self.idempotent = on;
        self
    }

    fn send(self, result: Result<Frame, ClientError>) {
        let _ = self.tx.send(result);
    }
}

impl Caller for Reply {
    fn is_abandoned(&self) -> bool {
        self.tx.is_closed()
    }

    fn is_idempotent(&self) -> bool {
        self.idempotent
    }
}

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

/// The machine's settings from the builder's, checked.
pub(super) fn machine_config<C: MakeFraming + Clone + fmt::Debug>(
    cfg: &ClientBuilder<C>,
) -> Result<Config, ConfigError> {
    Config::builder()
        .timers(cfg.timers())
        .binary(cfg.framing.codec().is_binary())
        .client_id(cfg.client_id.clone())
        .early_frames(cfg.incoming)
        .early_bytes(cfg.incoming_bytes)
        .high_water(cfg.framing.codec().max_frame_size().max(MIN_HIGH_WATER))
        .max_events(DEFAULT_MAX_EVENTS)
        .held_sends(cfg.outbox)
        .queue_timeout(finite(cfg.queue_timeout))
        .close_linger(finite(Some(cfg.connect_timeout)))
        .acknowledged(cfg.acknowledged.map(|(frames, bytes)| AckWindow {
            frames,
            bytes,
            // This run of the client: never 0.
            epoch: fastrand::u64(1..),
        }))
        .recover_pushes(cfg.recover_pushes)
        .build()
}

/// Frames read in one go before events are drained and replies encoded.
const FRAMES_PER_POLL: usize = 64;

/// Why the client closes gracefully.
fn closed_reason(shared: &Shared) -> ClientError {
    if shared.close_requested.is_cancelled() {
        ClientError::Closed(CloseCause::Application)
    } else {
        ClientError::Closed(CloseCause::HandlesDropped)
    }
}

/// What one run of [`ClientTask::poll`] ended with.
pub(super) enum Outcome {
    /// The first connection is ready (only while `first`).
    Connected,
    /// The first connection failed: the connect's error.
    Failed(ClientError),
    /// The client stopped for good, and why.
    Stopped(ClientError),
}

/// A transport being opened: the connector's future and the connect
/// deadline, which also bounds the handshake.
struct Opening<T> {
    /// `None` until the connector is ready.
    future: Option<Connecting<T>>,
    deadline: Option<Instant>,
}

pub(super) struct ClientTask<T, C: MakeFraming> {
    cfg: ClientBuilder<C>,
    connector: Connector<T>,
    conn: Connection<Reply>,
    /// This connection's framing, made for it (`MakeFraming::make_framing`).
    transport: Option<Transport<T, C::Framing>>,
    opening: Option<Opening<T>>,
    /// When to try connecting again.
    retry_at: Option<Instant>,
    /// Attempts since the last connection was lost.
    attempt: u32,
    /// Until the first connection is ready: its failure is the connect's.
    first: bool,
    /// The transport in use reached WELCOME.
    was_open: bool,
    /// Why the last open connection was lost.
    last_lost: Option<ConnectionError>,
    /// The application's close was passed to the machine.
    close_seen: bool,
    /// Why the client stops, once decided.
    reason: Option<ClientError>,
    alarm: Alarm,
    rx: mpsc::Receiver<Command>,
    incoming: mpsc::Sender<Frame>,
    incoming_bytes: usize,
    handles_gone: bool,
    /// One-way frames taken off the outbox.
    sends_taken: u64,
    shared: Arc<Shared>,
    /// Declared last: dropped after everything above.
    _done: DoneGuard,
}

impl<T, C> ClientTask<T, C>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: MakeFraming + Clone + fmt::Debug,
{
    pub(super) fn new(
        cfg: ClientBuilder<C>,
        connector: Connector<T>,
        config: Config,
        rx: mpsc::Receiver<Command>,
        incoming: mpsc::Sender<Frame>,
        shared: Arc<Shared>,
    ) -> Self {
        let now = now();
        let conn = Connection::new(config, now);
        let mut task = ClientTask {
            incoming_bytes: cfg.incoming_bytes,
            cfg,
            connector,
            conn,
            transport: None,
            opening: None,
            retry_at: None,
            attempt: 0,
            first: true,
            was_open: false,
            last_lost: None,
            close_seen: false,
            reason: None,
            alarm: Alarm::new(),
            rx,
            incoming,
            handles_gone: false,
            sends_taken: 0,
            _done: DoneGuard(shared.clone()),
            shared,
        };
        task.start_opening(now);
        task
    }

    /// Runs until the client stops for good.
    pub(super) async fn run(mut self) {
        let reason = loop {
            match std::future::poll_fn(|cx| self.poll(cx)).await {
                Outcome::Connected => continue,
                Outcome::Failed(reason) | Outcome::Stopped(reason) => break reason,
            }
        };
        self.finish(reason);
    }

    /// Runs until the first connection is ready (`Ok`) or fails.
    pub(super) async fn first_connection(&mut self) -> Result<(), ClientError> {
        match std::future::poll_fn(|cx| self.poll(cx)).await {
            Outcome::Connected => Ok(()),
            Outcome::Failed(e) | Outcome::Stopped(e) => Err(e),
        }
    }

    fn start_opening(&mut self, now: Instant) {
        self.retry_at = None;
        self.opening = Some(Opening {
            future: None,
            deadline: finite(Some(self.cfg.connect_timeout)).and_then(|t| now.checked_add(t)),
        });
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

    fn take_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Send(frame) => {
                self.sends_taken += 1;
                self.conn.send(frame, now)
            }
            Command::Call(frame, reply, stamp) => {
                if take(stamp.as_ref()) {
                    let deadline = stamp.map(|stamp| stamp.deadline);
                    self.conn.call(frame, reply, deadline, now);
                }
            }
        }
    }

    fn transmit(&mut self, now: Instant) {
        if let Some(transport) = &mut self.transport {
            self.conn
                .poll_transmit(now, |frame| encode(transport, frame));
        }
    }

    /// The next reconnect attempt after a lost connection or a failed
    /// attempt, or the end if the policy says so.
    fn schedule_attempt(&mut self, now: Instant) {
        let give_up = match self.cfg.reconnect {
            None => true,
            Some(policy) => policy.max_attempts.is_some_and(|max| self.attempt >= max),
        };
        if give_up {
            if self.cfg.reconnect.is_some() {
                tracing::debug!(attempts = self.attempt, "giving up reconnecting");
            }
            let cause = match self.last_lost.clone() {
                Some(lost) => CloseCause::Lost(lost),
                None => CloseCause::TaskEnded,
            };
            self.reason.get_or_insert(ClientError::Closed(cause));
            self.conn.abort(now);
            return;
        }
        if let Some(policy) = self.cfg.reconnect {
            let delay = policy.delay(self.attempt);
            self.attempt = self.attempt.saturating_add(1);
            self.retry_at = now.checked_add(delay);
        }
    }

    /// The error a failed first connection gives to `connect`.
    fn handshake_error(e: ConnectionError) -> ClientError {
        match e {
            ConnectionError::HandshakeRefused(why) => ClientError::Handshake(why),
            ConnectionError::HandshakeTimeout => ClientError::ConnectTimeout,
            ConnectionError::Violation(v @ Violation::TooManyBeforeWelcome { .. }) => {
                ClientError::Protocol(v)
            }
            e => ClientError::ConnectionLost(e),
        }
    }

    fn call_error(&self, e: CallError) -> ClientError {
        match e {
            CallError::Remote(error) => ClientError::Remote(PeerText(error.payload()).to_string()),
            CallError::BadAnswer { id, kind } => {
                ClientError::Protocol(Violation::BadAnswer { id, kind })
            }
            CallError::ConnectionLost(e) => ClientError::ConnectionLost(e),
            CallError::NotConnected => ClientError::NotConnected,
            CallError::Encode(e) => ClientError::Encode(e),
            CallError::NotSent => self
                .reason
                .clone()
                .or_else(|| self.shared.stop_reason.get().cloned())
                .unwrap_or(ClientError::Closed(CloseCause::Application)),
            // A cause added to the machine later: lost, with its text.
            e => ClientError::ConnectionLost(ConnectionError::Transport(e.to_string())),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        self.shared.task_waker.register(cx.waker());
        for _ in 0..32 {
            let now = now();
            let mut progress = false;

            if self.shared.abandoned.swap(false, Ordering::AcqRel) {
                // A caller dropped its answer: forget every such call, so
                // abandoned calls never hold a place.
                self.conn.handle_abandoned(now);
                progress = true;
            }
            if !self.close_seen && self.shared.close_requested.is_cancelled() {
                self.close_seen = true;
                // The reason first: a sender the closed outbox refuses
                // learns why.
                let _ = self.shared.stop_reason.set(closed_reason(&self.shared));
                self.rx.close();
                // What the outbox holds: one-way frames go before the
                // DISCONNECT, calls fail unsent.
                while let Ok(command) = self.rx.try_recv() {
                    self.take_command(command, now);
                }
                self.conn.close(now);
                self.opening = None;
                self.retry_at = None;
                progress = true;
            }

            // Work from the outbox, as far as the machine takes it.
            while !self.handles_gone && self.conn.accepts_work() {
                match self.rx.poll_recv(cx) {
                    Poll::Ready(Some(command)) => {
                        self.take_command(command, now);
                        self.transmit(now);
                    }
                    Poll::Ready(None) => {
                        self.handles_gone = true;
                        self.conn.handle_handles_gone(now);
                    }
                    Poll::Pending => break,
                }
                progress = true;
            }

            if let Some(opening) = &mut self.opening {
                let polled = match &mut opening.future {
                    Some(future) => future.as_mut().poll(cx),
                    None => match self.connector.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            let mut future = self.connector.open();
                            let polled = future.as_mut().poll(cx);
                            opening.future = Some(future);
                            polled
                        }
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    },
                };
                let opened = match polled {
                    Poll::Ready(opened) => Some(opened),
                    Poll::Pending if opening.deadline.is_some_and(|d| d <= now) => {
                        Some(Err(ClientError::ConnectTimeout))
                    }
                    Poll::Pending => None,
                };
                if let Some(opened) = opened {
                    let deadline = opening.deadline;
                    self.opening = None;
                    progress = true;
                    match opened {
                        Ok((io, mut info)) => {
                            // Fresh per-session state for every connection.
                            let mut framing = self.cfg.framing.make_framing(Side::Client);
                            // Keys from the connector's handshake (pre-shared key).
                            if let Some(keys) = info.remove::<msgi_proto::SessionKeys>() {
                                framing.set_session_keys(&keys);
                            }
                            *self
                                .shared
                                .connect_info
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner) = Arc::new(info);
                            self.transport = Some(Transport::new(io, framing));
                            self.conn.handle_connected(now, deadline);
                        }
                        Err(e) if self.first => return Poll::Ready(Outcome::Failed(e)),
                        Err(e) => {
                            tracing::debug!(error = %e, attempt = self.attempt, "reconnect failed");
                            self.schedule_attempt(now);
                        }
                    }
                }
            }
            if self.retry_at.is_some_and(|at| at <= now) && self.opening.is_none() {
                self.start_opening(now);
                progress = true;
            }

            if self.transport.is_some() {
                progress |= self.drive_transport(cx, now);
            }

            if self.conn.poll_timeout().is_some_and(|d| d <= now) {
                self.conn.handle_timeout(now);
                progress = true;
            }

            if self.cfg.recover_pushes {
                // Before the pushes are handed on: a push read from the
                // incoming stream finds these as its RESUMED left them.
                self.shared
                    .recovered
                    .store(self.conn.recovered(), Ordering::Release);
                self.shared
                    .missed_pushes
                    .store(self.conn.missed_pushes(), Ordering::Release);
                self.shared
                    .fresh_resumes
                    .store(self.conn.fresh_resumes(), Ordering::Release);
            }
            while let Some(event) = self.conn.poll_event() {
                progress = true;
                if let Some(outcome) = self.on_event(event, cx, now) {
                    return Poll::Ready(outcome);
                }
            }
            if self.cfg.acknowledged.is_some() {
                let now_acks = (
                    self.conn.acknowledged(),
                    self.conn.unacknowledged(),
                    self.sends_taken,
                );
                self.shared.acks.send_if_modified(|acks| {
                    let changed = *acks != now_acks;
                    *acks = now_acks;
                    changed
                });
            }

            let deadline = [
                self.conn.poll_timeout(),
                self.retry_at,
                self.opening.as_ref().and_then(|o| o.deadline),
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(deadline) = deadline {
                progress |= self.alarm.poll_at(deadline, cx);
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes what the machine has, reads what the server sent; true if
    /// anything moved.
    fn drive_transport(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut progress = false;
        self.transmit(now);
        let Some(transport) = &mut self.transport else {
            return false;
        };
        // At most FRAMES_PER_POLL frames before the events they made are
        // drained and the replies they owe are encoded (the machine stops
        // reading earlier when either queue reaches its bound).
        let mut frames = 0;
        while frames < FRAMES_PER_POLL && self.conn.may_read() {
            frames += 1;
            match transport.poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(Ok(Some(frame))) => self.conn.handle_frame(frame, now),
                Poll::Ready(Ok(None)) => self.conn.handle_end_of_stream(now),
                Poll::Ready(Err(ReadError::Codec(e))) => self.conn.handle_decode_error(e, now),
                Poll::Ready(Err(ReadError::Reset(why))) => self
                    .conn
                    .handle_connection_lost(ConnectionError::Transport(why.to_string()), now),
            }
            progress = true;
        }
        if !matches!(
            self.conn.phase(),
            Phase::Handshaking | Phase::Open | Phase::Closing
        ) {
            // Lost while reading: the event says what to do.
            return progress;
        }
        // Replies owed (PONGs) and what reading made due.
        self.conn
            .poll_transmit(now, |frame| encode(transport, frame));
        let flushed = match transport.poll_write(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(e)) => {
                self.conn
                    .handle_connection_lost(ConnectionError::Transport(e.to_string()), now);
                false
            }
            Poll::Pending => false,
        };
        let written = transport.take_written();
        if written > 0 {
            self.conn.handle_written(written, now);
            progress = true;
        }
        if flushed {
            self.conn.handle_flushed(now);
        }
        progress
    }

    fn on_event(
        &mut self,
        event: Event<Reply>,
        cx: &mut Context<'_>,
        now: Instant,
    ) -> Option<Outcome> {
        match event {
            Event::Connected => {
                self.was_open = true;
                self.attempt = 0;
                self.shared.set_status(Status::Connected);
                if std::mem::take(&mut self.first) {
                    return Some(Outcome::Connected);
                }
            }
            Event::Push(frame) => self.push(frame),
            Event::Answer(reply, result) => {
                let result = match result {
                    Err(CallError::Remote(error)) if reply.raw => Ok(error),
                    result => result.map_err(|e| self.call_error(e)),
                };
                reply.send(result);
            }
            Event::LateAnswer { id, kind } => {
                tracing::debug!(id, %kind, "answer to no pending call dropped");
            }
            Event::Unsendable(error) => {
                // `Client::send` refuses frames over the maximum size; this
                // is a wire transform refusing one.
                tracing::warn!(error = %error, "one-way frame could not be encoded, dropped");
            }
            Event::Lost(error) => {
                if let Some(mut transport) = self.transport.take() {
                    // Best effort: an ERROR naming a violation.
                    self.conn
                        .poll_transmit(now, |frame| encode(&mut transport, frame));
                    let _ = transport.poll_write(cx);
                }
                let was_open = std::mem::take(&mut self.was_open);
                if was_open {
                    self.shared.set_status(Status::Connecting);
                }
                if self.first {
                    return Some(Outcome::Failed(Self::handshake_error(error)));
                }
                if self.conn.phase() == Phase::Closed {
                    return None;
                }
                if was_open {
                    tracing::debug!(reason = %error, "connection lost");
                    self.last_lost = Some(error);
                    self.attempt = 0;
                } else {
                    tracing::debug!(reason = %error, "handshake failed while reconnecting");
                }
                self.schedule_attempt(now);
            }
            Event::Closed => {
                if let Some(transport) = &mut self.transport {
                    let _ = transport.poll_shutdown(cx);
                }
                self.transport = None;
                self.opening = None;
                let reason = self
                    .reason
                    .take()
                    .unwrap_or_else(|| closed_reason(&self.shared));
                return Some(Outcome::Stopped(reason));
            }
            // An event added to the machine later, which this driver does
            // not act on yet.
            _ => tracing::debug!("client event ignored"),
        }
        None
    }

    /// Stops for good: returns unsent one-way frames to the application and
    /// fails everything else still queued.
    fn finish(mut self, reason: ClientError) {
        let shared = self.shared.clone();
        let _ = shared.stop_reason.set(reason.clone());
        self.reason = Some(reason.clone());
        shared.calls.close();
        self.rx.close();
        self.conn.abort(now());
        while let Some(event) = self.conn.poll_event() {
            if let Event::Answer(reply, result) = event {
                let result = result.map_err(|e| self.call_error(e));
                reply.send(result);
            }
        }
        let mut unsent = self.conn.take_unsent();
        while let Ok(command) = self.rx.try_recv() {
            match command {
                Command::Send(frame) => unsent.push(frame),
                Command::Call(_, reply, _) => reply.send(Err(reason.clone())),
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

/// Appends `frame` to the transport's write queue; the bytes it took.
fn encode<T, C>(transport: &mut Transport<T, C>, frame: Frame) -> Result<usize, CodecError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    C: Framing,
{
    let before = transport.pending_write();
    transport.queue(frame)?;
    Ok(transport.pending_write().saturating_sub(before))
}
