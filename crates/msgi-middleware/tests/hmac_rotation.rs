//! A rolling HMAC key rotation between two live peers with separate key
//! rings (issue 7, item 23): accept the new key on both ends, sign with it
//! one end at a time, retire the old one. No frame is refused at any step:
//! every call is answered, every push arrives, the session never ends.

#![allow(clippy::unwrap_used)]

#[path = "../../msgi/tests/support/mod.rs"]
mod support;

use msgi::{Client, Frame, FrameCodec, Incoming, MakeFraming, Server, Wire};
use msgi_middleware::{AuthenticatedKey, HmacKeys, WireExt};
use support::{serve, within, TestServer};

fn framing(keys: &HmacKeys) -> impl MakeFraming + Clone + std::fmt::Debug {
    Wire::new(FrameCodec::new()).sign(keys.clone())
}

/// Answers with the id of the key that signed the request.
fn signer_echo() -> impl tower::Service<
    Frame,
    Response = Option<Frame>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<Option<Frame>, std::convert::Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|f: Frame| async move {
        let key = f.extensions().get::<AuthenticatedKey>().map(|k| k.0);
        Ok(Some(Frame::data(format!("{key:?}"))))
    })
}

/// One call and one push; the key ids that signed the request (as the
/// server saw it), the answer and the push (as the client saw them).
async fn round(server: &TestServer, client: &Client, incoming: &mut Incoming) -> [u16; 3] {
    let answer = within(client.call(Frame::data("who signed this?")))
        .await
        .unwrap();
    let up: u16 = answer
        .payload_text()
        .trim_start_matches("Some(")
        .trim_end_matches(')')
        .parse()
        .unwrap();
    let down = answer.extensions().get::<AuthenticatedKey>().unwrap().0;
    assert_eq!(server.registry.broadcast(Frame::data("push")).queued, 1);
    let push = within(incoming.recv()).await.unwrap();
    let pushed = push.extensions().get::<AuthenticatedKey>().unwrap().0;
    [up, down, pushed]
}

#[tokio::test]
async fn a_rolling_rotation_between_live_peers_refuses_no_frame() {
    let server_keys = HmacKeys::new(1, b"key one");
    let client_keys = HmacKeys::new(1, b"key one");
    let mut server = serve(
        Server::builder().framing(framing(&server_keys)),
        signer_echo(),
    )
    .await;
    let client = within(
        Client::builder()
            .framing(framing(&client_keys))
            .connect(server.addr),
    )
    .await
    .unwrap();
    let mut incoming = client.incoming().unwrap();
    assert_eq!(round(&server, &client, &mut incoming).await, [1, 1, 1]);
    let session = server.registry.sessions().pop().unwrap().id();

    // 1. Both ends accept key 2; neither signs with it yet.
    server_keys.accept(2, b"key two").unwrap();
    assert_eq!(round(&server, &client, &mut incoming).await, [1, 1, 1]);
    client_keys.accept(2, b"key two").unwrap();
    assert_eq!(round(&server, &client, &mut incoming).await, [1, 1, 1]);
    // 2. The client signs with it first, then the server.
    client_keys.sign_with(2).unwrap();
    assert_eq!(round(&server, &client, &mut incoming).await, [2, 1, 1]);
    server_keys.sign_with(2).unwrap();
    assert_eq!(round(&server, &client, &mut incoming).await, [2, 2, 2]);
    // 3. Both retire key 1.
    server_keys.retire(1).unwrap();
    client_keys.retire(1).unwrap();
    assert_eq!(round(&server, &client, &mut incoming).await, [2, 2, 2]);

    // The same session all along, and nothing ended.
    let sessions: Vec<_> = server.registry.sessions().iter().map(|s| s.id()).collect();
    assert_eq!(sessions, vec![session]);
    assert!(server.ended.try_recv().is_err(), "a session ended");
    assert!(!client.is_closed());
    client.close().await;
    server.shutdown().await;
}
