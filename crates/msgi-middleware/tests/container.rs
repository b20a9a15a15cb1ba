//! Serving containers over real loopback sockets: dispatch by message type with a
//! fallback, errors the sender sees, delivery by target id through the registry.

#![allow(clippy::unwrap_used)]

#[path = "../../msgi/tests/support/mod.rs"]
mod support;

use msgi::{BoxError, Client, ClientError, Frame, Registry, Server};
use msgi_container::{Container, Limits, Value};
use msgi_middleware::container::{
    ContainerRequest, ContainerRouter, DeliverToTarget, RouteError, RouterError,
};
use support::{serve, within};
use tokio::net::TcpListener;
use tower::service_fn;

fn login_route() -> impl tower::Service<
    ContainerRequest,
    Response = Option<Container>,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<Option<Container>, BoxError>> + Send,
> + Clone
       + Send
       + Sync
       + 'static {
    service_fn(|req: ContainerRequest| async move {
        let user: &str = req.container().get("user")?;
        let status = if user == "alice" { "ok" } else { "refused" };
        Ok(Some(
            req.container()
                .reply("response")
                .value("status", status)
                .value("timestamp", 1_700_000_000i64)
                .value("route", "login")
                .build()?,
        ))
    })
}

fn router(fallback: bool) -> ContainerRouter {
    let b = ContainerRouter::builder()
        .route("user_login", login_route())
        .route(
            "data_update",
            service_fn(|req: ContainerRequest| async move {
                let n: u64 = req.container().get("count")?;
                Ok::<_, BoxError>(Some(
                    req.container()
                        .reply("response")
                        .value("count", n + 1)
                        .build()?,
                ))
            }),
        )
        .route(
            "silent",
            service_fn(|_req: ContainerRequest| async move { Ok::<_, BoxError>(None) }),
        );
    let b = if fallback {
        b.fallback(service_fn(|req: ContainerRequest| async move {
            Ok::<_, BoxError>(Some(
                req.container()
                    .reply("fallback")
                    .value("seen", req.container().message_type())
                    .build()?,
            ))
        }))
    } else {
        b
    };
    b.build().unwrap()
}

fn container(message_type: &str) -> Container {
    Container::builder(message_type)
        .source("client", "1")
        .target("server", "")
        .value("user", "alice")
        .value("count", 41u64)
        .build()
        .unwrap()
}

async fn call(client: &Client, c: &Container) -> Result<Container, ClientError> {
    let answer = within(client.call(Frame::data(c.encode()))).await?;
    Ok(msgi_container::decode(answer.payload()).unwrap())
}

#[tokio::test]
async fn containers_go_to_the_route_of_their_message_type() {
    let server = serve(Server::builder(), router(false)).await;
    let client = within(Client::connect(server.addr)).await.unwrap();

    let answer = call(&client, &container("user_login")).await.unwrap();
    assert_eq!(answer.message_type(), "response");
    assert_eq!(answer.get::<&str>("status").unwrap(), "ok");
    assert_eq!(answer.get::<i64>("timestamp").unwrap(), 1_700_000_000);
    // The answer goes back from the target to the source.
    assert_eq!(
        (answer.source_id(), answer.target_id()),
        ("server", "client")
    );
    assert_eq!(answer.target_sub_id(), "1");

    let answer = call(&client, &container("data_update")).await.unwrap();
    assert_eq!(answer.get::<u64>("count").unwrap(), 42);

    // A route's typed error reaches the sender as its text.
    let bad = Container::builder("user_login")
        .value("user", 7i64)
        .build()
        .unwrap();
    match call(&client, &bad).await {
        Err(ClientError::Remote(reason)) => {
            assert_eq!(reason, "value \"user\" is i64, not string")
        }
        other => panic!("{other:?}"),
    }
    // A route that answers nothing: a correlated request still gets its one answer.
    match call(&client, &container("silent")).await {
        Err(ClientError::Remote(reason)) => assert_eq!(reason, "no response"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unknown_types_go_to_the_fallback_or_are_reported() {
    let server = serve(Server::builder(), router(false)).await;
    let client = within(Client::connect(server.addr)).await.unwrap();
    match call(&client, &container("weather")).await {
        Err(ClientError::Remote(reason)) => {
            assert_eq!(reason, "no route for message type \"weather\"")
        }
        other => panic!("{other:?}"),
    }

    let server = serve(Server::builder(), router(true)).await;
    let client = within(Client::connect(server.addr)).await.unwrap();
    let answer = call(&client, &container("weather")).await.unwrap();
    assert_eq!(answer.message_type(), "fallback");
    assert_eq!(answer.get::<&str>("seen").unwrap(), "weather");
    // Routes still win over the fallback.
    let answer = call(&client, &container("user_login")).await.unwrap();
    assert_eq!(answer.get::<&str>("route").unwrap(), "login");
}

#[tokio::test]
async fn payloads_that_are_not_containers_are_reported_to_the_sender() {
    let server = serve(Server::builder(), router(true)).await;
    let client = within(Client::connect(server.addr)).await.unwrap();
    match within(client.call(Frame::data("hello"))).await {
        Err(ClientError::Remote(reason)) => assert_eq!(
            reason,
            "not a container: unsupported container version 104 (this decoder reads version 1)"
        ),
        other => panic!("{other:?}"),
    }
    // One-way: the ERROR comes back uncorrelated.
    let mut incoming = client.incoming().unwrap();
    within(client.send(Frame::data(vec![1u8, 0, 0])))
        .await
        .unwrap();
    let error = within(incoming.recv()).await.unwrap();
    assert_eq!(error.kind(), msgi::Kind::ERROR);
    assert_eq!(
        error.payload_text(),
        "not a container: payload ends at byte 3, inside a field"
    );
}

#[tokio::test]
async fn the_router_decodes_within_its_limits() {
    let router = ContainerRouter::builder()
        .fallback(login_route())
        .limits(Limits::new(0, 16).unwrap())
        .build()
        .unwrap();
    let server = serve(Server::builder(), router).await;
    let client = within(Client::connect(server.addr)).await.unwrap();
    let nested = Container::builder("user_login")
        .value("user", "alice")
        .value("list", vec![Value::Null])
        .build()
        .unwrap();
    match call(&client, &nested).await {
        Err(ClientError::Remote(reason)) => {
            assert!(
                reason.starts_with("not a container: nesting deeper than 0"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(call(&client, &container("user_login")).await.is_ok());
}

#[test]
fn routes_are_checked_when_built() {
    let ok = service_fn(|_r: ContainerRequest| async move { Ok::<_, BoxError>(None) });
    let err = ContainerRouter::builder()
        .route("a", ok)
        .route("b", ok)
        .route("a", ok)
        .build()
        .unwrap_err();
    assert_eq!(err, RouterError::DuplicateRoute("a".into()));
    let err = ContainerRouter::builder()
        .route("t".repeat(256), ok)
        .build()
        .unwrap_err();
    assert_eq!(err, RouterError::MessageTypeTooLong(256));
}

/// A server whose router delivers `chat` containers by target id.
async fn chat_server() -> (std::net::SocketAddr, Registry) {
    chat_server_with(Server::builder()).await
}

async fn chat_server_with(builder: msgi::ServerBuilder) -> (std::net::SocketAddr, Registry) {
    let server = builder.build().unwrap();
    let registry = server.registry();
    let router = ContainerRouter::builder()
        .route("chat", DeliverToTarget::new(registry.clone()))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener, router));
    (addr, registry)
}

fn chat(to: &str, text: &str) -> Container {
    Container::builder("chat")
        .source("mallory", "phone")
        .target(to, "")
        .value("text", text)
        .build()
        .unwrap()
}

#[tokio::test]
async fn containers_are_delivered_to_the_session_holding_their_target_id() {
    let (addr, _registry) = chat_server().await;
    let alice = within(Client::builder().client_id("alice").connect(addr))
        .await
        .unwrap();
    let bob = within(Client::builder().client_id("bob").connect(addr))
        .await
        .unwrap();
    let mut bob_incoming = bob.incoming().unwrap();

    // Correlated: alice is told it was delivered.
    let answer = call(&alice, &chat("bob", "hi bob")).await.unwrap();
    assert_eq!(answer.message_type(), "delivered");
    assert_eq!((answer.source_id(), answer.target_id()), ("bob", "mallory"));

    let pushed = within(bob_incoming.recv()).await.unwrap();
    assert_eq!(pushed.kind(), msgi::Kind::DATA);
    let got = msgi_container::decode(pushed.payload()).unwrap();
    assert_eq!(got.get::<&str>("text").unwrap(), "hi bob");
    // The source id is the sender's client id, whatever the sender wrote; its sub-id
    // is kept.
    assert_eq!((got.source_id(), got.source_sub_id()), ("alice", "phone"));
    assert_eq!(got.target_id(), "bob");

    // One-way: delivered, nothing answered.
    let mut alice_incoming = alice.incoming().unwrap();
    within(alice.send(Frame::data(chat("bob", "again").encode())))
        .await
        .unwrap();
    let pushed = within(bob_incoming.recv()).await.unwrap();
    let got = msgi_container::decode(pushed.payload()).unwrap();
    assert_eq!(got.get::<&str>("text").unwrap(), "again");
    // A frame bob sends to alice arrives before anything alice might have been
    // answered for her one-way frame: she was answered nothing.
    within(bob.send(Frame::data(chat("alice", "back").encode())))
        .await
        .unwrap();
    let first = within(alice_incoming.recv()).await.unwrap();
    let got = msgi_container::decode(first.payload()).unwrap();
    assert_eq!(got.get::<&str>("text").unwrap(), "back");
    assert_eq!(got.source_id(), "bob");
}

#[tokio::test]
async fn an_unknown_or_missing_target_is_reported_to_the_sender() {
    let (addr, registry) = chat_server().await;
    let alice = within(Client::builder().client_id("alice").connect(addr))
        .await
        .unwrap();
    match call(&alice, &chat("carol", "anyone?")).await {
        Err(ClientError::Remote(reason)) => assert_eq!(reason, "unknown target \"carol\""),
        other => panic!("{other:?}"),
    }
    match call(&alice, &chat("", "to nobody")).await {
        Err(ClientError::Remote(reason)) => assert_eq!(reason, "no target id"),
        other => panic!("{other:?}"),
    }
    // One-way: reported too, as an uncorrelated ERROR.
    let mut incoming = alice.incoming().unwrap();
    within(alice.send(Frame::data(chat("carol", "hello?").encode())))
        .await
        .unwrap();
    let error = within(incoming.recv()).await.unwrap();
    assert_eq!(error.kind(), msgi::Kind::ERROR);
    assert_eq!(error.payload_text(), "unknown target \"carol\"");
    // A session without a handshake is found by its session id.
    let anon = within(Client::connect(addr)).await.unwrap();
    let mut anon_incoming = anon.incoming().unwrap();
    // Once it has an answer, its session is surely registered.
    assert!(within(anon.call(Frame::data("x"))).await.is_err());
    let sessions = registry.sessions();
    let anon_id = sessions
        .iter()
        .map(|s| s.client_id())
        .find(|id| id != "alice")
        .unwrap();
    call(&alice, &chat(&anon_id, "found you")).await.unwrap();
    let pushed = within(anon_incoming.recv()).await.unwrap();
    let got = msgi_container::decode(pushed.payload()).unwrap();
    assert_eq!(got.get::<&str>("text").unwrap(), "found you");
}

#[tokio::test]
async fn a_target_that_cannot_take_the_stamped_container_is_reported_to_the_sender() {
    // Stamping the sender's 200-byte client id as the source makes the push 200 bytes
    // larger than the frame the sender sent: over the server's maximum frame size, so
    // bob's session refuses it and alice is told why.
    let long_id = "a".repeat(200);
    let text = "t".repeat(300);
    let unstamped = Container::builder("chat")
        .target("bob", "")
        .value("text", text.as_str())
        .build()
        .unwrap();
    let max = Frame::data(unstamped.encode()).wire_len() + 50;
    let (addr, _registry) = chat_server_with(Server::builder().max_frame_size(max)).await;
    let alice = within(Client::builder().client_id(long_id.as_str()).connect(addr))
        .await
        .unwrap();
    let bob = within(Client::builder().client_id("bob").connect(addr))
        .await
        .unwrap();
    let mut bob_incoming = bob.incoming().unwrap();
    match call(&alice, &unstamped).await {
        Err(ClientError::Remote(reason)) => {
            let stamped_len = Frame::data(
                Container::builder("chat")
                    .source(long_id.as_str(), "")
                    .target("bob", "")
                    .value("text", text.as_str())
                    .build()
                    .unwrap()
                    .encode(),
            )
            .wire_len();
            assert_eq!(
                reason,
                format!(
                    "target \"bob\" cannot take it: frame too large to send: \
                     {stamped_len} bytes, at most {max}"
                )
            );
        }
        other => panic!("{other:?}"),
    }
    // Bob's session goes on, and got nothing: the next frame he gets is one that fits.
    let small = chat("bob", "fits");
    call(&alice, &small).await.unwrap();
    let pushed = within(bob_incoming.recv()).await.unwrap();
    let got = msgi_container::decode(pushed.payload()).unwrap();
    assert_eq!(got.get::<&str>("text").unwrap(), "fits");
}

/// DeliverToTarget refuses a container whose source it cannot set to the sender's client
/// id; that cannot happen while every client id fits in a source id.
#[test]
fn every_client_id_fits_in_a_source_id() {
    const { assert!(msgi::proto::session::MAX_CLIENT_ID_LEN <= msgi_container::MAX_SHORT_LEN) };
    let longest = "c".repeat(msgi::proto::session::MAX_CLIENT_ID_LEN);
    let mut c = chat("bob", "x");
    c.set_source(longest.as_str(), "phone").unwrap();
    assert_eq!(c.source_id(), longest);
}

#[tokio::test]
async fn a_target_that_cannot_take_it_is_reported_with_the_cause() {
    let req = ContainerRequest::new(chat("bob", "x"), Frame::data(chat("bob", "x").encode()));
    let mut deliver = DeliverToTarget::new(Registry::new());
    let err = tower::ServiceExt::oneshot(&mut deliver, req)
        .await
        .unwrap_err();
    assert!(matches!(err, RouteError::UnknownTarget(ref t) if t == "bob"));

    // The sender receives only an error's own text: it names the session's refusal.
    let e = RouteError::Undeliverable {
        target: "bob".into(),
        reason: msgi::SendError::Closed,
    };
    assert_eq!(
        e.to_string(),
        "target \"bob\" cannot take it: session closed"
    );
}
