//! Automatic certificates (`server.tls.acme`) end to end against Debian's
//! pebble, the ACME test CA, started here on loopback: pebble's own HTTPS
//! listener gets a certificate from a CA made with openssl (the site's
//! `ca_root`), pebble-challtestsrv answers pebble's DNS queries for
//! `shop.test` with 127.0.0.1, and pebble checks HTTP-01 challenges on the
//! tqserver port the test picked.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Server, Site, free_port, holds_within, spawn_server, stop_child, wait_until};

/// A running pebble and its DNS stub, stopped on drop.
struct Pebble {
    dir: tempfile::TempDir,
    /// The ACME directory URL.
    directory: String,
    port: u16,
    management: u16,
    pebble: Option<Child>,
    dns: Child,
}

impl Pebble {
    /// Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port`, issuing certificates valid for `validity` (pebble's
    /// default, 5 years, when None).
    fn start(http_port: u16, tls_port: u16, validity: Option<Duration>) -> Self {
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("tqpebble")
            .tempdir()
            .unwrap();
        let path = &dir.path().to_owned();
        make_https_certificate(path);
        let dns_port = free_port();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(log_file(path, "challtestsrv.log"))
            .stderr(log_file(path, "challtestsrv.log"))
            .spawn()
            .expect("start pebble-challtestsrv (Debian package pebble, scripts/deps.sh test)");
        let management = free_port();
        let validity = validity.map_or(String::new(), |v| {
            format!(r#", "certificateValidityPeriod": {}"#, v.as_secs())
        });
        let config = format!(
            r#"{{"pebble": {{"listenAddress": "127.0.0.1:{port}", "managementListenAddress": "127.0.0.1:{management}",
              "certificate": "{cert}", "privateKey": "{key}", "httpPort": {http_port}, "tlsPort": {tls_port},
              "ocspResponderURL": "", "externalAccountBindingRequired": false{validity}}}}}"#,
            cert = path.join("https.pem").display(),
            key = path.join("https.key").display(),
        );
        std::fs::write(path.join("pebble.json"), config).unwrap();
        let mut pebble = Self {
            directory: format!("https://127.0.0.1:{port}/dir"),
            port,
            management,
            pebble: None,
            dns,
            dir,
        };
        pebble.pebble = Some(
            Command::new("pebble")
                .arg("-config")
                .arg(path.join("pebble.json"))
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .stdout(log_file(path, "pebble.log"))
                .stderr(log_file(path, "pebble.log"))
                .spawn()
                .expect("start pebble (Debian package pebble, scripts/deps.sh test)"),
        );
        wait_until("pebble's directory", Duration::from_secs(10), || {
            pebble.log().contains("ACME directory available")
        });
        pebble
    }

    /// The CA file that tqserver trusts for pebble's HTTPS (`ca_root`).
    fn ca_root(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Whether pebble issued a certificate with this serial (hexadecimal).
    fn issued(&self, serial: &str) -> bool {
        let url = format!(
            "https://127.0.0.1:{}/cert-status-by-serial/{}",
            self.management,
            serial.to_ascii_lowercase()
        );
        let output = Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(self.ca_root())
            .arg(url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).contains(r#""Status": "Valid""#)
    }

    /// The server config lines of a site that gets its certificate here,
    /// with a TLS port `tls_port` and `extra` lines in `acme:`.
    fn site_settings(&self, tls_port: u16, extra: &str) -> String {
        format!(
            "  tls:\n    port: {tls_port}\n    acme:\n      domains: [shop.test, www.shop.test]\n      contact: [admin@shop.test]\n      directory: {}\n      ca_root: {}\n{extra}",
            self.directory,
            self.ca_root().display()
        )
    }

    /// Pebble's root CA (made anew at each start), as a file for clients.
    fn issuing_root(&self) -> PathBuf {
        let output = Command::new("curl")
            .args(["-sf", "--cacert"])
            .arg(self.ca_root())
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .unwrap();
        assert!(output.status.success(), "no root from pebble");
        let path = self.dir.path().join("issuing-root.pem");
        std::fs::write(&path, output.stdout).unwrap();
        path
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if let Some(mut pebble) = self.pebble.take() {
            stop_child(&mut pebble, Duration::from_secs(2));
        }
        stop_child(&mut self.dns, Duration::from_secs(2));
        if std::thread::panicking() {
            eprintln!("pebble's log:\n{}", self.log());
        }
    }
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap()
        .into()
}

/// A CA (ca.pem) and a certificate it signed for 127.0.0.1 and localhost
/// (https.pem, https.key): Debian's pebble ships no test certificates.
fn make_https_certificate(dir: &Path) {
    let openssl = |args: &[&str]| crate::support::openssl(dir, args);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    crate::support::make_test_ca(dir);
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "https.key",
                "-out",
                "https.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "https.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "https.pem",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    ]);
}

/// A site with a PHP page, served on the port pebble validates on, with
/// `settings` in its `server:` section.
fn site(http_port: u16, settings: &str) -> Site {
    let mut site = Site::new();
    site.port = http_port;
    site.server_settings(settings)
        .worker("shop", "path: /\n")
        .file(
            "shop",
            "index.php",
            "<?php echo 'shop ', $_SERVER['SERVER_NAME'];",
        )
}

/// Where the certificate of a site on `pebble` is stored.
fn stored(server: &Server, pebble: &Pebble, file: &str) -> PathBuf {
    server.site.root().join(format!(
        "acme/127.0.0.1-{}-dir/shop.test/{file}",
        pebble.port
    ))
}

/// GET `path` from `https://shop.test:PORT` (resolved to 127.0.0.1),
/// trusting only `root`: the status and the body.
fn https_get(port: u16, root: &Path, path: &str) -> (String, String) {
    let output = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--resolve"])
        .arg(format!("shop.test:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(root)
        .arg(format!("https://shop.test:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_owned(), body.to_owned())
}

/// The serial of the certificate a new handshake for `name` gets on
/// `port`, verified against `root`.
fn served_serial(port: u16, name: &str, root: &Path) -> String {
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", name, "-verify_return_error", "-CAfile"])
        .arg(root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    serial_of_pem(&String::from_utf8_lossy(&output.stdout))
}

/// The serial of the first PEM certificate in `text` ("" if none).
fn serial_of_pem(text: &str) -> String {
    let Some(begin) = text.find("-----BEGIN CERTIFICATE-----") else {
        return String::new();
    };
    let end = begin + text[begin..].find("-----END CERTIFICATE-----").unwrap() + 25;
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    x509.stdin
        .take()
        .unwrap()
        .write_all(&text.as_bytes()[begin..end])
        .unwrap();
    let output = x509.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .trim_start_matches("serial=")
        .trim_start_matches('0')
        .to_owned()
}

/// A certificate file's serial (hexadecimal) and DNS names, from openssl.
fn describe(chain: &Path) -> (String, String) {
    let output = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-ext", "subjectAltName", "-in"])
        .arg(chain)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let serial = text
        .lines()
        .find_map(|line| line.strip_prefix("serial="))
        .unwrap_or_default()
        .trim_start_matches('0')
        .to_owned();
    (serial, text)
}

#[test]
fn issues_a_certificate_over_http01_and_keeps_it_on_disk() {
    let port = free_port();
    let tls_port = free_port();
    let pebble = Pebble::start(port, tls_port, None);
    let server = site(port, &pebble.site_settings(tls_port, "")).start();
    assert!(
        server.wait_for_log("ACME: certificate issued", Duration::from_secs(15)),
        "{}",
        server.log()
    );
    let log = server.log();
    assert!(log.contains("ACME: account created"), "{log}");
    assert!(log.contains("ACME: HTTP-01 challenge answered"), "{log}");

    // The chain and its key, the key private.
    let chain = stored(&server, &pebble, "fullchain.pem");
    let key = stored(&server, &pebble, "key.pem");
    let (serial, text) = describe(&chain);
    assert!(
        text.contains("DNS:shop.test") && text.contains("DNS:www.shop.test"),
        "{text}"
    );
    assert!(pebble.issued(&serial), "pebble did not issue {serial}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "key.pem is readable by others: {mode:o}");
    let account = server
        .site
        .root()
        .join(format!("acme/127.0.0.1-{}-dir/account.json", pebble.port));
    assert!(account.is_file());

    // The TLS port serves it, for both names.
    let root = pebble.issuing_root();
    assert_eq!(served_serial(tls_port, "shop.test", &root), serial);
    assert_eq!(served_serial(tls_port, "www.shop.test", &root), serial);
    assert_eq!(
        https_get(tls_port, &root, "/"),
        ("200".to_owned(), "shop shop.test".to_owned())
    );
    // The apps serve plain HTTP as before.
    let response = server.get("/");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "shop localhost");

    // A restart serves the stored certificate and orders nothing.
    let mut server = server;
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
    let log = restart(
        &server,
        "restarted.log",
        "ACME: stored certificate for shop.test, www.shop.test loaded",
    );
    assert!(log.contains(&serial), "{log}");
    assert!(!log.contains("ACME: account created"), "{log}");
    assert!(!log.contains("ACME: order placed"), "{log}");
    assert_eq!(describe(&chain).0, serial);

    // A name more: the stored certificate does not do; the stored account
    // orders a new one.
    server.site.write(
        "config/server.yaml",
        std::fs::read_to_string(server.site.config_path())
            .unwrap()
            .replace(
                "[shop.test, www.shop.test]",
                "[shop.test, www.shop.test, api.shop.test]",
            ),
    );
    let log = restart(&server, "renamed.log", "ACME: certificate issued");
    // (The certificate lists its names in the CA's order.)
    assert!(
        log.contains("ACME: the stored certificate is for ")
            && log.contains(", not shop.test, www.shop.test, api.shop.test; ordering a new one"),
        "{log}"
    );
    assert!(log.contains("ACME: using the stored account"), "{log}");
    assert!(!log.contains("ACME: account created"), "{log}");
    let (renamed, text) = describe(&chain);
    assert_ne!(renamed, serial);
    assert!(text.contains("DNS:api.shop.test"), "{text}");
}

/// Starts tqserver again on a stopped server's site, until its log (in
/// `log_name`) says `until`; returns the log.
fn restart(server: &Server, log_name: &str, until: &str) -> String {
    let log = server.site.root().join(log_name);
    let mut restarted = spawn_server(&server.site.config_path(), &log, &[]);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let reached = holds_within(Duration::from_secs(15), || read().contains(until));
    stop_child(&mut restarted, Duration::from_secs(5));
    let text = read();
    assert!(reached, "no `{until}` in:\n{text}");
    text
}

#[test]
fn renews_before_expiry() {
    let port = free_port();
    let tls_port = free_port();
    // Valid 12 s: renewed when a third is left, 8 s after issuance.
    let pebble = Pebble::start(port, tls_port, Some(Duration::from_secs(12)));
    let server = site(port, &pebble.site_settings(tls_port, "")).start();
    assert!(
        server.wait_for_log("ACME: certificate issued", Duration::from_secs(15)),
        "{}",
        server.log()
    );
    let issued_at = Instant::now();
    let chain = stored(&server, &pebble, "fullchain.pem");
    let (first, _) = describe(&chain);
    let root = pebble.issuing_root();
    assert_eq!(served_serial(tls_port, "shop.test", &root), first);

    // A connection opened now, with the first certificate.
    let mut before = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{tls_port}")])
        .args(["-servername", "shop.test", "-ign_eof", "-CAfile"])
        .arg(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    wait_until(
        "a renewed certificate served",
        Duration::from_secs(15),
        || {
            let served = served_serial(tls_port, "shop.test", &root);
            !served.is_empty() && served != first
        },
    );
    let renewed_after = issued_at.elapsed();
    assert!(
        renewed_after >= Duration::from_secs(5),
        "renewed after {renewed_after:?}, before a third of its 12 s was left"
    );
    let (second, _) = describe(&chain);
    assert_ne!(second, first);
    assert!(pebble.issued(&second));
    assert_eq!(served_serial(tls_port, "shop.test", &root), second);
    assert!(server.log().matches("ACME: certificate issued").count() >= 2);
    // The account was reused, not made again.
    assert_eq!(
        server.log().matches("ACME: account created").count(),
        1,
        "{}",
        server.log()
    );

    // The connection from before the renewal still serves, on its
    // certificate.
    let mut stdin = before.stdin.take().unwrap();
    stdin
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    drop(stdin);
    let mut output = String::new();
    before
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    let _ = before.wait();
    assert_eq!(serial_of_pem(&output), first, "{output}");
    assert!(output.contains("HTTP/1.1 200"), "{output}");
    assert!(output.contains("shop shop.test"), "{output}");
}

#[test]
fn tls_alpn_01_validates_on_the_tls_port() {
    let port = free_port();
    let tls_port = free_port();
    let pebble = Pebble::start(port, tls_port, None);
    let server = site(
        port,
        &pebble.site_settings(tls_port, "      challenge: tls-alpn-01\n"),
    )
    .start();
    assert!(
        server.wait_for_log("ACME: certificate issued", Duration::from_secs(15)),
        "{}",
        server.log()
    );
    let log = server.log();
    assert!(
        log.contains("ACME: TLS-ALPN-01 challenge for shop.test ready"),
        "{log}"
    );
    // No HTTP-01 request was needed.
    assert!(!log.contains("HTTP-01 challenge answered"), "{log}");
    let (serial, _) = describe(&stored(&server, &pebble, "fullchain.pem"));
    let root = pebble.issuing_root();
    assert_eq!(served_serial(tls_port, "shop.test", &root), serial);
}

#[test]
fn a_directory_that_is_down_is_retried_with_backoff_while_http_serves() {
    let port = free_port();
    let down = free_port();
    let ca = tempfile::tempdir().unwrap();
    make_https_certificate(ca.path());
    let server = site(
        port,
        &format!(
            "  tls:\n    port: {}\n    acme:\n      domains: [shop.test]\n      directory: https://127.0.0.1:{down}/dir\n      ca_root: {}\n",
            free_port(),
            ca.path().join("ca.pem").display()
        ),
    )
    .start();
    assert!(
        server.wait_for_log("retrying in 5s", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let first = Instant::now();
    let log = server.log();
    assert!(
        log.contains("ACME: getting a certificate for shop.test failed: cannot reach the ACME directory")
            || log.contains("ACME: getting a certificate for shop.test failed: cannot create an account at the ACME directory"),
        "{log}"
    );
    assert!(log.contains(&format!("127.0.0.1:{down}")), "{log}");
    // HTTP is served meanwhile.
    let response = server.get("/");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "shop localhost");
    // The second attempt comes after the first wait, and waits twice as long.
    assert!(
        server.wait_for_log("retrying in 10s", Duration::from_secs(8)),
        "{}",
        server.log()
    );
    assert!(
        first.elapsed() >= Duration::from_secs(4),
        "{:?}",
        first.elapsed()
    );
    assert!(!holds_within(Duration::from_millis(200), || server
        .log()
        .contains("retrying in 20s")));
}

#[test]
fn bad_acme_settings_name_the_file_line_and_key() {
    let site = Site::new().worker("shop", "path: /\n").server_settings(
        "  tls:\n    acme:\n      domains: ['*.shop.test', 'bad name']\n      contact: [nobody]\n      directory: http://ca.example/dir\n      ca_root: missing.pem\n      renew_before: 0s\n      challenge: dns-01\n",
    );
    let (ok, errors) = site.check();
    assert!(!ok, "{errors}");
    for expected in [
        "server.tls.acme.domains",
        "DNS-01",
        "`bad name` is not a DNS name",
        "server.tls.acme.contact",
        "`nobody` is not an e-mail address",
        "server.tls.acme.directory",
        "is not an https:// URL",
        "server.tls.acme.ca_root",
        "missing.pem",
        "server.tls.acme.renew_before",
        "server.tls.acme.challenge",
        "`dns-01` is not one of http-01, tls-alpn-01",
    ] {
        assert!(
            errors.contains(expected),
            "{expected} missing in:\n{errors}"
        );
    }
    assert!(errors.contains("server.yaml:"), "{errors}");

    let site = Site::new()
        .worker("shop", "path: /\n")
        .server_settings("  tls:\n    acme:\n      contact: [admin@shop.test]\n");
    let (ok, errors) = site.check();
    assert!(!ok);
    assert!(
        errors.contains("server.tls.acme.domains") && errors.contains("is required"),
        "{errors}"
    );
}
