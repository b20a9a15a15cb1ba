//! `msgi serve --admin ADDR`: a live view of the server as JSON over HTTP,
//! in the manner of NATS's monitoring endpoints.
//!
//! - `GET /varz`: the server's totals (uptime, connections now and in all,
//!   frames and bytes each way, closes by reason, rejections, version).
//! - `GET /connz?sort=COLUMN&limit=N&offset=M`: the sessions, one page of
//!   at most [`MAX_LIMIT`] (default [`DEFAULT_LIMIT`]).
//! - `GET /connz/ID`: one session.
//! - `POST /connz/ID/disconnect`: closes a session (the peer gets
//!   DISCONNECT [`DISCONNECT_REASON`]); only with a token configured
//!   (`--admin-token-file`), presented as `Authorization: Bearer TOKEN`.
//!
//! The counters live here, not in the [`Session`]: [`AdminObserver`] (an
//! [`Observer`]) puts one [`Arc`] of atomics in each session's data when it
//! opens, and each [`Activity`] report adds to it without any lock shared
//! between sessions (only the session's own data lock). The map of live
//! sessions is locked when a session opens or closes, and by a request
//! (while it walks the map).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use msgi::{Activity, CloseReason, Observer, Rejection, Session, SessionId};
use serde::{Deserialize, Serialize};

/// Sessions a `/connz` page shows unless `limit` says otherwise.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// The most sessions one `/connz` page shows: a larger `limit` is cut to
/// this, so a response stays bounded however many sessions there are.
pub(crate) const MAX_LIMIT: usize = 1024;
/// What a session closed from the admin endpoint is told (its DISCONNECT).
pub(crate) const DISCONNECT_REASON: &str = "disconnected by the administrator";

/// The live view shared by the observers of a server's listeners and the
/// admin endpoint.
pub(crate) struct AdminView {
    started: SystemTime,
    state: Mutex<State>,
    token: Option<AdminToken>,
}

impl fmt::Debug for AdminView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminView")
            .field("started", &self.started)
            .field("writable", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    sessions: BTreeMap<SessionId, Entry>,
    /// Sessions opened since the start.
    opened: u64,
    /// What closed sessions did, so that totals are live sum plus this.
    closed: Snapshot,
    /// Closed sessions by `CloseReason::kind` (bounded labels).
    closes: BTreeMap<&'static str, u64>,
    /// Rejected connections by `Rejection::kind` (bounded labels).
    rejected: BTreeMap<&'static str, u64>,
}

struct Entry {
    session: Session,
    stats: Arc<Stats>,
    transport: &'static str,
}

/// One session's counters: added to from its task, read by requests.
#[derive(Debug, Default)]
struct Stats {
    frames_in: AtomicU64,
    bytes_in: AtomicU64,
    frames_out: AtomicU64,
    bytes_out: AtomicU64,
    bytes_written: AtomicU64,
    write_stalls: AtomicU64,
    errors: AtomicU64,
    answered: AtomicU64,
    write_queue: AtomicU64,
    outbox: AtomicU64,
    in_flight: AtomicU64,
}

/// The key of a session's counters in its data (private: no application
/// value can collide with it).
#[derive(Clone)]
struct Counters(Arc<Stats>);

impl Stats {
    fn add(&self, a: &Activity) {
        // Only counts that moved are written: an idle wake-up's report
        // touches few cache lines.
        let add = |counter: &AtomicU64, n: u64| {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        };
        add(&self.frames_in, a.frames_in.frames());
        add(&self.bytes_in, a.frames_in.bytes());
        add(&self.frames_out, a.frames_out.frames());
        add(&self.bytes_out, a.frames_out.bytes());
        add(&self.bytes_written, a.bytes_written);
        add(&self.write_stalls, u64::from(a.write_stalls));
        add(&self.errors, a.errors().map(|(_, n)| u64::from(n)).sum());
        add(&self.answered, a.latencies().len() as u64);
        self.write_queue.store(a.write_queue as u64, Relaxed);
        self.outbox.store(a.outbox as u64, Relaxed);
        self.in_flight.store(a.in_flight as u64, Relaxed);
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            frames_in: self.frames_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            frames_out: self.frames_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            write_stalls: self.write_stalls.load(Relaxed),
            errors: self.errors.load(Relaxed),
            answered: self.answered.load(Relaxed),
        }
    }
}

/// Counts of one session, or summed over several.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// Frames read from the peer.
    pub(crate) frames_in: u64,
    /// Their bytes (header and payload, before wire transforms).
    pub(crate) bytes_in: u64,
    /// Frames queued for the peer (answers, pushes, the session's own).
    pub(crate) frames_out: u64,
    /// Their bytes (before wire transforms).
    pub(crate) bytes_out: u64,
    /// Bytes written to the transport (after wire transforms).
    pub(crate) bytes_written: u64,
    /// Writes that waited for the socket.
    pub(crate) write_stalls: u64,
    /// Errors the session went on from (handler errors, ERROR from the peer...).
    pub(crate) errors: u64,
    /// Requests answered (one-way frames handled included).
    pub(crate) answered: u64,
}

impl Snapshot {
    fn add(&mut self, o: &Snapshot) {
        self.frames_in = self.frames_in.saturating_add(o.frames_in);
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        self.frames_out = self.frames_out.saturating_add(o.frames_out);
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
        self.bytes_written = self.bytes_written.saturating_add(o.bytes_written);
        self.write_stalls = self.write_stalls.saturating_add(o.write_stalls);
        self.errors = self.errors.saturating_add(o.errors);
        self.answered = self.answered.saturating_add(o.answered);
    }
}

/// The observer of one listener's server: the view it reports to, and the
/// transport its sessions use (`tcp`, `tls`, `ws`).
#[derive(Debug, Clone)]
pub(crate) struct AdminObserver {
    view: Arc<AdminView>,
    transport: &'static str,
}

impl Observer for AdminObserver {
    fn session_opened(&self, session: &Session) {
        let stats = Arc::new(Stats::default());
        session.insert_data(Counters(stats.clone()));
        let mut state = self.view.lock();
        state.opened += 1;
        state.sessions.insert(
            session.id(),
            Entry {
                session: session.clone(),
                stats,
                transport: self.transport,
            },
        );
    }

    fn session_activity(&self, session: &Session, activity: &Activity) {
        session.with_data(|data| {
            if let Some(Counters(stats)) = data.get::<Counters>() {
                stats.add(activity);
            }
        });
    }

    fn session_closed(&self, session: &Session, reason: &CloseReason) {
        let mut state = self.view.lock();
        if let Some(entry) = state.sessions.remove(&session.id()) {
            // Called after the session's last activity report: its counts
            // are final, and move to the closed totals under the same lock
            // the totals are read under.
            let counts = entry.stats.snapshot();
            state.closed.add(&counts);
        }
        *state.closes.entry(reason.kind()).or_default() += 1;
    }

    fn connection_rejected(&self, rejection: Rejection) {
        *self
            .view
            .lock()
            .rejected
            .entry(rejection.kind())
            .or_default() += 1;
    }
}

/// The bearer token of the disconnect action, kept only as an HMAC tag
/// under a random key, so that checking a presented token takes the same
/// time whatever it shares with the real one (ring's `hmac::verify`).
struct AdminToken {
    key: ring::hmac::Key,
    tag: ring::hmac::Tag,
}

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    /// The file could not be read.
    #[error("reading the admin token file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file holds no token (only white space).
    #[error("the admin token file {path} is empty")]
    Empty { path: String },
    /// No random key could be made for the token's check.
    #[error("no randomness for the admin token's key")]
    Random,
}

impl AdminToken {
    /// The token in `path`: its contents without surrounding white space
    /// (a trailing newline), at least one byte.
    fn read(path: &std::path::Path) -> Result<AdminToken, TokenError> {
        let shown = || path.display().to_string();
        let raw = std::fs::read(path).map_err(|source| TokenError::Read {
            path: shown(),
            source,
        })?;
        AdminToken::new(raw.trim_ascii()).ok_or_else(|| TokenError::Empty { path: shown() })?
    }

    fn new(token: &[u8]) -> Option<Result<AdminToken, TokenError>> {
        if token.is_empty() {
            return None;
        }
        let rng = ring::rand::SystemRandom::new();
        Some(
            ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
                .map_err(|_| TokenError::Random)
                .map(|key| {
                    let tag = ring::hmac::sign(&key, token);
                    AdminToken { key, tag }
                }),
        )
    }

    fn accepts(&self, presented: &[u8]) -> bool {
        ring::hmac::verify(&self.key, presented, self.tag.as_ref()).is_ok()
    }
}

/// A column `/connz` sorts by: counts, depths and times largest first,
/// `id` smallest first; ties by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub(crate) enum Sort {
    /// Session id, ascending (the default; the cheapest).
    Id,
    /// Connected longest first.
    Uptime,
    /// Silent longest first (since its last frame received).
    Idle,
    /// Frames received.
    FramesIn,
    /// Frames sent.
    FramesOut,
    /// Bytes received.
    BytesIn,
    /// Bytes sent.
    BytesOut,
    /// Write queue (bytes waiting for the socket).
    WriteQueue,
    /// Outbox (pushed frames waiting).
    Outbox,
    /// Requests in flight.
    InFlight,
}

impl Sort {
    pub(crate) const ALL: [Sort; 10] = [
        Sort::Id,
        Sort::Uptime,
        Sort::Idle,
        Sort::FramesIn,
        Sort::FramesOut,
        Sort::BytesIn,
        Sort::BytesOut,
        Sort::WriteQueue,
        Sort::Outbox,
        Sort::InFlight,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Sort::Id => "id",
            Sort::Uptime => "uptime",
            Sort::Idle => "idle",
            Sort::FramesIn => "frames_in",
            Sort::FramesOut => "frames_out",
            Sort::BytesIn => "bytes_in",
            Sort::BytesOut => "bytes_out",
            Sort::WriteQueue => "write_queue",
            Sort::Outbox => "outbox",
            Sort::InFlight => "in_flight",
        }
    }

    fn parse(text: &str) -> Option<Sort> {
        Sort::ALL.into_iter().find(|s| s.name() == text)
    }

    /// The value sorted on (largest first), for every column but `id`.
    fn key(self, entry: &Entry, now: tokio::time::Instant, wall: SystemTime) -> u64 {
        let s = &entry.stats;
        match self {
            Sort::Id => 0,
            Sort::Uptime => millis(
                wall.duration_since(entry.session.connected_at())
                    .unwrap_or_default(),
            ),
            Sort::Idle => millis(now.saturating_duration_since(entry.session.last_activity())),
            Sort::FramesIn => s.frames_in.load(Relaxed),
            Sort::FramesOut => s.frames_out.load(Relaxed),
            Sort::BytesIn => s.bytes_in.load(Relaxed),
            Sort::BytesOut => s.bytes_out.load(Relaxed),
            Sort::WriteQueue => s.write_queue.load(Relaxed),
            Sort::Outbox => s.outbox.load(Relaxed),
            Sort::InFlight => s.in_flight.load(Relaxed),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms(t: SystemTime) -> u64 {
    millis(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// One session in `/connz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Connection {
    /// The session id, in decimal (a string: it may not fit a JSON number
    /// a browser reads exactly).
    pub(crate) id: String,
    /// The announced client id, or the session id.
    pub(crate) client_id: String,
    /// The peer's address, if it has one.
    pub(crate) peer: Option<String>,
    /// `tcp`, `tls` or `ws`.
    pub(crate) transport: String,
    /// When it connected, in milliseconds since the Unix epoch.
    pub(crate) start_unix_ms: u64,
    /// How long it has been connected.
    pub(crate) uptime_ms: u64,
    /// How long since its last frame was received (since it connected if none).
    pub(crate) idle_ms: u64,
    /// When its last frame was received (when it connected if none), in
    /// milliseconds since the Unix epoch.
    pub(crate) last_activity_unix_ms: u64,
    /// Its counts.
    #[serde(flatten)]
    pub(crate) counts: Snapshot,
    /// Bytes waiting for the socket, after its task's last wake-up.
    pub(crate) write_queue: u64,
    /// Pushed frames waiting, after its task's last wake-up.
    pub(crate) outbox: u64,
    /// Requests not yet answered, after its task's last wake-up.
    pub(crate) in_flight: u64,
    /// Whether it is closing (asked to, or ending on its own).
    pub(crate) closing: bool,
}

/// The answer of `/connz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Connz {
    /// When this was taken, in milliseconds since the Unix epoch.
    pub(crate) now_unix_ms: u64,
    /// Sessions open.
    pub(crate) total: usize,
    /// Sessions skipped before this page.
    pub(crate) offset: usize,
    /// The most sessions this page could hold (the `limit` asked, at most [`MAX_LIMIT`]).
    pub(crate) limit: usize,
    /// The column sorted by.
    pub(crate) sort: String,
    /// The page.
    pub(crate) connections: Vec<Connection>,
}

/// The answer of `/varz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Varz {
    /// The msgi version.
    pub(crate) version: String,
    /// When the server started, in milliseconds since the Unix epoch.
    pub(crate) start_unix_ms: u64,
    /// When this was taken.
    pub(crate) now_unix_ms: u64,
    /// How long the server has run.
    pub(crate) uptime_ms: u64,
    /// Sessions open.
    pub(crate) connections: usize,
    /// Sessions opened since the start.
    pub(crate) total_connections: u64,
    /// Counts of every session since the start (open ones included).
    #[serde(flatten)]
    pub(crate) counts: Snapshot,
    /// Sessions closed, by reason (`CloseReason::kind`).
    pub(crate) closed: BTreeMap<String, u64>,
    /// Connections refused a session, by reason.
    pub(crate) rejected: BTreeMap<String, u64>,
    /// Whether `POST /connz/ID/disconnect` is enabled (a token is configured).
    pub(crate) disconnect_enabled: bool,
}

/// An HTTP answer: status, JSON body, and whether to ask for a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: String,
    pub(crate) challenge: bool,
}

impl Reply {
    fn json(status: StatusCode, value: &impl Serialize) -> Reply {
        match serde_json::to_string_pretty(value) {
            Ok(body) => Reply {
                status,
                body,
                challenge: false,
            },
            Err(e) => Reply::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    fn error(status: StatusCode, message: &str) -> Reply {
        Reply {
            status,
            body: serde_json::json!({ "error": message }).to_string(),
            challenge: false,
        }
    }
}

impl AdminView {
    /// A view; the disconnect action is enabled by `token_file`.
    pub(crate) fn new(token_file: Option<&std::path::Path>) -> Result<Arc<AdminView>, TokenError> {
        let token = token_file.map(AdminToken::read).transpose()?;
        Ok(Arc::new(AdminView {
            started: SystemTime::now(),
            state: Mutex::default(),
            token,
        }))
    }

    /// The observer of one listener's server, whose sessions use `transport`.
    pub(crate) fn observer(self: &Arc<Self>, transport: &'static str) -> AdminObserver {
        AdminObserver {
            view: self.clone(),
            transport,
        }
    }

    /// Whether the disconnect action is enabled (a token is configured).
    pub(crate) fn writable(&self) -> bool {
        self.token.is_some()
    }

    /// The HTTP answer to `request`.
    pub(crate) fn respond(&self, request: &crate::http::Request) -> crate::http::Response {
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let uri = request.uri();
        let reply = self.handle(request.method(), uri.path(), uri.query(), authorization);
        let mut response = crate::http::respond(reply.status, "application/json", reply.body);
        if reply.challenge {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the maps consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers one request: `path` without its query, `query` after `?`,
    /// `authorization` the header's value.
    pub(crate) fn handle(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        authorization: Option<&[u8]>,
    ) -> Reply {
        let parts: Vec<&str> = path.trim_matches('/').splitn(4, '/').collect();
        match (method, parts.as_slice()) {
            (&Method::GET, ["varz"]) => Reply::json(StatusCode::OK, &self.varz()),
            (&Method::GET, ["connz"]) => match ConnzQuery::parse(query) {
                Ok(q) => Reply::json(StatusCode::OK, &self.connz(q.sort, q.offset, q.limit)),
                Err(e) => Reply::error(StatusCode::BAD_REQUEST, &e),
            },
            (&Method::GET, ["connz", id]) => match self.connection(id) {
                Some(c) => Reply::json(StatusCode::OK, &c),
                None => Reply::error(StatusCode::NOT_FOUND, "no such session"),
            },
            (&Method::POST, ["connz", id, "disconnect"]) => self.disconnect(id, authorization),
            (_, ["varz"] | ["connz"] | ["connz", _]) | (_, ["connz", _, "disconnect"]) => {
                Reply::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => Reply::error(
                StatusCode::NOT_FOUND,
                "not found: GET /varz, GET /connz, GET /connz/ID, POST /connz/ID/disconnect",
            ),
        }
    }

    /// The server's totals.
    pub(crate) fn varz(&self) -> Varz {
        let now = SystemTime::now();
        let state = self.lock();
        let mut counts = state.closed;
        for entry in state.sessions.values() {
            counts.add(&entry.stats.snapshot());
        }
        let labels = |m: &BTreeMap<&'static str, u64>| {
            m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
        };
        Varz {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            start_unix_ms: unix_ms(self.started),
            now_unix_ms: unix_ms(now),
            uptime_ms: millis(now.duration_since(self.started).unwrap_or_default()),
            connections: state.sessions.len(),
            total_connections: state.opened,
            counts,
            closed: labels(&state.closes),
            rejected: labels(&state.rejected),
            disconnect_enabled: self.token.is_some(),
        }
    }

    /// One page of sessions sorted by `sort`: after `offset` of them, at
    /// most `limit` (cut to [`MAX_LIMIT`]).
    ///
    /// Holds the map's lock while it walks it once (sessions opening and
    /// closing wait); what it keeps is bounded by `offset + limit` entries
    /// of 16 bytes (a heap of the best so far), never by the number of
    /// sessions, and the page by `limit`.
    pub(crate) fn connz(&self, sort: Sort, offset: usize, limit: usize) -> Connz {
        let limit = limit.min(MAX_LIMIT);
        let (now, wall) = (tokio::time::Instant::now(), SystemTime::now());
        let state = self.lock();
        let page: Vec<&Entry> = if sort == Sort::Id {
            state.sessions.values().skip(offset).take(limit).collect()
        } else {
            let keep = offset.saturating_add(limit);
            // A min-heap of the `keep` best: (key, then smaller id first).
            let mut best: BinaryHeap<Reverse<(u64, Reverse<SessionId>)>> = BinaryHeap::new();
            if keep > 0 {
                for (id, entry) in &state.sessions {
                    best.push(Reverse((sort.key(entry, now, wall), Reverse(*id))));
                    if best.len() > keep {
                        best.pop();
                    }
                }
            }
            // Ascending order of `Reverse` is the best first.
            best.into_sorted_vec()
                .into_iter()
                .skip(offset)
                .filter_map(|Reverse((_, Reverse(id)))| state.sessions.get(&id))
                .collect()
        };
        let connections = page.into_iter().map(|e| describe(e, now, wall)).collect();
        Connz {
            now_unix_ms: unix_ms(wall),
            total: state.sessions.len(),
            offset,
            limit,
            sort: sort.name().to_owned(),
            connections,
        }
    }

    fn session(&self, id: &str) -> Option<Session> {
        let id = SessionId::parse_decimal(id)?;
        let state = self.lock();
        state.sessions.get(&id).map(|e| e.session.clone())
    }

    fn connection(&self, id: &str) -> Option<Connection> {
        let id = SessionId::parse_decimal(id)?;
        let state = self.lock();
        let entry = state.sessions.get(&id)?;
        Some(describe(
            entry,
            tokio::time::Instant::now(),
            SystemTime::now(),
        ))
    }

    fn disconnect(&self, id: &str, authorization: Option<&[u8]>) -> Reply {
        let Some(token) = &self.token else {
            return Reply::error(
                StatusCode::FORBIDDEN,
                "read-only: start the server with --admin-token-file to enable disconnect",
            );
        };
        let presented = authorization.and_then(bearer);
        if !presented.is_some_and(|p| token.accepts(p)) {
            return Reply {
                challenge: true,
                ..Reply::error(StatusCode::UNAUTHORIZED, "a valid bearer token is required")
            };
        }
        let Some(session) = self.session(id) else {
            return Reply::error(StatusCode::NOT_FOUND, "no such session");
        };
        if session.close(DISCONNECT_REASON) {
            Reply::json(
                StatusCode::OK,
                &serde_json::json!({ "id": session.id().to_string(), "closing": true }),
            )
        } else {
            Reply::error(StatusCode::CONFLICT, "the session is already closing")
        }
    }
}

/// `ADMIN http://<addr>/` on stdout, after the other listeners' lines (for scripts).
pub(crate) fn announce(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ADMIN http://{addr}/")?;
    out.flush()?;
    Ok(())
}

/// Serves `view` on `listener` until `shutdown` (see [`crate::http::serve`]).
pub(crate) async fn serve(
    view: Arc<AdminView>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    crate::http::serve(listener, move |request| view.respond(&request), shutdown).await
}

/// The token of an `Authorization: Bearer TOKEN` value (scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

fn describe(entry: &Entry, now: tokio::time::Instant, wall: SystemTime) -> Connection {
    let s = &entry.session;
    let idle = now.saturating_duration_since(s.last_activity());
    Connection {
        id: s.id().to_string(),
        client_id: s.client_id(),
        peer: s.peer_addr().map(|a| a.to_string()),
        transport: entry.transport.to_owned(),
        start_unix_ms: unix_ms(s.connected_at()),
        uptime_ms: millis(wall.duration_since(s.connected_at()).unwrap_or_default()),
        idle_ms: millis(idle),
        last_activity_unix_ms: unix_ms(wall.checked_sub(idle).unwrap_or(UNIX_EPOCH)),
        counts: entry.stats.snapshot(),
        write_queue: entry.stats.write_queue.load(Relaxed),
        outbox: entry.stats.outbox.load(Relaxed),
        in_flight: entry.stats.in_flight.load(Relaxed),
        closing: s.is_closing(),
    }
}

/// `/connz`'s query: `sort`, `offset`, `limit` (others are refused, so a
/// typo is not silently ignored).
struct ConnzQuery {
    sort: Sort,
    offset: usize,
    limit: usize,
}

impl ConnzQuery {
    fn parse(query: Option<&str>) -> Result<ConnzQuery, String> {
        let mut q = ConnzQuery {
            sort: Sort::Id,
            offset: 0,
            limit: DEFAULT_LIMIT,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value
                    .parse::<usize>()
                    .map_err(|_| format!("{name}: not a number"))
            };
            match name {
                "sort" => {
                    q.sort = Sort::parse(value).ok_or_else(|| {
                        let names: Vec<&str> = Sort::ALL.iter().map(|s| s.name()).collect();
                        format!("sort: one of {}", names.join(", "))
                    })?;
                }
                "offset" => q.offset = number()?,
                "limit" => q.limit = number()?,
                _ => return Err("unknown parameter: use sort, offset, limit".to_owned()),
            }
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use msgi::{Frame, FrameCodec, Framing, Kind, Server};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const WAIT: Duration = Duration::from_secs(5);

    async fn within<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(WAIT, f).await.expect("timed out")
    }

    /// An echo server on loopback observed by `view` as `transport`.
    async fn echo_server(view: &Arc<AdminView>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::builder()
            .heartbeat_interval(None)
            .observer(view.observer("tcp"))
            .build()
            .unwrap();
        let echo =
            tower::service_fn(|f: Frame| async move { Ok::<_, std::convert::Infallible>(Some(f)) });
        tokio::spawn(server.serve(listener, echo));
        addr
    }

    /// A peer writing raw MSGI frames.
    struct Peer {
        stream: TcpStream,
        buf: BytesMut,
        codec: FrameCodec,
    }

    impl Peer {
        async fn connect(addr: SocketAddr) -> Peer {
            Peer {
                stream: within(TcpStream::connect(addr)).await.unwrap(),
                buf: BytesMut::new(),
                codec: FrameCodec::new(),
            }
        }

        /// Sends `frames` and reads as many answers; the bytes each way.
        async fn exchange(&mut self, frames: Vec<Frame>) -> u64 {
            let n = frames.len();
            let mut out = BytesMut::new();
            let mut bytes = 0;
            for f in frames {
                bytes += f.wire_len() as u64;
                self.codec.encode(f, &mut out).unwrap();
            }
            within(self.stream.write_all(&out)).await.unwrap();
            for _ in 0..n {
                self.recv().await.expect("an answer");
            }
            bytes
        }

        async fn recv(&mut self) -> Option<Frame> {
            within(async {
                loop {
                    if let Some(f) = self.codec.decode(&mut self.buf).unwrap() {
                        return Some(f);
                    }
                    if self.stream.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                        return None;
                    }
                }
            })
            .await
        }
    }

    /// Waits (bounded) until `view` satisfies `done`: a session's report
    /// comes at the end of the wake-up that wrote the answer, so just
    /// after the peer got it.
    async fn until(view: &AdminView, done: impl Fn(&Varz, &Connz) -> bool) -> (Varz, Connz) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (varz, connz) = (view.varz(), view.connz(Sort::Id, 0, MAX_LIMIT));
            if done(&varz, &connz) {
                return (varz, connz);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never reached: {varz:#?} {connz:#?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn data(len: usize) -> Frame {
        Frame::data(vec![b'x'; len])
    }

    #[tokio::test]
    async fn sessions_and_totals_count_exactly_what_was_done() {
        let view = AdminView::new(None).unwrap();
        let addr = echo_server(&view).await;
        let mut a = Peer::connect(addr).await;
        let mut b = Peer::connect(addr).await;
        let a_bytes = a.exchange(vec![data(10), data(100), data(1000)]).await;
        let b_bytes = b.exchange(vec![data(7).with_request_id(1)]).await;
        let (varz, connz) = until(&view, |v, _| v.counts.frames_out == 4).await;
        assert_eq!(connz.total, 2);
        let a_row = &connz.connections[0];
        let b_row = &connz.connections[1];
        assert_eq!(
            a_row.peer.as_deref(),
            Some(a.stream.local_addr().unwrap().to_string().as_str())
        );
        assert_eq!(a_row.transport, "tcp");
        assert_eq!(a_row.client_id, a_row.id);
        assert_eq!(
            (a_row.counts.frames_in, a_row.counts.bytes_in),
            (3, a_bytes)
        );
        assert_eq!(
            (a_row.counts.frames_out, a_row.counts.bytes_out),
            (3, a_bytes)
        );
        assert_eq!(a_row.counts.bytes_written, a_bytes);
        assert_eq!(
            (b_row.counts.frames_in, b_row.counts.bytes_in),
            (1, b_bytes)
        );
        assert_eq!(
            (b_row.counts.frames_out, b_row.counts.bytes_out),
            (1, b_bytes)
        );
        assert_eq!(
            (a_row.in_flight, a_row.write_queue, a_row.outbox),
            (0, 0, 0)
        );
        // Its last frame came after it connected, and before this page
        // (to the millisecond: both are rounded down).
        assert!(a_row.start_unix_ms <= a_row.last_activity_unix_ms + 1);
        assert!(a_row.last_activity_unix_ms <= connz.now_unix_ms);
        assert_eq!((varz.connections, varz.total_connections), (2, 2));
        assert_eq!(varz.counts.frames_in, 4);
        assert_eq!(varz.counts.bytes_in, a_bytes + b_bytes);
        assert_eq!(varz.counts.bytes_out, a_bytes + b_bytes);
        assert_eq!(varz.version, env!("CARGO_PKG_VERSION"));

        // A closed session leaves the list; its counts stay in the totals.
        drop(a);
        let (varz, connz) = until(&view, |v, _| v.connections == 1).await;
        assert_eq!(connz.connections.len(), 1);
        assert_eq!(connz.connections[0].counts.frames_in, 1);
        assert_eq!(varz.total_connections, 2);
        assert_eq!(varz.counts.frames_in, 4);
        assert_eq!(varz.counts.bytes_out, a_bytes + b_bytes);
        assert_eq!(varz.closed.get("peer_closed"), Some(&1));
        // One more frame on the open session moves both.
        let more = b.exchange(vec![data(3)]).await;
        let (varz, connz) = until(&view, |v, _| v.counts.frames_out == 5).await;
        assert_eq!(connz.connections[0].counts.bytes_in, b_bytes + more);
        assert_eq!(varz.counts.bytes_in, a_bytes + b_bytes + more);
    }

    #[tokio::test]
    async fn pages_are_sorted_and_bounded() {
        let view = AdminView::new(None).unwrap();
        let addr = echo_server(&view).await;
        let mut peers = Vec::new();
        // Session i sends i + 1 frames: frames_in sorts them in reverse.
        for i in 0..4 {
            let mut p = Peer::connect(addr).await;
            p.exchange((0..=i).map(|_| data(1)).collect()).await;
            peers.push(p);
        }
        until(&view, |v, _| v.counts.frames_out == 10).await;
        let by_id = view.connz(Sort::Id, 0, 10);
        let ids: Vec<&str> = by_id.connections.iter().map(|c| c.id.as_str()).collect();
        let mut sorted = by_id.connections.clone();
        sorted.sort_by_key(|c| c.id.parse::<u64>().unwrap());
        assert_eq!(by_id.connections, sorted);
        let busiest = view.connz(Sort::FramesIn, 0, 10);
        let counts: Vec<u64> = busiest
            .connections
            .iter()
            .map(|c| c.counts.frames_in)
            .collect();
        assert_eq!(counts, [4, 3, 2, 1]);
        let page = view.connz(Sort::FramesIn, 1, 2);
        let counts: Vec<u64> = page
            .connections
            .iter()
            .map(|c| c.counts.frames_in)
            .collect();
        assert_eq!(counts, [3, 2]);
        assert_eq!((page.total, page.offset, page.limit), (4, 1, 2));
        let page = view.connz(Sort::Id, 3, 5);
        assert_eq!(page.connections.len(), 1);
        assert_eq!(page.connections[0].id, ids[3]);
        assert!(view.connz(Sort::BytesOut, 4, 5).connections.is_empty());
        assert!(view.connz(Sort::Idle, 0, 0).connections.is_empty());
        // Ties (all idle the same to the millisecond or not) never lose a session.
        assert_eq!(view.connz(Sort::WriteQueue, 0, 10).connections.len(), 4);
        // Query strings.
        let reply = view.handle(
            &Method::GET,
            "/connz",
            Some("sort=frames_in&limit=1&offset=1"),
            None,
        );
        assert_eq!(reply.status, StatusCode::OK);
        let page: Connz = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(page.connections[0].counts.frames_in, 3);
        for bad in ["sort=nope", "limit=-1", "offset=x", "bogus=1"] {
            let reply = view.handle(&Method::GET, "/connz", Some(bad), None);
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        let one = view.handle(&Method::GET, &format!("/connz/{}", ids[2]), None, None);
        let one: Connection = serde_json::from_str(&one.body).unwrap();
        assert_eq!(one.counts.frames_in, 3);
        for (method, path, status) in [
            (Method::GET, "/connz/99", StatusCode::NOT_FOUND),
            (Method::GET, "/nope", StatusCode::NOT_FOUND),
            (Method::POST, "/varz", StatusCode::METHOD_NOT_ALLOWED),
            (
                Method::GET,
                "/connz/1/disconnect",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
        ] {
            assert_eq!(
                view.handle(&method, path, None, None).status,
                status,
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn a_page_is_bounded_however_many_sessions() {
        let view = AdminView::new(None).unwrap();
        let server = Server::builder()
            .heartbeat_interval(None)
            .handshake_timeout(None)
            .observer(view.observer("tcp"))
            .build()
            .unwrap();
        let echo =
            tower::service_fn(|f: Frame| async move { Ok::<_, std::convert::Infallible>(Some(f)) });
        let n = MAX_LIMIT + 100;
        let mut ends = Vec::with_capacity(n);
        for _ in 0..n {
            let (ours, theirs) = tokio::io::duplex(64);
            ends.push(ours);
            let session = server.serve_connection(theirs, msgi::ConnectInfo::new(), echo);
            tokio::spawn(session);
        }
        until(&view, |v, _| v.connections == n).await;
        for sort in Sort::ALL {
            let page = view.connz(sort, 0, usize::MAX);
            assert_eq!((page.total, page.limit), (n, MAX_LIMIT));
            assert_eq!(page.connections.len(), MAX_LIMIT, "{sort:?}");
            // The last page holds the rest.
            let rest = view.connz(sort, MAX_LIMIT, MAX_LIMIT);
            assert_eq!(rest.connections.len(), 100, "{sort:?}");
            // No session twice across the two pages.
            let mut ids: Vec<String> = page
                .connections
                .into_iter()
                .chain(rest.connections)
                .map(|c| c.id)
                .collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), n, "{sort:?}");
        }
        let reply = view.handle(&Method::GET, "/connz", Some("limit=1000000"), None);
        let page: Connz = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(page.connections.len(), MAX_LIMIT);
        drop(ends);
    }

    /// A directory removed when dropped.
    struct TempDir(std::path::PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A file holding `contents`, in a directory of its own.
    fn token_file(contents: &str) -> (TempDir, std::path::PathBuf) {
        use std::sync::atomic::AtomicU32;
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Relaxed);
        let dir = std::env::temp_dir().join(format!("msgi-admin-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, contents).unwrap();
        (TempDir(dir), path)
    }

    #[test]
    fn sort_columns_have_one_name_in_flags_and_queries() {
        use clap::ValueEnum;
        for sort in Sort::ALL {
            let flag = sort.to_possible_value().unwrap();
            assert_eq!(flag.get_name(), sort.name());
            assert_eq!(Sort::parse(sort.name()), Some(sort));
        }
        assert_eq!(Sort::value_variants().len(), Sort::ALL.len());
    }

    #[test]
    fn token_files_are_checked() {
        let (_dir, path) = token_file("  \n");
        assert!(matches!(
            AdminView::new(Some(&path)),
            Err(TokenError::Empty { .. })
        ));
        let missing = path.with_file_name("missing");
        let error = AdminView::new(Some(&missing)).unwrap_err();
        assert!(matches!(error, TokenError::Read { .. }));
        assert!(std::error::Error::source(&error).is_some());
        let (_dir, path) = token_file("s3cret\n");
        let view = AdminView::new(Some(&path)).unwrap();
        let token = view.token.as_ref().unwrap();
        assert!(token.accepts(b"s3cret"));
        for wrong in [&b"s3cret\n"[..], b"s3cre", b"s3crett", b"", b"S3CRET"] {
            assert!(!token.accepts(wrong), "{wrong:?}");
        }
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bear"), None);
    }

    #[tokio::test]
    async fn disconnect_needs_a_configured_token_and_tells_the_peer() {
        let (_dir, path) = token_file("s3cret");
        for writable in [false, true] {
            let view = AdminView::new(writable.then_some(path.as_path())).unwrap();
            let addr = echo_server(&view).await;
            let mut peer = Peer::connect(addr).await;
            peer.exchange(vec![data(1)]).await;
            let (_, connz) = until(&view, |v, _| v.connections == 1).await;
            let path = format!("/connz/{}/disconnect", connz.connections[0].id);
            let post = |auth: Option<&'static [u8]>| view.handle(&Method::POST, &path, None, auth);
            if !writable {
                // Read-only, whatever is presented.
                assert_eq!(post(Some(b"Bearer s3cret")).status, StatusCode::FORBIDDEN);
                assert_eq!(post(None).status, StatusCode::FORBIDDEN);
                assert!(!view.varz().disconnect_enabled);
                // Still open: it answers.
                peer.exchange(vec![data(1)]).await;
                continue;
            }
            for wrong in [None, Some(&b"Bearer nope"[..]), Some(b"s3cret")] {
                let reply = post(wrong);
                assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
                assert!(reply.challenge);
            }
            peer.exchange(vec![data(1)]).await;
            let no_such = view.handle(
                &Method::POST,
                "/connz/12/disconnect",
                None,
                Some(b"Bearer s3cret"),
            );
            assert_eq!(no_such.status, StatusCode::NOT_FOUND);
            let reply = post(Some(b"Bearer s3cret"));
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            let farewell = peer.recv().await.expect("DISCONNECT");
            assert_eq!(farewell.kind(), Kind::DISCONNECT);
            assert_eq!(farewell.payload_text(), DISCONNECT_REASON);
            assert!(peer.recv().await.is_none());
            let (varz, _) = until(&view, |v, _| v.connections == 0).await;
            assert_eq!(varz.closed.get("closed"), Some(&1));
        }
    }
}
