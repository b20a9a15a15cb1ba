//! [`Endpoint`]: one supervised connection to one upstream, as a tower
//! service with honest readiness and a real [`Load`].

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use msgi::{BoxError, Connected, FrameCodec, MakeFraming, Reconnect};
use msgi::{Client, ClientBuilder, ClientError, ConfigError, Forward, ForwardFuture, Frame, Kind};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard, ReusableBoxFuture};
use tower::load::Load;
use tower::Service;

use crate::error::Error;

/// How an endpoint's load is measured (what p2c compares).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadMeasure {
    /// Peak-EWMA of the answer latency, times the requests in flight plus
    /// one (tower's `PeakEwma`, with a failure penalty): a latency above
    /// the estimate replaces it at once, one below pulls it down with the
    /// decay. A failed request (an error, or an ERROR answer) counts as
    /// taking at least `failure_penalty`, so an upstream that fails fast
    /// never looks like the best one.
    PeakEwma {
        /// The estimate of a new connection, before any answer (default 1 ms).
        default_rtt: Duration,
        /// How fast an estimate falls back towards what is observed
        /// (default 1 s: on a LAN, where answers take well under a
        /// millisecond, one slow answer would otherwise keep an upstream
        /// out of the running for tens of seconds).
        decay: Duration,
        /// The latency a failed request counts as, at least (default 500 ms).
        failure_penalty: Duration,
    },
    /// Requests in flight on the endpoint.
    PendingRequests,
}

impl Default for LoadMeasure {
    fn default() -> Self {
        LoadMeasure::PeakEwma {
            default_rtt: Duration::from_millis(1),
            decay: Duration::from_secs(1),
            failure_penalty: Duration::from_millis(500),
        }
    }
}

/// Opens one upstream connection: the client's settings and the upstream's
/// address in, a connected client out.
type ConnectFn<C> = Arc<
    dyn Fn(ClientBuilder<C>, SocketAddr) -> BoxFuture<'static, Result<Client, ClientError>>
        + Send
        + Sync,
>;

/// How each upstream connection is made and watched. Checked when the
/// balancer is built ([`ConfigError`]).
#[derive(Clone)]
pub struct Settings<C = FrameCodec> {
    pub(crate) client: ClientBuilder<C>,
    /// `None`: TCP ([`ClientBuilder::connect`]).
    connect: Option<ConnectFn<C>>,
    pub(crate) backoff: Reconnect,
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) ping_failures: u32,
    pub(crate) load: LoadMeasure,
}

impl<C: fmt::Debug> fmt::Debug for Settings<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("client", &self.client)
            .field(
                "connector",
                &self.connect.as_ref().map_or("tcp", |_| "custom"),
            )
            .field("backoff", &self.backoff)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("ping_failures", &self.ping_failures)
            .field("load", &self.load)
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::new(Client::builder())
    }
}

/// The client's own reconnecting is off: the endpoint reconnects itself,
/// so that a lost connection fails its calls at once and the endpoint
/// leaves the ready set.
const NO_RECONNECT: Reconnect = Reconnect {
    initial_delay: Duration::ZERO,
    max_delay: Duration::ZERO,
    multiplier: 1.0,
    max_attempts: Some(0),
};

impl<C: MakeFraming + Clone + fmt::Debug> Settings<C> {
    /// Connections made with `client` (its framing, timeouts, call limit);
    /// its reconnect setting is replaced: the endpoint reconnects with
    /// [`backoff`](Settings::backoff).
    pub fn new(client: ClientBuilder<C>) -> Self {
        Settings {
            client: client.reconnect(NO_RECONNECT),
            connect: None,
            backoff: Reconnect {
                initial_delay: Duration::from_millis(50),
                max_delay: Duration::from_secs(5),
                multiplier: 2.0,
                max_attempts: None,
            },
            ping_interval: Duration::from_secs(2),
            ping_timeout: Duration::from_secs(1),
            ping_failures: 2,
            load: LoadMeasure::default(),
        }
    }

    /// Delays between connection attempts to a down upstream (default
    /// 50 ms doubling to 5 s, with jitter; `max_attempts` is ignored: an
    /// upstream is retried while it is in the set).
    pub fn backoff(mut self, backoff: Reconnect) -> Self {
        self.backoff = backoff;
        self
    }

    /// Ping each connected upstream this often (default 2 s), waiting at
    /// most `timeout` (default 1 s) for the PONG; after `failures`
    /// (default 2) pings in a row without one, the connection is closed
    /// (calls in flight on it fail) and made again with backoff.
    pub fn health(mut self, interval: Duration, timeout: Duration, failures: u32) -> Self {
        self.ping_interval = interval;
        self.ping_timeout = timeout;
        self.ping_failures = failures;
        self
    }

    /// Opens each upstream connection with `connector` instead of plain TCP:
    /// a tower service from the upstream's address to a transport, as
    /// [`ClientBuilder::connect_with_connector`] takes (a TLS connector, a
    /// pre-shared-key handshake over TCP, ...), cloned for each connection
    /// attempt. The framing (wire transforms) stays the client builder's.
    pub fn connector<K>(mut self, connector: K) -> Self
    where
        K: Service<SocketAddr> + Clone + Send + Sync + 'static,
        K::Response: Connected,
        K::Error: Into<BoxError>,
        K::Future: Send + 'static,
        C: Send + Sync + 'static,
    {
        self.connect = Some(Arc::new(move |client: ClientBuilder<C>, addr| {
            Box::pin(client.connect_with_connector(connector.clone(), addr))
        }));
        self
    }

    /// A connection to `addr`, made as these settings say.
    pub(crate) fn open(&self, addr: SocketAddr) -> BoxFuture<'static, Result<Client, ClientError>>
    where
        C: Send + Sync + 'static,
    {
        let client = self.client.clone();
        match &self.connect {
            Some(connect) => connect(client, addr),
            None => Box::pin(client.connect(addr)),
        }
    }

    /// How load is measured (default: peak-EWMA with a failure penalty).
    pub fn load(mut self, load: LoadMeasure) -> Self {
        self.load = load;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.ping_interval.is_zero() || self.ping_timeout.is_zero() {
            return Err(ConfigError::new(
                "health",
                "ping interval and timeout must be above zero",
            ));
        }
        if self.ping_failures == 0 {
            return Err(ConfigError::new("health", "failures must be at least 1"));
        }
        if self.backoff.initial_delay.is_zero() || self.backoff.max_delay.is_zero() {
            return Err(ConfigError::new(
                "backoff",
                "delays must be above zero (an upstream is retried for as long as it is in the set)",
            ));
        }
        if !self.backoff.multiplier.is_finite() || self.backoff.multiplier < 1.0 {
            return Err(ConfigError::new(
                "backoff",
                "multiplier must be a finite number >= 1",
            ));
        }
        if let LoadMeasure::PeakEwma {
            default_rtt, decay, ..
        } = self.load
        {
            if default_rtt.is_zero() || decay.is_zero() {
                return Err(ConfigError::new(
                    "load",
                    "default_rtt and decay must be above zero",
                ));
            }
        }
        Ok(())
    }
}

/// The latency estimate (peak-EWMA) and the requests in flight.
///
/// The estimate and its time are one value under a short lock (read
/// together, never torn: an estimate paired with another answer's time
/// would decay a fresh peak away), and an answer's update reads and
/// writes it under the same lock, so no observation is lost. The requests
/// in flight are an atomic.
#[derive(Debug)]
struct Meter {
    measure: LoadMeasure,
    in_flight: AtomicUsize,
    /// The estimate in nanoseconds, and when it was last set in
    /// nanoseconds since `base`.
    rtt: Mutex<(f64, u64)>,
    base: Instant,
}

fn nanos(d: Duration) -> f64 {
    // Cheaper than `as_nanos() as f64` (a u128 conversion), and as exact
    // for any latency this measures.
    d.as_secs_f64() * 1e9
}

impl Meter {
    fn new(measure: LoadMeasure) -> Meter {
        Meter {
            measure,
            in_flight: AtomicUsize::new(0),
            rtt: Mutex::new((Self::default_nanos(measure), 0)),
            base: Instant::now(),
        }
    }

    fn default_nanos(measure: LoadMeasure) -> f64 {
        match measure {
            LoadMeasure::PeakEwma { default_rtt, .. } => nanos(default_rtt),
            LoadMeasure::PendingRequests => 0.0,
        }
    }

    /// `now` in nanoseconds since `base` (saturating: 584 years).
    fn since_base(&self, now: Instant) -> u64 {
        let d = now.saturating_duration_since(self.base);
        d.as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()))
    }

    fn lock_rtt(&self) -> MutexGuard<'_, (f64, u64)> {
        // The value is two numbers, whole after any panic.
        self.rtt.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The estimate and the nanoseconds since it was set.
    fn rtt(&self, now: Instant) -> (f64, f64) {
        let (estimate, at) = *self.lock_rtt();
        (estimate, self.since_base(now).saturating_sub(at) as f64)
    }

    fn set_rtt(&self, estimate: f64, now: Instant) {
        *self.lock_rtt() = (estimate, self.since_base(now));
    }

    /// A new connection starts from the default estimate.
    fn reset(&self) {
        self.set_rtt(Self::default_nanos(self.measure), Instant::now());
    }

    /// Records one answer's latency (`failed`: at least the penalty).
    fn observe(&self, latency: Duration, failed: bool) {
        let LoadMeasure::PeakEwma {
            decay,
            failure_penalty,
            ..
        } = self.measure
        else {
            return;
        };
        let mut observed = nanos(latency);
        if failed {
            observed = observed.max(nanos(failure_penalty));
        }
        let now = Instant::now();
        let at_now = self.since_base(now);
        let mut rtt = self.lock_rtt();
        let (estimate, at) = *rtt;
        let next = if observed > estimate {
            observed
        } else {
            let elapsed = at_now.saturating_sub(at) as f64;
            let kept = (-elapsed / nanos(decay)).exp();
            estimate * kept + observed * (1.0 - kept)
        };
        *rtt = (next, at_now);
    }

    /// The estimate now (decayed towards zero since the last answer), in
    /// nanoseconds.
    fn estimate(&self) -> f64 {
        let LoadMeasure::PeakEwma { decay, .. } = self.measure else {
            return 0.0;
        };
        let (estimate, elapsed) = self.rtt(Instant::now());
        estimate * (-elapsed / nanos(decay)).exp()
    }

    fn cost(&self) -> f64 {
        let pending = self.in_flight.load(Ordering::Relaxed) as f64;
        match self.measure {
            LoadMeasure::PeakEwma { .. } => self.estimate() * (pending + 1.0),
            LoadMeasure::PendingRequests => pending,
        }
    }
}

/// One connection to one upstream, supervised: made again with backoff
/// when it is lost or stops answering pings, for as long as an `Endpoint`
/// handle exists (the last one dropped stops the supervision; calls in
/// flight still get their answers: a removed upstream drains).
///
/// A [`Service<Frame>`] in the shape of a server's handler, as
/// [`Forward`] (one-way frames stay one-way, an upstream ERROR answer is
/// the response), with honest readiness: `poll_ready` is `Pending` while
/// the upstream is down (woken when it is back) and while its client is at
/// its call limit, never `Ready(Err)` (a balancer keeps the endpoint and
/// sees it come back). [`Load`] is [`LoadMeasure`]'s cost while connected
/// and infinite while not.
pub struct Endpoint {
    addr: SocketAddr,
    meter: Arc<Meter>,
    /// The supervisor's current client (`None` while down).
    link: watch::Receiver<Option<Client>>,
    current: Option<Forward>,
    wait: Option<ReusableBoxFuture<'static, ()>>,
    waiting: bool,
    /// A clone made for one call ([`Endpoint::for_call`]): fails instead of
    /// waiting for a down upstream to come back.
    fail_when_down: bool,
    /// Cancelled when the upstream leaves the set (or every handle is
    /// dropped): the supervisor stops, this handle takes no new request.
    stop: CancellationToken,
    /// Set with `stop` by [`Endpoint::stop`]: what `poll_ready` checks, an
    /// atomic load where `CancellationToken::is_cancelled` takes a lock.
    removed: Arc<AtomicBool>,
    _stop_on_drop: Arc<DropGuard>,
}

impl Clone for Endpoint {
    fn clone(&self) -> Self {
        Endpoint {
            addr: self.addr,
            meter: self.meter.clone(),
            link: self.link.clone(),
            current: None,
            wait: None,
            waiting: false,
            fail_when_down: self.fail_when_down,
            stop: self.stop.clone(),
            removed: self.removed.clone(),
            _stop_on_drop: self._stop_on_drop.clone(),
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("up", &self.is_up())
            .field("in_flight", &self.meter.in_flight.load(Ordering::Relaxed))
            .finish()
    }
}

impl Endpoint {
    /// Starts supervising a connection to `addr` (in the current tokio
    /// runtime). `health` is bumped whenever the endpoint goes up or down.
    pub(crate) fn spawn<C>(
        addr: SocketAddr,
        settings: Arc<Settings<C>>,
        health: Arc<watch::Sender<crate::discover::Up>>,
    ) -> Endpoint
    where
        C: MakeFraming + Clone + fmt::Debug + Send + Sync + 'static,
    {
        let (tx, link) = watch::channel(None);
        let stop = CancellationToken::new();
        let meter = Arc::new(Meter::new(settings.load));
        tokio::spawn(supervise(
            addr,
            settings,
            tx,
            stop.clone(),
            meter.clone(),
            health,
        ));
        Endpoint {
            addr,
            meter,
            link,
            current: None,
            wait: None,
            waiting: false,
            fail_when_down: false,
            stop: stop.clone(),
            removed: Arc::new(AtomicBool::new(false)),
            _stop_on_drop: Arc::new(stop.drop_guard()),
        }
    }

    /// The upstream's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// True while the upstream is connected and answering pings.
    pub fn is_up(&self) -> bool {
        !self.removed.load(Ordering::Acquire)
            && self
                .link
                .borrow()
                .as_ref()
                .is_some_and(Client::is_connected)
    }

    /// A clone for one call that fails with [`Error::Down`] rather than
    /// wait while the upstream is down (what a key-routed call wants: the
    /// key moves to another upstream).
    pub(crate) fn for_call(&self) -> Endpoint {
        let mut e = self.clone();
        e.fail_when_down = true;
        e
    }

    /// Stops the supervision: the upstream left the set. Calls in flight
    /// are answered; no new call is taken.
    pub(crate) fn stop(&self) {
        self.removed.store(true, Ordering::Release);
        self.stop.cancel();
    }

    /// The load measure's cost now.
    pub(crate) fn cost(&self) -> f64 {
        self.meter.cost()
    }

    fn poll_link_changed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.waiting {
            let mut link = self.link.clone();
            let changed = async move {
                // The sender gone (the supervisor stopped) ends the wait
                // for good: stay pending (the endpoint is being removed).
                if link.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            match &mut self.wait {
                Some(wait) => wait.set(changed),
                None => self.wait = Some(ReusableBoxFuture::new(changed)),
            }
            self.waiting = true;
        }
        if let Some(wait) = &mut self.wait {
            ready!(wait.poll(cx));
        }
        self.waiting = false;
        Poll::Ready(())
    }
}

impl Service<Frame> for Endpoint {
    type Response = Option<Frame>;
    type Error = Error;
    type Future = EndpointFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.removed.load(Ordering::Acquire) {
            // Removed: a balancer drops it (it is leaving the set anyway).
            self.current = None;
            return Poll::Ready(Err(Error::Down(self.addr)));
        }
        loop {
            if let Some(forward) = &mut self.current {
                if forward.get_ref().is_connected() {
                    match forward.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            // A reserved handle answers Ready without
                            // looking: check the connection again.
                            if forward.get_ref().is_connected() {
                                return Poll::Ready(Ok(()));
                            }
                        }
                        Poll::Ready(Err(_)) => {}
                        // At the call limit: woken when a place frees up.
                        Poll::Pending => return Poll::Pending,
                    }
                }
                // Lost: drop this handle (and any reservation) and look
                // for the supervisor's next client.
                self.current = None;
            }
            let next = self
                .link
                .borrow_and_update()
                .as_ref()
                .filter(|c| c.is_connected())
                .cloned();
            match next {
                Some(client) => self.current = Some(Forward::new(client)),
                None if self.fail_when_down => {
                    return Poll::Ready(Err(Error::Down(self.addr)));
                }
                None => ready!(self.poll_link_changed(cx)),
            }
        }
    }

    fn call(&mut self, frame: Frame) -> EndpointFuture {
        let Some(forward) = &mut self.current else {
            return EndpointFuture {
                inner: None,
                track: None,
            };
        };
        let track = frame.request_id().map(|_| Track::start(&self.meter));
        EndpointFuture {
            inner: Some(forward.call(frame)),
            track,
        }
    }
}

impl Load for Endpoint {
    type Metric = f64;

    fn load(&self) -> f64 {
        match &self.current {
            Some(f) if f.get_ref().is_connected() => self.meter.cost(),
            _ => f64::INFINITY,
        }
    }
}

/// One correlated request counted in flight; its latency is recorded when
/// it is answered (a request abandoned is only uncounted).
struct Track {
    meter: Arc<Meter>,
    sent: Instant,
}

impl Track {
    fn start(meter: &Arc<Meter>) -> Track {
        meter.in_flight.fetch_add(1, Ordering::Relaxed);
        Track {
            meter: meter.clone(),
            sent: Instant::now(),
        }
    }
}

impl Drop for Track {
    fn drop(&mut self) {
        self.meter.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The answer of an [`Endpoint`].
pub struct EndpointFuture {
    inner: Option<ForwardFuture>,
    track: Option<Track>,
}

impl fmt::Debug for EndpointFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointFuture").finish_non_exhaustive()
    }
}

impl Future for EndpointFuture {
    type Output = Result<Option<Frame>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = &mut self.inner else {
            return Poll::Ready(Err(Error::Client(ClientError::NotReady)));
        };
        let result = ready!(Pin::new(inner).poll(cx));
        if let Some(track) = self.track.take() {
            let failed = match &result {
                Ok(Some(answer)) => answer.kind() == Kind::ERROR,
                Ok(None) => false,
                Err(_) => true,
            };
            track.meter.observe(track.sent.elapsed(), failed);
        }
        Poll::Ready(result.map_err(Error::Client))
    }
}

/// Why a connection's watch ended.
enum End {
    Stopped,
    Lost,
    Unhealthy,
}

async fn supervise<C>(
    addr: SocketAddr,
    settings: Arc<Settings<C>>,
    link: watch::Sender<Option<Client>>,
    stop: CancellationToken,
    meter: Arc<Meter>,
    health: Arc<watch::Sender<crate::discover::Up>>,
) where
    C: MakeFraming + Clone + fmt::Debug + Send + Sync + 'static,
{
    let mut attempt = 0u32;
    loop {
        let connect = settings.open(addr);
        let client = tokio::select! {
            () = stop.cancelled() => return,
            client = connect => client,
        };
        match client {
            Err(error) => {
                tracing::debug!(%addr, %error, attempt, "upstream connect failed");
            }
            Ok(client) => {
                attempt = 0;
                meter.reset();
                link.send_replace(Some(client.clone()));
                health.send_modify(|up| *up.entry(addr).or_default() += 1);
                tracing::info!(%addr, "upstream up");
                let end = watch_health(&client, &settings, &stop).await;
                link.send_replace(None);
                health.send_modify(|up| {
                    if let Some(n) = up.get_mut(&addr) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            up.remove(&addr);
                        }
                    }
                });
                match end {
                    // Removed: this handle goes; the connection closes
                    // once the calls in flight are answered.
                    End::Stopped => return,
                    End::Lost => tracing::warn!(%addr, "upstream connection lost"),
                    End::Unhealthy => {
                        tracing::warn!(%addr, "upstream stopped answering pings; reconnecting");
                        // Closing fails its calls in flight (answered with
                        // an ERROR, or retried): none waits for ever.
                        drop(client.close());
                    }
                }
            }
        }
        let delay = settings.backoff.delay(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn watch_health<C>(client: &Client, settings: &Settings<C>, stop: &CancellationToken) -> End {
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = stop.cancelled() => return End::Stopped,
            _ = client.closed() => return End::Lost,
            () = tokio::time::sleep(settings.ping_interval) => {
                let ping = tokio::time::timeout(settings.ping_timeout, client.ping());
                let answered = tokio::select! {
                    () = stop.cancelled() => return End::Stopped,
                    answered = ping => matches!(answered, Ok(Ok(_))),
                };
                if answered {
                    failures = 0;
                } else if client.is_closed() {
                    return End::Lost;
                } else {
                    failures += 1;
                    if failures >= settings.ping_failures {
                        return End::Unhealthy;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ewma() -> LoadMeasure {
        LoadMeasure::PeakEwma {
            default_rtt: Duration::from_millis(1),
            decay: Duration::from_secs(10),
            failure_penalty: Duration::from_millis(500),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_failure_costs_at_least_the_penalty() {
        let ok = Meter::new(ewma());
        let failing = Meter::new(ewma());
        ok.observe(Duration::from_millis(2), false);
        failing.observe(Duration::from_micros(10), true);
        assert!(failing.cost() >= nanos(Duration::from_millis(500)) * 0.99);
        assert!(failing.cost() > ok.cost() * 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peak_is_taken_at_once_and_decays_with_time() {
        let m = Meter::new(ewma());
        m.observe(Duration::from_millis(40), false);
        assert_eq!(m.cost(), nanos(Duration::from_millis(40)));
        tokio::time::advance(Duration::from_secs(10)).await;
        let decayed = m.cost();
        assert!((decayed - nanos(Duration::from_millis(40)) / std::f64::consts::E).abs() < 1e3);
        // In flight multiplies the cost.
        m.in_flight.store(3, Ordering::Relaxed);
        assert!((m.cost() - decayed * 4.0).abs() < 1e3);
    }

    #[tokio::test(start_paused = true)]
    async fn pending_requests_is_the_count_in_flight() {
        let m = Meter::new(LoadMeasure::PendingRequests);
        m.observe(Duration::from_secs(1), true);
        assert_eq!(m.cost(), 0.0);
        m.in_flight.store(5, Ordering::Relaxed);
        assert_eq!(m.cost(), 5.0);
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let s = Settings::default();
        assert!(s.validate().is_ok());
        let zero = Duration::ZERO;
        assert!(s
            .clone()
            .health(zero, Duration::from_secs(1), 1)
            .validate()
            .is_err());
        assert!(s
            .clone()
            .health(Duration::from_secs(1), Duration::from_secs(1), 0)
            .validate()
            .is_err());
        let mut b = s.backoff;
        b.initial_delay = zero;
        assert!(s.clone().backoff(b).validate().is_err());
        let bad_load = LoadMeasure::PeakEwma {
            default_rtt: zero,
            decay: Duration::from_secs(1),
            failure_penalty: zero,
        };
        assert!(s.load(bad_load).validate().is_err());
    }
}
