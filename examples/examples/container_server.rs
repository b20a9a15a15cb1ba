//! The login / data-update flow with containers, written the msgi way: a
//! `ContainerRouter` dispatches on the message type, the session remembers who logged in,
//! `chat` containers are delivered to their target by client id, and every answer is a
//! `response` container carrying `status` and `timestamp`.
//!
//! ```text
//! cargo run -p msgi-examples --example container_server -- 127.0.0.1:7002
//! msgi send --addr 127.0.0.1:7002 --correlated --container \
//!   '{"message_type":"user_login","values":{"user":"alice","password":"wonderland"}}'
//! msgi send --addr 127.0.0.1:7002 --correlated --container \
//!   '{"message_type":"data_update","values":{"key":"x","value":1}}'
//! ```
//!
//! (Each `msgi send` is a new connection, so the second one is refused: it has not
//! logged in. The tests at the end run the whole flow on one connection.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use msgi::{BoxError, Registry, Server, Session};
use msgi_container::{Container, Value};
use msgi_middleware::container::{ContainerRequest, ContainerRouter, DeliverToTarget};
use serde::Deserialize;
use tower::service_fn;

/// What a `user_login` container carries (read with serde, borrowing its strings).
#[derive(Deserialize)]
struct Login<'a> {
    user: &'a str,
    password: &'a str,
}

/// Who logged in on a session (kept in the session's data).
#[derive(Clone)]
struct LoggedIn(String);

/// The data every `data_update` changes: key -> (value, version).
type Store = Arc<Mutex<HashMap<String, (Value, u64)>>>;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The `response` to a request: from its target to its source, with status and time.
fn response(req: &ContainerRequest, status: &str) -> msgi_container::Builder {
    req.container()
        .reply("response")
        .value("status", status)
        .value("timestamp", now())
}

fn session(req: &ContainerRequest) -> Result<&Session, BoxError> {
    req.session()
        .ok_or_else(|| "not served by an msgi server".into())
}

async fn login(req: ContainerRequest) -> Result<Option<Container>, BoxError> {
    let login: Login<'_> = req.container().values_as()?;
    // A real server checks a password hash; this one knows two users.
    let known = matches!(
        (login.user, login.password),
        ("alice", "wonderland") | ("bob", "builder")
    );
    if !known {
        return Ok(Some(response(&req, "refused").build()?));
    }
    session(&req)?.insert_data(LoggedIn(login.user.to_owned()));
    Ok(Some(
        response(&req, "ok").value("user", login.user).build()?,
    ))
}

/// The most keys the store keeps; an update of a new key beyond it is refused.
const STORE_KEYS: usize = 1024;

async fn data_update(store: Store, req: ContainerRequest) -> Result<Option<Container>, BoxError> {
    let Some(LoggedIn(user)) = session(&req)?.data::<LoggedIn>() else {
        return Ok(Some(response(&req, "not logged in").build()?));
    };
    let key: &str = req.container().get("key")?;
    // Detached: a decoded value is a slice of the read buffer, which a stored slice would
    // keep alive for as long as the store keeps it.
    let value = req
        .container()
        .value("value")
        .map_or(Value::Null, Value::detached);
    let version = {
        let mut store = store.lock().map_err(|_| "store poisoned")?;
        // Keys are the peers' choice: the store holds at most STORE_KEYS of them.
        if store.len() >= STORE_KEYS && !store.contains_key(key) {
            return Ok(Some(response(&req, "store full").build()?));
        }
        let entry = store.entry(key.to_owned()).or_insert((Value::Null, 0));
        entry.0 = value;
        entry.1 += 1;
        entry.1
    };
    Ok(Some(
        response(&req, "ok")
            .value("key", key)
            .value("version", version)
            .value("by", user)
            .build()?,
    ))
}

/// The server's service: one route per message type, `chat` delivered by target id.
fn router(registry: Registry, store: Store) -> Result<ContainerRouter, BoxError> {
    Ok(ContainerRouter::builder()
        .route("user_login", service_fn(login))
        .route(
            "data_update",
            service_fn(move |req| data_update(store.clone(), req)),
        )
        .route("chat", DeliverToTarget::new(registry))
        .fallback(service_fn(|req: ContainerRequest| async move {
            Ok::<_, BoxError>(Some(response(&req, "unknown message type").build()?))
        }))
        .build()?)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7002".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("container server on {}", listener.local_addr()?);
    let server = Server::builder().build()?;
    let service = router(server.registry(), Store::default())?;
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    server
        .serve(listener, service)
        .with_graceful_shutdown(ctrl_c)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use msgi::{Client, Frame};
    use std::time::Duration;

    async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), fut)
            .await
            .expect("test step timed out")
    }

    async fn start() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::builder().build().unwrap();
        let service = router(server.registry(), Store::default()).unwrap();
        tokio::spawn(server.serve(listener, service));
        addr
    }

    async fn call(client: &Client, c: Container) -> Container {
        let answer = within(client.call(Frame::data(c.encode()))).await.unwrap();
        msgi_container::decode(answer.payload()).unwrap()
    }

    fn login(user: &str, password: &str) -> Container {
        Container::builder("user_login")
            .source(user, "")
            .target("server", "")
            .value("user", user)
            .value("password", password)
            .build()
            .unwrap()
    }

    fn update(key: &str, value: impl Into<Value>) -> Container {
        Container::builder("data_update")
            .value("key", key)
            .value("value", value)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn login_then_data_updates() {
        let addr = start().await;
        let client = within(Client::connect(addr)).await.unwrap();

        let answer = call(&client, update("x", 1i64)).await;
        assert_eq!(answer.get::<&str>("status").unwrap(), "not logged in");

        let answer = call(&client, login("alice", "wrong")).await;
        assert_eq!(answer.message_type(), "response");
        assert_eq!(answer.get::<&str>("status").unwrap(), "refused");

        let answer = call(&client, login("alice", "wonderland")).await;
        assert_eq!(answer.get::<&str>("status").unwrap(), "ok");
        assert!(answer.get::<i64>("timestamp").unwrap() > 1_600_000_000);
        assert_eq!(
            (answer.source_id(), answer.target_id()),
            ("server", "alice")
        );

        let answer = call(&client, update("x", 1i64)).await;
        assert_eq!(answer.get::<&str>("status").unwrap(), "ok");
        assert_eq!(answer.get::<u64>("version").unwrap(), 1);
        assert_eq!(answer.get::<&str>("by").unwrap(), "alice");
        let answer = call(&client, update("x", "two")).await;
        assert_eq!(answer.get::<u64>("version").unwrap(), 2);

        let other = Container::new("weather").unwrap();
        let answer = call(&client, other).await;
        assert_eq!(
            answer.get::<&str>("status").unwrap(),
            "unknown message type"
        );
    }

    #[tokio::test]
    async fn chat_is_delivered_by_client_id() {
        let addr = start().await;
        let alice = within(Client::builder().client_id("alice").connect(addr))
            .await
            .unwrap();
        let bob = within(Client::builder().client_id("bob").connect(addr))
            .await
            .unwrap();
        let mut inbox = bob.incoming().unwrap();
        let hello = Container::builder("chat")
            .target("bob", "")
            .value("text", "hello bob")
            .build()
            .unwrap();
        assert_eq!(call(&alice, hello).await.message_type(), "delivered");
        let pushed = within(inbox.recv()).await.unwrap();
        let got = msgi_container::decode(pushed.payload()).unwrap();
        assert_eq!(got.source_id(), "alice");
        assert_eq!(got.get::<&str>("text").unwrap(), "hello bob");
    }
}
