//! Key routing: [`Affinity`] sends the frames of one key to one upstream
//! (rendezvous hashing) while it is up, and moves them only when it is not;
//! [`Keyed`], the shared (bounded-wait) form a server uses.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use msgi::{BoxError, Frame, Session};
use tokio::sync::watch;
use tokio_util::sync::ReusableBoxFuture;
use tower::discover::Change;
use tower::util::Oneshot;
use tower::Service;

use crate::balanced::{FailFast, FailFastFuture};
use crate::discover::{Discovery, Key};
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::shared::{Shared, SharedFuture};

/// Where a frame's routing key comes from: a hash of it, or `None` for a
/// frame without one (sent to the least loaded upstream that is up).
pub trait KeyFn: Fn(&Frame) -> Option<u64> + Send + Sync + 'static {}

impl<F: Fn(&Frame) -> Option<u64> + Send + Sync + 'static> KeyFn for F {}

/// The key of a frame's session: its client id (the one announced in HELLO,
/// or the session id), so one client's frames stick to one upstream. `None`
/// for a frame that did not come through a server.
pub fn client_id_key(frame: &Frame) -> Option<u64> {
    frame.extensions().get::<Session>().map(|session| {
        let mut h = DefaultHasher::new();
        session.client_id().hash(&mut h);
        h.finish()
    })
}

/// The rendezvous weight of `addr` for `key`: the upstream with the
/// highest weight among those up gets the key. Adding or removing an
/// upstream moves only the keys it wins or held.
pub fn weight(key: u64, addr: SocketAddr) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    addr.hash(&mut h);
    h.finish()
}

/// Routes each frame by its key to one upstream of a set: the one with the
/// highest [`weight`] among those up (rendezvous hashing), so a key stays
/// on its upstream while it is up, moves when it goes down, and comes back
/// when it is up again. Among several connections to that upstream, the
/// least loaded. Frames without a key go to the least loaded endpoint up.
///
/// `poll_ready` is ready while at least one upstream is up (`Pending`
/// otherwise, woken when one comes up: put it behind [`FailFast`](crate::FailFast)). A
/// call waits for its endpoint's readiness in its own future (a saturated
/// upstream keeps its keys: they wait for it); if that upstream goes down
/// first, the call fails with [`Error::Down`], unsent (retryable).
pub struct Affinity<K> {
    discovery: Discovery,
    endpoints: BTreeMap<Key, Endpoint>,
    key: K,
    health: watch::Receiver<crate::discover::Up>,
    wait: ReusableBoxFuture<'static, ()>,
    waiting: bool,
}

impl<K> fmt::Debug for Affinity<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Affinity")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl<K: KeyFn> Affinity<K> {
    pub(crate) fn new(discovery: Discovery, key: K) -> Self {
        let health = discovery.health();
        Affinity {
            discovery,
            endpoints: BTreeMap::new(),
            key,
            health,
            wait: ReusableBoxFuture::new(std::future::pending()),
            waiting: false,
        }
    }

    fn discover(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(Some(Ok(change))) = Pin::new(&mut self.discovery).poll_next(cx) {
            match change {
                Change::Insert(key, endpoint) => {
                    self.endpoints.insert(key, endpoint);
                }
                Change::Remove(key) => {
                    self.endpoints.remove(&key);
                }
            }
        }
    }

    /// The endpoint for `key`, among those up.
    fn choose(&self, key: Option<u64>) -> Option<&Endpoint> {
        let up = self.endpoints.iter().filter(|(_, e)| e.is_up());
        let least_loaded = |a: &&Endpoint, b: &&Endpoint| a.cost().total_cmp(&b.cost());
        match key {
            None => up.map(|(_, e)| e).min_by(least_loaded),
            Some(key) => {
                let addr = up
                    .clone()
                    .map(|(k, _)| k.addr)
                    .max_by_key(|addr| (weight(key, *addr), *addr))?;
                up.filter(|(k, _)| k.addr == addr)
                    .map(|(_, e)| e)
                    .min_by(least_loaded)
            }
        }
    }
}

impl<K: KeyFn> Service<Frame> for Affinity<K> {
    type Response = Option<Frame>;
    type Error = Error;
    type Future = AffinityFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            self.discover(cx);
            self.health.borrow_and_update();
            if self.endpoints.values().any(Endpoint::is_up) {
                return Poll::Ready(Ok(()));
            }
            if !self.waiting {
                let mut health = self.health.clone();
                self.wait.set(async move {
                    if health.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                });
                self.waiting = true;
            }
            match self.wait.poll(cx) {
                Poll::Ready(()) => self.waiting = false,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn call(&mut self, frame: Frame) -> AffinityFuture {
        let key = (self.key)(&frame);
        match self.choose(key) {
            Some(endpoint) => AffinityFuture {
                inner: Ok(Oneshot::new(endpoint.for_call(), frame)),
            },
            // Went down since `poll_ready`: unsent.
            None => AffinityFuture {
                inner: Err(Some(Error::NoUpstream(std::time::Duration::ZERO))),
            },
        }
    }
}

/// The answer of [`Affinity`].
pub struct AffinityFuture {
    inner: Result<Oneshot<Endpoint, Frame>, Option<Error>>,
}

impl fmt::Debug for AffinityFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AffinityFuture").finish_non_exhaustive()
    }
}

impl Future for AffinityFuture {
    type Output = Result<Option<Frame>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            Ok(call) => Pin::new(call).poll(cx),
            Err(error) => Poll::Ready(Err(error
                .take()
                .unwrap_or(Error::Client(msgi::ClientError::NotReady)))),
        }
    }
}

/// Key-routed requests over a set of upstreams ([`Affinity`] behind a
/// bounded wait), shared by every clone; made by
/// [`Builder::build_affinity`](crate::Builder::build_affinity). A server's
/// handler, as [`Balanced`](crate::Balanced).
#[derive(Clone)]
pub struct Keyed {
    shared: Shared<FailFast<Affinity<BoxKeyFn>>>,
}

/// The key function of a [`Keyed`], boxed (one type for every key).
pub(crate) type BoxKeyFn = Box<dyn Fn(&Frame) -> Option<u64> + Send + Sync>;

impl fmt::Debug for Keyed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed").finish_non_exhaustive()
    }
}

impl Keyed {
    pub(crate) fn new(shared: Shared<FailFast<Affinity<BoxKeyFn>>>) -> Self {
        Keyed { shared }
    }
}

impl Service<Frame> for Keyed {
    type Response = Option<Frame>;
    type Error = BoxError;
    type Future = SharedFuture<FailFastFuture<AffinityFuture>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.shared.poll_ready(cx)
    }

    fn call(&mut self, frame: Frame) -> Self::Future {
        self.shared.call(frame)
    }
}
