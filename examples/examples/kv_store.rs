//! A per-session key/value store: each connection gets its own map, made
//! by a make-service when the session starts. Runs a server and a client
//! in one process.
//!
//! Requests are DATA frames `SET key value` or `GET key`.
//!
//! ```text
//! cargo run --example kv_store
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use msgi::{Client, Frame, Server, Session};
use tower::service_fn;

fn kv_service(
    session: &Session,
) -> impl tower::Service<
    Frame,
    Response = Option<Frame>,
    Error = msgi::BoxError,
    Future = impl std::future::Future<Output = Result<Option<Frame>, msgi::BoxError>> + Send,
> + Send
       + 'static {
    let store: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let id = session.id();
    service_fn(move |frame: Frame| {
        let store = store.clone();
        async move {
            let text = frame.payload_text().into_owned();
            let mut map = store.lock().map_err(|_| "store poisoned")?;
            let answer = match text.split_once(' ') {
                Some(("SET", kv)) => {
                    let (k, v) = kv.split_once(' ').ok_or("usage: SET key value")?;
                    map.insert(k.to_owned(), v.to_owned());
                    "OK".to_owned()
                }
                Some(("GET", k)) => map.get(k).cloned().unwrap_or_else(|| "(nil)".into()),
                _ => return Err(format!("session {id}: unknown command {text:?}").into()),
            };
            Ok(Some(Frame::data(answer)))
        }
    })
}

#[tokio::main]
async fn main() -> Result<(), msgi::BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let make =
        service_fn(|session: Session| async move { Ok::<_, msgi::BoxError>(kv_service(&session)) });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .build()?
            .serve(listener, msgi::PerSession(make))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );

    let first = Client::connect(addr).await?;
    let second = Client::connect(addr).await?;
    first.call(Frame::data("SET color blue")).await?;
    let mine = first.call(Frame::data("GET color")).await?;
    let theirs = second.call(Frame::data("GET color")).await?;
    println!("first session sees color = {}", mine.payload_text());
    println!("second session sees color = {}", theirs.payload_text());
    match second.call(Frame::data("DROP everything")).await {
        Err(e) => println!("bad command answered with an error: {e}"),
        Ok(f) => println!("unexpected answer {f:?}"),
    }

    let _ = stop.send(());
    server.await??;
    Ok(())
}
