//! HTTPS on the TLS port: what PHP sees, static files, certificates chosen by
//! SNI, protocol versions, the redirect of plain HTTP and HSTS, certificates
//! replaced on disk while connections stay up, bad certificates as config
//! errors, and a client that never handshakes. Certificates come from the
//! `openssl` command (a test CA signing one certificate per name); clients
//! are curl, `openssl s_client` and rustls.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::support::{Site, free_port, make_test_ca, openssl, wait_until, worker_yaml};

const ENV_PHP: &str = r#"<?php
foreach (['HTTPS', 'REQUEST_SCHEME', 'SERVER_PORT', 'HTTP_HOST'] as $k) {
    echo $k, '=', $_SERVER[$k] ?? '(unset)', "\n";
}
"#;

/// The test CA, in `certs/ca.pem` of the site.
fn make_ca(site: &Site) {
    let dir = site.root().join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    make_test_ca(&dir);
}

/// `certs/<file>.pem` and `certs/<file>.key`: a certificate for `names`
/// signed by the test CA, valid for `days` (negative: expired).
fn make_cert(site: &Site, file: &str, names: &[&str], days: i32) {
    let dir = site.root().join("certs");
    let san: Vec<String> = names.iter().map(|name| format!("DNS:{name}")).collect();
    std::fs::write(
        dir.join(format!("{file}.ext")),
        format!("subjectAltName={}\n", san.join(",")),
    )
    .unwrap();
    let (key, csr, pem, ext) = (
        format!("{file}.key"),
        format!("{file}.csr"),
        format!("{file}.pem"),
        format!("{file}.ext"),
    );
    let subject = format!("/CN={}", names[0]);
    openssl(
        &dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-subj",
            &subject,
            "-out",
            &csr,
        ],
    );
    let days = days.to_string();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            &days,
            "-out",
            &pem,
            "-extfile",
            &ext,
        ],
    );
}

/// A site with one app at `/blog` and a TLS port with `tls` (lines of
/// `server.tls`, indented by four).
fn tls_site(tls_port: u16, tls: &str) -> Site {
    let site = Site::new()
        .worker("blog", &worker_yaml("/blog", 1))
        .file("blog", "env.php", ENV_PHP)
        .file("blog", "hello.php", "<?php echo 'Hello, World!';")
        .file("blog", "data.txt", "0123456789abcdefghijklmnopqrstuvwxyz");
    make_ca(&site);
    make_cert(&site, "a", &["a.test"], 2);
    site.server_settings(&format!("  tls:\n    port: {tls_port}\n{tls}"))
}

const A_CERT: &str = "    cert: certs/a.pem\n    key: certs/a.key\n";

/// curl over HTTPS to `name` (resolved to 127.0.0.1), trusting the test CA,
/// on HTTP/1.1 unless `extra` asks for another version: the response head
/// and body, or curl's error.
fn curl(site: &Site, name: &str, port: u16, path: &str, extra: &[&str]) -> (bool, String) {
    let output = Command::new("curl")
        .args(["-sS", "-i", "--http1.1", "--max-time", "10", "--cacert"])
        .arg(site.root().join("certs/ca.pem"))
        .arg("--resolve")
        .arg(format!("{name}:{port}:127.0.0.1"))
        .args(extra)
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .expect("run curl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A rustls client trusting the test CA.
fn client_config(site: &Site) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(site.root().join("certs/ca.pem")).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type TlsConn = BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// A TLS connection to `name`, handshake done.
fn connect(config: &Arc<rustls::ClientConfig>, name: &str, port: u16) -> TlsConn {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let session = rustls::ClientConnection::new(config.clone(), server_name).unwrap();
    let mut stream = rustls::StreamOwned::new(session, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("TLS handshake");
    }
    BufReader::new(stream)
}

/// The certificate the server presented on `conn`.
fn presented(conn: &TlsConn) -> Vec<u8> {
    conn.get_ref().conn.peer_certificates().unwrap()[0].to_vec()
}

fn cert_der(site: &Site, file: &str) -> Vec<u8> {
    CertificateDer::from_pem_file(site.root().join(format!("certs/{file}.pem")))
        .unwrap()
        .to_vec()
}

/// Sends a GET on a kept-alive connection and reads the response (which
/// must have a Content-Length): status line and body.
fn get(conn: &mut TlsConn, name: &str, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {name}\r\n\r\n");
    conn.get_mut().write_all(request.as_bytes()).unwrap();
    conn.get_mut().flush().unwrap();
    let mut status = String::new();
    conn.read_line(&mut status).unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).unwrap();
    (
        status.trim().to_owned(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// PHP sees HTTPS=on, REQUEST_SCHEME=https and the TLS port; over plain
/// HTTP it still sees http. Static files are served over TLS too.
#[test]
fn php_sees_https_and_static_files_are_served() {
    let tls_port = free_port();
    let server = tls_site(tls_port, A_CERT).start();
    let (ok, text) = curl(&server.site, "a.test", tls_port, "/blog/env.php", &[]);
    assert!(ok, "{text}\n{}", server.log());
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("HTTPS=on\n"), "{text}");
    assert!(text.contains("REQUEST_SCHEME=https\n"), "{text}");
    assert!(
        text.contains(&format!("SERVER_PORT={tls_port}\n")),
        "{text}"
    );

    let plain = server.get("/blog/env.php");
    let vars = plain.vars();
    assert_eq!(vars["HTTPS"], "(unset)");
    assert_eq!(vars["REQUEST_SCHEME"], "http");
    assert_eq!(vars["SERVER_PORT"], server.port().to_string());

    let (ok, text) = curl(&server.site, "a.test", tls_port, "/blog/data.txt", &[]);
    assert!(ok, "{text}");
    assert!(
        text.ends_with("\r\n\r\n0123456789abcdefghijklmnopqrstuvwxyz"),
        "{text}"
    );
    // A larger file than one TLS record, whole.
    let big: String = (0..20_000).map(|i| format!("{i:06}\n")).collect();
    server.site.write("workers/blog/public/big.txt", &big);
    let (ok, text) = curl(&server.site, "a.test", tls_port, "/blog/big.txt", &[]);
    assert!(ok, "{text}");
    assert!(text.ends_with(&big), "big.txt arrived cut or garbled");
}

/// Each name gets its certificate; a client without SNI, or with a name no
/// certificate has, gets the first one.
#[test]
fn sni_picks_the_certificate_by_name() {
    let tls_port = free_port();
    let site = tls_site(
        tls_port,
        "    cert: certs/a.pem\n    key: certs/a.key\n    certificates:\n      - cert: certs/b.pem\n        key: certs/b.key\n",
    );
    make_cert(&site, "b", &["b.test", "*.b.test"], 2);
    let server = site.start();
    let config = client_config(&server.site);
    let a = cert_der(&server.site, "a");
    let b = cert_der(&server.site, "b");
    assert_eq!(presented(&connect(&config, "a.test", tls_port)), a);
    assert_eq!(presented(&connect(&config, "b.test", tls_port)), b);
    assert_eq!(presented(&connect(&config, "www.b.test", tls_port)), b);
    let (ok, text) = curl(&server.site, "b.test", tls_port, "/blog/hello.php", &[]);
    assert!(ok && text.ends_with("Hello, World!"), "{text}");

    // No SNI (an IP address) and an unknown name: the default.
    for args in [&["-noservername"][..], &["-servername", "unknown.test"][..]] {
        let subject = s_client(tls_port, args).1;
        assert!(
            subject.contains("subject=CN = a.test"),
            "{args:?}: {subject}"
        );
    }
    let subject = s_client(tls_port, &["-servername", "b.test"]).1;
    assert!(subject.contains("subject=CN = b.test"), "{subject}");
}

/// `openssl s_client` against the TLS port: whether the handshake worked,
/// and what it printed.
fn s_client(port: u16, args: &[&str]) -> (bool, String) {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    // Closing stdin ends the session once the handshake is done.
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let connected = text.contains("Cipher is ") && !text.contains("Cipher is (NONE)");
    (connected, text)
}

/// TLS 1.2 and 1.3 are spoken; TLS 1.1 (and older) is refused by the
/// server, even to a client willing to use it.
#[test]
fn tls_1_1_is_refused_and_1_2_and_1_3_are_accepted() {
    let tls_port = free_port();
    let server = tls_site(tls_port, A_CERT).start();
    let (ok, text) = s_client(tls_port, &["-tls1_3", "-servername", "a.test"]);
    assert!(ok && text.contains("TLSv1.3"), "{text}");
    let (ok, text) = s_client(tls_port, &["-tls1_2", "-servername", "a.test"]);
    assert!(ok && text.contains("TLSv1.2"), "{text}");
    // SECLEVEL=0: the client itself would otherwise not offer TLS 1.1.
    let (ok, text) = s_client(
        tls_port,
        &[
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-servername",
            "a.test",
        ],
    );
    assert!(!ok, "TLS 1.1 was accepted:\n{text}");
    // Refused by the server (its alert), not by the client itself.
    assert!(text.contains("SSL alert number"), "{text}");
    drop(server);
}

/// With redirect_http, plain HTTP gets a 308 to the same URL on the TLS
/// port, but ACME's challenge path; HSTS goes on HTTPS responses only.
#[test]
fn plain_http_is_redirected_and_https_responses_carry_hsts() {
    let tls_port = free_port();
    let server = tls_site(
        tls_port,
        &format!(
            "{A_CERT}    redirect_http: true\n    hsts:\n      max_age: 365d\n      include_subdomains: true\n"
        ),
    )
    .start();
    let response = server.request(format!(
        "GET /blog/env.php?x=1&y=2 HTTP/1.1\r\nHost: a.test:{}\r\nConnection: close\r\n\r\n",
        server.port()
    ));
    assert_eq!(response.status, 308);
    assert_eq!(
        response.header("location"),
        Some(format!("https://a.test:{tls_port}/blog/env.php?x=1&y=2").as_str())
    );
    assert_eq!(response.header("strict-transport-security"), None);

    let response = server.request(
        "GET /.well-known/acme-challenge/token HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 404, "the challenge path was redirected");
    assert_eq!(response.header("strict-transport-security"), None);

    let (ok, text) = curl(&server.site, "a.test", tls_port, "/blog/env.php", &[]);
    assert!(ok, "{text}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000; includesubdomains\r\n"),
        "{text}"
    );
}

/// Behind a trusted proxy that terminated TLS (X-Forwarded-Proto: https),
/// a plain request is not redirected (that would loop), and gets HSTS; the
/// same header from an untrusted peer changes nothing.
#[test]
fn a_trusted_proxy_that_says_https_is_not_redirected() {
    let tls_port = free_port();
    let request = "GET /blog/env.php HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n";
    let tls = format!("{A_CERT}    redirect_http: true\n    hsts:\n      max_age: 1d\n");
    let server = tls_site(tls_port, &format!("{tls}  trusted_proxies: [127.0.0.1]\n")).start();
    let response = server.request(request);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.vars()["HTTPS"], "on");
    assert_eq!(
        response.header("strict-transport-security"),
        Some("max-age=86400")
    );
    drop(server);

    let tls_port = free_port();
    let tls = format!("{A_CERT}    redirect_http: true\n");
    let server = tls_site(tls_port, &format!("{tls}  trusted_proxies: [10.0.0.0/8]\n")).start();
    assert_eq!(server.request(request).status, 308);
}

/// A certificate replaced on disk is served to new handshakes, without a
/// signal, while a connection opened before keeps working; a broken one
/// is refused (the reload fails, saying why) and the last good one stays.
#[test]
fn a_replaced_certificate_is_served_to_new_connections_and_open_ones_keep_going() {
    let tls_port = free_port();
    let server = tls_site(tls_port, A_CERT).with_admin().start();
    let config = client_config(&server.site);
    let old = cert_der(&server.site, "a");
    let mut kept = connect(&config, "a.test", tls_port);
    assert_eq!(presented(&kept), old);
    assert_eq!(
        get(&mut kept, "a.test", "/blog/hello.php").1,
        "Hello, World!"
    );

    // A new key and certificate, written beside and renamed over the old
    // ones (as certbot and most tools do).
    make_cert(&server.site, "a-new", &["a.test"], 2);
    let certs = server.site.root().join("certs");
    std::fs::rename(certs.join("a-new.key"), certs.join("a.key")).unwrap();
    std::fs::rename(certs.join("a-new.pem"), certs.join("a.pem")).unwrap();
    let new = cert_der(&server.site, "a");
    assert_ne!(new, old);
    wait_until(
        "new handshakes get the new certificate",
        Duration::from_secs(10),
        || presented(&connect(&config, "a.test", tls_port)) == new,
    );
    // The connection from before is still up, on its old session.
    assert_eq!(
        get(&mut kept, "a.test", "/blog/hello.php").1,
        "Hello, World!"
    );
    assert_eq!(presented(&kept), old);

    // A broken certificate: the reload is refused, the last good one stays.
    std::fs::write(certs.join("a.pem"), "not a certificate\n").unwrap();
    wait_until("the reload is refused", Duration::from_secs(10), || {
        server.log().contains("reload refused")
    });
    let log = server.log();
    assert!(log.contains("server.tls.cert"), "{log}");
    assert!(log.contains("a.pem"), "{log}");
    assert!(log.contains("holds no certificate"), "{log}");
    assert_eq!(presented(&connect(&config, "a.test", tls_port)), new);
    assert_eq!(
        get(&mut kept, "a.test", "/blog/hello.php").1,
        "Hello, World!"
    );
}

/// Bad certificate settings are config errors naming the file, the key and
/// the reason; an expired certificate starts with a warning.
#[test]
fn bad_certificates_are_config_errors_naming_file_and_reason() {
    let tls_port = free_port();
    let site = tls_site(tls_port, A_CERT);
    make_cert(&site, "b", &["b.test"], 2);
    make_cert(&site, "old", &["old.test"], -1);
    std::fs::write(site.root().join("certs/garbage.pem"), "hello\n").unwrap();
    let cases: [(&str, &[&str]); 5] = [
        (
            "    cert: certs/missing.pem\n    key: certs/a.key\n",
            &["server.tls.cert", "missing.pem", "cannot read it"],
        ),
        (
            "    cert: certs/garbage.pem\n    key: certs/a.key\n",
            &["server.tls.cert", "garbage.pem", "holds no certificate"],
        ),
        (
            "    cert: certs/a.pem\n    key: certs/a.pem\n",
            &["server.tls.key", "a.pem", "holds no private key"],
        ),
        (
            "    cert: certs/a.pem\n    key: certs/b.key\n",
            &[
                "server.tls.key",
                "b.key",
                "does not belong to the certificate",
            ],
        ),
        (
            "    certificates:\n      - cert: certs/a.pem\n        key: certs/a.key\n      - cert: certs/b.pem\n        key: certs/nope.key\n",
            &[
                "server.tls.certificates[1].key",
                "nope.key",
                "cannot read it",
            ],
        ),
    ];
    let site = cases.iter().fold(site, |site, (tls, expected)| {
        let site = site.server_settings(&format!("  tls:\n    port: {tls_port}\n{tls}"));
        let (ok, errors) = site.check();
        assert!(!ok, "{tls}: accepted");
        for needle in *expected {
            assert!(
                errors.contains(needle),
                "{tls}: no `{needle}` in:\n{errors}"
            );
        }
        assert!(errors.contains("server.yaml:"), "{errors}");
        site
    });

    let site = site.server_settings(&format!(
        "  tls:\n    port: {tls_port}\n    cert: certs/old.pem\n    key: certs/old.key\n"
    ));
    let server = site.start();
    assert!(
        server.wait_for_log("the certificate expired on", Duration::from_secs(5)),
        "{}",
        server.log()
    );
}

/// A client that connects to the TLS port and never says a word is dropped
/// after read_timeout; others are served meanwhile.
#[test]
fn a_client_that_never_handshakes_is_dropped_after_read_timeout() {
    let tls_port = free_port();
    let server = tls_site(tls_port, A_CERT)
        .server_settings(&format!(
            "  read_timeout: 1s\n  tls:\n    port: {tls_port}\n{A_CERT}"
        ))
        .start();
    let mut silent = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let (ok, text) = curl(&server.site, "a.test", tls_port, "/blog/hello.php", &[]);
    assert!(ok && text.ends_with("Hello, World!"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a silent client held up another one"
    );
    let mut buf = [0u8; 16];
    let read = silent.read(&mut buf);
    let waited = started.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "dropped after {waited:?}"
    );
}

/// HTTP/2 is offered by ALPN: curl and h2load get it, PHP sees HTTP/2.0 over
/// HTTPS; with `server.http2.enabled: false` the same clients get HTTP/1.1.
#[test]
fn http2_is_offered_by_alpn_unless_turned_off() {
    let tls_port = free_port();
    let server = tls_site(tls_port, A_CERT).start();
    let env = "/blog/env.php";
    server.site.write(
        "workers/blog/public/env.php",
        ENV_PHP.replace("'HTTP_HOST'", "'HTTP_HOST', 'SERVER_PROTOCOL'"),
    );
    let (ok, text) = curl(&server.site, "a.test", tls_port, env, &["--http2"]);
    assert!(ok, "{text}\n{}", server.log());
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.contains("SERVER_PROTOCOL=HTTP/2.0\n"), "{text}");
    assert!(text.contains("HTTPS=on\n"), "{text}");
    assert!(
        text.contains(&format!("HTTP_HOST=a.test:{tls_port}\n")),
        "{text}"
    );
    // Many streams on few connections, all answered.
    let output = Command::new("h2load")
        .args(["-n", "200", "-c", "2", "-m", "20"])
        .arg(format!("https://127.0.0.1:{tls_port}/blog/hello.php"))
        .output()
        .expect("run h2load");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("Application protocol: h2"), "{report}");
    assert!(report.contains("200 succeeded"), "{report}");
    drop(server);

    let tls_port = free_port();
    let server = tls_site(tls_port, &format!("{A_CERT}  http2:\n    enabled: false\n")).start();
    let (ok, text) = curl(&server.site, "a.test", tls_port, env, &["--http2"]);
    assert!(ok, "{text}\n{}", server.log());
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}
