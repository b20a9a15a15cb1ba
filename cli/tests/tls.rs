//! `msgi serve --tls-cert --tls-key [--client-ca]` and `msgi send --tls-ca
//! [--tls-cert --tls-key]` as a user runs them, with certificates made at
//! test time; and what each side says when the other is not set up alike.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

mod support;
use support::first_lines;

const MSGI: &str = env!("CARGO_BIN_EXE_msgi");

/// Runs `msgi` with `args` to completion; panics past 30 seconds.
fn run(args: &[&str]) -> Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let child = tokio::process::Command::new(MSGI)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("msgi {args:?} did not finish"))
            .unwrap()
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `msgi serve` on 127.0.0.1:0; killed on drop.
struct Serve {
    child: Child,
    addr: String,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        let mut child = Command::new(MSGI)
            .args(["serve", "--listen", "127.0.0.1:0", "--announce"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let line = first_lines(&mut child, 1).remove(0);
        let addr = line.trim().strip_prefix("LISTENING ").unwrap().to_owned();
        Serve { child, addr }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PEM files in a folder of their own, removed on drop: a server CA and a
/// server certificate for `localhost` and 127.0.0.1, a client CA and a
/// client certificate, and a CA that signed neither.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(test: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("msgi-cli-tls-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let server_ca = ca(&dir, "server-ca");
        let client_ca = ca(&dir, "client-ca");
        ca(&dir, "other-ca");
        issue(&dir, "server", &["localhost", "127.0.0.1"], &server_ca);
        issue(&dir, "client", &["client.example"], &client_ca);
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ca(dir: &Path, name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Each CA its own name: a certificate names its issuer.
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    (cert, key)
}

fn issue(dir: &Path, name: &str, names: &[&str], (ca, ca_key): &(rcgen::Certificate, KeyPair)) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, ca, ca_key)
        .unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

fn mutual_tls_server(pki: &Pki) -> Serve {
    Serve::start(&[
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &pki.path("server.key"),
        "--client-ca",
        &pki.path("client-ca.pem"),
    ])
}

#[test]
fn send_talks_to_serve_over_mutual_tls() {
    let pki = Pki::new("mutual");
    let server = mutual_tls_server(&pki);
    let client_flags = [
        "--tls-ca",
        &pki.path("server-ca.pem"),
        "--tls-cert",
        &pki.path("client.pem"),
        "--tls-key",
        &pki.path("client.key"),
    ];
    // By IP address (the certificate names 127.0.0.1), then by name.
    let mut args = vec!["send", "--addr", &server.addr, "--correlated"];
    args.extend(client_flags);
    args.push("hello over TLS");
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "DATA id=1 hello over TLS\n"
    );

    let port = server.addr.rsplit_once(':').unwrap().1;
    let by_name = format!("localhost:{port}");
    let mut args = vec!["send", "--addr", &by_name];
    args.extend(client_flags);
    args.push("by name");
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "DATA by name\n");
}

#[test]
fn send_verifies_the_server_for_tls_server_name() {
    let pki = Pki::new("server-name");
    let server = mutual_tls_server(&pki);
    let flags = |name: &'static str| {
        vec![
            "--tls-ca".to_owned(),
            pki.path("server-ca.pem"),
            "--tls-cert".to_owned(),
            pki.path("client.pem"),
            "--tls-key".to_owned(),
            pki.path("client.key"),
            "--tls-server-name".to_owned(),
            name.to_owned(),
        ]
    };
    let send = |name: &'static str| {
        let mut args = vec!["send".to_owned(), "--addr".to_owned(), server.addr.clone()];
        args.extend(flags(name));
        args.push("hi".to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    };
    // The certificate names localhost: accepted for it at 127.0.0.1.
    let out = send("localhost");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "DATA hi\n");
    let out = send("other.example");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("could not connect to other.example (TLS)"),
        "{err}"
    );
    assert!(
        err.contains("not valid for name \"other.example\""),
        "{err}"
    );
}

#[test]
fn send_without_a_client_certificate_hears_the_refusal_and_what_to_give() {
    let pki = Pki::new("anonymous");
    let server = mutual_tls_server(&pki);
    let ca = pki.path("server-ca.pem");
    let out = run(&[
        "send",
        "--addr",
        &server.addr,
        "--tls-ca",
        &ca,
        "--correlated",
        "hi",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("the server ended the TLS session"), "{err}");
    assert!(err.contains("CertificateRequired"), "{err}");
    // The alert once: in the cause, not again in the message.
    assert_eq!(err.matches("CertificateRequired").count(), 1, "{err}");
    assert!(
        err.contains("hint: under mutual TLS, give --tls-cert"),
        "{err}"
    );
}

#[test]
fn send_refuses_a_server_certificate_its_ca_did_not_sign() {
    let pki = Pki::new("wrong-ca");
    let server = mutual_tls_server(&pki);
    let other = pki.path("other-ca.pem");
    let out = run(&["send", "--addr", &server.addr, "--tls-ca", &other, "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("TLS handshake with {} failed", server.addr)),
        "{err}"
    );
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert!(
        err.contains("hint: check that --tls-ca holds the CA"),
        "{err}"
    );
}

#[test]
fn tls_and_plain_on_the_wrong_ports_say_so() {
    let pki = Pki::new("ports");
    let plain = Serve::start(&[]);
    let ca = pki.path("server-ca.pem");
    let out = run(&["send", "--addr", &plain.addr, "--tls-ca", &ca, "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("is this a plain msgi port?"), "{err}");
    assert!(err.contains("hint: the server does not speak TLS"), "{err}");

    let tls = mutual_tls_server(&pki);
    let out = run(&["send", "--addr", &tls.addr, "--correlated", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("does not speak MSGI"), "{err}");
    assert!(err.contains("a TLS port needs --tls-ca"), "{err}");
}

/// TLS and a pre-shared key together: the pre-shared-key handshake runs
/// inside TLS (in the same accept step on the server, in the connector on
/// the client), and refuses a wrong or missing key with its own reason.
#[test]
fn a_preshared_key_runs_inside_tls() {
    let pki = Pki::new("psk");
    let key = pki.path("psk.key");
    let other = pki.path("other.key");
    std::fs::write(&key, "0f".repeat(32)).unwrap();
    std::fs::write(&other, "0e".repeat(32)).unwrap();
    let server = Serve::start(&[
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &pki.path("server.key"),
        "--key-file",
        &key,
        "--hmac",
    ]);
    let ca = pki.path("server-ca.pem");
    let send = |extra: &[&str]| {
        let mut args = vec![
            "send",
            "--addr",
            &server.addr,
            "--correlated",
            "--wait",
            "5",
            "--tls-ca",
            &ca,
        ];
        args.extend(extra);
        args.push("sealed inside TLS");
        run(&args)
    };
    let out = send(&["--key-file", &key, "--hmac"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "DATA id=1 sealed inside TLS\n"
    );
    let out = send(&["--key-file", &other, "--hmac"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("psk: wrong key (the server's finished MAC does not verify)"),
        "{}",
        stderr(&out)
    );
    let out = send(&[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("psk: this server requires the pre-shared-key handshake"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn tls_flags_are_checked_before_serving() {
    let pki = Pki::new("flags");
    // A key without its certificate is a usage error.
    let out = run(&["serve", "--tls-key", &pki.path("server.key")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A missing file is named, and nothing is served.
    let missing = pki.path("missing.key");
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--announce",
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &missing,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing announced");
    assert!(
        stderr(&out).contains(&format!("reading {missing}")),
        "{}",
        stderr(&out)
    );
    // A key that is not the certificate's.
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &pki.path("client.key"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("TLS settings"), "{}", stderr(&out));
}

#[test]
fn bench_runs_msgi_over_tls_next_to_plain_msgi() {
    let out = run(&[
        "bench",
        "throughput",
        "--servers",
        "msgi",
        "--tls",
        "--rounds",
        "1",
        "-t",
        "0.2",
        "-c",
        "1",
        "-d",
        "4",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = report["runs"].as_array().unwrap();
    let servers: Vec<&str> = runs.iter().map(|r| r["server"].as_str().unwrap()).collect();
    assert_eq!(servers, ["msgi", "msgi+tls"]);
    for run in runs {
        assert!(run["messages"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(
            run["errors"].as_u64(),
            Some(0),
            "every echo verified: {run}"
        );
    }
    // Idle sessions over TLS: each opened and checked with PING/PONG.
    let out = run(&[
        "bench",
        "idle",
        "--servers",
        "msgi",
        "--tls",
        "--sessions",
        "20",
        "--rounds",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = report["runs"].as_array().unwrap();
    let servers: Vec<&str> = runs.iter().map(|r| r["server"].as_str().unwrap()).collect();
    assert_eq!(servers, ["msgi", "msgi+tls"]);
    for run in runs {
        assert_eq!(run["messages"].as_u64(), Some(20), "{run}");
    }
    // TLS needs servers it starts.
    let out = run(&["bench", "--tls", "--addr", "127.0.0.1:1", "-t", "0.2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("leave out --addr"),
        "{}",
        stderr(&out)
    );
}

/// `bench --addr --tls-ca`: the generator does TLS to a server it did not
/// start (how a TLS server is profiled under load), verifying every echo;
/// without the flag the same port answers no echo.
#[test]
fn bench_measures_a_tls_server_at_an_address() {
    let pki = Pki::new("bench-addr");
    let serve = Serve::start(&[
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &pki.path("server.key"),
    ]);
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "throughput",
            "--addr",
            &serve.addr,
            "--rounds",
            "1",
            "-t",
            "0.2",
            "-c",
            "1",
            "-d",
            "4",
            "--json",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let out = bench(&["--tls-ca", &pki.path("server-ca.pem")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert!(runs[0]["messages"].as_u64().unwrap() > 0, "{}", runs[0]);
    assert_eq!(runs[0]["errors"].as_u64(), Some(0), "{}", runs[0]);
    // A CA that did not sign the server's certificate: refused.
    let out = bench(&["--tls-ca", &pki.path("other-ca.pem")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("TLS connect"), "{}", stderr(&out));
}

#[test]
fn certs_writes_what_serve_and_send_need_for_mutual_tls() {
    let dir = std::env::temp_dir().join(format!("msgi-cli-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let folder = dir.display().to_string();
    let out = run(&["certs", &folder]);
    assert!(out.status.success(), "{}", stderr(&out));
    let file = |name: &str| dir.join(name).display().to_string();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        [
            "ca.pem",
            "server.pem",
            "server.key",
            "client.pem",
            "client.key"
        ]
        .map(|n| file(n) + "\n")
        .concat()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "a private key is the owner's only");
    }
    let server = Serve::start(&[
        "--tls-cert",
        &file("server.pem"),
        "--tls-key",
        &file("server.key"),
        "--client-ca",
        &file("ca.pem"),
    ]);
    let out = run(&[
        "send",
        "--addr",
        &server.addr,
        "--tls-ca",
        &file("ca.pem"),
        "--tls-cert",
        &file("client.pem"),
        "--tls-key",
        &file("client.key"),
        "--correlated",
        "made by msgi certs",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "DATA id=1 made by msgi certs\n"
    );
    // Existing files are never overwritten.
    let before = std::fs::read(file("ca.pem")).unwrap();
    let out = run(&["certs", &folder]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(file("ca.pem")).unwrap(), before);
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
