//! Prometheus metrics for an msgi server, on its observer hook.
//!
//! [`Metrics`] is an [`Observer`]: give a clone to
//! [`ServerBuilder::observer`](msgi::ServerBuilder::observer) (several
//! servers may share one), put [`Metrics::layer`] around the handler to
//! count the requests each layer refused, and answer a scrape with
//! [`Metrics::encode`] (or [`Metrics::register`] them into a
//! `prometheus_client` registry of your own, next to your metrics).
//!
//! ```
//! use msgi::{Frame, Server};
//! use tower::ServiceBuilder;
//!
//! let metrics = msgi_metrics::Metrics::new();
//! let server = Server::builder().observer(metrics.clone()).build()?;
//! let handler = ServiceBuilder::new()
//!     .layer(metrics.layer())
//!     .service(tower::service_fn(|f: Frame| async move {
//!         Ok::<_, std::convert::Infallible>(Some(f))
//!     }));
//! // server.serve(listener, handler).await; and on each scrape:
//! let text = metrics.encode();
//! assert!(text.contains("msgi_connections_opened_total 0"));
//! # let _ = (server, handler);
//! # Ok::<(), msgi::ConfigError>(())
//! ```
//!
//! # The metrics
//!
//! | name | type | labels |
//! |---|---|---|
//! | `msgi_connections` | gauge: sessions open now | |
//! | `msgi_connections_opened_total` | counter: sessions started | |
//! | `msgi_connections_rejected_total` | counter: connections that got no session | `reason` ([`Rejection::kind`]) |
//! | `msgi_connections_closed_total` | counter: sessions ended | `reason` ([`CloseReason::kind`]) |
//! | `msgi_frames_received_total`, `msgi_received_bytes_total` | counters | `kind` ([`msgi::kind_label`]) |
//! | `msgi_frames_sent_total`, `msgi_sent_bytes_total` | counters: frames queued for peers | `kind` |
//! | `msgi_written_bytes_total` | counter: bytes on the wire (after wire transforms) | |
//! | `msgi_write_stalls_total` | counter: writes that waited for a slow reader | |
//! | `msgi_errors_total` | counter: errors a session went on from | `cause` ([`ErrorCause::label`]) |
//! | `msgi_requests_rejected_total` | counter: requests a layer refused | `layer`: `rate_limit`, `timeout`, `load_shed` |
//! | `msgi_request_duration_seconds` | histogram: from the read of a request to its answer queued (100 µs to 10 s) | |
//! | `msgi_write_queue_bytes` | gauge: bytes waiting to be written, all sessions | |
//! | `msgi_outbox_frames` | gauge: pushes waiting in outboxes, all sessions | |
//! | `msgi_requests_in_flight` | gauge: requests read and not yet answered, all sessions | |
//!
//! Frame bytes are [`Frame::wire_len`](msgi::Frame::wire_len) (before wire
//! transforms). Every label is one of a fixed set: no peer-chosen text
//! becomes a label.
//!
//! # Cost
//!
//! Counters are atomics in one allocation made by [`Metrics::new`], indexed
//! by a label's position: a report ([`Observer::session_activity`], once
//! per wake-up of a session's task) is a few relaxed `fetch_add`s (one per
//! kind of frame seen, one per latency, one per changed depth): no lock, no
//! allocation, no label text. The text is made only when scraped. Depth
//! gauges need no per-session state ([`msgi::Activity::depth_changes`]).
//! All sessions add to the same atomics, so on many cores they share their
//! cache lines.
//!
//! # Why `prometheus-client`
//!
//! The library must not install a global recorder, and the application
//! owns what its metrics go to. `prometheus-client` (the Prometheus
//! project's own Rust client) has no global state: its `Registry` is a
//! value the application makes and scrapes, and [`Metrics`] registers into
//! it as one `Collector`; it does the OpenMetrics text encoding (escaping,
//! names, histogram buckets) so this crate writes no exposition format by
//! hand, and without its `protobuf` feature it adds only `dtoa`, `itoa` and
//! `parking_lot`. The `metrics` facade instead routes every update through a
//! recorder (a global one, unless each call site is given one): the
//! application would have to install it, and every increment would be a
//! dynamic call into it. An application on the `metrics` facade can read
//! this crate's totals through its own observer (msgi's [`Observer`]
//! composes: `(a, b)`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use msgi::{
    Activity, BoxError, CloseReason, ErrorCause, Frame, Kind, Observer, Rejection, Session,
};
use msgi_middleware::Refused;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::encode`]'s text (OpenMetrics, which
/// Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One frame kind per label of [`msgi::kind_label`], in the same order.
const KINDS: [(Kind, &str); 9] = [
    (Kind::PING, "ping"),
    (Kind::PONG, "pong"),
    (Kind::DATA, "data"),
    (Kind::CONTROL, "control"),
    (Kind::ERROR, "error"),
    (Kind::HEARTBEAT, "heartbeat"),
    (Kind::DISCONNECT, "disconnect"),
    (APPLICATION, "application"),
    (RESERVED, "reserved"),
];
/// An application kind: all count under `application`.
const APPLICATION: Kind = match Kind::app(Kind::APP_MIN) {
    Some(kind) => kind,
    None => Kind::DATA,
};
/// A reserved kind: all count under `reserved`.
const RESERVED: Kind = match Kind::new(0) {
    Some(kind) => kind,
    None => Kind::DATA,
};

/// Close reasons ([`CloseReason::kind`]); the last counts any other.
const CLOSES: [&str; 14] = [
    "peer_disconnect",
    "peer_closed",
    "peer_reset",
    "idle_timeout",
    "handshake_timeout",
    "protocol_violation",
    "server_shutdown",
    "slow_consumer",
    "client_id_taken_over",
    "closed",
    "service_failed",
    "aborted",
    "drain_timeout",
    "other",
];

/// Rejections ([`Rejection::kind`]); the last counts any other.
const REJECTIONS: [&str; 6] = [
    "server_full",
    "too_many_from_address",
    "accept_timeout",
    "accept_failed",
    "server_shutdown",
    "other",
];

/// Error causes ([`ErrorCause::label`]); the last counts any other.
const CAUSES: [&str; 7] = [
    "handler",
    "no_response",
    "answer_kind",
    "answer_not_sent",
    "push_dropped",
    "peer",
    "other",
];

/// Layers that refuse requests; the last counts any other [`Refused`].
const LAYERS: [&str; 4] = ["rate_limit", "timeout", "load_shed", "other"];

/// Upper bounds of the latency buckets, in seconds (and below in
/// nanoseconds): 100 µs to 10 s, then `+Inf`.
const BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const BUCKET_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// The counts, shared by every clone of [`Metrics`].
struct Counts {
    opened: AtomicU64,
    closed: [AtomicU64; CLOSES.len()],
    rejected: [AtomicU64; REJECTIONS.len()],
    frames_in: [AtomicU64; KINDS.len()],
    bytes_in: [AtomicU64; KINDS.len()],
    frames_out: [AtomicU64; KINDS.len()],
    bytes_out: [AtomicU64; KINDS.len()],
    written: AtomicU64,
    stalls: AtomicU64,
    errors: [AtomicU64; CAUSES.len()],
    refused: [AtomicU64; LAYERS.len()],
    /// Per bucket (not cumulative); the last is `+Inf`.
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_nanos: AtomicU64,
    write_queue: AtomicI64,
    outbox: AtomicI64,
    in_flight: AtomicI64,
}

/// Prometheus metrics of msgi servers: an [`Observer`] (give a clone to
/// each server), a layer counting refused requests ([`Metrics::layer`]),
/// and the text of a scrape ([`Metrics::encode`]). Clones share the
/// counts. See the [crate docs](crate) for the metrics and their cost.
#[derive(Clone)]
pub struct Metrics {
    counts: Arc<Counts>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("opened", &self.counts.opened.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every count at zero.
    pub fn new() -> Metrics {
        Metrics {
            counts: Arc::new(Counts {
                opened: AtomicU64::new(0),
                closed: counters(),
                rejected: counters(),
                frames_in: counters(),
                bytes_in: counters(),
                frames_out: counters(),
                bytes_out: counters(),
                written: AtomicU64::new(0),
                stalls: AtomicU64::new(0),
                errors: counters(),
                refused: counters(),
                latency: counters(),
                latency_nanos: AtomicU64::new(0),
                write_queue: AtomicI64::new(0),
                outbox: AtomicI64::new(0),
                in_flight: AtomicI64::new(0),
            }),
        }
    }

    /// Adds these metrics to `registry` (one collector, read at each
    /// scrape), named as in the [crate docs](crate) (a registry made
    /// `with_prefix` puts its prefix before `msgi_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }

    /// The text of a scrape of these metrics alone, in the OpenMetrics
    /// text format ([`CONTENT_TYPE`]), ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut text = String::new();
        // Writing to a String does not fail, and every value encodes.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    /// A layer that counts the requests a layer below it refused, by layer:
    /// msgi-middleware's rate limit and frame timeout (their answers carry
    /// [`Refused`]), tower's `LoadShed` (`Overloaded`) and `Timeout`
    /// (`Elapsed`). Put it outside them. It looks only at ERROR answers and
    /// errors: an ordinary answer costs one comparison.
    pub fn layer(&self) -> CountRefusedLayer {
        CountRefusedLayer {
            metrics: self.clone(),
        }
    }
}

fn index_of(labels: &[&str], label: &str) -> usize {
    labels
        .iter()
        .position(|l| *l == label)
        .unwrap_or(labels.len() - 1)
}

fn cause_index(cause: ErrorCause) -> usize {
    index_of(&CAUSES, cause.label())
}

/// Adds a depth change to a gauge (nothing for no change).
fn add_change(gauge: &AtomicI64, change: i64) {
    if change != 0 {
        gauge.fetch_add(change, Relaxed);
    }
}

/// Adds one report's frames and bytes by kind.
fn add_by_kind(frames: &[AtomicU64], bytes: &[AtomicU64], counted: &msgi::ByKind) {
    for (i, (kind, _)) in KINDS.iter().enumerate() {
        let (n, b) = counted.get(*kind);
        if n > 0 {
            frames[i].fetch_add(n, Relaxed);
            bytes[i].fetch_add(b, Relaxed);
        }
    }
}

impl Observer for Metrics {
    fn session_opened(&self, _session: &Session) {
        self.counts.opened.fetch_add(1, Relaxed);
    }

    fn session_closed(&self, _session: &Session, reason: &CloseReason) {
        self.counts.closed[index_of(&CLOSES, reason.kind())].fetch_add(1, Relaxed);
    }

    fn connection_rejected(&self, rejection: Rejection) {
        self.counts.rejected[index_of(&REJECTIONS, rejection.kind())].fetch_add(1, Relaxed);
    }

    fn session_activity(&self, _session: &Session, activity: &Activity) {
        let c = &*self.counts;
        add_by_kind(&c.frames_in, &c.bytes_in, &activity.frames_in);
        add_by_kind(&c.frames_out, &c.bytes_out, &activity.frames_out);
        if activity.bytes_written > 0 {
            c.written.fetch_add(activity.bytes_written, Relaxed);
        }
        if activity.write_stalls > 0 {
            c.stalls
                .fetch_add(u64::from(activity.write_stalls), Relaxed);
        }
        for (cause, n) in activity.errors() {
            c.errors[cause_index(cause)].fetch_add(u64::from(n), Relaxed);
        }
        let latencies = activity.latencies();
        if !latencies.is_empty() {
            let mut nanos = 0u64;
            for latency in latencies {
                let n = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
                nanos = nanos.saturating_add(n);
                let bucket = BUCKET_NANOS.partition_point(|bound| *bound < n);
                c.latency[bucket].fetch_add(1, Relaxed);
            }
            c.latency_nanos.fetch_add(nanos, Relaxed);
        }
        let change = activity.depth_changes();
        add_change(&c.write_queue, change.write_queue);
        add_change(&c.outbox, change.outbox);
        add_change(&c.in_flight, change.in_flight);
    }
}

/// Writes one counter family (label `key`, one entry per label), leaving
/// out zero entries of a family that has any.
fn counter_family(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    key: &str,
    labels: &[&str],
    values: &[AtomicU64],
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (label, value) in labels.iter().zip(values) {
        let value = value.load(Relaxed);
        if value > 0 {
            let labels = [(key, *label)];
            let family = metric.encode_family(&labels)?;
            ConstCounter::new(value).encode(family)?;
        }
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> fmt::Result {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, unit, counter.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, unit, gauge.metric_type())?)
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let c = &*self.counts;
        let e = &mut encoder;
        let bytes = Some(&Unit::Bytes);
        let opened = c.opened.load(Relaxed);
        let closed: u64 = c.closed.iter().map(|n| n.load(Relaxed)).sum();
        gauge(
            e,
            "msgi_connections",
            "Sessions open now.",
            None,
            i64::try_from(opened.saturating_sub(closed)).unwrap_or(i64::MAX),
        )?;
        counter(
            e,
            "msgi_connections_opened",
            "Sessions started.",
            None,
            opened,
        )?;
        counter_family(
            e,
            "msgi_connections_rejected",
            "Connections that got no session, by reason.",
            None,
            "reason",
            &REJECTIONS,
            &c.rejected,
        )?;
        counter_family(
            e,
            "msgi_connections_closed",
            "Sessions ended, by reason.",
            None,
            "reason",
            &CLOSES,
            &c.closed,
        )?;
        let kinds = KINDS.map(|(_, label)| label);
        counter_family(
            e,
            "msgi_frames_received",
            "Frames read from peers, by kind.",
            None,
            "kind",
            &kinds,
            &c.frames_in,
        )?;
        counter_family(
            e,
            "msgi_received",
            "Bytes of the frames read from peers (before wire transforms), by kind.",
            bytes,
            "kind",
            &kinds,
            &c.bytes_in,
        )?;
        counter_family(
            e,
            "msgi_frames_sent",
            "Frames queued for peers, by kind.",
            None,
            "kind",
            &kinds,
            &c.frames_out,
        )?;
        counter_family(
            e,
            "msgi_sent",
            "Bytes of the frames queued for peers (before wire transforms), by kind.",
            bytes,
            "kind",
            &kinds,
            &c.bytes_out,
        )?;
        counter(
            e,
            "msgi_written",
            "Bytes written to peers (after wire transforms).",
            bytes,
            c.written.load(Relaxed),
        )?;
        counter(
            e,
            "msgi_write_stalls",
            "Writes that waited for a peer reading slower than the session writes.",
            None,
            c.stalls.load(Relaxed),
        )?;
        counter_family(
            e,
            "msgi_errors",
            "Errors a session went on from, by cause.",
            None,
            "cause",
            &CAUSES,
            &c.errors,
        )?;
        counter_family(
            e,
            "msgi_requests_rejected",
            "Requests a layer refused, by layer.",
            None,
            "layer",
            &LAYERS,
            &c.refused,
        )?;
        let mut buckets = [(0.0, 0u64); BUCKETS.len() + 1];
        let mut count = 0;
        for (i, bucket) in buckets.iter_mut().enumerate() {
            let n = c.latency[i].load(Relaxed);
            count += n;
            *bucket = (BUCKETS.get(i).copied().unwrap_or(f64::MAX), n);
        }
        let sum = Duration::from_nanos(c.latency_nanos.load(Relaxed)).as_secs_f64();
        let mut metric = e.encode_descriptor(
            "msgi_request_duration",
            "From the read of a request to its answer queued.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            sum, count, &buckets, None,
        )?;
        gauge(
            e,
            "msgi_write_queue",
            "Bytes waiting to be written, all sessions.",
            bytes,
            c.write_queue.load(Relaxed),
        )?;
        gauge(
            e,
            "msgi_outbox_frames",
            "Pushed frames waiting in session outboxes, all sessions.",
            None,
            c.outbox.load(Relaxed),
        )?;
        gauge(
            e,
            "msgi_requests_in_flight",
            "Requests read and not yet answered, all sessions.",
            None,
            c.in_flight.load(Relaxed),
        )?;
        Ok(())
    }
}

impl fmt::Debug for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counts").finish_non_exhaustive()
    }
}

/// Counts requests refused by the layers it wraps: see [`Metrics::layer`].
#[derive(Clone, Debug)]
pub struct CountRefusedLayer {
    metrics: Metrics,
}

impl<S> tower::Layer<S> for CountRefusedLayer {
    type Service = CountRefused<S>;

    fn layer(&self, inner: S) -> CountRefused<S> {
        CountRefused {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`CountRefusedLayer`]: the inner service, its refusals
/// counted; its answers and errors unchanged.
#[derive(Clone, Debug)]
pub struct CountRefused<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> tower::Service<Frame> for CountRefused<S>
where
    S: tower::Service<Frame, Response = Option<Frame>>,
    S::Error: 'static,
{
    type Response = Option<Frame>;
    type Error = S::Error;
    type Future = CountRefusedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, frame: Frame) -> Self::Future {
        CountRefusedFuture {
            inner: self.inner.call(frame),
            metrics: Some(self.metrics.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of [`CountRefused`].
    #[derive(Debug)]
    pub struct CountRefusedFuture<F> {
        #[pin]
        inner: F,
        metrics: Option<Metrics>,
    }
}

impl<F, E> Future for CountRefusedFuture<F>
where
    F: Future<Output = Result<Option<Frame>, E>>,
    E: 'static,
{
    type Output = Result<Option<Frame>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        let layer = match &out {
            Ok(Some(answer)) if answer.kind() == Kind::ERROR => {
                answer.extensions().get::<Refused>().map(|r| match r {
                    Refused::RateLimit => 0,
                    Refused::Timeout => 1,
                    _ => 3,
                })
            }
            Ok(_) => None,
            Err(e) => refused_by_tower(e),
        };
        if let (Some(layer), Some(metrics)) = (layer, this.metrics.take()) {
            metrics.counts.refused[layer].fetch_add(1, Relaxed);
        }
        Poll::Ready(out)
    }
}

/// The index in [`LAYERS`] of a tower layer's refusal: `e` itself, or in
/// the chain of a boxed error (tower's layers box theirs).
fn refused_by_tower(e: &dyn std::any::Any) -> Option<usize> {
    if e.is::<tower::load_shed::error::Overloaded>() {
        return Some(2);
    }
    if e.is::<tower::timeout::error::Elapsed>() {
        return Some(1);
    }
    let boxed = e.downcast_ref::<BoxError>()?;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&**boxed);
    while let Some(e) = next {
        if e.is::<tower::load_shed::error::Overloaded>() {
            return Some(2);
        }
        if e.is::<tower::timeout::error::Elapsed>() {
            return Some(1);
        }
        next = e.source();
    }
    None
}
