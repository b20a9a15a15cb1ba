//! A gateway in one process: three upstream servers, a gateway server whose
//! handler balances over them (msgi-balance, tower's p2c), with a timeout
//! and a load-shedding layer around it, and a client calling through it.
//! One upstream is stopped half-way: the gateway answers every request
//! (from the others, or an ERROR for the few that were in flight), then
//! fails fast once every upstream is gone.
//!
//! ```text
//! cargo run -p msgi-examples --example gateway
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use msgi::{Client, Frame, Server};
use msgi_balance::{Builder, Upstreams};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower::ServiceBuilder;

/// An upstream answering `<name>:<payload>`; stops when `stop` fires.
async fn upstream(
    name: &'static str,
) -> anyhow::Result<(std::net::SocketAddr, oneshot::Sender<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let service = tower::service_fn(move |frame: Frame| async move {
        Ok::<_, std::convert::Infallible>(Some(Frame::data(format!(
            "{name}:{}",
            frame.payload_text()
        ))))
    });
    let server = Server::builder().build()?;
    tokio::spawn(
        server
            .serve(listener, service)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    );
    Ok((addr, stop))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut stops = Vec::new();
    let upstreams = Upstreams::new();
    for name in ["alpha", "beta", "gamma"] {
        let (addr, stop) = upstream(name).await?;
        upstreams.insert(addr);
        stops.push(stop);
    }

    // The balancer is one more layer of the handler's stack.
    let balanced = Builder::default()
        .fail_after(Duration::from_millis(500))
        .build(&upstreams)?;
    let handler = ServiceBuilder::new()
        .load_shed()
        .timeout(Duration::from_secs(5))
        .service(balanced);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let gateway = listener.local_addr()?;
    tokio::spawn(Server::builder().build()?.serve(listener, handler));
    tokio::time::timeout(
        Duration::from_secs(5),
        upstreams.wait_up(|up| up.len() == 3),
    )
    .await?;

    let client = Client::connect(gateway).await?;
    let mut spread = BTreeMap::new();
    for i in 0..300 {
        if i == 150 {
            // Stop one upstream half-way.
            let _ = stops.remove(0).send(());
        }
        match client.call(Frame::data(format!("{i}"))).await {
            Ok(answer) => {
                let text = answer.payload_text();
                let name = text.split(':').next().unwrap_or("?").to_owned();
                *spread.entry(name).or_insert(0) += 1;
            }
            Err(e) => *spread.entry(format!("ERROR {e}")).or_insert(0) += 1,
        }
    }
    println!("300 calls through the gateway: {spread:?}");

    for stop in stops {
        let _ = stop.send(());
    }
    tokio::time::timeout(
        Duration::from_secs(5),
        upstreams.wait_up(|up| up.is_empty()),
    )
    .await?;
    match client.call(Frame::data("anyone?")).await {
        Ok(answer) => println!("unexpected answer: {}", answer.payload_text()),
        Err(e) => println!("with every upstream down: {e}"),
    }
    client.close().await;
    Ok(())
}
