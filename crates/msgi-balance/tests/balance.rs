//! The balancer behind a real gateway, with three upstream servers over
//! loopback: spread, failure, discovery at run time, affinity, fail-fast.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use msgi::{BoxError, Client, ClientError, Frame, Kind, Server};
use msgi_balance::{client_id_key, RetryIdempotent, Upstreams};
use support::{builder, builder_pending, closed_port, tally, within, Behaviour, Upstream};
use tokio::sync::Semaphore;
use tower::Service;

/// A gateway serving `handler` on loopback; its address and a stop switch.
async fn gateway<S>(handler: S) -> (SocketAddr, tokio::sync::oneshot::Sender<()>)
where
    S: Service<Frame, Response = Option<Frame>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder().build().unwrap();
    tokio::spawn(
        server
            .serve(listener, handler)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );
    (addr, stop)
}

fn three() -> [Upstream; 3] {
    [
        Upstream::start("a", Behaviour::default()),
        Upstream::start("b", Behaviour::default()),
        Upstream::start("c", Behaviour::default()),
    ]
}

fn set_of(ups: &[Upstream]) -> Upstreams {
    Upstreams::from(ups.iter().map(|u| u.addr))
}

fn addrs(ups: &[&Upstream]) -> BTreeSet<SocketAddr> {
    ups.iter().map(|u| u.addr).collect()
}

/// `n` correlated calls, `width` at a time, over `clients`.
async fn calls(clients: &[Client], n: usize, width: usize) -> Vec<Result<Frame, ClientError>> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch = (i..(i + width).min(n)).map(|j| {
            let c = clients[j % clients.len()].clone();
            async move { c.call(Frame::data(format!("{j}"))).await }
        });
        out.extend(join_all(batch).await);
        i += width;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_spreads_requests_evenly_over_three_upstreams() {
    let ups = three();
    let set = set_of(&ups);
    let balanced = builder_pending().build(&set).unwrap();
    within(set.wait_up(|up| up.len() == 3)).await;
    let (addr, _stop) = gateway(balanced).await;
    let clients = vec![within(Client::connect(addr)).await.unwrap(); 1];
    let answers = within(calls(&clients, 600, 6)).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let t = tally(&answers);
    for u in &ups {
        let n = t.get(u.name).copied().unwrap_or(0);
        // An even spread is 200 each; p2c on equal upstreams stays near it.
        assert!(n >= 100, "{} got {n} of 600: {t:?}", u.name);
        assert_eq!(u.hits(), n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_pass_through_and_one_way_stays_one_way() {
    let ups = three();
    let set = set_of(&ups);
    let balanced = builder().build(&set).unwrap();
    within(set.wait_up(|up| up.len() == 3)).await;
    let (addr, _stop) = gateway(balanced).await;
    let client = within(Client::connect(addr)).await.unwrap();
    let err = within(client.call(Frame::data("fail"))).await.unwrap_err();
    assert_eq!(err, ClientError::Remote("upstream says no".into()));
    for i in 0..30 {
        client
            .send(Frame::data(format!("one-way {i}")))
            .await
            .unwrap();
    }
    // All arrive one-way (counted as such upstream), and nothing comes back:
    // the next answer is the call's.
    let mut rx: Vec<_> = ups.iter().map(|u| u.one_way.clone()).collect();
    within(async {
        loop {
            let total: usize = rx.iter().map(|r| *r.borrow()).sum();
            if total == 30 {
                break;
            }
            let waits = rx.iter_mut().map(|r| Box::pin(r.changed()));
            futures_util::future::select_all(waits).await.0.unwrap();
        }
    })
    .await;
    assert!(ups.iter().all(|u| u.hits() == 1 || u.hits() == 0));
    let ok = within(client.call(Frame::data("x"))).await.unwrap();
    assert!(ok.payload_text().ends_with(":x"));
    // Nothing came back for the one-way frames: it would have been written
    // before the answer to this later call.
    let mut incoming = client.incoming().unwrap();
    assert!(futures_util::FutureExt::now_or_never(incoming.recv()).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_mid_traffic_leaves_no_request_unanswered() {
    let slow = || Behaviour {
        delay: Some(Duration::from_millis(5)),
        ..Behaviour::default()
    };
    let mut ups = [
        Upstream::start("a", slow()),
        Upstream::start("b", slow()),
        Upstream::start("c", slow()),
    ];
    let set = set_of(&ups);
    let balanced = builder().build(&set).unwrap();
    within(set.wait_up(|up| up.len() == 3)).await;
    let (addr, _stop) = gateway(balanced).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(within(Client::connect(addr)).await.unwrap());
    }
    let traffic = tokio::spawn({
        let clients = clients.clone();
        async move { calls(&clients, 800, 40).await }
    });
    let mut b_hits = ups[1].hits.clone();
    within(b_hits.wait_for(|n| *n >= 20)).await.unwrap();
    ups[1].kill();
    let answers = within(traffic).await.unwrap();
    // Every call ended: an answer, or the gateway's ERROR.
    assert_eq!(answers.len(), 800);
    let mut errors = 0;
    for a in &answers {
        match a {
            Ok(f) => assert!(f.payload_text().contains(':')),
            Err(ClientError::Remote(why)) => {
                errors += 1;
                assert!(
                    why.contains("connection lost") || why.contains("closed"),
                    "{why}"
                );
            }
            Err(other) => panic!("not an answer: {other:?}"),
        }
    }
    assert!(errors < 800);
    // And the others carry on.
    within(set.wait_up(|up| !up.contains(&ups[1].addr))).await;
    let after = within(calls(&clients, 60, 6)).await;
    let t = tally(&after);
    assert!(after.iter().all(Result::is_ok), "{after:?}");
    assert_eq!(t.get("b"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_once_on_another_upstream() {
    let gate = Arc::new(Semaphore::new(0));
    let mut ups = [
        Upstream::start(
            "a",
            Behaviour {
                gate: Some(gate.clone()),
                ..Behaviour::default()
            },
        ),
        Upstream::start("b", Behaviour::default()),
    ];
    let set = Upstreams::from([ups[0].addr]);
    let balanced = builder().build(&set).unwrap();
    within(set.wait_up(|up| up.len() == 1)).await;
    let policy = RetryIdempotent::new(|f: &Frame| f.kind() == Kind::DATA, 100, 0.2).unwrap();
    let handler = tower::ServiceBuilder::new()
        .layer(policy.into_layer())
        .service(balanced);
    let (addr, _stop) = gateway(handler).await;
    let client = within(Client::connect(addr)).await.unwrap();
    // Five DATA (idempotent) and five CONTROL (not) held by "a".
    let pending: Vec<_> = (0..10)
        .map(|i| {
            let c = client.clone();
            let kind = if i < 5 { Kind::DATA } else { Kind::CONTROL };
            tokio::spawn(async move { c.call(Frame::new(kind, format!("{i}"))).await })
        })
        .collect();
    let mut hits = ups[0].hits.clone();
    within(hits.wait_for(|n| *n == 10)).await.unwrap();
    set.insert(ups[1].addr);
    within(set.wait_up(|up| up.contains(&ups[1].addr))).await;
    ups[0].kill();
    for (i, call) in pending.into_iter().enumerate() {
        let answer = within(call).await.unwrap();
        if i < 5 {
            assert_eq!(answer.unwrap().payload_text(), format!("b:{i}"));
        } else {
            assert!(
                matches!(&answer, Err(ClientError::Remote(why)) if why.contains("connection lost")),
                "{answer:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_added_at_run_time_receives_traffic() {
    let ups = three();
    let set = set_of(&ups[..2]);
    let balanced = builder_pending().build(&set).unwrap();
    within(set.wait_up(|up| up.len() == 2)).await;
    let (addr, _stop) = gateway(balanced).await;
    let client = within(Client::connect(addr)).await.unwrap();
    let before = within(calls(std::slice::from_ref(&client), 60, 6)).await;
    assert_eq!(tally(&before).get("c"), None);
    set.insert(ups[2].addr);
    within(set.wait_up(|up| up.len() == 3)).await;
    let after = within(calls(std::slice::from_ref(&client), 300, 6)).await;
    let t = tally(&after);
    assert!(after.iter().all(Result::is_ok));
    assert!(t.get("c").copied().unwrap_or(0) >= 30, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_upstream_drains_its_requests_in_flight() {
    let gate = Arc::new(Semaphore::new(0));
    let ups = [
        Upstream::start("a", Behaviour::default()),
        Upstream::start(
            "c",
            Behaviour {
                gate: Some(gate.clone()),
                ..Behaviour::default()
            },
        ),
    ];
    let set = Upstreams::from([ups[1].addr]);
    let balanced = builder().build(&set).unwrap();
    within(set.wait_up(|up| up.len() == 1)).await;
    let (addr, _stop) = gateway(balanced).await;
    let client = within(Client::connect(addr)).await.unwrap();
    let held: Vec<_> = (0..5)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { c.call(Frame::data(format!("held {i}"))).await })
        })
        .collect();
    let mut hits = ups[1].hits.clone();
    within(hits.wait_for(|n| *n == 5)).await.unwrap();
    set.insert(ups[0].addr);
    set.remove(ups[1].addr);
    within(set.wait_up(|up| *up == addrs(&[&ups[0]]))).await;
    // New requests go to "a" only, while "c" still holds its five.
    let fresh = within(calls(std::slice::from_ref(&client), 30, 5)).await;
    assert_eq!(tally(&fresh).get("a"), Some(&30), "{fresh:?}");
    gate.add_permits(5);
    for (i, call) in held.into_iter().enumerate() {
        let answer = within(call).await.unwrap().unwrap();
        assert_eq!(answer.payload_text(), format!("c:held {i}"));
    }
    assert_eq!(ups[1].hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_sticks_to_its_upstream_and_moves_only_when_it_dies() {
    let mut ups = three();
    let set = set_of(&ups);
    let keyed = builder().build_affinity(&set, client_id_key).unwrap();
    within(set.wait_up(|up| up.len() == 3)).await;
    let (addr, _stop) = gateway(keyed).await;
    let mut clients = Vec::new();
    for name in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let c = within(Client::builder().client_id(name).connect(addr))
            .await
            .unwrap();
        clients.push(c);
    }
    // Each client's frames all go to one upstream.
    let mut home = Vec::new();
    for c in &clients {
        let answers = within(calls(std::slice::from_ref(c), 20, 4)).await;
        let t = tally(&answers);
        assert_eq!(t.len(), 1, "{t:?}");
        home.push(t.into_keys().next().unwrap());
    }
    let victim = home[0].clone();
    let index = ups.iter().position(|u| u.name == victim).unwrap();
    let dead = ups[index].addr;
    ups[index].kill();
    within(set.wait_up(|up| !up.contains(&dead))).await;
    for (c, was) in clients.iter().zip(&home) {
        let answers = within(calls(std::slice::from_ref(c), 20, 4)).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        let t = tally(&answers);
        assert_eq!(t.len(), 1, "{t:?}");
        let now = t.keys().next().unwrap();
        if *was == victim {
            assert_ne!(now, was, "moved off the dead upstream");
        } else {
            assert_eq!(now, was, "a key whose upstream lives does not move");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_fast_with_an_error_when_every_upstream_is_down() {
    let set = Upstreams::from([closed_port(), closed_port(), closed_port()]);
    let wait = Duration::from_millis(600);
    let balanced = builder().fail_after(wait).build(&set).unwrap();
    let (addr, _stop) = gateway(balanced).await;
    let client = within(Client::connect(addr)).await.unwrap();
    let start = tokio::time::Instant::now();
    let err = within(client.call(Frame::data("x"))).await.unwrap_err();
    assert!(start.elapsed() >= wait);
    assert!(
        matches!(&err, ClientError::Remote(why) if why.starts_with("no upstream ready")),
        "{err:?}"
    );
    // Still down: the next ones fail at once, without a new wait.
    let start = tokio::time::Instant::now();
    for _ in 0..5 {
        let err = within(client.call(Frame::data("y"))).await.unwrap_err();
        assert!(matches!(&err, ClientError::Remote(_)), "{err:?}");
    }
    assert!(start.elapsed() < wait, "{:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_receives_less_traffic_than_fast_ones() {
    // Slow beyond doubt: on a loaded 2-core machine (a debug build, other
    // tests in parallel) a "fast" answer can take tens of milliseconds, and
    // peak-EWMA takes such a peak at once, so an upstream 30 ms slow was not
    // always the slowest one in the window the balancer sees. 300 ms is.
    let ups = [
        Upstream::start("a", Behaviour::default()),
        Upstream::start("b", Behaviour::default()),
        Upstream::start(
            "slow",
            Behaviour {
                delay: Some(Duration::from_millis(300)),
                ..Behaviour::default()
            },
        ),
    ];
    let set = set_of(&ups);
    let balanced = builder().build(&set).unwrap();
    within(set.wait_up(|up| up.len() == 3)).await;
    let (addr, _stop) = gateway(balanced).await;
    let client = within(Client::connect(addr)).await.unwrap();
    let answers = within(calls(std::slice::from_ref(&client), 400, 8)).await;
    assert!(answers.iter().all(Result::is_ok));
    let t = tally(&answers);
    let slow = t.get("slow").copied().unwrap_or(0);
    let fast = t
        .get("a")
        .copied()
        .unwrap_or(0)
        .min(t.get("b").copied().unwrap_or(0));
    assert!(slow * 4 < fast, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failing_fast_does_not_look_best() {
    let fast = || Behaviour {
        delay: Some(Duration::from_millis(2)),
        ..Behaviour::default()
    };
    let ups = [
        Upstream::start("a", fast()),
        Upstream::start("b", fast()),
        Upstream::start(
            "broken",
            Behaviour {
                fail_all: true,
                ..Behaviour::default()
            },
        ),
    ];
    let set = set_of(&ups);
    let balanced = builder().build(&set).unwrap();
    within(set.wait_up(|up| up.len() == 3)).await;
    let (addr, _stop) = gateway(balanced).await;
    let client = within(Client::connect(addr)).await.unwrap();
    let answers = within(calls(std::slice::from_ref(&client), 300, 6)).await;
    let broken = ups[2].hits();
    let errors = answers.iter().filter(|a| a.is_err()).count();
    assert_eq!(errors, broken);
    let t = tally(&answers);
    let fewest = t
        .get("a")
        .copied()
        .unwrap_or(0)
        .min(t.get("b").copied().unwrap_or(0));
    // Without the failure penalty its fast ERRORs would win it most requests.
    assert!(broken * 4 < fewest, "broken {broken}, {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_answering_pings_is_reconnected_and_comes_back() {
    let up = Upstream::start(
        "a",
        Behaviour {
            hang_on: Some("hang"),
            ..Behaviour::default()
        },
    );
    let set = Upstreams::from([up.addr]);
    let balanced = builder().build(&set).unwrap();
    within(set.wait_up(|up| up.len() == 1)).await;
    let (addr, _stop) = gateway(balanced).await;
    let client = within(Client::connect(addr)).await.unwrap();
    // The upstream session now holds one request for ever and reads no more:
    // its PINGs go unanswered, the endpoint closes the connection (the held
    // request gets an ERROR) and connects again.
    let hung = within(client.call(Frame::data("hang"))).await.unwrap_err();
    assert!(matches!(&hung, ClientError::Remote(_)), "{hung:?}");
    within(set.wait_up(|up| up.len() == 1)).await;
    let answer = within(client.call(Frame::data("x"))).await.unwrap();
    assert_eq!(answer.payload_text(), "a:x");
    assert_eq!(up.sessions.lock().unwrap().len(), 2, "a second connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_spreads_calls_over_its_connections() {
    let up = Upstream::start("a", Behaviour::default());
    let mut pool = msgi_balance::Pool::with_builder(up.addr, 3, builder()).unwrap();
    let calls = (0..300).map(|i| {
        let mut pool = pool.clone();
        async move {
            use tower::ServiceExt;
            pool.ready().await?.call(Frame::data(format!("{i}"))).await
        }
    });
    let answers = within(join_all(calls)).await;
    for (i, a) in answers.iter().enumerate() {
        let a = a.as_ref().unwrap();
        assert_eq!(a.payload_text(), format!("a:{i}"));
        assert_eq!(a.request_id(), None);
    }
    assert_eq!(up.sessions.lock().unwrap().len(), 3);
    // An ERROR answer is the client's Remote error, as for a Client.
    use tower::ServiceExt;
    let err = within(pool.ready().await.unwrap().call(Frame::data("fail")))
        .await
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<ClientError>(),
        Some(&ClientError::Remote("upstream says no".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_opened_by_the_settings_connector() {
    // The set names an address nothing listens on; the connector opens the
    // transport to the real upstream instead, so answers prove that every
    // connection is the connector's (TLS and the pre-shared-key handshake
    // plug in here).
    let up = Upstream::start("a", Behaviour::default());
    let (alias, real) = (closed_port(), up.addr);
    let opened = support::counter();
    let connector = tower::service_fn({
        let opened = opened.clone();
        move |addr: SocketAddr| {
            opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                assert_eq!(addr, alias);
                tokio::net::TcpStream::connect(real).await
            }
        }
    });
    let set = Upstreams::from([alias]);
    let balanced = msgi_balance::Builder::new(support::settings().connector(connector))
        .connections_per_upstream(2)
        .build(&set)
        .unwrap();
    within(set.wait_up(|up| up.contains(&alias))).await;
    let (addr, _stop) = gateway(balanced).await;
    let client = within(Client::connect(addr)).await.unwrap();
    let answers = within(calls(std::slice::from_ref(&client), 20, 4)).await;
    assert!(answers
        .iter()
        .all(|a| a.as_ref().unwrap().payload_text().starts_with("a:")));
    assert_eq!(up.hits(), 20);
    assert_eq!(support::count(&opened), 2, "one per connection");
    assert_eq!(up.sessions.lock().unwrap().len(), 2);
}
