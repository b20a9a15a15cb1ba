//! Certificates and keys from PEM files, the crypto provider, and the
//! errors of a TLS configuration.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The ALPN protocol name both sides offer by default: `msgi`. A server
/// with ALPN refuses a client that offers only other protocols (a client
/// meant for another service), and accepts one that offers none.
pub const ALPN_MSGI: &[u8] = b"msgi";

/// rustls's `ring` provider, the one every configuration of this crate
/// uses (named explicitly: nothing depends on a process-wide default), with
/// its cipher suites in this crate's order of preference: AES-128-GCM
/// first, then AES-256-GCM, then ChaCha20-Poly1305 (TLS 1.3, then the same
/// for TLS 1.2), where ring's default puts AES-256-GCM first.
///
/// Why: on CPUs with AES instructions (AES-NI, VAES, PCLMULQDQ: x86-64
/// servers of the last decade) AES-GCM is the fastest of the three, and
/// AES-128 runs 10 rounds per block where AES-256 runs 14 (the per-suite
/// cost on one core is measured by `cargo bench -p msgi-middleware --bench
/// aead`, docs/BENCHMARKS.md). AES-128-GCM is TLS 1.3's mandatory suite; the
/// others stay offered and accepted. A [`TlsAcceptor`](crate::TlsAcceptor)
/// made by its builder applies this order whatever the client's (rustls's
/// `ignore_client_order`); one made with `TlsAcceptor::from_config` keeps
/// the given `ServerConfig`'s choice.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // A stable sort: the provider's order within each rank (ECDSA before RSA).
    provider.cipher_suites.sort_by_key(|suite| {
        use rustls::CipherSuite as S;
        match suite.suite() {
            S::TLS13_AES_128_GCM_SHA256 => 0,
            S::TLS13_AES_256_GCM_SHA384 => 1,
            S::TLS13_CHACHA20_POLY1305_SHA256 => 2,
            S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
            S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 4,
            _ => 5,
        }
    });
    Arc::new(provider)
}

/// Why a TLS setting cannot be used: checked when the acceptor or the
/// connector is built, before anything is served or connected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file's PEM could not be parsed.
    #[error("{}: not valid PEM", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file holds no `CERTIFICATE` block.
    #[error("{}: no certificate in it (expected PEM `BEGIN CERTIFICATE` blocks)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key.
    #[error("{}: no private key in it (expected a PEM PKCS#8, PKCS#1 or SEC1 key)", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A client without root certificates could verify no server.
    #[error("no root certificates to verify the server with")]
    NoRoots,
    /// A root (or client CA) certificate is not a usable trust anchor.
    #[error("certificate {index} of the roots is not a usable trust anchor")]
    Root {
        /// Its position in the list given.
        index: usize,
        /// Why rustls refused it.
        #[source]
        source: rustls::Error,
    },
    /// The server name is not a DNS name or an IP address.
    #[error("{name:?} is not a valid server name (a DNS name or an IP address)")]
    ServerName {
        /// The name given.
        name: String,
        /// Why.
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
    /// The client-certificate verifier could not be built.
    #[error("the client CA settings were refused")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    /// rustls refused the settings (a key that does not match its
    /// certificate, a key type the provider cannot sign with, ...).
    #[error("rustls refused the TLS settings")]
    Rustls(#[source] rustls::Error),
}

/// The certificates of a PEM file, in order (for a server or a client
/// certificate: the end-entity certificate first, then its
/// intermediates; for roots: each trusted CA).
///
/// # Errors
///
/// The file cannot be read or parsed, or holds no certificate.
pub fn load_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let path = path.as_ref();
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsConfigError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
///
/// The file cannot be read or parsed, or holds no private key.
pub fn load_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let path = path.as_ref();
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsConfigError::NoKey {
            path: path.to_owned(),
        },
        source => TlsConfigError::Pem {
            path: path.to_owned(),
            source,
        },
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A root store of `certs`, each checked.
pub(crate) fn root_store(
    certs: Vec<CertificateDer<'static>>,
) -> Result<rustls::RootCertStore, TlsConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|source| TlsConfigError::Root { index, source })?;
    }
    if roots.is_empty() {
        return Err(TlsConfigError::NoRoots);
    }
    Ok(roots)
}
