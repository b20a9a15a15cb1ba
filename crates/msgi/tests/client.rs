//! The client against a real server over loopback.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use msgi::{Client, ClientError, Frame, Kind, Reconnect, Server};
use support::{echo, serve, within};
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};

#[tokio::test]
async fn correlated_calls_many_in_flight() {
    let service = tower::service_fn(|f: Frame| async move {
        let n: u64 = f.payload_text().parse().unwrap_or(0);
        // Make later calls finish first.
        tokio::time::sleep(Duration::from_millis(100 - n)).await;
        Ok::<_, std::convert::Infallible>(Some(Frame::data(format!("re:{n}"))))
    });
    let mut server = serve(Server::builder(), service).await;
    let client = within(Client::connect(server.addr)).await.unwrap();
    let calls = (0..100u64).map(|n| {
        let mut svc = client.clone();
        async move {
            let answer = svc.ready().await?.call(Frame::data(n.to_string())).await?;
            Ok::<_, ClientError>((n, answer))
        }
    });
    for result in within(join_all(calls)).await {
        let (n, answer) = result.unwrap();
        assert_eq!(answer.payload_text(), format!("re:{n}"));
    }
    assert_eq!(client.in_flight(), 0);
    assert!(within(client.ping()).await.unwrap() < support::LIMIT);
    server.shutdown().await;
}

#[tokio::test]
async fn error_answers_are_typed() {
    let service = tower::service_fn(|_f: Frame| async move { Err::<Option<Frame>, _>("no way") });
    let mut server = serve(Server::builder(), service).await;
    let client = within(Client::connect(server.addr)).await.unwrap();
    let err = within(client.call(Frame::data("x"))).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Remote(r) if r == "no way"),
        "{err:?}"
    );
    // The session lives on.
    within(client.ping()).await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn handshake_registers_the_client_id() {
    let mut server = serve(Server::builder(), echo()).await;
    let client = within(Client::builder().client_id("bob").connect(server.addr))
        .await
        .unwrap();
    let session = server
        .registry
        .get_by_client_id("bob")
        .expect("bob is known");
    assert_eq!(session.client_id(), "bob");

    // An id the server would refuse is refused when the client is built.
    let refused = within(Client::builder().client_id("").connect(server.addr)).await;
    assert!(
        matches!(&refused, Err(ClientError::Config(e)) if e.setting() == "client_id"),
        "{refused:?}"
    );
    drop(client);
    server.shutdown().await;
}

#[tokio::test]
async fn server_push_arrives_on_the_incoming_stream() {
    let mut server = serve(Server::builder(), echo()).await;
    let client = within(Client::builder().client_id("carol").connect(server.addr))
        .await
        .unwrap();
    let mut incoming = client.incoming().expect("first take");
    assert!(client.incoming().is_none());
    assert_eq!(server.registry.broadcast(Frame::data("to all")).queued, 1);
    server
        .registry
        .send_to_client("carol", Frame::new(Kind::app(0x200).unwrap(), "just you"))
        .unwrap();
    assert_eq!(
        within(incoming.recv()).await.unwrap(),
        Frame::data("to all")
    );
    let private = within(incoming.recv()).await.unwrap();
    assert_eq!(
        (private.kind().get(), private.payload_text().as_ref()),
        (0x200, "just you")
    );
    server.shutdown().await;
    // The server said goodbye; without reconnect the client is closed.
    assert!(matches!(
        within(client.closed()).await,
        ClientError::Closed(_)
    ));
    assert!(within(incoming.recv()).await.is_none());
}

#[tokio::test]
async fn one_way_sends_arrive_in_order() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = tower::service_fn(move |f: Frame| {
        let _ = tx.send(f.payload_text().into_owned());
        async { Ok::<_, std::convert::Infallible>(None) }
    });
    let mut server = serve(Server::builder(), service).await;
    let client = within(Client::connect(server.addr)).await.unwrap();
    for i in 0..200 {
        client.send(Frame::data(i.to_string())).await.unwrap();
    }
    for i in 0..200 {
        assert_eq!(within(rx.recv()).await.unwrap(), i.to_string());
    }
    within(client.close()).await;
    assert!(client.is_closed());
    assert!(matches!(
        client.send(Frame::data("late")).await,
        Err(ClientError::Closed(_))
    ));
    server.shutdown().await;
}

/// Reconnect: calls in flight when the link drops fail; one-way frames sent
/// while disconnected wait in the outbox and reach the next server.
#[tokio::test]
async fn reconnect_flushes_the_outbox_and_fails_in_flight_calls() {
    let (got_tx, mut got) = mpsc::unbounded_channel();
    let service = tower::service_fn(move |f: Frame| {
        let got_tx = got_tx.clone();
        async move {
            if f.payload() == "hang" {
                std::future::pending::<()>().await;
            }
            let _ = got_tx.send(f.payload_text().into_owned());
            Ok::<_, std::convert::Infallible>(None)
        }
    });
    let mut first = serve(
        Server::builder().drain_timeout(Duration::from_millis(100)),
        service.clone(),
    )
    .await;

    // The connector dials whatever address is current and reports each attempt.
    let target: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(Some(first.addr)));
    let (attempt_tx, mut attempts) = mpsc::unbounded_channel();
    let dial = target.clone();
    let connector = move || {
        let addr = *dial.lock().unwrap();
        let _ = attempt_tx.send(());
        Box::pin(async move {
            match addr {
                Some(addr) => tokio::net::TcpStream::connect(addr).await,
                None => Err(std::io::ErrorKind::ConnectionRefused.into()),
            }
        })
            as std::pin::Pin<
                Box<
                    dyn std::future::Future<Output = std::io::Result<tokio::net::TcpStream>> + Send,
                >,
            >
    };
    let policy = Reconnect {
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        ..Reconnect::default()
    };
    let client = within(
        Client::builder()
            .client_id("dave")
            .reconnect(policy)
            .connect_with(connector),
    )
    .await
    .unwrap();
    within(attempts.recv()).await.unwrap();

    let hanging = tokio::spawn({
        let client = client.clone();
        async move { client.call(Frame::data("hang")).await }
    });
    client.send(Frame::data("before")).await.unwrap();
    assert_eq!(within(got.recv()).await.unwrap(), "before");

    // Take the first server away; wait until the client is dialling again.
    *target.lock().unwrap() = None;
    first.shutdown().await;
    assert!(matches!(
        within(hanging).await.unwrap(),
        Err(ClientError::ConnectionLost(_))
    ));
    within(attempts.recv()).await.unwrap();

    for i in 0..5 {
        client
            .send(Frame::data(format!("queued {i}")))
            .await
            .unwrap();
    }
    let mut second = serve(Server::builder(), service).await;
    *target.lock().unwrap() = Some(second.addr);
    for i in 0..5 {
        assert_eq!(within(got.recv()).await.unwrap(), format!("queued {i}"));
    }
    assert!(
        second.registry.get_by_client_id("dave").is_some(),
        "handshake repeated"
    );
    assert!(client.take_unsent().is_empty());
    drop(client);
    second.shutdown().await;
}

#[tokio::test]
async fn frames_accepted_before_giving_up_are_handed_back() {
    let mut server = serve(Server::builder(), echo()).await;
    let addr = server.addr;
    let (attempt_tx, mut attempts) = mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let gate_in = gate.clone();
    let mut dialled = 0;
    let connector = move || {
        dialled += 1;
        let n = dialled;
        let _ = attempt_tx.send(n);
        let gate = gate_in.clone();
        Box::pin(async move {
            if n == 1 {
                return tokio::net::TcpStream::connect(addr).await;
            }
            // Reconnect attempts wait for the test, then fail.
            let _permit = gate.acquire().await;
            Err(std::io::ErrorKind::ConnectionRefused.into())
        })
            as std::pin::Pin<
                Box<
                    dyn std::future::Future<Output = std::io::Result<tokio::net::TcpStream>> + Send,
                >,
            >
    };
    let policy = Reconnect {
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(1),
        max_attempts: Some(1),
        ..Reconnect::default()
    };
    let client = within(Client::builder().reconnect(policy).connect_with(connector))
        .await
        .unwrap();
    assert_eq!(within(attempts.recv()).await, Some(1));
    server.shutdown().await;
    assert_eq!(within(attempts.recv()).await, Some(2));

    // Disconnected: these wait in the outbox.
    for i in 0..3 {
        client.send(Frame::data(format!("m{i}"))).await.unwrap();
    }
    gate.add_permits(1);
    let reason = within(client.closed()).await;
    assert!(matches!(reason, ClientError::Closed(_)), "{reason:?}");
    let unsent: Vec<_> = client
        .take_unsent()
        .iter()
        .map(|f| f.payload_text().into_owned())
        .collect();
    assert_eq!(unsent, ["m0", "m1", "m2"]);
    assert!(client.take_unsent().is_empty(), "handed back once");

    // After the client stopped, sends fail with the reason instead of vanishing.
    let late = client.send(Frame::data("x")).await.unwrap_err();
    assert_eq!(late.to_string(), reason.to_string());
    let mut svc = client.clone();
    assert!(svc.ready().await.is_err());
}

#[tokio::test]
async fn connect_timeout_and_refused() {
    // A listener that never answers the handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let result = within(
        Client::builder()
            .client_id("eve")
            .connect_timeout(Duration::from_millis(100))
            .connect(addr),
    )
    .await;
    assert!(
        matches!(result, Err(ClientError::ConnectTimeout)),
        "{result:?}"
    );
    drop(listener);
    let refused = within(Client::connect(addr)).await;
    // The cause is kept (callers match the io::ErrorKind) and the message
    // names the address without repeating the cause's own text.
    let refused = refused.unwrap_err();
    assert_eq!(
        refused.io_error().map(std::io::Error::kind),
        Some(std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    assert_eq!(refused.to_string(), format!("could not connect to {addr}"));
    let source = std::error::Error::source(&refused).expect("the io::Error");
    assert!(source.downcast_ref::<std::io::Error>().is_some());
}

#[tokio::test]
async fn make_service_gives_each_session_its_own_state() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let make = tower::service_fn(|session: msgi::Session| async move {
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let id = session.id();
        Ok::<_, std::convert::Infallible>(tower::service_fn(move |_f: Frame| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            async move { Ok::<_, std::convert::Infallible>(Some(Frame::data(format!("{id}:{n}")))) }
        }))
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        msgi::Server::builder()
            .build()
            .expect("valid settings")
            .serve(listener, msgi::PerSession(make))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );
    let a = within(Client::connect(addr)).await.unwrap();
    let b = within(Client::connect(addr)).await.unwrap();
    let a1 = within(a.call(Frame::data(""))).await.unwrap();
    let a2 = within(a.call(Frame::data(""))).await.unwrap();
    let b1 = within(b.call(Frame::data(""))).await.unwrap();
    assert!(a1.payload_text().ends_with(":1"));
    assert!(a2.payload_text().ends_with(":2"));
    assert!(b1.payload_text().ends_with(":1"));
    assert_ne!(
        a1.payload_text().split(':').next(),
        b1.payload_text().split(':').next()
    );
    drop((a, b));
    let _ = stop.send(());
    within(server).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_full_server_says_why_the_client_was_closed() {
    let mut server = serve(Server::builder().max_connections(1), echo()).await;
    let first = within(Client::connect(server.addr)).await.unwrap();
    within(first.ping()).await.unwrap();
    let second = within(Client::connect(server.addr)).await.unwrap();
    let reason = within(second.closed()).await;
    assert!(reason.to_string().contains("server full"), "{reason}");
    drop(first);
    server.shutdown().await;
}

/// On a multi-threaded runtime: `close` returns only once the unsent
/// frames can be taken (the status says `Done` last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_while_reconnecting_stops_and_hands_back_the_queue() {
    let mut server = serve(Server::builder(), echo()).await;
    let policy = Reconnect {
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        ..Reconnect::default()
    };
    let client = within(Client::builder().reconnect(policy).connect(server.addr))
        .await
        .unwrap();
    within(client.ping()).await.unwrap();
    server.shutdown().await;
    // No server any more: the client retries for ever, until closed.
    client.send(Frame::data("never sent")).await.unwrap();
    within(client.close()).await;
    assert!(client.is_closed());
    let unsent: Vec<_> = client
        .take_unsent()
        .iter()
        .map(|f| f.payload_text().into_owned())
        .collect();
    assert_eq!(unsent, ["never sent"]);
}

/// Sessions and clients run over any byte stream: here a Unix socket.
#[cfg(unix)]
#[tokio::test]
async fn server_and_client_over_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("msgi-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("msgi.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = msgi::Server::builder().build().expect("valid settings");
    let registry = server.registry();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        server
            .serve(listener, echo())
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );

    let dial = path.clone();
    let client = within(Client::builder().client_id("local").connect_with(move || {
        let dial = dial.clone();
        Box::pin(async move { tokio::net::UnixStream::connect(dial).await })
            as std::pin::Pin<
                Box<
                    dyn std::future::Future<Output = std::io::Result<tokio::net::UnixStream>>
                        + Send,
                >,
            >
    }))
    .await
    .unwrap();
    let answer = within(client.call(Frame::data("over unix"))).await.unwrap();
    assert_eq!(answer.payload_text(), "over unix");
    let session = registry.get_by_client_id("local").unwrap();
    assert_eq!(session.peer_addr(), None, "a Unix peer has no IP address");
    assert!(
        session
            .connect_info::<tokio::net::unix::SocketAddr>()
            .is_some(),
        "the Unix listener records the peer's address"
    );

    drop(client);
    let _ = stop.send(());
    within(serving).await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- issue 7: client items pinned against a real server ----

/// A service whose "hang" frames never finish; it reports each one it got.
fn hanging(
    got: mpsc::UnboundedSender<String>,
) -> impl tower::Service<
    Frame,
    Response = Option<Frame>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<Option<Frame>, std::convert::Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |f: Frame| {
        let _ = got.send(f.payload_text().into_owned());
        async move {
            if f.payload() == "hang" {
                std::future::pending::<()>().await;
            }
            let mut answer = Frame::data(f.payload().clone());
            answer.set_request_id(f.request_id());
            Ok::<_, std::convert::Infallible>(Some(answer))
        }
    })
}

/// Item 14: callers that give up (a timeout drops the answer) free their
/// place at once; the connection task forgets the call, so the limit never
/// wedges, and one-way sends, pings and close keep working.
#[tokio::test]
async fn abandoned_calls_do_not_wedge_the_client() {
    let (got_tx, mut got) = mpsc::unbounded_channel();
    let quick = Server::builder().drain_timeout(Duration::from_millis(50));
    let mut server = serve(quick, hanging(got_tx)).await;
    let client = within(
        Client::builder()
            .max_concurrent_requests(2)
            .connect(server.addr),
    )
    .await
    .unwrap();
    // Four abandoned calls, twice the limit: through the Service API and
    // through `call`, each dropped once the server has it.
    for round in 0..2 {
        let mut svc = client.clone();
        let answer = within(svc.ready()).await.unwrap().call(Frame::data("hang"));
        assert_eq!(within(got.recv()).await.unwrap(), "hang");
        drop(answer);
        let call = client.call(Frame::data("hang"));
        tokio::pin!(call);
        tokio::select! {
            r = &mut call => panic!("a hanging call finished: {r:?}"),
            g = got.recv() => assert_eq!(g.unwrap(), "hang", "round {round}"),
        }
    }
    assert_eq!(client.in_flight(), 0);
    within(client.ping()).await.unwrap();
    let answer = within(client.call(Frame::data("still here")))
        .await
        .unwrap();
    assert_eq!(answer.payload_text(), "still here");
    within(client.send(Frame::data("one-way"))).await.unwrap();
    assert_eq!(within(got.recv()).await.unwrap(), "still here");
    assert_eq!(within(got.recv()).await.unwrap(), "one-way");
    within(client.close()).await;
    server.shutdown().await;
}

/// Item 14: at the call limit, one-way sends and close do not wait behind
/// the calls.
#[tokio::test]
async fn sends_and_close_do_not_queue_behind_the_call_limit() {
    let (got_tx, mut got) = mpsc::unbounded_channel();
    let quick = Server::builder().drain_timeout(Duration::from_millis(50));
    let mut server = serve(quick, hanging(got_tx)).await;
    let client = within(
        Client::builder()
            .max_concurrent_requests(1)
            .connect(server.addr),
    )
    .await
    .unwrap();
    let caller = client.clone();
    let hung = tokio::spawn(async move { caller.call(Frame::data("hang")).await });
    assert_eq!(within(got.recv()).await.unwrap(), "hang");
    let mut svc = client.clone();
    assert!(
        futures_util::poll!(std::future::poll_fn(|cx| svc.poll_ready(cx))).is_pending(),
        "no readiness at the call limit"
    );
    within(client.send(Frame::data("one-way"))).await.unwrap();
    assert_eq!(within(got.recv()).await.unwrap(), "one-way");
    within(client.close()).await;
    let lost = within(hung).await.unwrap().unwrap_err();
    assert!(matches!(lost, ClientError::ConnectionLost(_)), "{lost:?}");
    server.shutdown().await;
}

/// Item 15 (server half): a handler answering a correlated request with a
/// kind that cannot answer (PING, HEARTBEAT, DISCONNECT, kind 0) is refused
/// by the server with ERROR carrying the id; the caller gets it at once.
#[tokio::test]
async fn answers_of_kinds_that_cannot_answer_become_errors() {
    let service = tower::service_fn(|f: Frame| async move {
        let answer = match f.payload_text().as_ref() {
            "ping" => Frame::ping("x"),
            "heartbeat" => Frame::heartbeat(),
            "disconnect" => Frame::disconnect("bye"),
            "zero" => Frame::default(),
            _ => Frame::data("fine"),
        };
        Ok::<_, std::convert::Infallible>(Some(answer))
    });
    let mut server = serve(Server::builder(), service).await;
    let client = within(Client::connect(server.addr)).await.unwrap();
    for what in ["ping", "heartbeat", "disconnect", "zero"] {
        let err = within(client.call(Frame::data(what))).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Remote(r) if r.starts_with("handler answered with kind")),
            "{what}: {err:?}"
        );
    }
    let fine = within(client.call(Frame::data("other"))).await.unwrap();
    assert_eq!(fine.payload_text(), "fine");
    server.shutdown().await;
}

/// Item 16: the connection lives while answers are outstanding, so the
/// tower idiom on a fresh client gets its answer.
#[tokio::test]
async fn oneshot_on_a_fresh_client_gets_its_answer() {
    let service = tower::service_fn(|f: Frame| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut answer = Frame::data(f.payload().clone());
        answer.set_request_id(f.request_id());
        Ok::<_, std::convert::Infallible>(Some(answer))
    });
    let mut server = serve(Server::builder(), service).await;
    let answer = within(async {
        Client::connect(server.addr)
            .await?
            .oneshot(Frame::data("hello"))
            .await
    })
    .await
    .unwrap();
    assert_eq!(answer.payload_text(), "hello");
    // Once the answer is in and no handle is left, the client says goodbye.
    let (_, reason) = server.next_end().await;
    assert!(
        format!("{reason:?}").contains("client closed"),
        "{reason:?}"
    );
    server.shutdown().await;
}

/// Item 17: readiness and load tell a dead endpoint apart; p2c over a live
/// and a reconnecting client sends every call to the live one.
#[tokio::test]
async fn p2c_prefers_the_live_endpoint() {
    use tower::balance::p2c::Balance;
    use tower::discover::ServiceList;
    use tower::load::Load;

    let tagged = |tag: &'static str| {
        tower::service_fn(move |f: Frame| async move {
            let mut answer = Frame::data(tag);
            answer.set_request_id(f.request_id());
            Ok::<_, std::convert::Infallible>(Some(answer))
        })
    };
    let mut live = serve(Server::builder(), tagged("live")).await;
    let mut dead = serve(Server::builder(), tagged("dead")).await;
    let policy = Reconnect {
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        ..Reconnect::default()
    };
    let to_live = within(Client::builder().reconnect(policy).connect(live.addr))
        .await
        .unwrap();
    let to_dead = within(
        Client::builder()
            .reconnect(policy)
            .queue_timeout(Some(Duration::from_millis(100)))
            .connect(dead.addr),
    )
    .await
    .unwrap();
    within(to_dead.ping()).await.unwrap();
    dead.shutdown().await;
    // A call made now fails (lost with the link, or not sent within the
    // queue timeout); either way the link is gone by then.
    let failed = within(to_dead.call(Frame::data("x"))).await.unwrap_err();
    assert!(
        matches!(
            failed,
            ClientError::ConnectionLost(_) | ClientError::NotConnected
        ),
        "{failed:?}"
    );
    assert!(!to_dead.is_connected());
    assert_eq!(
        to_dead.load(),
        usize::MAX,
        "a dead endpoint never looks best"
    );
    assert!(to_live.load() < to_dead.load());
    let mut probe = to_dead.clone();
    assert!(
        futures_util::poll!(std::future::poll_fn(|cx| probe.poll_ready(cx))).is_pending(),
        "not ready while reconnecting"
    );

    let mut balance = Balance::new(ServiceList::new(vec![to_live.clone(), to_dead.clone()]));
    for _ in 0..50 {
        let answer = within(async { balance.ready().await?.call(Frame::data("x")).await })
            .await
            .unwrap();
        assert_eq!(answer.payload_text(), "live");
    }
    live.shutdown().await;
}

/// Item 17: at `max_concurrent_requests` readiness is Pending, and it comes back when
/// a call finishes.
#[tokio::test]
async fn readiness_waits_for_a_free_call_slot() {
    let (got_tx, mut got) = mpsc::unbounded_channel();
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let service = tower::service_fn(move |f: Frame| {
        let _ = got_tx.send(());
        let mut release = release.clone();
        async move {
            let _ = release.wait_for(|r| *r).await;
            let mut answer = Frame::data("done");
            answer.set_request_id(f.request_id());
            Ok::<_, std::convert::Infallible>(Some(answer))
        }
    });
    let mut server = serve(Server::builder(), service).await;
    let client = within(
        Client::builder()
            .max_concurrent_requests(2)
            .connect(server.addr),
    )
    .await
    .unwrap();
    let mut svc = client.clone();
    let a = within(svc.ready()).await.unwrap().call(Frame::data("a"));
    let b = within(svc.ready()).await.unwrap().call(Frame::data("b"));
    within(got.recv()).await.unwrap();
    within(got.recv()).await.unwrap();
    assert_eq!(client.in_flight(), 2);
    let mut ready = std::pin::pin!(svc.ready());
    assert!(futures_util::poll!(&mut ready).is_pending());
    release_tx.send(true).unwrap();
    assert_eq!(within(a).await.unwrap().payload_text(), "done");
    within(ready).await.unwrap();
    assert_eq!(within(b).await.unwrap().payload_text(), "done");
    server.shutdown().await;
}

/// Items 1, 7 and 19: the framing's own limit holds
/// (`FrameCodec::with_max_frame_size(64)` stays 64); a frame over it is
/// refused locally with a typed `Encode` error (not `Remote`), one-way or
/// call, and the connection is not disturbed.
#[tokio::test]
async fn local_encode_failures_are_typed_and_disturb_nothing() {
    let (got_tx, mut got) = mpsc::unbounded_channel();
    let mut server = serve(Server::builder(), hanging(got_tx)).await;
    let client = within(
        Client::builder()
            .framing(msgi::FrameCodec::with_max_frame_size(64))
            .connect(server.addr),
    )
    .await
    .unwrap();
    let big = Frame::data(vec![b'x'; 100]);
    let err = within(client.send(big.clone())).await.unwrap_err();
    assert!(matches!(err, ClientError::Encode(_)), "{err:?}");
    let cause = std::error::Error::source(&err).expect("the codec error");
    assert!(cause.to_string().contains("max 64"), "{cause}");
    assert!(matches!(
        client.try_send(big.clone()),
        Err(ClientError::Encode(_))
    ));
    let err = within(client.call(big)).await.unwrap_err();
    assert!(matches!(err, ClientError::Encode(_)), "{err:?}");
    within(client.send(Frame::data("small"))).await.unwrap();
    assert_eq!(within(got.recv()).await.unwrap(), "small");
    let answer = within(client.call(Frame::data("ok"))).await.unwrap();
    assert_eq!(answer.payload_text(), "ok");
    server.shutdown().await;
}

/// Item 19: an error chain prints each message once.
#[test]
fn codec_errors_print_their_message_once_in_a_chain() {
    let chain = |e: &dyn std::error::Error| {
        let mut parts = vec![e.to_string()];
        let mut next = e.source();
        while let Some(e) = next {
            parts.push(e.to_string());
            next = e.source();
        }
        parts
    };
    let io = msgi::CodecError::Io(std::io::Error::other("pipe broke"));
    assert_eq!(chain(&io), ["pipe broke"]);
    let transform = msgi::CodecError::Transform("decryption failed".into());
    assert_eq!(chain(&transform), ["decryption failed"]);
    let encode = ClientError::Encode(Arc::new(msgi::CodecError::LineTooLong { max: 8 }));
    assert_eq!(
        chain(&encode),
        [
            "frame not sent: it could not be encoded",
            "line too long (max 8)"
        ]
    );
}

/// Item 6: settings are checked when connecting (a typed error naming the
/// setting, no silent clamp, no panic later); huge timeouts mean never.
#[tokio::test]
async fn settings_are_checked_when_connecting() {
    let mut server = serve(Server::builder(), echo()).await;
    let refused = [
        (Client::builder().outbox_capacity(0), "outbox_capacity"),
        (Client::builder().incoming_capacity(0), "incoming_capacity"),
        (
            Client::builder().max_concurrent_requests(0),
            "max_concurrent_requests",
        ),
        (Client::builder().max_frame_size(5), "max_frame_size"),
        (
            Client::builder().framing(msgi::FrameCodec::with_max_frame_size(5)),
            "framing",
        ),
        (
            Client::builder().idle_timeout(Some(Duration::ZERO)),
            "idle_timeout",
        ),
        (
            Client::builder().connect_timeout(Duration::ZERO),
            "connect_timeout",
        ),
        (
            Client::builder().reconnect(Reconnect {
                multiplier: f64::NAN,
                ..Reconnect::default()
            }),
            "reconnect",
        ),
    ];
    for (builder, setting) in refused {
        match within(builder.connect(server.addr)).await {
            Err(ClientError::Config(e)) => assert_eq!(e.setting(), setting),
            other => panic!("{setting}: {other:?}"),
        }
    }
    let forever = within(
        Client::builder()
            .connect_timeout(Duration::MAX)
            .idle_timeout(Some(Duration::MAX))
            .heartbeat_interval(Some(Duration::MAX))
            .queue_timeout(Some(Duration::MAX))
            .connect(server.addr),
    )
    .await
    .unwrap();
    assert_eq!(
        within(forever.call(Frame::data("x")))
            .await
            .unwrap()
            .payload_text(),
        "x"
    );
    within(forever.close()).await;
    server.shutdown().await;
}

/// Item 21: a taken but unread `incoming()` stream holds up neither calls
/// nor the link: pushes beyond the queue are dropped and counted.
#[tokio::test]
async fn unread_pushes_do_not_block_answers() {
    let mut server = serve(Server::builder(), echo()).await;
    let client = within(
        Client::builder()
            .client_id("deaf")
            .incoming_capacity(8)
            .connect(server.addr),
    )
    .await
    .unwrap();
    let mut incoming = client.incoming().unwrap();
    let session = server.registry.get_by_client_id("deaf").unwrap();
    for round in 0..75 {
        for i in 0..20 {
            // The server's outbox may refuse some; that is its business.
            let _ = session.send(Frame::data(format!("push {round}/{i}")));
        }
        let answer = within(client.call(Frame::data(round.to_string())))
            .await
            .unwrap();
        assert_eq!(answer.payload_text(), round.to_string());
    }
    assert!(client.pushes_dropped() > 0);
    assert!(client.is_connected());
    // What was kept is the oldest, in order.
    assert_eq!(
        within(incoming.recv()).await.unwrap().payload_text(),
        "push 0/0"
    );
    server.shutdown().await;
}

/// Item 18: `call` without readiness does not panic (tokio-util's
/// `PollSender` would); its future fails with `NotReady` and nothing is sent.
#[tokio::test]
async fn call_without_readiness_fails_typed() {
    let (got_tx, mut got) = mpsc::unbounded_channel();
    let mut server = serve(Server::builder(), hanging(got_tx)).await;
    let mut client = within(Client::connect(server.addr)).await.unwrap();
    let err = within(Service::call(&mut client, Frame::data("unready")))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotReady), "{err:?}");
    let answer = within(client.ready().await.unwrap().call(Frame::data("ready")))
        .await
        .unwrap();
    assert_eq!(answer.payload_text(), "ready");
    assert_eq!(
        within(got.recv()).await.unwrap(),
        "ready",
        "unready never sent"
    );
    server.shutdown().await;
}

/// Item 20's bound must not deadlock a busy client: the client's own
/// sends never stop it reading (only replies it owes past twice its
/// high-water mark do), so large pipelined calls to a server that also
/// stops reading under backpressure all complete.
#[tokio::test]
async fn heavy_pipelining_does_not_deadlock() {
    let mut server = serve(Server::builder(), echo()).await;
    let client = within(Client::connect(server.addr)).await.unwrap();
    let payload = bytes::Bytes::from(vec![7u8; 128 * 1024]);
    let calls = (0..200).map(|_| {
        let client = client.clone();
        let frame = Frame::data(payload.clone());
        async move { client.call(frame).await }
    });
    for answer in within(join_all(calls)).await {
        assert_eq!(answer.unwrap().payload().len(), 128 * 1024);
    }
    server.shutdown().await;
}

/// A transform that adds 16 bytes to every payload (like an AEAD tag).
#[derive(Debug, Clone, Copy)]
struct Pad16;

impl msgi::FrameTransform for Pad16 {
    fn decode(&mut self, frame: Frame) -> Result<Frame, msgi::BoxError> {
        let len = frame.payload().len();
        let kept = len.checked_sub(16).ok_or("no padding")?;
        let mut out = Frame::new(frame.kind(), frame.payload().slice(..kept));
        out.set_request_id(frame.request_id());
        Ok(out)
    }

    fn encode(&self, frame: Frame) -> Result<Frame, msgi::BoxError> {
        let mut payload = frame.payload().to_vec();
        payload.extend_from_slice(&[0u8; 16]);
        let mut out = Frame::new(frame.kind(), payload);
        out.set_request_id(frame.request_id());
        Ok(out)
    }

    fn max_overhead(&self) -> usize {
        16
    }
}

/// Stateless: every session gets a copy.
impl msgi::MakeTransform for Pad16 {
    type Transform = Pad16;

    fn make_transform(&self, _params: msgi::SessionParams) -> Pad16 {
        Pad16
    }

    fn max_overhead(&self) -> usize {
        16
    }
}

/// Item 1 (client part): a one-way frame that fits the maximum frame size
/// but not once the transforms have added their bytes is refused to the
/// sender (`Encode`), not dropped later in the connection task; nothing
/// else on the connection is disturbed.
#[tokio::test]
async fn a_one_way_frame_too_large_for_the_transforms_is_refused_to_the_sender() {
    let framing = msgi::Wire::new(msgi::FrameCodec::with_max_frame_size(128)).transform(Pad16);
    let (got_tx, mut got) = mpsc::unbounded_channel();
    let mut server = serve(Server::builder().framing(framing.clone()), hanging(got_tx)).await;
    let client = within(Client::builder().framing(framing).connect(server.addr))
        .await
        .unwrap();
    // 10-byte header + 110 = 120 <= 128, but 136 once padded.
    let err = within(client.send(Frame::data(vec![b'x'; 110])))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Encode(_)), "{err:?}");
    within(client.send(Frame::data("small"))).await.unwrap();
    assert_eq!(within(got.recv()).await.unwrap(), "small");
    let answer = within(client.call(Frame::data("call"))).await.unwrap();
    assert_eq!(answer.payload_text(), "call");
    server.shutdown().await;
}
