//! An MSGI echo server: every DATA, CONTROL or application frame comes back
//! as it was sent (kind, flags, payload, request id).
//!
//! ```text
//! cargo run --example echo_server -- 127.0.0.1:7000
//! cargo run -p msgi-cli -- send --addr 127.0.0.1:7000 --correlated hello
//! ```

use msgi::{Frame, Server};
use tower::service_fn;

#[tokio::main]
async fn main() -> Result<(), msgi::BoxError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("echo server on {}", listener.local_addr()?);

    let echo = service_fn(|frame: Frame| async move {
        let mut answer =
            Frame::new(frame.kind(), frame.payload().clone()).with_flags(frame.flags());
        answer.set_request_id(frame.request_id());
        Ok::<_, std::convert::Infallible>(Some(answer))
    });
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    Server::builder()
        .build()?
        .serve(listener, echo)
        .with_graceful_shutdown(ctrl_c)
        .await?;
    Ok(())
}
