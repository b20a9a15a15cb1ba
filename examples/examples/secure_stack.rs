//! Every layer at once: compression + encryption + HMAC on the wire, under
//! keys a pre-shared-key handshake derives for each connection, and a
//! frame timeout + rate limit + tower's ConcurrencyLimit and LoadShed around
//! the handler. A client and a server talk through all of it on loopback.
//!
//! ```text
//! cargo run -p msgi-middleware --example secure_stack
//! ```

use std::time::Duration;

use msgi::{Client, Frame, FrameCodec, Server, Session, TcpConnector, Wire};
use msgi_middleware::{
    AuthenticatedKey, Limit, PresharedKeys, Psk, RateLimitLayer, RatePolicy, ServiceBuilderExt,
    WireExt,
};
use tower::{service_fn, ServiceBuilder};

#[tokio::main]
async fn main() -> Result<(), msgi::BoxError> {
    // Both ends stack the same transforms, application first, wire last;
    // each session gets fresh transforms from this factory.
    let framing = Wire::new(FrameCodec::new()).deflate(256).encrypt().sign();
    // The keys: a handshake on every connection, from a pre-shared key that
    // both ends hold (the server's ring may accept several, for rotation).
    let server_keys = PresharedKeys::new(1, b"an example key, 32 bytes long!!!");
    server_keys.accept(2, b"the next key, also 32 bytes long")?;
    let server_psk = Psk::new(server_keys, &framing);
    let client_psk = Psk::new(
        PresharedKeys::new(1, b"an example key, 32 bytes long!!!"),
        &framing,
    );

    let handler = service_fn(|frame: Frame| async move {
        let session = frame.extensions().get::<Session>();
        let signer = session
            .and_then(|s| s.connect_info::<AuthenticatedKey>())
            .map(|k| k.0);
        let session = session.map(Session::client_id);
        if frame.payload() == "slow" {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let text = format!(
            "{} bytes from {session:?}, pre-shared key {signer:?}",
            frame.payload().len()
        );
        Ok::<_, std::convert::Infallible>(Some(Frame::data(text)))
    });
    let service = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(64)
        .frame_timeout(Duration::from_millis(200))
        .frame_rate_limit(RateLimitLayer::new(RatePolicy::Reject).per_session(Limit::frames(5.0)?))
        .service(handler);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = Server::builder()
        .framing(framing.clone())
        .accept(server_psk.acceptor())
        .build()?;
    let registry = server.registry();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        server
            .serve(listener, service)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );

    let client = Client::builder()
        .framing(framing.clone())
        .client_id("secure-client")
        .connect_with_connector(client_psk.connector(TcpConnector::new()), addr)
        .await?;
    let mut pushes = client.incoming().ok_or("incoming taken")?;

    let big = "a compressible line of text\n".repeat(200);
    println!(
        "call:      {}",
        client.call(Frame::data(big)).await?.payload_text()
    );
    registry.broadcast(Frame::data(
        "a push, compressed, encrypted and signed like any answer",
    ));
    if let Some(push) = pushes.recv().await {
        println!("push:      {}", push.payload_text());
    }
    match client.call(Frame::data("slow")).await {
        Err(e) => println!("timeout:   {e}"),
        Ok(f) => println!("timeout:   unexpected answer {}", f.payload_text()),
    }
    // The budget is five frames a second per session: part of this burst
    // is answered with ERROR `rate limited`, and the session goes on.
    for i in 0..6 {
        match client.call(Frame::data(format!("burst {i}"))).await {
            Ok(f) => println!("burst {i}:   {}", f.payload_text()),
            Err(e) => println!("burst {i}:   {e}"),
        }
    }

    client.close().await;

    // A client that moved to the next key: the server accepts both.
    let rotated = Client::builder()
        .framing(framing.clone())
        .connect_with_connector(
            Psk::new(
                PresharedKeys::new(2, b"the next key, also 32 bytes long"),
                &framing,
            )
            .connector(TcpConnector::new()),
            addr,
        )
        .await?;
    println!(
        "rotated:   {}",
        rotated
            .call(Frame::data("after rotation"))
            .await?
            .payload_text()
    );
    rotated.close().await;
    let _ = stop.send(());
    serving.await??;
    Ok(())
}
