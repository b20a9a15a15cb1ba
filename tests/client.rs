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
    assert!(matches!(&err, ClientError::Remote(r) if r == "no way"), "{err:?}");
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

    let refused = within(Client::builder().client_id("").connect(server.addr)).await;
    assert!(
        matches!(refused, Err(ClientError::Handshake(_))),
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
    assert_eq!(server.registry.broadcast(Frame::data("to all")), 1);
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
        Server::builder().drain_deadline(Duration::from_millis(100)),
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
    assert!(matches!(result, Err(ClientError::ConnectTimeout)), "{result:?}");
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
    assert_eq!(
        refused.to_string(),
        format!("connecting to {addr}: connection refused")
    );
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
            .serve_make_with_shutdown(listener, make, async {
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

#[tokio::test]
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
    let serving = tokio::spawn(server.serve_with_shutdown(listener, echo(), async {
        let _ = stopped.await;
    }));

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
    assert_eq!(session.remote_addr(), &msgi::PeerAddr::Unix);

    drop(client);
    let _ = stop.send(());
    within(serving).await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
