//! The pre-shared-key session handshake: fresh, per-direction keys for the
//! [`Encrypt`](crate::Encrypt) and [`Sign`](crate::Sign) transforms of every
//! connection, with key confirmation, and a check that both ends run the
//! same protocol version and the same transforms.
//!
//! It is a transport upgrade, like TLS: it runs on the raw byte stream
//! before the session starts, in the server's per-connection accept step
//! ([`PskAcceptor`], `Server::builder().accept(..)`) and in the client's
//! connector ([`PskConnector`], `ClientBuilder::connect_with_connector`),
//! with three CONTROL frames:
//!
//! ```text
//! client                                         server
//!   ClientHello  (version, key id, random, transforms)  ─►
//!                                                  ◄─  ServerHello (version, key id, random, transforms, server MAC)
//!   ClientFinished (client MAC)                         ─►
//!   … the session, every frame sealed/signed under the derived keys …
//! ```
//!
//! Keys come from HKDF-SHA256 the way TLS 1.3 derives them from a PSK
//! (RFC 8446 section 7.1): an early secret extracted from the pre-shared
//! key, and one traffic secret per direction expanded with a label and the
//! hash of both hellos, so both ends' randomness is in every key. Each MAC
//! proves the sender holds the pre-shared key and saw the same hellos. A
//! mismatch (another version, an unknown key id, other transforms, a MAC
//! that does not verify) is refused with an ERROR frame in the clear that
//! names it, so both ends can read why. docs/PROTOCOL.md section 4 states
//! every byte, and why this and not a Noise pattern.
//!
//! [`ClientHandshake`] and [`ServerHandshake`] are the sans-IO state
//! machines (frames in, frames out); [`PskAcceptor`] and [`PskConnector`]
//! run them on a stream.
//!
//! ```
//! use msgi::{Client, FrameCodec, Server, TcpConnector, Wire};
//! use msgi_middleware::psk::{PresharedKeys, Psk};
//! use msgi_middleware::WireExt;
//!
//! let wire = Wire::new(FrameCodec::new()).deflate(256).encrypt().sign();
//! let psk = Psk::new(PresharedKeys::new(1, &[7; 32]), &wire);
//! let server = Server::builder()
//!     .framing(wire.clone())
//!     .accept(psk.acceptor())
//!     .build()?;
//! // Client::builder().framing(wire).connect_with_connector(psk.connector(TcpConnector::new()), addr)
//! let connector = psk.connector(TcpConnector::new());
//! # let _ = (server, connector);
//! # Ok::<(), msgi::ConfigError>(())
//! ```

mod handshake;
mod io;
mod keys;

pub use handshake::{ClientHandshake, ServerHandshake, MAC_LEN, MAGIC, RANDOM_LEN, VERSION};
pub use io::{PskAcceptor, PskConnector};
pub use keys::{key_from_file_contents, KeyRingError, PresharedKeys};

use std::fmt;
use std::sync::Arc;

use msgi::proto::text::PeerText;
use msgi::wire::{Identity, Stack};
use msgi::{Frame, Kind, SessionKeys, Wire};
use ring::hkdf;

/// The pre-shared key id the peer's handshake used: in the session's
/// [`ConnectInfo`](msgi::ConnectInfo) on the server
/// (`session.connect_info().get::<AuthenticatedKey>()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthenticatedKey(pub u16);

/// A wire transform's name in the handshake (`deflate`, `encrypt`, `sign`):
/// implemented by this crate's transform settings, and by `Option` of one
/// (`None` has no name: it is not run). Implement it for a transform of
/// your own to stack it under a [`Psk`].
pub trait Named {
    /// The name, or `None` for a transform that is not run.
    fn name(&self) -> Option<&'static str>;
}

impl<M: Named> Named for Option<M> {
    fn name(&self) -> Option<&'static str> {
        self.as_ref().and_then(Named::name)
    }
}

/// A [`Wire`]'s transforms, named in order from the application to the
/// wire: what the handshake compares.
pub trait Transforms {
    /// Appends the names, nearest the application first.
    fn names(&self, out: &mut Vec<&'static str>);
}

impl Transforms for Identity {
    fn names(&self, _out: &mut Vec<&'static str>) {}
}

impl<S: Transforms, M: Named> Transforms for Stack<S, M> {
    fn names(&self, out: &mut Vec<&'static str>) {
        self.above().names(out);
        if let Some(name) = self.make().name() {
            out.push(name);
        }
    }
}

/// The transforms of `wire` as the handshake sends them: names joined with
/// commas, nearest the application first (`deflate,encrypt,sign`).
pub fn transform_names<C, S: Transforms>(wire: &Wire<C, S>) -> String {
    let mut names = Vec::new();
    wire.transforms().names(&mut names);
    names.join(",")
}

/// Why a handshake failed. What this end found wrong is also said to the
/// peer, in an ERROR frame whose reason is `psk: ` and this error's text
/// ([`PskError::reason`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PskError {
    /// The peer refused the handshake with an ERROR frame (its reason, as sent).
    #[error("{}", PeerText(.0.as_bytes()))]
    Refused(String),
    /// The server's first frame from the client was not a client hello: the
    /// client runs no pre-shared-key handshake (no key).
    #[error("this server requires the pre-shared-key handshake (the first frame was {0}, not a psk client hello)")]
    HandshakeRequired(Kind),
    /// The client's answer from the server was not a server hello: the
    /// server runs no pre-shared-key handshake.
    #[error("the server does not run the pre-shared-key handshake (it answered {0})")]
    NotSupported(String),
    /// A handshake message that does not parse.
    #[error("malformed {what}")]
    Malformed {
        /// Which message.
        what: &'static str,
    },
    /// The peer speaks another version.
    #[error("version {got} not supported (this end speaks {VERSION})")]
    Version {
        /// The peer's version byte.
        got: u8,
    },
    /// The client named a key id the server does not accept.
    #[error("unknown or retired key id {0}")]
    UnknownKey(u16),
    /// The two ends run different transforms (or the same in another order).
    #[error("transforms differ (client {}; server {})", none_if_empty(.client), none_if_empty(.server))]
    TransformsDiffer {
        /// The client's, nearest the application first.
        client: String,
        /// The server's.
        server: String,
    },
    /// The server's MAC does not verify: the two ends hold different keys.
    #[error("wrong key (the server's finished MAC does not verify)")]
    WrongKey,
    /// The client's MAC does not verify: another key, or a recorded
    /// handshake replayed (the server's randomness is new).
    #[error("the client's finished MAC does not verify (wrong key, or a replayed handshake)")]
    ClientMac,
    /// The stream ended or failed during the handshake.
    #[error("connection lost during the handshake")]
    Io(#[source] std::io::Error),
    /// The operating system gave no randomness.
    #[error("no randomness available")]
    Random,
}

fn none_if_empty(names: &str) -> &str {
    if names.is_empty() {
        "none"
    } else {
        names
    }
}

impl PskError {
    /// The reason this end reports: the peer's text for
    /// [`Refused`](PskError::Refused), else `psk: ` and this error.
    pub fn reason(&self) -> String {
        match self {
            PskError::Refused(text) => PeerText(text.as_bytes()).to_string(),
            other => format!("psk: {other}"),
        }
    }

    /// The ERROR frame that tells the peer, for what this end found wrong;
    /// `None` for what the peer said or a lost connection.
    pub fn to_error_frame(&self) -> Option<Frame> {
        match self {
            PskError::Refused(_) | PskError::Io(_) => None,
            other => Some(Frame::error(other.reason())),
        }
    }
}

/// The settings of the handshake, shared by every connection (cheap to
/// clone): the pre-shared keys and the transforms this end runs. Makes the
/// server's accept step ([`acceptor`](Psk::acceptor)) and wraps the
/// client's connector ([`connector`](Psk::connector)).
#[derive(Clone)]
pub struct Psk {
    inner: Arc<Settings>,
}

struct Settings {
    keys: PresharedKeys,
    transforms: String,
    random: ring::rand::SystemRandom,
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Psk")
            .field("keys", &self.inner.keys)
            .field("transforms", &self.inner.transforms)
            .finish()
    }
}

impl Psk {
    /// The handshake for sessions framed by `wire`, under `keys` (the
    /// client uses the signing key; the server accepts every accepted key).
    pub fn new<C, S: Transforms>(keys: PresharedKeys, wire: &Wire<C, S>) -> Psk {
        Psk::with_transform_names(keys, transform_names(wire))
    }

    /// The handshake, with the transforms named as given (for framings
    /// that are not a [`Wire`]); at most 255 bytes are sent.
    pub fn with_transform_names(keys: PresharedKeys, names: impl Into<String>) -> Psk {
        Psk {
            inner: Arc::new(Settings {
                keys,
                transforms: names.into(),
                random: ring::rand::SystemRandom::new(),
            }),
        }
    }

    /// The key ring (shared: a rotation on it reaches later handshakes).
    pub fn keys(&self) -> &PresharedKeys {
        &self.inner.keys
    }

    /// The transforms this end announces.
    pub fn transforms(&self) -> &str {
        &self.inner.transforms
    }

    /// The server's accept step (`Server::builder().accept(psk.acceptor())`).
    pub fn acceptor(&self) -> PskAcceptor {
        PskAcceptor::new(self.clone())
    }

    /// A client connector that opens the stream with `inner`, then runs
    /// the handshake on it.
    pub fn connector<C>(&self, inner: C) -> PskConnector<C> {
        PskConnector::new(self.clone(), inner)
    }

    /// Runs the client's half of the handshake on `io` (a stream the
    /// caller frames itself, such as a load generator's): the session's
    /// keys, for [`Framing::set_session_keys`](msgi::Framing::set_session_keys).
    /// A refusal found here is told to the server first.
    pub async fn client_handshake<Io>(&self, io: &mut Io) -> Result<SessionKeys, PskError>
    where
        Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        io::client_handshake(self, io).await
    }

    /// Runs the server's half on `io` (for a server that does not use
    /// [`PskAcceptor`]): the session's keys and the client's key id.
    pub async fn server_handshake<Io>(&self, io: &mut Io) -> Result<(SessionKeys, u16), PskError>
    where
        Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        io::server_handshake(self, io).await
    }

    /// Fresh randomness for one handshake.
    pub(crate) fn draw(&self) -> Result<[u8; RANDOM_LEN], PskError> {
        let mut random = [0u8; RANDOM_LEN];
        ring::rand::SecureRandom::fill(&self.inner.random, &mut random)
            .map_err(|_| PskError::Random)?;
        Ok(random)
    }
}

/// The label prefix of every key derivation (TLS 1.3 uses `tls13 `).
pub const LABEL_PREFIX: &[u8] = b"msgi1 ";

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// HKDF-Expand-Label(secret, label, context, 32) as TLS 1.3 defines it
/// (RFC 8446 section 7.1), with the label prefix [`LABEL_PREFIX`]:
/// `info = 00 20 ‖ len(prefix ‖ label) (1) ‖ prefix ‖ label ‖ len(context) (1) ‖ context`.
pub(crate) fn expand_label(
    secret: &[u8; 32],
    label: &[u8],
    context: &[u8],
) -> Result<[u8; 32], ring::error::Unspecified> {
    let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, secret);
    expand_prk(&prk, label, context)
}

pub(crate) fn expand_prk(
    prk: &hkdf::Prk,
    label: &[u8],
    context: &[u8],
) -> Result<[u8; 32], ring::error::Unspecified> {
    let label_len =
        u8::try_from(LABEL_PREFIX.len() + label.len()).map_err(|_| ring::error::Unspecified)?;
    let context_len = u8::try_from(context.len()).map_err(|_| ring::error::Unspecified)?;
    let info: [&[u8]; 6] = [
        &32u16.to_be_bytes(),
        &[label_len],
        LABEL_PREFIX,
        label,
        &[context_len],
        context,
    ];
    let mut out = [0u8; 32];
    prk.expand(&info, Len32)?.fill(&mut out)?;
    Ok(out)
}
