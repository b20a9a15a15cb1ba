//! A chat that browsers and native clients share: the page `web/chat.html`
//! (with the module `web/msgi.js`) served over HTTP, msgi over WebSocket for
//! the browsers and over TCP for native clients, one registry for both.
//!
//! ```text
//! cargo run -p msgi-examples --example web_chat -- 127.0.0.1:8080 127.0.0.1:8081 127.0.0.1:7000
//! # open http://127.0.0.1:8080/?name=ada in a browser, then from a shell:
//! msgi send --addr 127.0.0.1:7000 "hello from the terminal"
//! ```
//!
//! Every DATA frame is broadcast to every session as `<client id>: <text>`;
//! a correlated one is answered `delivered to N`. The HTTP responder is a
//! few lines on tokio (GET of two files, nothing else): msgi itself serves
//! no HTTP. The WebSocket listener lets in pages of the HTTP address's
//! origin only. Its test drives the page in headless Chromium.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use msgi::ws::WebSocketAccept;
use msgi::{Frame, Kind, Registry, Server, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::service_fn;

const CHAT_HTML: &str = include_str!("../../web/chat.html");
const MSGI_JS: &str = include_str!("../../web/msgi.js");

/// The chat's handler: broadcast each DATA frame with its sender's client id.
fn chat(
    registry: Registry,
) -> impl tower::Service<
    Frame,
    Response = Option<Frame>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<Option<Frame>, std::convert::Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    service_fn(move |frame: Frame| {
        let registry = registry.clone();
        async move {
            if frame.kind() != Kind::DATA {
                return Ok(None);
            }
            let who = frame
                .extensions()
                .get::<Session>()
                .map_or_else(|| "?".to_owned(), Session::client_id);
            let text = frame.payload_text();
            let delivery = registry.broadcast(Frame::data(format!("{who}: {text}")));
            Ok(frame
                .request_id()
                .map(|_| Frame::data(format!("delivered to {}", delivery.queued))))
        }
    })
}

/// Serves the page on `http`, msgi over WebSocket on `ws` and over TCP on
/// `tcp`, all in `registry`, until one of them fails.
async fn serve(
    http: TcpListener,
    ws: TcpListener,
    tcp: TcpListener,
    registry: Registry,
) -> anyhow::Result<()> {
    let page = http.local_addr()?;
    let mut origins = WebSocketAccept::builder().allow_origin(format!("http://{page}"));
    if page.ip().is_loopback() {
        origins = origins.allow_origin(format!("http://localhost:{}", page.port()));
    }
    let ws_server = Server::builder()
        .registry(registry.clone())
        .accept(origins.build()?)
        .build()?;
    let tcp_server = Server::builder().registry(registry.clone()).build()?;
    tokio::try_join!(
        ws_server.serve(ws, chat(registry.clone())),
        tcp_server.serve(tcp, chat(registry)),
        serve_files(http),
    )?;
    Ok(())
}

/// The smallest HTTP/1.1 responder that serves the two files: one request
/// per connection, a request head of at most 8 KiB read within 5 s.
async fn serve_files(listener: TcpListener) -> io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream)).await;
        });
    }
}

async fn answer(mut stream: TcpStream) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || head.len() + n > 8 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or(b"");
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next(), parts.next().unwrap_or(b"/"));
    let path = target.split(|&b| b == b'?').next().unwrap_or(b"/");
    let (status, kind, body) = match (method, path) {
        (Some(b"GET"), b"/" | b"/chat.html") => ("200 OK", "text/html; charset=utf-8", CHAT_HTML),
        (Some(b"GET"), b"/msgi.js") => ("200 OK", "text/javascript; charset=utf-8", MSGI_JS),
        (Some(b"GET"), _) => ("404 Not Found", "text/plain", "not found\n"),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut addr = |default: &str| -> anyhow::Result<SocketAddr> {
        Ok(args.next().as_deref().unwrap_or(default).parse()?)
    };
    let (http, ws, tcp) = (
        addr("127.0.0.1:8080")?,
        addr("127.0.0.1:8081")?,
        addr("127.0.0.1:7000")?,
    );
    let (http, ws, tcp) = (
        TcpListener::bind(http).await?,
        TcpListener::bind(ws).await?,
        TcpListener::bind(tcp).await?,
    );
    println!(
        "open http://{}/?ws=ws://{}/chat&name=ada ; native clients: msgi send --addr {} TEXT",
        http.local_addr()?,
        ws.local_addr()?,
        tcp.local_addr()?
    );
    tokio::select! {
        result = serve(http, ws, tcp, Registry::new()) => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    //! The page in a real browser: headless Chromium (Debian's `chromium`,
    //! installed by `.ci/run`) driven over the DevTools protocol, and a
    //! native msgi client over TCP, exchanging a broadcast both ways.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use msgi::Client;
    use serde_json::{json, Value};
    use std::path::PathBuf;
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt;
    use tokio_tungstenite::tungstenite::Message;

    /// The whole browser test: Chromium's start included.
    const LIMIT: Duration = Duration::from_secs(20);

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// The browser (killed on drop) and its DevTools WebSocket address.
    struct Chromium {
        child: tokio::process::Child,
        profile: PathBuf,
    }

    impl Drop for Chromium {
        fn drop(&mut self) {
            let _ = self.child.start_kill();
            let _ = std::fs::remove_dir_all(&self.profile);
        }
    }

    /// Starts headless Chromium (`MSGI_CHROMIUM`, or `chromium`); fails the
    /// test, never skips it, when there is none.
    async fn chromium() -> (Chromium, String) {
        let bin = std::env::var("MSGI_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
        let profile = std::env::temp_dir().join(format!(
            "msgi-chromium-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let spawned = tokio::process::Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot start {bin:?} ({e}): the browser test needs Chromium \
                 (`apt-get install chromium`; .ci/run installs it), or MSGI_CHROMIUM=/path/to/chrome"
            ),
        };
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let devtools = loop {
            match lines.next_line().await.unwrap() {
                Some(line) => {
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        break url.trim().to_owned();
                    }
                    seen.push(line);
                }
                None => panic!("Chromium exited before listening:\n{}", seen.join("\n")),
            }
        };
        // Keep reading its stderr so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (Chromium { child, profile }, devtools)
    }

    /// A DevTools protocol connection (one WebSocket, flat sessions).
    struct Cdp {
        ws: Ws,
        next: u64,
    }

    impl Cdp {
        async fn connect(url: &str) -> Cdp {
            let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            Cdp { ws, next: 0 }
        }

        /// Calls `method` (on the page `session`, or the browser) and
        /// returns its result; events in between are skipped.
        async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
            self.next += 1;
            let id = self.next;
            let mut message = json!({ "id": id, "method": method, "params": params });
            if let Some(session) = session {
                message["sessionId"] = json!(session);
            }
            self.ws
                .send(Message::text(message.to_string()))
                .await
                .unwrap();
            loop {
                let Some(Ok(Message::Text(text))) = self.ws.next().await else {
                    panic!("DevTools connection ended during {method}");
                };
                let answer: Value = serde_json::from_str(&text).unwrap();
                if answer["id"] == json!(id) {
                    assert!(answer.get("error").is_none(), "{method}: {answer}");
                    return answer["result"].clone();
                }
            }
        }

        /// Evaluates `expression` in the page (awaiting a promise) and
        /// returns its value.
        async fn eval(&mut self, session: &str, expression: &str) -> Value {
            let result = self
                .call(
                    Some(session),
                    "Runtime.evaluate",
                    json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
                )
                .await;
            assert!(
                result.get("exceptionDetails").is_none(),
                "{expression}: {result}"
            );
            result["result"]["value"].clone()
        }
    }

    /// A promise, in the page, that resolves once `condition` (an
    /// expression) holds: checked now and after every DOM change.
    fn once(condition: &str) -> String {
        format!(
            "new Promise((resolve) => {{
                const check = () => {{ try {{ return {condition}; }} catch (_) {{ return false; }} }};
                if (check()) return resolve(true);
                new MutationObserver((_, observer) => {{
                    if (check()) {{ observer.disconnect(); resolve(true); }}
                }}).observe(document, {{ subtree: true, childList: true, attributes: true, characterData: true }});
            }})"
        )
    }

    fn log_has(text: &str) -> String {
        once(&format!(
            "[...document.querySelectorAll('#log li')].some((li) => li.textContent === {})",
            json!(text)
        ))
    }

    #[tokio::test]
    async fn a_browser_and_a_native_client_exchange_broadcasts() {
        let bind = || TcpListener::bind("127.0.0.1:0");
        let (http, ws, tcp) = (
            bind().await.unwrap(),
            bind().await.unwrap(),
            bind().await.unwrap(),
        );
        let (http_addr, ws_addr, tcp_addr) = (
            http.local_addr().unwrap(),
            ws.local_addr().unwrap(),
            tcp.local_addr().unwrap(),
        );
        let registry = Registry::new();
        let server = tokio::spawn(serve(http, ws, tcp, registry.clone()));

        tokio::time::timeout(LIMIT, async {
            let (_browser, devtools) = chromium().await;
            let mut cdp = Cdp::connect(&devtools).await;
            let target = cdp
                .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
                .await;
            let attached = cdp
                .call(
                    None,
                    "Target.attachToTarget",
                    json!({ "targetId": target["targetId"], "flatten": true }),
                )
                .await;
            let page = attached["sessionId"].as_str().unwrap().to_owned();
            let url = format!("http://{http_addr}/?ws=ws://{ws_addr}/chat&name=browser");
            let navigated = cdp
                .call(Some(&page), "Page.navigate", json!({ "url": url }))
                .await;
            assert!(navigated.get("errorText").is_none(), "{navigated}");

            // The page has said HELLO and got its WELCOME.
            cdp.eval(
                &page,
                &once("document.getElementById('status').dataset.state === 'open'"),
            )
            .await;
            let status = cdp
                .eval(&page, "document.getElementById('status').textContent")
                .await;
            assert!(
                status
                    .as_str()
                    .unwrap()
                    .starts_with("connected as browser (session "),
                "{status}"
            );

            // Native -> browser.
            let client = Client::builder()
                .client_id("rust")
                .connect(tcp_addr)
                .await
                .unwrap();
            let mut incoming = client.incoming().unwrap();
            let answer = client.call(Frame::data("hello from rust")).await.unwrap();
            assert_eq!(answer.payload(), "delivered to 2");
            cdp.eval(&page, &log_has("rust: hello from rust")).await;

            // Browser -> native: typed into the form and sent.
            cdp.eval(
                &page,
                "document.getElementById('text').value = 'hello from the browser';
                 document.getElementById('send').click(); true",
            )
            .await;
            let pushed = loop {
                let frame = incoming.recv().await.unwrap();
                if frame.payload() != "rust: hello from rust" {
                    break frame;
                }
            };
            assert_eq!(pushed.payload(), "browser: hello from the browser");
            // The page shows its own message, and its call was answered.
            cdp.eval(&page, &log_has("browser: hello from the browser"))
                .await;
            cdp.eval(
                &page,
                &once("document.getElementById('status').dataset.lastAnswer === 'delivered to 2'"),
            )
            .await;

            // msgi.js: its encoding is the wire's (PROTOCOL.md's example),
            // an ERROR answer rejects the call, an unanswered one times out.
            let mut wire = bytes::BytesMut::new();
            msgi::Framing::encode(
                &mut msgi::FrameCodec::new(),
                Frame::data("abc").with_request_id(7),
                &mut wire,
            )
            .unwrap();
            let encoded = cdp
                .eval(
                    &page,
                    "import('./msgi.js').then((m) => Array.from(m.encodeFrame({ kind: m.Kind.DATA, payload: 'abc', requestId: 7 })))",
                )
                .await;
            assert_eq!(encoded, json!(wire.to_vec()));
            let refused = cdp
                .eval(
                    &page,
                    "msgiChat.call('x', { kind: 0x100 }).then(() => 'answered', (e) => `${e.remote} ${e.message}`)",
                )
                .await;
            assert_eq!(refused, json!("true no response"));
            let unanswered = cdp
                .eval(
                    &page,
                    "msgiChat.call('', { kind: 0x002, timeout: 200 }).then(() => 'answered', (e) => e.code)",
                )
                .await;
            assert_eq!(unanswered, json!("timeout"));

            // The server closes the browser's session: the page says why,
            // reconnects with a new session, and gets broadcasts again.
            let before = status.as_str().unwrap().to_owned();
            let session = registry.get_by_client_id("browser").unwrap();
            assert!(session.close("moving you"));
            cdp.eval(&page, &log_has("server: moving you")).await;
            cdp.eval(
                &page,
                &once(&format!(
                    "document.getElementById('status').dataset.state === 'open' && document.getElementById('status').textContent !== {}",
                    json!(before)
                )),
            )
            .await;
            client.send(Frame::data("welcome back")).await.unwrap();
            cdp.eval(&page, &log_has("rust: welcome back")).await;
            let _ = cdp.call(None, "Browser.close", json!({})).await;
        })
        .await
        .expect("the browser test took longer than 20 s");
        server.abort();
    }

    #[tokio::test]
    async fn the_http_responder_serves_the_two_files_only() {
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = http.local_addr().unwrap();
        tokio::spawn(serve_files(http));
        let get = |path: &'static str| async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            stream.read_to_string(&mut out).await.unwrap();
            out
        };
        tokio::time::timeout(LIMIT, async {
            let page = get("/?ws=x").await;
            assert!(page.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/html"));
            assert!(page.ends_with(CHAT_HTML));
            let module = get("/msgi.js").await;
            assert!(module.contains("content-type: text/javascript"));
            assert!(module.ends_with(MSGI_JS));
            assert!(get("/../Cargo.toml").await.starts_with("HTTP/1.1 404"));
        })
        .await
        .unwrap();
    }
}
