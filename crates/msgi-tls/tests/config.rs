//! TLS settings are checked when built: PEM files, keys that do not match
//! their certificate, missing roots, invalid server names.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use msgi_tls::{load_certs, load_key, TlsAcceptor, TlsConfigError, TlsConnector};
use rcgen::{CertifiedKey, KeyPair};

/// A fresh directory for this test's files.
fn dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("msgi-tls-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn self_signed(name: &str) -> CertifiedKey {
    rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap()
}

#[test]
fn pem_files_load_and_build_both_sides() {
    let dir = dir("load");
    let CertifiedKey { cert, key_pair } = self_signed("localhost");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();

    let certs = load_certs(&cert_path).unwrap();
    assert_eq!(certs, vec![cert.der().clone()]);
    let key = load_key(&key_path).unwrap();
    TlsAcceptor::builder(certs.clone(), key.clone_key())
        .client_ca(certs.clone())
        .build()
        .unwrap();
    TlsConnector::builder("localhost")
        .root_certificates(certs.clone())
        .client_certificate(certs, key)
        .build()
        .unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn file_errors_name_the_file() {
    let dir = dir("files");
    let missing = dir.join("missing.pem");
    let error = load_certs(&missing).unwrap_err();
    assert!(matches!(error, TlsConfigError::Read { .. }), "{error:?}");
    assert!(error.to_string().contains("missing.pem"), "{error}");

    let CertifiedKey { cert, key_pair } = self_signed("localhost");
    let only_key = dir.join("only-key.pem");
    std::fs::write(&only_key, key_pair.serialize_pem()).unwrap();
    let error = load_certs(&only_key).unwrap_err();
    assert!(
        matches!(error, TlsConfigError::NoCertificate { .. }),
        "{error:?}"
    );
    assert!(error
        .to_string()
        .starts_with(&only_key.display().to_string()));

    let only_cert = dir.join("only-cert.pem");
    std::fs::write(&only_cert, cert.pem()).unwrap();
    let error = load_key(&only_cert).unwrap_err();
    assert!(matches!(error, TlsConfigError::NoKey { .. }), "{error:?}");

    let broken = dir.join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
    let error = load_certs(&broken).unwrap_err();
    assert!(matches!(error, TlsConfigError::Pem { .. }), "{error:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused() {
    let CertifiedKey { cert, .. } = self_signed("localhost");
    let other = KeyPair::generate().unwrap();
    let key = rustls_key(&other);
    let error = TlsAcceptor::builder(vec![cert.der().clone()], key.clone_key())
        .build()
        .unwrap_err();
    assert!(matches!(error, TlsConfigError::Rustls(_)), "{error:?}");
    let error = TlsConnector::builder("localhost")
        .root_certificates(vec![cert.der().clone()])
        .client_certificate(vec![cert.der().clone()], key)
        .build()
        .unwrap_err();
    assert!(matches!(error, TlsConfigError::Rustls(_)), "{error:?}");
}

#[test]
fn a_client_needs_roots_and_a_valid_server_name() {
    let CertifiedKey { cert, .. } = self_signed("localhost");
    let error = TlsConnector::builder("localhost").build().unwrap_err();
    assert!(matches!(error, TlsConfigError::NoRoots), "{error:?}");
    let error = TlsConnector::builder("not a name!")
        .root_certificates(vec![cert.der().clone()])
        .build()
        .unwrap_err();
    assert!(
        matches!(error, TlsConfigError::ServerName { .. }),
        "{error:?}"
    );
    // Garbage as a root certificate.
    let error = TlsConnector::builder("localhost")
        .root_certificates(vec![vec![1, 2, 3].into()])
        .build()
        .unwrap_err();
    assert!(
        matches!(error, TlsConfigError::Root { index: 0, .. }),
        "{error:?}"
    );
}

fn rustls_key(key: &KeyPair) -> msgi_tls::pki_types::PrivateKeyDer<'static> {
    msgi_tls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into())
}

#[test]
fn the_workspace_has_one_crypto_library_ring() {
    let lock =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock")).unwrap();
    assert!(lock.contains("name = \"ring\""));
    assert!(
        !lock.contains("name = \"aws-lc"),
        "aws-lc-rs entered the tree: a second crypto library"
    );
    // The RustCrypto crates the pre-shared-key transforms used before ring
    // (proptest's `chacha20` RNG, a dev-dependency, is not one of them).
    for name in ["chacha20poly1305", "aes-gcm", "hmac", "sha2"] {
        assert!(
            !lock.contains(&format!("name = \"{name}\"\n")),
            "{name} entered the tree: a second crypto library"
        );
    }
}
