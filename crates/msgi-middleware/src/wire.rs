//! `WireExt`: this crate's wire transforms as [`Wire`] methods.

use msgi::wire::Stack;
use msgi::Wire;

mod sealed {
    pub trait Sealed {}
    impl<C, S> Sealed for msgi::Wire<C, S> {}
}

/// Adds this crate's wire transforms to [`Wire`], the builder of
/// per-session framings. The first added is nearest the application, the
/// last nearest the wire; client and server must add the same ones in the
/// same order.
///
/// ```
/// use msgi::{Client, FrameCodec, Server, Wire};
/// use msgi_middleware::{PresharedKeys, Psk, WireExt};
///
/// // From the application down to the wire: compress, then encrypt, then sign.
/// let framing = Wire::new(FrameCodec::new()).deflate(256).encrypt().sign();
/// // The keys: a handshake on every connection, from a pre-shared key.
/// let psk = Psk::new(PresharedKeys::new(1, &[7; 32]), &framing);
/// let server = Server::builder().framing(framing.clone()).accept(psk.acceptor()).build()?;
/// let client = Client::builder().framing(framing);
/// # let _ = (server, client);
/// # Ok::<(), msgi::ConfigError>(())
/// ```
///
/// The settings types ([`Deflate`](crate::Deflate), [`Encrypt`](crate::Encrypt),
/// [`Sign`](crate::Sign)) go in with [`Wire::transform`] too, for options
/// the shortcuts do not take (`Deflate::new().level(6)?`) or for optional
/// ones (`Option<Encrypt>`). Run the pre-shared-key handshake
/// ([`Psk`](crate::Psk)) on the connections of a framing that encrypts or
/// signs: it gives the keys.
pub trait WireExt<C, S>: sealed::Sealed + Sized {
    /// Compresses payloads of at least `threshold` bytes ([`Deflate`](crate::Deflate)).
    #[cfg(feature = "compression")]
    fn deflate(self, threshold: usize) -> Wire<C, Stack<S, crate::Deflate>>;

    /// Encrypts every frame under the connection's handshake keys
    /// ([`Encrypt`](crate::Encrypt)).
    #[cfg(feature = "encryption")]
    fn encrypt(self) -> Wire<C, Stack<S, crate::Encrypt>>;

    /// Authenticates every frame under the connection's handshake keys
    /// ([`Sign`](crate::Sign)).
    #[cfg(feature = "hmac")]
    fn sign(self) -> Wire<C, Stack<S, crate::Sign>>;
}

impl<C, S> WireExt<C, S> for Wire<C, S> {
    #[cfg(feature = "compression")]
    fn deflate(self, threshold: usize) -> Wire<C, Stack<S, crate::Deflate>> {
        self.transform(crate::Deflate::new().threshold(threshold))
    }

    #[cfg(feature = "encryption")]
    fn encrypt(self) -> Wire<C, Stack<S, crate::Encrypt>> {
        self.transform(crate::Encrypt::new())
    }

    #[cfg(feature = "hmac")]
    fn sign(self) -> Wire<C, Stack<S, crate::Sign>> {
        self.transform(crate::Sign::new())
    }
}
