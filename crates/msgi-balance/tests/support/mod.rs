//! Upstream servers for the balancer tests: each runs on its own runtime in
//! its own thread, so that killing it (dropping the runtime) closes every
//! socket at once, as a crashed process would.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msgi::{Client, ClientError, Frame, Server, Session};
use msgi_balance::{Builder, Settings};
use tokio::sync::{oneshot, watch, Semaphore};

/// Every wait in the tests is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test if it takes longer than [`LIMIT`].
pub async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("test step timed out")
}

/// How an upstream answers.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Work time per request.
    pub delay: Option<Duration>,
    /// Requests wait for a permit here (a gate the test opens).
    pub gate: Option<Arc<Semaphore>>,
    /// Every request is answered with an ERROR at once (a broken upstream).
    pub fail_all: bool,
    /// A request with this payload is never answered; with one request at a
    /// time per session, the session stops reading (PINGs included).
    pub hang_on: Option<&'static str>,
}

/// One upstream server: answers `<name>:<payload>`, ERROR for `fail`.
pub struct Upstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Correlated requests received.
    pub hits: watch::Receiver<usize>,
    /// One-way frames received.
    pub one_way: watch::Receiver<usize>,
    /// Distinct sessions that sent requests.
    pub sessions: Arc<Mutex<std::collections::BTreeSet<u64>>>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    pub fn start(name: &'static str, behaviour: Behaviour) -> Upstream {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (hits_tx, hits) = watch::channel(0usize);
        let (one_way_tx, one_way) = watch::channel(0usize);
        let hits_tx = Arc::new(hits_tx);
        let one_way_tx = Arc::new(one_way_tx);
        let sessions = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        let (kill, killed) = oneshot::channel::<()>();
        let seen = sessions.clone();
        let behaviour_cfg = behaviour.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let service = tower::service_fn(move |frame: Frame| {
                    let hits_tx = hits_tx.clone();
                    let one_way_tx = one_way_tx.clone();
                    let behaviour = behaviour.clone();
                    let seen = seen.clone();
                    async move {
                        if let Some(s) = frame.extensions().get::<Session>() {
                            seen.lock().unwrap().insert(s.id().as_u64());
                        }
                        if frame.request_id().is_none() {
                            one_way_tx.send_modify(|n| *n += 1);
                            return Ok::<_, &'static str>(None);
                        }
                        hits_tx.send_modify(|n| *n += 1);
                        if behaviour.fail_all {
                            return Err("broken");
                        }
                        if behaviour.hang_on == Some(&*frame.payload_text()) {
                            std::future::pending::<()>().await;
                        }
                        if let Some(gate) = &behaviour.gate {
                            let _permit = gate.acquire().await;
                        }
                        if let Some(delay) = behaviour.delay {
                            tokio::time::sleep(delay).await;
                        }
                        if frame.payload_text() == "fail" {
                            return Err("upstream says no");
                        }
                        Ok(Some(Frame::data(format!(
                            "{name}:{}",
                            frame.payload_text()
                        ))))
                    }
                });
                let server = if behaviour_cfg.hang_on.is_some() {
                    Server::builder().max_concurrent_requests(1)
                } else {
                    Server::builder()
                }
                .build()
                .unwrap();
                tokio::select! {
                    _ = server.serve(listener, service) => {}
                    _ = killed => {}
                }
            });
            // Every session task dies with the runtime: sockets close at once.
            rt.shutdown_background();
        });
        Upstream {
            name,
            addr,
            hits,
            one_way,
            sessions,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    pub fn hits(&self) -> usize {
        *self.hits.borrow()
    }

    /// Kills the server: every connection closes at once.
    pub fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Settings fit for tests: fast reconnects and pings.
pub fn builder() -> Builder {
    Builder::new(settings())
}

/// As [`builder`], with requests in flight as the load: what p2c compares
/// is then free of loopback latency noise (peak-EWMA, by design, shuns an
/// upstream for a while after one slow answer).
pub fn builder_pending() -> Builder {
    Builder::new(settings().load(msgi_balance::LoadMeasure::PendingRequests))
}

pub fn settings() -> Settings {
    Settings::new(Client::builder().connect_timeout(Duration::from_secs(2)))
        .backoff(msgi::Reconnect {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_attempts: None,
        })
        .health(Duration::from_millis(200), Duration::from_millis(500), 2)
}

/// An address nothing listens on.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The upstream name in an answer `<name>:<payload>`.
pub fn from(answer: &Result<Frame, ClientError>) -> Option<String> {
    answer
        .as_ref()
        .ok()
        .and_then(|f| f.payload_text().split(':').next().map(str::to_owned))
}

/// Counts of answers per upstream name.
pub fn tally<'a>(
    answers: impl IntoIterator<Item = &'a Result<Frame, ClientError>>,
) -> std::collections::BTreeMap<String, usize> {
    let mut t = std::collections::BTreeMap::new();
    for a in answers {
        if let Some(name) = from(a) {
            *t.entry(name).or_insert(0) += 1;
        }
    }
    t
}

pub fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

pub fn count(c: &AtomicUsize) -> usize {
    c.load(Ordering::Relaxed)
}
