//! The WebSocket accept step: the HTTP upgrade, the `Origin` check, and
//! what the request said ([`WebSocketRequest`]) recorded in the session's
//! [`ConnectInfo`](crate::ConnectInfo).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderMap, HeaderValue, HOST, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use http::{StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::transport::WebSocket;
use crate::accept::Accepted;
use crate::BoxError;
use msgi_proto::text::PeerText;
use msgi_proto::{ConfigError, CORRELATED_HEADER_LEN, DEFAULT_MAX_FRAME_SIZE};

/// The subprotocol a client may ask for (`Sec-WebSocket-Protocol: msgi`);
/// the server agrees to it when asked, and needs none.
pub(crate) const SUBPROTOCOL: &str = "msgi";

/// Bytes tungstenite reads at a time, and buffers before writing: small,
/// since an idle session's memory is mostly its transport's.
const READ_BUFFER: usize = 8 * 1024;
const WRITE_BUFFER: usize = 8 * 1024;

/// What the upgrade request said: its URI (path and query), its headers
/// (the `Origin` among them). The WebSocket accept step records it in the
/// session's [`ConnectInfo`](crate::ConnectInfo); read it back with
/// `session.connect_info().get::<WebSocketRequest>()`.
#[derive(Debug, Clone)]
pub struct WebSocketRequest {
    uri: Uri,
    headers: HeaderMap,
}

impl WebSocketRequest {
    /// A request with this URI and these headers (for a transport upgraded
    /// by your own HTTP server: record what it saw).
    pub fn new(uri: Uri, headers: HeaderMap) -> Self {
        WebSocketRequest { uri, headers }
    }

    /// The request's URI as sent (usually a path and a query: `/chat?room=1`).
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The request's path (`/chat`).
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// The request's headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The `Origin` header, if present and ASCII (browsers always send it).
    pub fn origin(&self) -> Option<&str> {
        self.headers.get(ORIGIN).and_then(|v| v.to_str().ok())
    }
}

/// Which `Origin`s may open a session.
#[derive(Debug, Clone)]
enum Origins {
    /// The origin must be the request's `Host`, under `http`/`https`, with
    /// an IP literal or `localhost` as host (see `same_origin`).
    Same,
    /// Any origin (every web page may connect).
    Any,
    /// One of these (`scheme://host[:port]`), compared ignoring ASCII case.
    List(Vec<String>),
}

/// Settings for a [`WebSocketAccept`]. Made by [`WebSocketAccept::builder`].
#[derive(Debug)]
pub struct WebSocketAcceptBuilder {
    origins: Vec<String>,
    any_origin: bool,
    max_message_size: usize,
}

impl WebSocketAcceptBuilder {
    /// Allows pages of `origin` (`https://chat.example`, or
    /// `http://127.0.0.1:8080`: a scheme, a host and an optional port, as
    /// browsers send it) to open sessions; call it once per origin. Without
    /// any, only pages of the server's own origin may: an `http`/`https`
    /// origin equal to the request's `Host` whose host is an IP literal or
    /// `localhost`. A page served under a DNS name needs its origin here:
    /// the `Host` header is the page's to choose, so a name in it proves
    /// nothing (a page of `evil.example` whose name was rebound to this
    /// server's address sends `Host: evil.example`). A request without `Origin` does not
    /// come from a browser and is always let in: the check protects
    /// browsers' users from other sites' pages, it does not authenticate.
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.origins.push(origin.into());
        self
    }

    /// Lets every origin in: any web page may open a session (a public
    /// service that authenticates in its own frames).
    pub fn allow_any_origin(mut self) -> Self {
        self.any_origin = true;
        self
    }

    /// The largest message taken (default 1 MiB, the default maximum frame
    /// size): a larger one is refused with ERROR `frame too large` and
    /// close code 1009, before its payload is read. A message is one frame,
    /// so this is the largest frame too; the server's framing still
    /// applies its own maximum frame size to what the message holds.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Checks the settings and builds the accept step.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`]: an origin that is not `scheme://host[:port]` in
    /// visible ASCII (`allow_origin`), origins given together with
    /// `allow_any_origin`, or a maximum message size below the correlated
    /// header (14 bytes).
    pub fn build(self) -> Result<WebSocketAccept, ConfigError> {
        if self.max_message_size < CORRELATED_HEADER_LEN {
            return Err(ConfigError::new(
                "max_message_size",
                format!("must hold the correlated header ({CORRELATED_HEADER_LEN} bytes)"),
            ));
        }
        if self.any_origin && !self.origins.is_empty() {
            return Err(ConfigError::new(
                "allow_origin",
                "an allow-list with allow_any_origin: choose one",
            ));
        }
        for origin in &self.origins {
            check_origin(origin).map_err(|why| {
                ConfigError::new(
                    "allow_origin",
                    format!("{:?}: {why}", PeerText(origin.as_bytes())),
                )
            })?;
        }
        let origins = if self.any_origin {
            Origins::Any
        } else if self.origins.is_empty() {
            Origins::Same
        } else {
            Origins::List(self.origins)
        };
        Ok(WebSocketAccept {
            settings: Arc::new(Settings {
                origins,
                max_message_size: self.max_message_size,
            }),
        })
    }
}

/// Why an `allow_origin` value cannot match what a browser sends.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    if !origin.bytes().all(|b| b.is_ascii_graphic()) || origin.is_empty() {
        return Err("must be visible ASCII (punycode for international names)");
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Err("must be scheme://host[:port]");
    };
    if scheme.is_empty() || authority.is_empty() || authority.contains('/') {
        return Err("must be scheme://host[:port], without a path or a trailing slash");
    }
    Ok(())
}

#[derive(Debug)]
pub(crate) struct Settings {
    origins: Origins,
    pub(crate) max_message_size: usize,
}

impl Settings {
    pub(crate) fn config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }

    /// Whether a request with these headers may open a session.
    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        match &self.origins {
            Origins::Any => true,
            Origins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
            Origins::Same => same_origin(origin, headers.get(HOST)),
        }
    }
}

/// Whether `origin` is the server's own: an `http`/`https` origin whose
/// authority is the request's `Host` and whose host is a name the browser
/// cannot have been pointed elsewhere with: an IP literal (the browser
/// connected to that address, which reached this server) or `localhost`
/// (resolved by the browser's own machine to loopback). A DNS name is never
/// taken from the request, both headers being the page's choice: a page of
/// `evil.example` rebound to this server's address sends `Host:
/// evil.example` and `Origin: http://evil.example` (DNS rebinding); such
/// names are allowed with [`WebSocketAcceptBuilder::allow_origin`].
fn same_origin(origin: &str, host: Option<&HeaderValue>) -> bool {
    let Some(host) = host.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return false;
    }
    if !authority.eq_ignore_ascii_case(host) {
        return false;
    }
    let name = match authority.strip_prefix('[') {
        // `[v6]` or `[v6]:port`.
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) => {
                let port_ok = match port.strip_prefix(':') {
                    Some(digits) => valid_port(digits),
                    None => port.is_empty(),
                };
                return port_ok && v6.parse::<std::net::Ipv6Addr>().is_ok();
            }
            None => return false,
        },
        None => match authority.rsplit_once(':') {
            Some((name, port)) if valid_port(port) => name,
            Some(_) => return false,
            None => authority,
        },
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// A decimal port number.
fn valid_port(digits: &str) -> bool {
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<u16>().is_ok()
}

/// The WebSocket accept step ([`ServerBuilder::accept`]): upgrades each
/// accepted connection (HTTP/1.1 `Upgrade: websocket`, RFC 6455) in the
/// connection's own task, under the server's connection cap and handshake
/// timeout, and hands the session a [`WebSocket`].
///
/// - The `Origin` is checked against the allow-list
///   ([`WebSocketAcceptBuilder::allow_origin`]; by default the server's own
///   origin, reached by IP address or `localhost`; a DNS name must be
///   allowed explicitly, against DNS rebinding): another is answered `403 Forbidden`
///   ([`AcceptError::OriginRefused`]).
/// - The request is recorded in the session's [`ConnectInfo`](crate::ConnectInfo) as a
///   [`WebSocketRequest`] (path, headers, origin), beside the peer address.
/// - A client asking for the subprotocol `msgi` gets it; none is needed.
/// - A failed upgrade ends that connection only
///   ([`Rejection::AcceptFailed`](crate::Rejection::AcceptFailed)).
///
/// [`ServerBuilder::accept`]: crate::ServerBuilder::accept
#[derive(Debug, Clone)]
pub struct WebSocketAccept {
    settings: Arc<Settings>,
}

impl Default for WebSocketAccept {
    fn default() -> Self {
        WebSocketAccept::new()
    }
}

impl WebSocketAccept {
    /// The defaults: pages of the server's own origin only, messages of at
    /// most 1 MiB.
    pub fn new() -> Self {
        WebSocketAccept {
            settings: Arc::new(Settings {
                origins: Origins::Same,
                max_message_size: DEFAULT_MAX_FRAME_SIZE,
            }),
        }
    }

    /// Settings, with the defaults of [`new`](WebSocketAccept::new).
    pub fn builder() -> WebSocketAcceptBuilder {
        WebSocketAcceptBuilder {
            origins: Vec::new(),
            any_origin: false,
            max_message_size: DEFAULT_MAX_FRAME_SIZE,
        }
    }

    /// The largest message taken.
    pub fn max_message_size(&self) -> usize {
        self.settings.max_message_size
    }

    /// Whether a request with these headers passes the `Origin` check (for
    /// an upgrade done by your own HTTP server: ask this before answering
    /// `101`).
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        self.settings.origin_allowed(headers)
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn upgrade<Io>(
        settings: Arc<Settings>,
        accepted: Accepted<Io>,
    ) -> Result<Accepted<WebSocket<Io>>, AcceptError>
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (io, mut info) = accepted.into_parts();
        let mut seen: Option<WebSocketRequest> = None;
        let mut refused: Option<String> = None;
        // The callback's type is tungstenite's (`ErrorResponse` is large).
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, mut response: Response| {
            let headers = request.headers();
            if !settings.origin_allowed(headers) {
                let origin = headers
                    .get(ORIGIN)
                    .map(HeaderValue::as_bytes)
                    .unwrap_or(b"");
                refused = Some(PeerText(origin).to_string());
                let mut forbidden = ErrorResponse::new(Some("origin not allowed".to_owned()));
                *forbidden.status_mut() = StatusCode::FORBIDDEN;
                return Err(forbidden);
            }
            if offers_subprotocol(headers) {
                response.headers_mut().insert(
                    SEC_WEBSOCKET_PROTOCOL,
                    HeaderValue::from_static(SUBPROTOCOL),
                );
            }
            seen = Some(WebSocketRequest::new(
                request.uri().clone(),
                request.headers().clone(),
            ));
            Ok(response)
        };
        let upgraded =
            tokio_tungstenite::accept_hdr_async_with_config(io, callback, Some(settings.config()))
                .await;
        let ws = match (upgraded, refused) {
            (Ok(ws), _) => ws,
            (Err(_), Some(origin)) => return Err(AcceptError::OriginRefused(origin)),
            (Err(e), None) => return Err(AcceptError::Handshake(Box::new(e))),
        };
        if let Some(request) = seen {
            info.insert(request);
        }
        Ok(Accepted::new(WebSocket::new(ws), info))
    }
}

/// Whether the client offers the `msgi` subprotocol.
fn offers_subprotocol(headers: &HeaderMap) -> bool {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

impl<Io> tower::Service<Accepted<Io>> for WebSocketAccept
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Response = Accepted<WebSocket<Io>>;
    type Error = AcceptError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Accepted<WebSocket<Io>>, AcceptError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), AcceptError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, accepted: Accepted<Io>) -> Self::Future {
        Box::pin(WebSocketAccept::upgrade(self.settings.clone(), accepted))
    }
}

/// Why a connection was not upgraded to a WebSocket session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The request's `Origin` is not allowed (answered `403 Forbidden`);
    /// the origin as sent, escaped and cut.
    #[error("WebSocket origin not allowed: {0}")]
    OriginRefused(String),
    /// Not a valid WebSocket upgrade (not HTTP, a missing header, a wrong
    /// version), or the connection failed during it.
    #[error("WebSocket handshake failed")]
    Handshake(#[source] BoxError),
}

impl fmt::Display for WebSocketAccept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.settings.origins {
            Origins::Same => f.write_str("WebSocket (same origin)"),
            Origins::Any => f.write_str("WebSocket (any origin)"),
            Origins::List(list) => write!(f, "WebSocket (origins {})", list.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(http::header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                name.clone(),
                HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        map
    }

    #[test]
    fn same_origin_by_default() {
        let step = WebSocketAccept::new();
        let same = headers(&[(HOST, "127.0.0.1:9000"), (ORIGIN, "http://127.0.0.1:9000")]);
        let other = headers(&[(HOST, "127.0.0.1:9000"), (ORIGIN, "http://evil.example")]);
        let no_origin = headers(&[(HOST, "127.0.0.1:9000")]);
        let null = headers(&[(HOST, "127.0.0.1:9000"), (ORIGIN, "null")]);
        assert!(step.origin_allowed(&same));
        assert!(!step.origin_allowed(&other));
        assert!(!step.origin_allowed(&null));
        assert!(step.origin_allowed(&no_origin), "not a browser");
        let pair = |host: &str, origin: &str| headers(&[(HOST, host), (ORIGIN, origin)]);
        // DNS rebinding: a name in Host proves nothing.
        assert!(!step.origin_allowed(&pair("evil.example:17011", "http://evil.example:17011")));
        assert!(!step.origin_allowed(&pair("evil.example", "https://evil.example")));
        assert!(step.origin_allowed(&pair("localhost:9000", "http://localhost:9000")));
        assert!(step.origin_allowed(&pair("[::1]:9000", "http://[::1]:9000")));
        assert!(step.origin_allowed(&pair("127.0.0.1", "https://127.0.0.1")));
        assert!(!step.origin_allowed(&pair("127.0.0.1:9000", "ftp://127.0.0.1:9000")));
        assert!(!step.origin_allowed(&pair("127.0.0.1:x", "http://127.0.0.1:x")));
        assert!(!step.origin_allowed(&pair("[evil]:1", "http://[evil]:1")));
        assert!(!step.origin_allowed(&pair("1.2.3.4.evil:1", "http://1.2.3.4.evil:1")));
    }

    #[test]
    fn allow_list_and_any() {
        let step = WebSocketAccept::builder()
            .allow_origin("HTTP://Chat.Example")
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(step.origin_allowed(&headers(&[(ORIGIN, "http://chat.example")])));
        assert!(!step.origin_allowed(&headers(&[(ORIGIN, "http://chat.example:81")])));
        assert!(!step.origin_allowed(&headers(&[
            (HOST, "chat.example"),
            (ORIGIN, "https://chat.example")
        ])));
        let any = WebSocketAccept::builder()
            .allow_any_origin()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(any.origin_allowed(&headers(&[(ORIGIN, "http://evil.example")])));
    }

    #[test]
    fn bad_settings_are_refused() {
        for bad in [
            "",
            "chat.example",
            "http://chat.example/",
            "http://chät.example",
            "http://",
        ] {
            let e = WebSocketAccept::builder()
                .allow_origin(bad)
                .build()
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.setting(), "allow_origin", "{bad:?}");
        }
        let e = WebSocketAccept::builder()
            .allow_origin("http://a.example")
            .allow_any_origin()
            .build()
            .err()
            .unwrap_or_else(|| panic!("both accepted"));
        assert_eq!(e.setting(), "allow_origin");
        let e = WebSocketAccept::builder()
            .max_message_size(13)
            .build()
            .err()
            .unwrap_or_else(|| panic!("13 accepted"));
        assert_eq!(e.setting(), "max_message_size");
        assert!(WebSocketAccept::builder()
            .max_message_size(14)
            .build()
            .is_ok());
    }

    #[test]
    fn the_msgi_subprotocol_is_found() {
        assert!(offers_subprotocol(&headers(&[(
            SEC_WEBSOCKET_PROTOCOL,
            "chat, msgi"
        )])));
        assert!(!offers_subprotocol(&headers(&[(
            SEC_WEBSOCKET_PROTOCOL,
            "msgi2"
        )])));
        assert!(!offers_subprotocol(&HeaderMap::new()));
    }
}
