//! The handshake's messages and key schedule, sans IO: frames in, frames
//! out, tested without sockets.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use msgi::{Frame, Kind, SessionKeys};
use ring::{digest, hkdf, hmac};

use super::{expand_label, expand_prk, Psk, PskError};

/// The first bytes of every handshake message (after the frame header).
pub const MAGIC: &[u8; 8] = b"msgi-psk";
/// The handshake's (and the MSGI wire's) version byte.
pub const VERSION: u8 = 1;
/// Bytes of randomness each end contributes.
pub const RANDOM_LEN: usize = 32;
/// Bytes of a finished MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;

const CLIENT_HELLO: u8 = 0x01;
const SERVER_HELLO: u8 = 0x02;
const CLIENT_FINISHED: u8 = 0x03;

/// The parts of a hello: type, version, key id, random, names, and what
/// follows the names.
struct Hello<'a> {
    key_id: u16,
    names: &'a [u8],
    rest: &'a [u8],
}

/// Checks the magic, the type and the version of a handshake message.
fn header<'a>(payload: &'a [u8], kind: u8, what: &'static str) -> Result<&'a [u8], PskError> {
    let rest = payload
        .strip_prefix(MAGIC.as_slice())
        .ok_or(PskError::Malformed { what })?;
    match rest {
        [t, v, rest @ ..] if *t == kind => {
            if *v != VERSION {
                return Err(PskError::Version { got: *v });
            }
            Ok(rest)
        }
        _ => Err(PskError::Malformed { what }),
    }
}

fn parse_hello<'a>(body: &'a [u8], what: &'static str) -> Result<Hello<'a>, PskError> {
    let bad = || PskError::Malformed { what };
    let (key_id, rest) = body.split_first_chunk::<2>().ok_or_else(bad)?;
    let (_random, rest) = rest.split_first_chunk::<RANDOM_LEN>().ok_or_else(bad)?;
    let (n, rest) = rest.split_first().ok_or_else(bad)?;
    let names = rest.get(..usize::from(*n)).ok_or_else(bad)?;
    let rest = rest.get(usize::from(*n)..).ok_or_else(bad)?;
    if !names.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(bad());
    }
    Ok(Hello {
        key_id: u16::from_be_bytes(*key_id),
        names,
        rest,
    })
}

/// A hello's bytes, without a MAC.
fn hello(kind: u8, key_id: u16, random: &[u8; RANDOM_LEN], names: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(MAGIC.len() + 5 + RANDOM_LEN + names.len() + MAC_LEN);
    out.put_slice(MAGIC);
    out.put_u8(kind);
    out.put_u8(VERSION);
    out.put_u16(key_id);
    out.put_slice(random);
    // `names` was cut to 255 bytes.
    out.put_u8(u8::try_from(names.len()).unwrap_or(u8::MAX));
    out.put_slice(names);
    out
}

/// The names this end announces, cut to what a hello carries.
fn own_names(psk: &Psk) -> &[u8] {
    let names = psk.transforms().as_bytes();
    names.get(..255).unwrap_or(names)
}

fn sha256(parts: &[&[u8]]) -> digest::Digest {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    ctx.finish()
}

/// The traffic secrets: HKDF-Expand-Label(early, "c ts" / "s ts", H, 32).
fn traffic_secrets(early: &hkdf::Prk, h: &[u8]) -> Result<([u8; 32], [u8; 32]), PskError> {
    let c = expand_prk(early, b"c ts", h).map_err(|_| PskError::Random)?;
    let s = expand_prk(early, b"s ts", h).map_err(|_| PskError::Random)?;
    Ok((c, s))
}

/// HMAC-SHA256(HKDF-Expand-Label(secret, "finished", "", 32), transcript hash).
fn finished_key(secret: &[u8; 32]) -> Result<hmac::Key, PskError> {
    let key = expand_label(secret, b"finished", b"").map_err(|_| PskError::Random)?;
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &key))
}

fn control(payload: BytesMut) -> Frame {
    Frame::new(Kind::CONTROL, payload.freeze())
}

fn peer_error(frame: &Frame) -> Option<PskError> {
    (frame.kind() == Kind::ERROR).then(|| PskError::Refused(frame.payload_text().into_owned()))
}

/// The client's half: [`start`](ClientHandshake::start) gives the
/// ClientHello to send; [`finish`](ClientHandshake::finish) takes the
/// server's answer and gives the session's keys and the ClientFinished to
/// send.
pub struct ClientHandshake {
    early: hkdf::Prk,
    key_id: u16,
    names: Bytes,
    client_hello: Bytes,
}

impl fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl ClientHandshake {
    /// Starts a handshake with the key ring's signing key and `random`
    /// (32 fresh random bytes: [`PskConnector`](super::PskConnector) draws
    /// them from the operating system); returns the ClientHello frame.
    pub fn start(psk: &Psk, random: [u8; RANDOM_LEN]) -> Result<(Self, Frame), PskError> {
        let (key_id, early) = psk.keys().signer().ok_or(PskError::UnknownKey(0))?;
        let names = Bytes::copy_from_slice(own_names(psk));
        let client_hello = hello(CLIENT_HELLO, key_id, &random, &names).freeze();
        let frame = Frame::new(Kind::CONTROL, client_hello.clone());
        Ok((
            ClientHandshake {
                early,
                key_id,
                names,
                client_hello,
            },
            frame,
        ))
    }

    /// Takes the server's answer: a ServerHello gives the session's keys
    /// and the ClientFinished frame to send; an ERROR is the server's
    /// refusal ([`PskError::Refused`]); anything else, or a hello that does
    /// not check out, is refused here (tell the server with
    /// [`PskError::to_error_frame`]).
    pub fn finish(self, answer: &Frame) -> Result<(SessionKeys, Frame), PskError> {
        if let Some(refused) = peer_error(answer) {
            return Err(refused);
        }
        let payload = answer.payload();
        let what = "server hello";
        if answer.kind() != Kind::CONTROL || !payload.starts_with(MAGIC) {
            return Err(PskError::NotSupported(answer.kind().to_string()));
        }
        if payload.get(MAGIC.len()) == Some(&CLIENT_HELLO) {
            return Err(PskError::NotSupported(
                "with the client's own hello: an echo".into(),
            ));
        }
        let hello = parse_hello(header(payload, SERVER_HELLO, what)?, what)?;
        if hello.names != self.names {
            return Err(PskError::TransformsDiffer {
                client: String::from_utf8_lossy(&self.names).into_owned(),
                server: String::from_utf8_lossy(hello.names).into_owned(),
            });
        }
        if hello.rest.len() != MAC_LEN || hello.key_id != self.key_id {
            return Err(PskError::Malformed { what });
        }
        let mac = hello.rest;
        let core = payload.get(..payload.len() - MAC_LEN).unwrap_or_default();
        let h = sha256(&[&self.client_hello, core]);
        let (c_ts, s_ts) = traffic_secrets(&self.early, h.as_ref())?;
        hmac::verify(&finished_key(&s_ts)?, h.as_ref(), mac).map_err(|_| PskError::WrongKey)?;
        let h2 = sha256(&[&self.client_hello, payload]);
        let tag = hmac::sign(&finished_key(&c_ts)?, h2.as_ref());
        let mut finished = BytesMut::with_capacity(MAGIC.len() + 2 + MAC_LEN);
        finished.put_slice(MAGIC);
        finished.put_u8(CLIENT_FINISHED);
        finished.put_u8(VERSION);
        finished.put_slice(tag.as_ref());
        Ok((SessionKeys::new(c_ts, s_ts), control(finished)))
    }
}

/// The server's half: [`start`](ServerHandshake::start) takes the
/// client's first frame and gives the ServerHello to send;
/// [`finish`](ServerHandshake::finish) takes the ClientFinished and gives
/// the session's keys.
pub struct ServerHandshake {
    key_id: u16,
    client_secret: [u8; 32],
    server_secret: [u8; 32],
    transcript: digest::Digest,
}

impl fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandshake")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl ServerHandshake {
    /// Takes the client's first frame, which must be a ClientHello under
    /// an accepted key id, of this version, announcing this end's
    /// transforms; answers the ServerHello frame, made with `random` (32
    /// fresh random bytes: [`PskAcceptor`](super::PskAcceptor) draws them).
    /// A refusal is to be told to the client with
    /// [`PskError::to_error_frame`].
    pub fn start(
        psk: &Psk,
        random: [u8; RANDOM_LEN],
        first: &Frame,
    ) -> Result<(Self, Frame), PskError> {
        let payload = first.payload();
        let what = "client hello";
        if first.kind() != Kind::CONTROL || !payload.starts_with(MAGIC) {
            return Err(PskError::HandshakeRequired(first.kind()));
        }
        let hello = parse_hello(header(payload, CLIENT_HELLO, what)?, what)?;
        if !hello.rest.is_empty() || first.request_id().is_some() {
            return Err(PskError::Malformed { what });
        }
        let early = psk
            .keys()
            .verifier(hello.key_id)
            .ok_or(PskError::UnknownKey(hello.key_id))?;
        let names = own_names(psk);
        if hello.names != names {
            return Err(PskError::TransformsDiffer {
                client: String::from_utf8_lossy(hello.names).into_owned(),
                server: String::from_utf8_lossy(names).into_owned(),
            });
        }
        let mut server_hello = hello_bytes(hello.key_id, &random, names);
        let h = sha256(&[payload, &server_hello]);
        let (client_secret, server_secret) = traffic_secrets(&early, h.as_ref())?;
        let tag = hmac::sign(&finished_key(&server_secret)?, h.as_ref());
        server_hello.put_slice(tag.as_ref());
        let transcript = sha256(&[payload, &server_hello]);
        Ok((
            ServerHandshake {
                key_id: hello.key_id,
                client_secret,
                server_secret,
                transcript,
            },
            control(server_hello),
        ))
    }

    /// The key id the client used.
    pub fn key_id(&self) -> u16 {
        self.key_id
    }

    /// Takes the ClientFinished: the session's keys if its MAC verifies.
    /// An ERROR is the client's refusal ([`PskError::Refused`]).
    pub fn finish(self, frame: &Frame) -> Result<SessionKeys, PskError> {
        if let Some(refused) = peer_error(frame) {
            return Err(refused);
        }
        let what = "client finished";
        if frame.kind() != Kind::CONTROL {
            return Err(PskError::Malformed { what });
        }
        let mac = header(frame.payload(), CLIENT_FINISHED, what)?;
        if mac.len() != MAC_LEN {
            return Err(PskError::Malformed { what });
        }
        let key = finished_key(&self.client_secret)?;
        hmac::verify(&key, self.transcript.as_ref(), mac).map_err(|_| PskError::ClientMac)?;
        Ok(SessionKeys::new(self.client_secret, self.server_secret))
    }
}

fn hello_bytes(key_id: u16, random: &[u8; RANDOM_LEN], names: &[u8]) -> BytesMut {
    hello(SERVER_HELLO, key_id, random, names)
}

impl Drop for ServerHandshake {
    fn drop(&mut self) {
        self.client_secret = [0; 32];
        self.server_secret = [0; 32];
        std::hint::black_box(&self.client_secret);
        std::hint::black_box(&self.server_secret);
    }
}
