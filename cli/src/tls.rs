//! The TLS flags of `msgi serve`, `msgi send` and `msgi bench` (msgi-tls).

use std::path::PathBuf;

use anyhow::{Context, Result};
use msgi_tls::{load_certs, load_key, TlsAcceptor, TlsConnector};

/// `msgi serve` over TLS: its certificate and key, and mutual TLS.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct ServeTls {
    /// Serve TLS with this certificate chain (PEM: the server's
    /// certificate first, then intermediates).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Mutual TLS: require a client certificate signed by a CA in this
    /// file (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) client_ca: Option<PathBuf>,
}

impl ServeTls {
    /// The accept step, if TLS was asked for; every file is read and
    /// checked here, before anything is bound.
    pub(crate) fn acceptor(&self) -> Result<Option<TlsAcceptor>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let mut builder = TlsAcceptor::builder(load_certs(cert)?, load_key(key)?);
        if let Some(ca) = &self.client_ca {
            builder = builder.client_ca(load_certs(ca)?);
        }
        Ok(Some(builder.build().context("TLS settings")?))
    }

    /// The same flags, for a child `msgi serve`.
    pub(crate) fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        for (flag, path) in [
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
            ("--client-ca", &self.client_ca),
        ] {
            if let Some(path) = path {
                args.push(flag.into());
                args.push(path.into());
            }
        }
        args
    }
}

/// `msgi send` over TLS: the CA to verify the server with, and a client
/// certificate for mutual TLS.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct SendTls {
    /// Connect with TLS, verifying the server's certificate with the CA
    /// certificates in this file (PEM).
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_ca: Option<PathBuf>,
    /// Present this client certificate chain (PEM) to a server that
    /// requires one (mutual TLS).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of
    /// --addr).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub(crate) tls_server_name: Option<String>,
}

impl SendTls {
    /// The connector, if TLS was asked for, for the server at `addr`.
    pub(crate) fn connector(&self, addr: &str) -> Result<Option<TlsConnector>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let name = self
            .tls_server_name
            .clone()
            .unwrap_or_else(|| host_of(addr).to_owned());
        let mut builder = TlsConnector::builder(name).root_certificates(load_certs(ca)?);
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            builder = builder.client_certificate(load_certs(cert)?, load_key(key)?);
        }
        Ok(Some(builder.build().context("TLS settings")?))
    }
}

/// The host of `host:port` or `[v6]:port` (the whole text without a port).
pub(crate) fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once(']').map_or(addr, |(host, _)| host);
    }
    match addr.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address.
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

/// A throwaway CA with a server and a client certificate it signed.
struct Pki {
    ca: rcgen::Certificate,
    server: (rcgen::Certificate, rcgen::KeyPair),
    client: (rcgen::Certificate, rcgen::KeyPair),
}

impl Pki {
    /// The server certificate names `names` (DNS names or IP addresses).
    fn new(names: &[String]) -> Result<Pki> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "msgi throwaway CA");
        let ca = ca.self_signed(&ca_key)?;
        let issue = |names: Vec<String>, cn: &str| -> Result<(rcgen::Certificate, KeyPair)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            Ok((params.signed_by(&key, &ca, &ca_key)?, key))
        };
        let first = names.first().map_or("server", String::as_str);
        let server = issue(names.to_vec(), first)?;
        let client = issue(vec!["msgi-client".to_owned()], "msgi-client")?;
        Ok(Pki { ca, server, client })
    }
}

/// `msgi certs`: files to try TLS with.
#[derive(clap::Args, Debug)]
pub(crate) struct CertsArgs {
    /// Folder to write ca.pem, server.pem, server.key, client.pem and
    /// client.key into (created if missing; existing files are kept).
    dir: PathBuf,
    /// A name the server certificate is valid for (DNS name or IP address);
    /// repeat for more.
    #[arg(long = "name", value_name = "NAME", default_values = ["localhost", "127.0.0.1"])]
    names: Vec<String>,
}

/// Writes a throwaway CA, a server certificate for `names` and a client
/// certificate, both signed by that CA (its key is not kept).
pub(crate) fn certs(args: CertsArgs) -> Result<()> {
    let pki = Pki::new(&args.names)?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let files = [
        ("ca.pem", pki.ca.pem(), false),
        ("server.pem", pki.server.0.pem(), false),
        ("server.key", pki.server.1.serialize_pem(), true),
        ("client.pem", pki.client.0.pem(), false),
        ("client.key", pki.client.1.serialize_pem(), true),
    ];
    // Check every file first: nothing is written if one exists.
    for (name, _, _) in &files {
        let path = args.dir.join(name);
        if path.exists() {
            anyhow::bail!(
                "{} exists: remove it or choose another folder",
                path.display()
            );
        }
    }
    for (name, pem, secret) in files {
        let path = args.dir.join(name);
        write_new(&path, pem.as_bytes(), secret)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// Creates `path` (failing if it exists); private keys readable by the
/// owner only (Unix).
fn write_new(path: &std::path::Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    options.open(path)?.write_all(bytes)
}

/// A throwaway CA and server certificate for `msgi bench --tls`, written to
/// a temporary folder (removed on drop) for the `msgi serve` child; the
/// generator connects with [`BenchTls::connect`].
pub(crate) struct BenchTls {
    /// The folder of the throwaway files (none for [`BenchTls::to_server`]).
    dir: Option<PathBuf>,
    pub(crate) serve: ServeTls,
    connector: TlsConnector,
}

impl BenchTls {
    pub(crate) fn new() -> Result<BenchTls> {
        let pki = Pki::new(&["localhost".to_owned()])?;
        let dir = std::env::temp_dir().join(format!("msgi-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&cert_path, pki.server.0.pem())?;
        std::fs::write(&key_path, pki.server.1.serialize_pem())?;
        let connector = TlsConnector::builder("localhost")
            .root_certificates(vec![pki.ca.der().clone()])
            .build()?;
        Ok(BenchTls {
            dir: Some(dir),
            serve: ServeTls {
                tls_cert: Some(cert_path),
                tls_key: Some(key_path),
                client_ca: None,
            },
            connector,
        })
    }

    /// TLS to a server the bench did not start (`bench --addr --tls-ca`):
    /// its certificate is verified for the IP address of `addr` with the
    /// CA certificates in `ca`.
    pub(crate) fn to_server(ca: &std::path::Path, addr: std::net::SocketAddr) -> Result<BenchTls> {
        let connector = TlsConnector::builder(addr.ip().to_string())
            .root_certificates(load_certs(ca)?)
            .build()
            .context("TLS settings")?;
        Ok(BenchTls {
            dir: None,
            serve: ServeTls::default(),
            connector,
        })
    }

    /// A TLS connection to the child server (TCP_NODELAY on).
    pub(crate) async fn connect(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> {
        BenchTls::open(self.connector(), addr).await
    }

    /// The connector that trusts the throwaway CA (for tasks of their own).
    pub(crate) fn connector(&self) -> TlsConnector {
        self.connector.clone()
    }

    /// A TLS connection with `connector` (from [`BenchTls::connector`]).
    pub(crate) async fn open(
        connector: TlsConnector,
        addr: std::net::SocketAddr,
    ) -> Result<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> {
        use tower::ServiceExt;
        let (stream, _info) = connector
            .oneshot(addr)
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .context("TLS connect")?
            .into_parts();
        Ok(stream)
    }
}

impl Drop for BenchTls {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        assert_eq!(host_of("localhost:7000"), "localhost");
        assert_eq!(host_of("127.0.0.1:7000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("example.org"), "example.org");
    }
}
