//! Discovery: [`Upstreams`], the set of upstream addresses (static, changed
//! at run time, or DNS names re-resolved periodically), and [`Discovery`],
//! the tower `Discover` stream of [`Endpoint`]s it feeds a balancer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use msgi::MakeFraming;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard, ReusableBoxFuture};
use tower::discover::Change;

use crate::endpoint::{Endpoint, Settings};

/// Where an address in the set came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    /// Inserted by the application.
    Static,
    /// Resolved from this name.
    Name(String),
}

#[derive(Debug, Default)]
struct Sources {
    by_source: BTreeMap<Source, BTreeSet<SocketAddr>>,
}

impl Sources {
    fn union(&self) -> BTreeSet<SocketAddr> {
        self.by_source.values().flatten().copied().collect()
    }
}

#[derive(Debug)]
struct SetShared {
    sources: Mutex<Sources>,
    /// The union of the sources: what discovery makes endpoints for.
    addrs: watch::Sender<BTreeSet<SocketAddr>>,
    /// Connections up, per upstream, across every balancer over the set.
    up: Arc<watch::Sender<Up>>,
}

/// Connections up per upstream address.
pub(crate) type Up = BTreeMap<SocketAddr, usize>;

/// The set of upstream addresses a balancer spreads requests over. A
/// handle: clones share the set, and it can change while traffic flows
/// ([`insert`](Upstreams::insert), [`remove`](Upstreams::remove),
/// [`resolve`](Upstreams::resolve) for DNS names). An address removed
/// leaves the balancer at once for new requests; the requests it has in
/// flight are answered (it drains).
#[derive(Clone, Debug)]
pub struct Upstreams {
    shared: Arc<SetShared>,
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams::new()
    }
}

impl<I: IntoIterator<Item = SocketAddr>> From<I> for Upstreams {
    fn from(addrs: I) -> Self {
        let set = Upstreams::new();
        for addr in addrs {
            set.insert(addr);
        }
        set
    }
}

impl Upstreams {
    /// An empty set.
    pub fn new() -> Self {
        Upstreams {
            shared: Arc::new(SetShared {
                sources: Mutex::new(Sources::default()),
                addrs: watch::Sender::new(BTreeSet::new()),
                up: Arc::new(watch::Sender::new(BTreeMap::new())),
            }),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Sources)) {
        let mut sources = self
            .shared
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut sources);
        let union = sources.union();
        // Under the lock, so that updates are published in order.
        self.shared.addrs.send_if_modified(|addrs| {
            if *addrs == union {
                return false;
            }
            *addrs = union;
            true
        });
    }

    /// Adds an upstream.
    pub fn insert(&self, addr: SocketAddr) {
        self.update(|s| {
            s.by_source.entry(Source::Static).or_default().insert(addr);
        });
    }

    /// Removes an upstream added by [`insert`](Upstreams::insert) (one a
    /// resolved name still gives stays).
    pub fn remove(&self, addr: SocketAddr) {
        self.update(|s| {
            if let Some(set) = s.by_source.get_mut(&Source::Static) {
                set.remove(&addr);
            }
        });
    }

    /// The addresses in the set now.
    pub fn addrs(&self) -> BTreeSet<SocketAddr> {
        self.shared.addrs.borrow().clone()
    }

    fn set_name(&self, name: &str, addrs: BTreeSet<SocketAddr>) {
        self.update(|s| {
            s.by_source.insert(Source::Name(name.to_owned()), addrs);
        });
    }

    /// Resolves `name` (`host:port`) now and every `every` after, with the
    /// system resolver; the addresses it gives are in the set until a later
    /// answer drops them. A failed lookup keeps the previous answer (a DNS
    /// hiccup does not empty the set). Runs in a task of the current
    /// runtime until every handle of the set (balancers over it included)
    /// is dropped.
    pub fn resolve(&self, name: impl Into<String>, every: Duration) -> tokio::task::JoinHandle<()> {
        self.resolve_with(name, every, |name: String| async move {
            tokio::net::lookup_host(name)
                .await
                .map(|addrs| addrs.collect::<Vec<_>>())
        })
    }

    /// [`resolve`](Upstreams::resolve) with another resolver.
    pub fn resolve_with<F, Fut>(
        &self,
        name: impl Into<String>,
        every: Duration,
        mut resolver: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: FnMut(String) -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<Vec<SocketAddr>>> + Send,
    {
        let name = name.into();
        let set: Weak<SetShared> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                let answer = resolver(name.clone()).await;
                let Some(shared) = set.upgrade() else { return };
                match answer {
                    Ok(addrs) => Upstreams { shared }.set_name(&name, addrs.into_iter().collect()),
                    Err(error) => {
                        tracing::warn!(%name, %error, "upstream name not resolved; keeping the previous addresses");
                    }
                }
                tokio::time::sleep(every).await;
                if set.strong_count() == 0 {
                    return;
                }
            }
        })
    }

    /// The upstreams with at least one connection up now (connected and
    /// answering pings), across every balancer over the set.
    pub fn up(&self) -> BTreeSet<SocketAddr> {
        self.shared.up.borrow().keys().copied().collect()
    }

    /// Waits until `ready` holds for the upstreams up (as
    /// [`up`](Upstreams::up) gives them).
    pub async fn wait_up(&self, mut ready: impl FnMut(&BTreeSet<SocketAddr>) -> bool) {
        let mut up = self.shared.up.subscribe();
        let _ = up.wait_for(|up| ready(&up.keys().copied().collect())).await;
    }

    pub(crate) fn watch(&self) -> watch::Receiver<BTreeSet<SocketAddr>> {
        self.shared.addrs.subscribe()
    }
}

/// One endpoint's key in a balancer: the upstream and which of its
/// connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// The upstream.
    pub addr: SocketAddr,
    /// Which connection to it (0 to `connections - 1`).
    pub connection: usize,
}

/// One write to the hasher instead of one per field: tower's p2c keeps its
/// endpoints in maps keyed by this and hashes it several times per request
/// (equal keys still hash equally; IPv6 scope and flow fields are left out,
/// which only makes such keys share a hash).
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let low = (u64::from(self.addr.port()) << 48) ^ self.connection as u64;
        match self.addr.ip() {
            IpAddr::V4(ip) => state.write_u64((u64::from(ip.to_bits()) << 16) ^ low),
            IpAddr::V6(ip) => state.write_u128(ip.to_bits() ^ u128::from(low)),
        }
    }
}

/// The endpoints of one balancer, kept by its connecting task.
struct Made {
    endpoints: Mutex<BTreeMap<Key, Endpoint>>,
    /// Bumped when `endpoints` changes.
    version: watch::Sender<u64>,
}

/// The [`Discover`](tower::discover::Discover) stream of a set of
/// [`Upstreams`]: `connections` endpoints per address, inserted when the
/// address joins, removed when it leaves. It never ends and never fails.
///
/// A task started with it makes the endpoints as addresses join (so
/// upstreams are connected and watched before the first request) and
/// drops its handles as they leave; it ends when the stream is dropped.
pub struct Discovery {
    made: Arc<Made>,
    version: watch::Receiver<u64>,
    current: BTreeSet<Key>,
    changes: VecDeque<Change<Key, Endpoint>>,
    wait: ReusableBoxFuture<'static, ()>,
    /// `wait` is polled on every `poll_next` (p2c calls it from every
    /// `poll_ready`): skipping it while the waker was the same would trust
    /// a registration that tokio's cooperative budget may never have made
    /// (an exhausted budget answers Pending without registering), and a
    /// discovery change would then wake nobody.
    waiting: bool,
    /// Not read yet.
    first: bool,
    health: Arc<watch::Sender<Up>>,
    _stop: DropGuard,
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Discovery over `upstreams`, `connections` per address, each made
    /// with `settings`. Starts the connecting task in the current runtime.
    pub(crate) fn new<C>(upstreams: &Upstreams, settings: Settings<C>, connections: usize) -> Self
    where
        C: MakeFraming + Clone + fmt::Debug + Send + Sync + 'static,
    {
        let settings = Arc::new(settings);
        let health = upstreams.shared.up.clone();
        let (version_tx, version) = watch::channel(0u64);
        let made = Arc::new(Made {
            endpoints: Mutex::new(BTreeMap::new()),
            version: version_tx,
        });
        let stop = CancellationToken::new();
        tokio::spawn(connect_set(
            upstreams.clone(),
            made.clone(),
            settings,
            connections,
            health.clone(),
            stop.clone(),
        ));
        Discovery {
            made,
            version,
            current: BTreeSet::new(),
            changes: VecDeque::new(),
            wait: ReusableBoxFuture::new(std::future::pending()),
            waiting: false,
            first: true,
            health,
            _stop: stop.drop_guard(),
        }
    }

    /// Bumped whenever one of the endpoints goes up or down.
    pub(crate) fn health(&self) -> watch::Receiver<Up> {
        self.health.subscribe()
    }

    fn refresh(&mut self) {
        self.version.borrow_and_update();
        let endpoints = self
            .made
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for gone in self.current.iter().filter(|k| !endpoints.contains_key(k)) {
            self.changes.push_back(Change::Remove(*gone));
        }
        for (key, endpoint) in endpoints.iter() {
            if !self.current.contains(key) {
                self.changes
                    .push_back(Change::Insert(*key, endpoint.clone()));
            }
        }
        self.current = endpoints.keys().copied().collect();
    }
}

/// Makes and drops endpoints as the set changes, until stopped.
async fn connect_set<C>(
    // Kept: the set lives as long as a balancer over it.
    set: Upstreams,
    made: Arc<Made>,
    settings: Arc<Settings<C>>,
    connections: usize,
    health: Arc<watch::Sender<Up>>,
    stop: CancellationToken,
) where
    C: MakeFraming + Clone + fmt::Debug + Send + Sync + 'static,
{
    let mut addrs = set.watch();
    loop {
        let wanted = addrs.borrow_and_update().clone();
        let mut dropped = Vec::new();
        {
            let mut endpoints = made
                .endpoints
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let gone: Vec<Key> = endpoints
                .keys()
                .filter(|k| !wanted.contains(&k.addr))
                .copied()
                .collect();
            for key in gone {
                dropped.extend(endpoints.remove(&key));
            }
            for addr in &wanted {
                for connection in 0..connections {
                    let key = Key {
                        addr: *addr,
                        connection,
                    };
                    endpoints.entry(key).or_insert_with(|| {
                        Endpoint::spawn(*addr, settings.clone(), health.clone())
                    });
                }
            }
        }
        // Outside the lock.
        for endpoint in dropped {
            endpoint.stop();
        }
        made.version.send_modify(|v| *v = v.wrapping_add(1));
        tokio::select! {
            () = stop.cancelled() => break,
            changed = addrs.changed() => if changed.is_err() { break },
        }
    }
    let all = std::mem::take(
        &mut *made
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    for endpoint in all.values() {
        endpoint.stop();
    }
}

impl Stream for Discovery {
    type Item = Result<Change<Key, Endpoint>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(change) = this.changes.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            if std::mem::take(&mut this.first) {
                this.refresh();
                continue;
            }
            if !this.waiting {
                let mut version = this.version.clone();
                this.wait.set(async move {
                    if version.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                });
                this.waiting = true;
            }
            match this.wait.poll(cx) {
                Poll::Ready(()) => {
                    this.waiting = false;
                    this.refresh();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Sends on a channel when woken.
    struct Tell(tokio::sync::mpsc::UnboundedSender<()>);

    impl std::task::Wake for Tell {
        fn wake(self: Arc<Self>) {
            let _ = self.0.send(());
        }
    }

    async fn wait(rx: &mut tokio::sync::mpsc::UnboundedReceiver<()>) {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("woken");
    }

    /// Polls `d` with `waker` until it has nothing to say.
    fn drain(d: &mut Discovery, waker: &Waker) -> usize {
        let mut cx = Context::from_waker(waker);
        let mut changes = 0;
        while let Poll::Ready(Some(_)) = Pin::new(&mut *d).poll_next(&mut cx) {
            changes += 1;
        }
        changes
    }

    /// A change after polls with the same waker, and after polls with
    /// another waker in between, wakes the last waker.
    #[tokio::test]
    async fn a_change_wakes_the_last_waker_whatever_polled_before() {
        let set = Upstreams::new();
        set.insert(addr(1));
        let settings = crate::endpoint::Settings::default();
        let mut d = Discovery::new(&set, settings, 1);
        let (tx, mut woken) = tokio::sync::mpsc::unbounded_channel();
        let waker = Waker::from(Arc::new(Tell(tx)));
        // The first endpoint (maybe after the connecting task made it).
        let mut seen = drain(&mut d, &waker);
        while seen == 0 {
            wait(&mut woken).await;
            seen += drain(&mut d, &waker);
        }
        assert_eq!(seen, 1);
        while woken.try_recv().is_ok() {}
        // Same waker again (the skip), then a waker that does nothing, then
        // the real one: the change wakes the real one.
        assert_eq!(drain(&mut d, &waker), 0);
        assert_eq!(drain(&mut d, Waker::noop()), 0);
        assert_eq!(drain(&mut d, &waker), 0);
        assert_eq!(drain(&mut d, &waker), 0);
        set.insert(addr(2));
        wait(&mut woken).await;
        assert_eq!(drain(&mut d, &waker), 1);
        // And once more after only skipped polls.
        assert_eq!(drain(&mut d, &waker), 0);
        set.remove(addr(1));
        wait(&mut woken).await;
        assert_eq!(drain(&mut d, &waker), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn names_are_re_resolved_and_a_failed_lookup_keeps_the_last_answer() {
        let set = Upstreams::new();
        set.insert(addr(1));
        let answers = Arc::new(Mutex::new(VecDeque::from([
            Ok(vec![addr(2), addr(3)]),
            Err(io::ErrorKind::TimedOut),
            Ok(vec![addr(4)]),
        ])));
        let a = answers.clone();
        let task = set.resolve_with("svc:7000", Duration::from_secs(30), move |name| {
            assert_eq!(name, "svc:7000");
            let next = a.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
            async move {
                match next {
                    Some(Ok(addrs)) => Ok(addrs),
                    Some(Err(kind)) => Err(io::Error::from(kind)),
                    None => Ok(vec![addr(4)]),
                }
            }
        });
        let mut seen = set.watch();
        let want = |v: &[u16]| v.iter().map(|p| addr(*p)).collect::<BTreeSet<_>>();
        seen.wait_for(|s| *s == want(&[1, 2, 3])).await.unwrap();
        // The failed lookup 30 s later changes nothing; the next one does.
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(set.addrs(), want(&[1, 2, 3]));
        seen.wait_for(|s| *s == want(&[1, 4])).await.unwrap();
        // Removing the static one leaves what the name gives.
        set.remove(addr(1));
        assert_eq!(set.addrs(), want(&[4]));
        drop(set);
        drop(seen);
        // Every handle gone: the resolving task ends.
        task.await.unwrap();
    }
}
