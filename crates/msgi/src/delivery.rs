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

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::session::{Session, SessionId};
use msgi_proto::delivery::{self, RESUME_PREFIX};
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
}

/// Settings of an [`AckStore`], checked by [`build`](AckStoreBuilder::build).
#[derive(Debug, Clone)]
pub struct AckStoreBuilder {
    max_clients: usize,
    keep_for: Duration,
    ack_every: u64,
    ack_delay: Duration,
}

impl Default for AckStoreBuilder {
    fn default() -> Self {
        AckStoreBuilder {
            max_clients: 100_000,
            keep_for: Duration::from_secs(300),
            ack_every: 64,
            ack_delay: Duration::from_millis(5),
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

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming a zero `max_clients`, `ack_every` or
    /// `ack_delay`.
    pub fn build(self) -> Result<AckStore, ConfigError> {
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

    /// Answers a RESUME from `session`.
    fn resume(&self, session: &Session, payload: &[u8]) -> Frame {
        let Some((epoch, first)) = delivery::parse_resume(payload) else {
            return Frame::error("bad RESUME: expected RESUME <epoch> <first>");
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
                    clients.retain(|_, s| {
                        let s = lock(s);
                        now.saturating_duration_since(s.touched) < keep_for
                            || !s.session.is_closing()
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
                }));
                clients.insert(client_id, state.clone());
                state
            }
        };
        drop(clients);
        let last = {
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
            s.last
        };
        session.insert_data(AckLink(state));
        delivery::resumed_frame(last)
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
