//! Acknowledged delivery, the server's part: [`AckLayer`] wraps the
//! application's service and keeps, per client id, the highest sequence
//! number handed to it ([`AckStore`]); see docs/PROTOCOL.md, section 3,
//! *Acknowledged delivery*, and docs/RELIABILITY.md.
//!
//! It sees every frame the session hands to the application (it must be the
//! outermost layer: a layer outside it that drops frames would shift the
//! numbering). It answers RESUME itself, numbers the uncorrelated frames of
//! a session that resumed, drops those already handed (duplicates after a
//! reconnect) and those of a session that another one of the same client
//! id replaced, and pushes cumulative ACK frames through the session: at
//! once every [`ack_every`](AckStoreBuilder::ack_every) frames and while
//! the session is closing, otherwise [`ack_delay`](AckStoreBuilder::ack_delay)
//! after the first frame not acknowledged. The driver and the session rules
//! are not involved; a server without this layer answers RESUME as its
//! application does (the client then reports the refusal).
//!
//! Push recovery (server to client, off by default:
//! [`AckStoreBuilder::recover_pushes`]): [`AckStore::push`] numbers a push
//! for a client id, keeps it until the client says it has it (`PUSHED`),
//! and sends it at once when the client is connected; a client that comes
//! back within the grace period gets what it has not acknowledged, in
//! order, after its RESUMED. By default (and for a client id that did not
//! ask) a push to a client id that is not connected is refused to the
//! pusher ([`PushError`], and `Registry::send_to_client`'s `SendError`).

use std::collections::{HashMap, VecDeque};
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::session::{Session, SessionId};
use msgi_proto::delivery::{self, PushResume, PUSHED_PREFIX, RESUME_PREFIX};
use msgi_proto::{ConfigError, Frame, Kind};

/// The per-client-id numbers of acknowledged delivery, bounded: at most
/// [`max_clients`](AckStoreBuilder::max_clients) client ids, each kept at
/// least [`keep_for`](AckStoreBuilder::keep_for) after its last frame and
/// forgotten after that when room is needed. Cloning shares it: give the
/// same store to a server that replaces another in the same process, and
/// a client reconnecting to it loses and repeats nothing.
#[derive(Clone)]
pub struct AckStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    clients: Mutex<HashMap<Arc<str>, Arc<Mutex<ClientState>>>>,
    max_clients: usize,
    keep_for: Duration,
    ack_every: u64,
    ack_delay: Duration,
    pushes: Option<PushLimits>,
    /// Client ids with a [`Mailbox`] (under the `clients` lock).
    mailboxes: std::sync::atomic::AtomicUsize,
    /// Told when a refused push may be taken now: a client resumed with
    /// push recovery, or said it has pushes ([`AckStore::pushes_changed`]).
    pushes_changed: tokio::sync::Notify,
}

/// Push recovery's bounds ([`AckStoreBuilder::recover_pushes`]).
#[derive(Debug, Clone, Copy)]
struct PushLimits {
    frames: usize,
    bytes: usize,
    grace: Duration,
    clients: usize,
}

/// The pushes kept for one client id.
struct Mailbox {
    /// The number of the next push.
    next: u64,
    /// PUSH frames the client has not acknowledged, numbered up to `next - 1`.
    kept: VecDeque<Frame>,
    bytes: usize,
    /// Pushes accepted and then dropped at the end of the grace period,
    /// since the client's last RESUME (a refused push is the pusher's to
    /// know: it was told).
    missed: u64,
    /// The owner session asked for push recovery: pushes go to it.
    live: bool,
    /// When a push first found the client away (cleared by RESUME).
    away_since: Option<Instant>,
    /// The grace period passed: nothing kept until the client's next RESUME.
    expired: bool,
}

impl Mailbox {
    fn new() -> Mailbox {
        Mailbox {
            next: 1,
            kept: VecDeque::new(),
            bytes: 0,
            missed: 0,
            live: false,
            away_since: None,
            expired: false,
        }
    }

    /// Forgets the pushes up to `n` (the client has them).
    fn acknowledge(&mut self, n: u64) {
        while self.next - self.kept.len() as u64 <= n {
            let Some(frame) = self.kept.pop_front() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(frame.wire_len());
        }
    }

    /// Drops what is kept: the grace period passed.
    fn expire(&mut self) {
        self.missed = self.missed.saturating_add(self.kept.len() as u64);
        self.kept = VecDeque::new();
        self.bytes = 0;
        self.expired = true;
    }
}

/// Why [`AckStore::push`] refused a push: it is lost, and the pusher is
/// told so (nothing was kept or sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The store keeps no pushes (no [`AckStoreBuilder::recover_pushes`]).
    #[error("push recovery is off")]
    Off,
    /// No client with that id has resumed acknowledged delivery with push
    /// recovery here (or its entry was forgotten).
    #[error("unknown client id (no push recovery for it)")]
    UnknownClient,
    /// The client id's buffer is full (frames or bytes): the client is
    /// behind or away. The pusher may push it again later.
    #[error("the client's push buffer is full")]
    Full,
    /// The client has been away longer than the grace period: what was
    /// kept for it was dropped (counted as missed) and nothing more is
    /// kept until it comes back.
    #[error("the client has been away longer than the grace period")]
    Expired,
    /// Only uncorrelated DATA, CONTROL and application-kind frames without
    /// flags are pushed.
    #[error("only uncorrelated DATA, CONTROL or application frames can be pushed")]
    NotPushable,
    /// The client id's push numbers ran out (its RESUME said it had a push
    /// numbered near 2^64): nothing more can be numbered for it.
    #[error("the client's push numbers ran out")]
    NumbersExhausted,
}

impl std::fmt::Debug for AckStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckStore")
            .field("clients", &self.clients())
            .field("max_clients", &self.inner.max_clients)
            .finish_non_exhaustive()
    }
}

/// What the server keeps for one client id.
struct ClientState {
    /// The client's run (RESUME's epoch).
    epoch: u64,
    /// The highest number handed to the application.
    last: u64,
    /// The highest number acknowledged to the client.
    acked: u64,
    /// The session that resumed last: only its frames are numbered.
    owner: SessionId,
    session: Session,
    /// The number of the owner's next frame.
    next: u64,
    touched: Instant,
    flush_scheduled: bool,
    /// Pushes kept for the client id, when it asked for push recovery.
    mailbox: Option<Mailbox>,
    /// Its mailbox's place was given to another client id (it was away past
    /// the grace period): what the next mailbox starts from. Boxed: rare.
    lost_place: Option<Box<LostPlace>>,
}

/// What a client id whose place for pushes was given away is told when it
/// has one again: the pushes accepted for it and dropped (`missed`), and
/// the number after the last one made (never reused).
struct LostPlace {
    next: u64,
    missed: u64,
}

/// Settings of an [`AckStore`], checked by [`build`](AckStoreBuilder::build).
#[derive(Debug, Clone)]
pub struct AckStoreBuilder {
    max_clients: usize,
    keep_for: Duration,
    ack_every: u64,
    ack_delay: Duration,
    pushes: Option<PushLimits>,
    /// The session outbox of the servers the store serves (frames, bytes).
    outbox: (usize, usize),
}

impl Default for AckStoreBuilder {
    fn default() -> Self {
        AckStoreBuilder {
            max_clients: 100_000,
            keep_for: Duration::from_secs(300),
            ack_every: 64,
            ack_delay: Duration::from_millis(5),
            pushes: None,
            outbox: (
                crate::server::DEFAULT_OUTBOX_CAPACITY,
                crate::server::DEFAULT_OUTBOX_BYTES,
            ),
        }
    }
}

impl AckStoreBuilder {
    /// Client ids kept, at most (default 100,000; at least 1). A RESUME
    /// from a new client id when the store is full and no entry is older
    /// than `keep_for` is answered with ERROR
    /// `acknowledged delivery unavailable: too many clients`.
    pub fn max_clients(mut self, n: usize) -> Self {
        self.max_clients = n;
        self
    }

    /// How long a client id's numbers are kept at least after its last
    /// frame (default 5 minutes): a client that reconnects within it loses
    /// and repeats nothing.
    pub fn keep_for(mut self, d: Duration) -> Self {
        self.keep_for = d;
        self
    }

    /// Frames handed between two ACKs sent at once (default 64; at least 1).
    pub fn ack_every(mut self, frames: u64) -> Self {
        self.ack_every = frames;
        self
    }

    /// How long the ACK of fewer frames waits (default 5 ms; above zero).
    pub fn ack_delay(mut self, d: Duration) -> Self {
        self.ack_delay = d;
        self
    }

    /// Push recovery (off by default: a push to a client id that is not
    /// connected is refused to the pusher). On: [`AckStore::push`] keeps,
    /// per client id that asked for it (RESUME with a third number), the
    /// pushes it has not acknowledged, at most `frames` frames and `bytes`
    /// wire bytes (a push into an empty buffer is always taken; beyond
    /// either, the push is refused with [`PushError::Full`], told to the
    /// pusher, not counted as missed), for `clients` client ids at most (a client that asks when
    /// all are taken, none of them away for longer than `grace`, is
    /// answered without push recovery; one away for longer than `grace`
    /// loses its place to it: what was kept for it is counted as missed
    /// and told, with `fresh`, when it has a place again). A client away for longer than
    /// `grace` (counted from the first push that finds it away) loses what
    /// was kept (counted as missed) and later pushes are refused
    /// ([`PushError::Expired`]) until it comes back. At most
    /// `clients * bytes` bytes of pushes in all. `frames` and `bytes` must
    /// stay below the session outbox ([`session_outbox`](AckStoreBuilder::session_outbox);
    /// checked by [`build`](AckStoreBuilder::build)).
    pub fn recover_pushes(
        mut self,
        frames: usize,
        bytes: usize,
        grace: Duration,
        clients: usize,
    ) -> Self {
        self.pushes = Some(PushLimits {
            frames,
            bytes,
            grace,
            clients,
        });
        self
    }

    /// The session outbox of the servers this store is used with, as
    /// given to their [`ServerBuilder::outbox_capacity`](crate::ServerBuilder::outbox_capacity)
    /// and [`outbox_bytes`](crate::ServerBuilder::outbox_bytes) (default:
    /// the server's defaults, 1024 frames and 4 MiB). Push recovery's
    /// buffer must stay below it: see [`build`](AckStoreBuilder::build).
    pub fn session_outbox(mut self, frames: usize, bytes: usize) -> Self {
        self.outbox = (frames, bytes);
        self
    }

    /// Checks the settings.
    ///
    /// A reconnecting client is sent every kept push at once, into its
    /// session's outbox, where a push beyond the bound closes the session
    /// as a slow consumer: so push recovery's `frames` must be below the
    /// outbox's frames, and its `bytes` plus 4 per frame below the
    /// outbox's bytes (the outbox counts each frame with 14 header bytes,
    /// the buffer a PUSH with its 10), leaving room for the ACK frames and
    /// the application's other pushes.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming a zero `max_clients`, `ack_every` or
    /// `ack_delay`, a zero bound of `recover_pushes` or of
    /// `session_outbox`, or a push buffer not below the session outbox
    /// (`recover_pushes`).
    pub fn build(self) -> Result<AckStore, ConfigError> {
        let (outbox_frames, outbox_bytes) = self.outbox;
        if outbox_frames == 0 || outbox_bytes == 0 {
            return Err(ConfigError::new("session_outbox", "must be above zero"));
        }
        if let Some(p) = &self.pushes {
            if p.frames == 0 || p.bytes == 0 || p.clients == 0 || p.grace.is_zero() {
                return Err(ConfigError::new(
                    "recover_pushes",
                    "frames, bytes, clients and grace must be above zero",
                ));
            }
            if p.frames >= outbox_frames {
                return Err(ConfigError::new(
                    "recover_pushes",
                    format!(
                        "{} frames kept must be below the session outbox's {outbox_frames} \
                         (a reconnect sends them all at once)",
                        p.frames
                    ),
                ));
            }
            if p.bytes.saturating_add(p.frames.saturating_mul(4)) >= outbox_bytes {
                return Err(ConfigError::new(
                    "recover_pushes",
                    format!(
                        "{} bytes kept, plus 4 per frame, must be below the session \
                         outbox's {outbox_bytes} (a reconnect sends them all at once)",
                        p.bytes
                    ),
                ));
            }
        }
        if self.max_clients == 0 {
            return Err(ConfigError::new("max_clients", "must be at least 1"));
        }
        if self.ack_every == 0 {
            return Err(ConfigError::new("ack_every", "must be at least 1"));
        }
        if self.ack_delay.is_zero() {
            return Err(ConfigError::new("ack_delay", "must be above zero"));
        }
        Ok(AckStore {
            inner: Arc::new(StoreInner {
                clients: Mutex::new(HashMap::new()),
                max_clients: self.max_clients,
                keep_for: self.keep_for,
                ack_every: self.ack_every,
                ack_delay: self.ack_delay,
                pushes: self.pushes,
                mailboxes: std::sync::atomic::AtomicUsize::new(0),
                pushes_changed: tokio::sync::Notify::new(),
            }),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The link from a session to its client id's numbers (session data).
#[derive(Clone)]
struct AckLink(Arc<Mutex<ClientState>>);

impl AckStore {
    /// A store with the default settings.
    pub fn new() -> AckStore {
        AckStore::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }

    /// Settings for a store.
    pub fn builder() -> AckStoreBuilder {
        AckStoreBuilder::default()
    }

    /// Client ids kept.
    pub fn clients(&self) -> usize {
        lock(&self.inner.clients).len()
    }

    /// The highest number of `client_id` handed to the application, if
    /// the store knows it.
    pub fn last_handed(&self, client_id: &str) -> Option<u64> {
        let state = lock(&self.inner.clients).get(client_id).cloned()?;
        let last = lock(&state).last;
        Some(last)
    }

    /// Pushes kept for `client_id` and not yet acknowledged by it, if it
    /// has push recovery here.
    pub fn pushes_kept(&self, client_id: &str) -> Option<usize> {
        let state = lock(&self.inner.clients).get(client_id).cloned()?;
        let s = lock(&state);
        s.mailbox.as_ref().map(|m| m.kept.len())
    }

    /// Answers a RESUME from `session`.
    fn resume(&self, session: &Session, payload: &[u8]) -> Frame {
        let Some((epoch, first, pushes)) = delivery::parse_resume_with_pushes(payload) else {
            return Frame::error("bad RESUME: expected RESUME <epoch> <first> [<pushes>]");
        };
        let Some(client_id) = session.announced_client_id() else {
            return Frame::error("acknowledged delivery needs a client id (HELLO first)");
        };
        let now = Instant::now();
        let mut clients = lock(&self.inner.clients);
        let state = match clients.get(&client_id) {
            Some(state) => state.clone(),
            None => {
                if clients.len() >= self.inner.max_clients {
                    let keep_for = self.inner.keep_for;
                    let mailboxes = &self.inner.mailboxes;
                    clients.retain(|_, s| {
                        let s = lock(s);
                        let keep = now.saturating_duration_since(s.touched) < keep_for
                            || !s.session.is_closing();
                        if !keep && s.mailbox.is_some() {
                            mailboxes.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        keep
                    });
                }
                if clients.len() >= self.inner.max_clients {
                    return Frame::error("acknowledged delivery unavailable: too many clients");
                }
                let state = Arc::new(Mutex::new(ClientState {
                    epoch,
                    last: first - 1,
                    acked: first - 1,
                    owner: session.id(),
                    session: session.clone(),
                    next: first,
                    touched: now,
                    flush_scheduled: false,
                    mailbox: None,
                    lost_place: None,
                }));
                clients.insert(client_id, state.clone());
                state
            }
        };
        let kept_pushes = match (pushes, &self.inner.pushes) {
            (Some(_), Some(limits)) => {
                let has = lock(&state).mailbox.is_some();
                has || self.make_room_for_mailbox(&clients, limits, now)
            }
            _ => false,
        };
        drop(clients);
        let (last, answer_pushes) = {
            let mut s = lock(&state);
            s.last = if s.epoch == epoch {
                s.last.max(first - 1)
            } else {
                first - 1
            };
            s.epoch = epoch;
            s.acked = s.last;
            s.owner = session.id();
            s.session = session.clone();
            s.next = s.last + 1;
            s.touched = now;
            // A flush scheduled for the old session may never run (its
            // runtime gone): the next frame schedules one afresh.
            s.flush_scheduled = false;
            let answer_pushes = match (pushes, kept_pushes) {
                (Some(received), true) => Some(Self::resume_pushes(&mut s, received)),
                _ => {
                    if let Some(mailbox) = &mut s.mailbox {
                        // This connection takes no PUSH: kept for one that does.
                        mailbox.live = false;
                    }
                    None
                }
            };
            (s.last, answer_pushes)
        };
        session.insert_data(AckLink(state));
        if answer_pushes.is_some() {
            self.inner.pushes_changed.notify_waiters();
        }
        match answer_pushes {
            Some(answer) => delivery::resumed_frame_with_pushes(last, answer),
            None => delivery::resumed_frame(last),
        }
    }

    /// Room for one more mailbox (under the `clients` lock): a free place,
    /// or one taken from a client away for longer than the grace period.
    fn make_room_for_mailbox(
        &self,
        clients: &HashMap<Arc<str>, Arc<Mutex<ClientState>>>,
        limits: &PushLimits,
        now: Instant,
    ) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.inner.mailboxes.load(Relaxed) < limits.clients {
            self.inner.mailboxes.fetch_add(1, Relaxed);
            return true;
        }
        for state in clients.values() {
            let mut s = lock(state);
            let away = s.session.is_closing()
                && s.mailbox.as_ref().is_some_and(|m| {
                    m.expired
                        || m.away_since
                            .is_some_and(|t| now.saturating_duration_since(t) >= limits.grace)
                });
            if away {
                // Its place is given to the newcomer (the count stays); what
                // was kept is dropped and counted, told when it has a place
                // again.
                if let Some(mut lost) = s.mailbox.take() {
                    lost.expire();
                    s.lost_place = Some(Box::new(LostPlace {
                        next: lost.next,
                        missed: lost.missed,
                    }));
                }
                return true;
            }
        }
        false
    }

    /// RESUME asked for push recovery and a mailbox is kept (made now if
    /// new): forgets what the client has (`received`), answers what was
    /// kept, and sends the rest again, in order, after the answer (the
    /// driver writes the answer of a call before the pushes it makes).
    fn resume_pushes(s: &mut ClientState, received: u64) -> PushResume {
        let session = s.session.clone();
        let lost_place = s.lost_place.take();
        let mailbox = s.mailbox.get_or_insert_with(|| {
            let mut fresh = Mailbox::new();
            fresh.expired = true;
            if let Some(lost) = lost_place {
                fresh.next = lost.next;
                fresh.missed = lost.missed;
            }
            fresh
        });
        if received >= mailbox.next && !mailbox.expired {
            // The client has numbers this server never made (it was served
            // by another one meanwhile): what is kept here is numbered below
            // them and would be dropped as duplicates. Lost, and told so.
            mailbox.expire();
        }
        if mailbox.expired {
            // Nothing kept: number on from what the client has (a server
            // that lost its store must not start again from 1).
            mailbox.next = mailbox.next.max(received.saturating_add(1));
        }
        let missed = std::mem::take(&mut mailbox.missed);
        let answer = if std::mem::take(&mut mailbox.expired) {
            PushResume::Fresh { missed }
        } else {
            PushResume::Recovered { missed }
        };
        mailbox.acknowledge(received);
        mailbox.live = true;
        mailbox.away_since = None;
        for push in &mailbox.kept {
            // Refused (the session already closing): kept for the next RESUME.
            if session.send(push.clone()).is_err() {
                break;
            }
        }
        answer
    }

    /// `PUSHED <n>` from `session`: the client has the pushes up to `n`.
    fn pushed(&self, state: &Arc<Mutex<ClientState>>, session: &Session, n: u64) {
        let mut s = lock(state);
        if s.owner != session.id() {
            return;
        }
        if let Some(mailbox) = &mut s.mailbox {
            // A number never pushed acknowledges only what was.
            mailbox.acknowledge(n.min(mailbox.next - 1));
        }
        drop(s);
        self.inner.pushes_changed.notify_waiters();
    }

    /// Completes at the next change after which a refused push may be
    /// taken: a client id resumed with push recovery (an
    /// [`UnknownClient`](PushError::UnknownClient) or
    /// [`Expired`](PushError::Expired) one may be back), or a client said
    /// it has pushes (room in a [`Full`](PushError::Full) buffer). It sees
    /// every change from when it is made, polled or not: make it before the
    /// [`push`](AckStore::push) whose refusal it is to wait out, then await
    /// it (bounded by the pusher's own deadline) and push again. Also a
    /// way to wait until a client has acknowledged what was pushed
    /// ([`pushes_kept`](AckStore::pushes_kept) read after each change).
    pub fn pushes_changed(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.inner.pushes_changed.notified()
    }

    /// Pushes `frame` to `client_id` with push recovery (see
    /// [`AckStoreBuilder::recover_pushes`]): numbered, kept until the
    /// client acknowledges it, written at once if the client is connected,
    /// sent again when it resumes otherwise. Returns the push's number.
    ///
    /// # Errors
    ///
    /// The push is refused, and lost: [`PushError`] says why (push
    /// recovery off, a client id unknown or that did not ask, its buffer
    /// full, the grace period passed, a frame that cannot be pushed).
    pub fn push(&self, client_id: &str, frame: &Frame) -> Result<u64, PushError> {
        let Some(limits) = &self.inner.pushes else {
            return Err(PushError::Off);
        };
        let state = lock(&self.inner.clients)
            .get(client_id)
            .cloned()
            .ok_or(PushError::UnknownClient)?;
        let now = Instant::now();
        let mut s = lock(&state);
        let connected = !s.session.is_closing();
        let session = s.session.clone();
        let Some(mailbox) = &mut s.mailbox else {
            return Err(PushError::UnknownClient);
        };
        if mailbox.expired {
            return Err(PushError::Expired);
        }
        let live = connected && mailbox.live;
        if !live {
            let since = *mailbox.away_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= limits.grace {
                mailbox.expire();
                return Err(PushError::Expired);
            }
        }
        let seq = mailbox.next;
        if seq == u64::MAX {
            return Err(PushError::NumbersExhausted);
        }
        let push = delivery::push_frame(seq, frame).ok_or(PushError::NotPushable)?;
        let cost = push.wire_len();
        if mailbox.kept.len() >= limits.frames
            || (!mailbox.kept.is_empty() && mailbox.bytes.saturating_add(cost) > limits.bytes)
        {
            return Err(PushError::Full);
        }
        mailbox.next += 1;
        mailbox.bytes += cost;
        if live {
            mailbox.kept.push_back(push.clone());
            // Refused (the session closing, a slow consumer): kept, and
            // sent again when the client resumes.
            let _ = session.send(push);
        } else {
            mailbox.kept.push_back(push);
        }
        Ok(seq)
    }

    /// A frame of a resumed session is being handed on: false if it must
    /// not be (a duplicate, or the session was replaced).
    fn number(&self, state: &Arc<Mutex<ClientState>>, session: &Session) -> bool {
        let mut s = lock(state);
        if s.owner != session.id() {
            return false;
        }
        let seq = s.next;
        s.next += 1;
        if seq <= s.last {
            return false;
        }
        s.last = seq;
        if s.last - s.acked >= self.inner.ack_every || session.is_closing() {
            if session.send(delivery::ack_frame(s.last)).is_ok() {
                s.acked = s.last;
            }
        } else if !s.flush_scheduled {
            s.flush_scheduled = true;
            s.touched = Instant::now();
            let state = state.clone();
            let delay = self.inner.ack_delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut s = lock(&state);
                s.flush_scheduled = false;
                if s.last > s.acked && s.session.send(delivery::ack_frame(s.last)).is_ok() {
                    s.acked = s.last;
                }
            });
        }
        true
    }
}

/// The farewell of a session shutting down that resumed acknowledged
/// delivery and is still its client id's newest: `server shutdown; last
/// <n>`, `n` the last number handed to the application (every frame of
/// the session was handed on or refused by now).
pub(crate) fn shutdown_farewell(session: &Session) -> Option<String> {
    let AckLink(state) = session.data::<AckLink>()?;
    let s = lock(&state);
    (s.owner == session.id()).then(|| delivery::shutdown_reason(s.last))
}

impl Default for AckStore {
    fn default() -> Self {
        AckStore::new()
    }
}

/// The [`Layer`] of [`Acknowledge`]: put it outermost around the
/// application's service (`ServiceBuilder::new().layer(AckLayer::new(store))`).
#[derive(Debug, Clone)]
pub struct AckLayer {
    store: AckStore,
}

impl AckLayer {
    /// Acknowledged delivery with the numbers kept in `store`.
    pub fn new(store: AckStore) -> AckLayer {
        AckLayer { store }
    }
}

impl<S> Layer<S> for AckLayer {
    type Service = Acknowledge<S>;

    fn layer(&self, inner: S) -> Acknowledge<S> {
        Acknowledge {
            inner,
            store: self.store.clone(),
            cache: None,
        }
    }
}

/// Acknowledged delivery around a service (see the [module](self)).
#[derive(Clone)]
pub struct Acknowledge<S> {
    inner: S,
    store: AckStore,
    /// The last session seen and its link (a service is cloned per session:
    /// one lookup per session, not per frame).
    cache: Option<(SessionId, Option<AckLink>)>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Acknowledge<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acknowledge")
            .field("inner", &self.inner)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl<S> Service<Frame> for Acknowledge<S>
where
    S: Service<Frame, Response = Option<Frame>>,
{
    type Response = Option<Frame>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Option<Frame>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, frame: Frame) -> Self::Future {
        let Some(session) = frame.extensions().get::<Session>() else {
            return Either::Right(self.inner.call(frame));
        };
        match (frame.kind(), frame.request_id()) {
            (Kind::CONTROL, None) if frame.payload().starts_with(PUSHED_PREFIX.as_bytes()) => {
                let link = session.data::<AckLink>();
                match (link, delivery::parse_pushed(frame.payload())) {
                    (Some(AckLink(state)), Some(n)) => {
                        self.store.pushed(&state, session, n);
                        Either::Left(ready(Ok(None)))
                    }
                    // Not a session of push recovery: the application's.
                    _ => Either::Right(self.inner.call(frame)),
                }
            }
            (Kind::CONTROL, Some(_)) if frame.payload().starts_with(RESUME_PREFIX.as_bytes()) => {
                let answer = self.store.resume(session, frame.payload());
                self.cache = None;
                Either::Left(ready(Ok(Some(answer))))
            }
            (_, None) => {
                let id = session.id();
                let link = match &self.cache {
                    Some((cached, link)) if *cached == id => link.clone(),
                    _ => {
                        let link = session.data::<AckLink>();
                        self.cache = Some((id, link.clone()));
                        link
                    }
                };
                match link {
                    Some(AckLink(state)) if !self.store.number(&state, session) => {
                        Either::Left(ready(Ok(None)))
                    }
                    _ => Either::Right(self.inner.call(frame)),
                }
            }
            _ => Either::Right(self.inner.call(frame)),
        }
    }
}
