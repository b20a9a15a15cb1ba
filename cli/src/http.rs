//! A small HTTP/1.1 server for the CLI's own endpoints: `msgi serve
//! --metrics` (Prometheus text) and `--admin` (JSON).
//!
//! hyper 1 does the HTTP (no parser of ours), hyper-util runs it on tokio
//! and drains it on shutdown. A handler is a plain function from a request
//! (its body read, at most [`MAX_BODY`] bytes) to a response: these
//! endpoints answer from memory, never wait.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections at once (the next waits
//! in the listener's backlog), a request's head must arrive within
//! [`HEADER_TIMEOUT`], a body over [`MAX_BODY`] is answered 413, and on
//! shutdown the connections still open get [`SHUTDOWN_GRACE`] to finish.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// A request as a handler sees it: its body already read.
pub(crate) type Request = http::Request<Bytes>;
/// A handler's answer.
pub(crate) type Response = http::Response<Bytes>;

/// Most connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// Largest request body read, in bytes; a larger one is answered 413.
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// How long a request's head (request line and headers) may take to arrive.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish once shutdown is asked.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A response of `status` with `content_type` and `body`.
pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response {
    let mut response = http::Response::new(body.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `404 Not Found`, as text.
pub(crate) fn not_found() -> Response {
    respond(
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        "not found\n",
    )
}

/// Serves `handler` on `listener` until `shutdown` resolves, then stops
/// accepting and waits (at most [`SHUTDOWN_GRACE`]) for the connections
/// still open. A failed connection is logged at DEBUG and does not stop the
/// server; an error of the listener itself (not one connection's) ends it.
pub(crate) async fn serve<H>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    H: Fn(Request) -> Response + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let graceful = GracefulShutdown::new();
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &places) => accepted,
        };
        let (stream, place) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => return Err(e),
        };
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(answer(request, &*handler).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _place = place;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection failed");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("HTTP connections still open after the shutdown grace: dropped");
    }
    Ok(())
}

/// The next connection, once a place is free.
async fn accept(
    listener: &TcpListener,
    places: &Arc<Semaphore>,
) -> io::Result<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    // The semaphore is never closed.
    let place = places
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| io::Error::other("connection places closed"))?;
    let (stream, _) = listener.accept().await?;
    Ok((stream, place))
}

/// One connection's trouble, not the listener's: go on accepting.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Reads the body (bounded) and asks the handler.
async fn answer<H>(request: http::Request<Incoming>, handler: &H) -> http::Response<Full<Bytes>>
where
    H: Fn(Request) -> Response,
{
    let (parts, body) = request.into_parts();
    let response = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => handler(Request::from_parts(parts, body.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => respond(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text/plain; charset=utf-8",
            "request body too large\n",
        ),
        Err(_) => respond(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            "request body not read\n",
        ),
    };
    response.map(Full::new)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMIT: Duration = Duration::from_secs(5);

    /// Sends `request` on a new connection and reads until the server closes.
    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(LIMIT, stream.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn serves_the_handler_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            |request: Request| match request.uri().path() {
                "/echo" => respond(StatusCode::OK, "text/plain", request.into_body()),
                _ => not_found(),
            },
            async move {
                let _ = stopped.await;
            },
        ));
        let answer = exchange(
            addr,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("content-type: text/plain\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nhello"), "{answer}");

        let answer = exchange(
            addr,
            b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");

        // Not HTTP: hyper answers 400 and closes; the server goes on.
        let answer = exchange(addr, b"\x00\x01garbage\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

        stop.send(()).unwrap();
        tokio::time::timeout(LIMIT, server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // The listener is closed.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_answered_413() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            |_: Request| respond(StatusCode::OK, "text/plain", "read"),
            std::future::pending(),
        ));
        let mut request = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            MAX_BODY + 1
        )
        .into_bytes();
        request.resize(request.len() + MAX_BODY + 1, b'a');
        let answer = exchange(addr, &request).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        server.abort();
    }

    #[tokio::test]
    async fn an_open_connection_is_drained_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            |_: Request| respond(StatusCode::OK, "text/plain", "ok"),
            async move {
                let _ = stopped.await;
            },
        ));
        // A kept-alive connection, idle after one answer.
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(LIMIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].ends_with(b"ok"));
        stop.send(()).unwrap();
        // Well within the grace: the idle connection is closed at once.
        tokio::time::timeout(SHUTDOWN_GRACE / 2, server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let n = tokio::time::timeout(LIMIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
    }
}
