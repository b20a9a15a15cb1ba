//! A client for the echo server: correlated calls (many in flight), a
//! one-way send whose echo arrives as a push, and a ping.
//!
//! ```text
//! cargo run --example echo_server &
//! cargo run --example echo_client -- 127.0.0.1:7000
//! ```

use futures_util::future::try_join_all;
use msgi::{Client, Frame};

#[tokio::main]
async fn main() -> Result<(), msgi::BoxError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let client = Client::builder()
        .client_id("echo-client")
        .connect(addr)
        .await?;

    // Ten calls in flight at once on one connection.
    let calls = (0..10).map(|i| client.call(Frame::data(format!("request {i}"))));
    for answer in try_join_all(calls).await? {
        println!("answer: {}", answer.payload_text());
    }

    // A one-way frame: the echo comes back uncorrelated, as a push.
    let mut pushes = client.incoming().ok_or("incoming already taken")?;
    client.send(Frame::data("one way")).await?;
    if let Some(echo) = pushes.recv().await {
        println!("push: {}", echo.payload_text());
    }

    println!("ping: {:?}", client.ping().await?);
    client.close().await;
    Ok(())
}
