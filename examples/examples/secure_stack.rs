//! Every layer at once: compression + encryption + HMAC on the wire, and a
//! frame timeout + rate limit + tower's ConcurrencyLimit and LoadShed around
//! the handler. A client and a server talk through all of it on loopback.
//!
//! ```text
//! cargo run -p msgi-middleware --example secure_stack
//! ```

use std::time::Duration;

use msgi::{Client, Frame, FrameCodec, Server, Session, Wire};
use msgi_middleware::{
    AuthenticatedKey, EncryptionKey, HmacKeys, Limit, RateLimitLayer, RatePolicy,
    ServiceBuilderExt, WireExt,
};
use tower::{service_fn, ServiceBuilder};

#[tokio::main]
async fn main() -> Result<(), msgi::BoxError> {
    // Both ends stack the same transforms, application first, wire last;
    // each session gets fresh transforms from this factory.
    let keys = HmacKeys::new(1, b"a signing key shared by both ends");
    let framing = Wire::new(FrameCodec::new())
        .deflate(256)
        .encrypt(EncryptionKey::new(*b"an example key, 32 bytes long!!!"))
        .sign(keys.clone());

    let handler = service_fn(|frame: Frame| async move {
        let signer = frame.extensions().get::<AuthenticatedKey>().map(|k| k.0);
        let session = frame.extensions().get::<Session>().map(Session::client_id);
        if frame.payload() == "slow" {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let text = format!(
            "{} bytes from {session:?}, signed with key {signer:?}",
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
    let server = Server::builder().framing(framing.clone()).build()?;
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
        .framing(framing)
        .client_id("secure-client")
        .connect(addr)
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

    // Let the rate-limit bucket refill, then rotate the signing key; the
    // old one stays valid for a minute.
    tokio::time::sleep(Duration::from_secs(1)).await;
    keys.rotate(2, b"the next signing key", Duration::from_secs(60));
    println!(
        "rotated:   {}",
        client
            .call(Frame::data("after rotation"))
            .await?
            .payload_text()
    );

    client.close().await;
    let _ = stop.send(());
    serving.await??;
    Ok(())
}
