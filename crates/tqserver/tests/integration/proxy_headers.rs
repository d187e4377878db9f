//! Behind a proxy (`server.trusted_proxies`): from a trusted peer only,
//! X-Forwarded-For / Forwarded give PHP's REMOTE_ADDR and the access log's
//! address, and X-Forwarded-Proto / `proto=` give HTTPS; from anyone else
//! they change nothing. nginx in front binds 127.0.0.2 (the trusted proxy);
//! the client connects from 127.0.0.3, so every address is told apart.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::support::nginx::Nginx;
use crate::support::{Site, wait_until};

const VARS: &str = "<?php foreach (['REMOTE_ADDR', 'REMOTE_PORT', 'HTTPS', 'REQUEST_SCHEME', \
    'HTTP_X_FORWARDED_FOR', 'HTTP_X_FORWARDED_PROTO', 'HTTP_FORWARDED'] as $k) \
    { echo $k, '=', $_SERVER[$k] ?? '(unset)', \"\\n\"; }";

/// `curl` from `from` with extra `args`; the "KEY=value" lines it got.
fn curl_vars(from: &str, url: &str, args: &[&str]) -> BTreeMap<String, String> {
    let output = Command::new("curl")
        .args(["-s", "--interface", from])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    assert!(output.status.success(), "curl {url}: {}", output.status);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn site(log: &std::path::Path) -> Site {
    Site::new()
        .server_settings("  trusted_proxies: [127.0.0.2/32, 'fd00::/8']\n")
        .server_yaml(&format!(
            "logging:\n  access_log:\n    file: {}\n",
            log.display()
        ))
        .worker("app", "path: /\n")
        .file("app", "vars.php", VARS)
}

#[test]
fn behind_a_trusted_nginx_php_and_the_log_see_the_real_client_and_https() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let server = site(&log).start();
    let nginx = Nginx::start(
        "",
        &format!(
            "location / {{\n\
               proxy_pass http://127.0.0.1:{};\n\
               proxy_bind 127.0.0.2;\n\
               proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
               proxy_set_header X-Forwarded-Proto https;\n\
             }}",
            server.port()
        ),
    );
    // The client tries to pass itself off as 6.6.6.6: nginx appends the
    // address it saw (127.0.0.3), the rightmost untrusted hop.
    let vars = curl_vars(
        "127.0.0.3",
        &format!("http://127.0.0.1:{}/vars.php", nginx.port),
        &["-H", "X-Forwarded-For: 6.6.6.6"],
    );
    assert_eq!(vars["REMOTE_ADDR"], "127.0.0.3", "{vars:?}");
    assert_eq!(vars["REMOTE_PORT"], "", "nginx names no port");
    assert_eq!(vars["HTTPS"], "on");
    assert_eq!(vars["REQUEST_SCHEME"], "https");
    assert_eq!(vars["HTTP_X_FORWARDED_FOR"], "6.6.6.6, 127.0.0.3");

    wait_until("the access log line", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("GET /vars.php"))
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text.lines().find(|l| l.contains("GET /vars.php")).unwrap();
    assert!(line.starts_with("127.0.0.3 "), "{line}");
}

#[test]
fn from_an_untrusted_peer_forwarding_headers_change_nothing() {
    let logs = tempfile::tempdir().unwrap();
    let server = site(&logs.path().join("access.log")).start();
    let url = format!("http://127.0.0.1:{}/vars.php", server.port());
    let vars = curl_vars(
        "127.0.0.3",
        &url,
        &[
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "X-Forwarded-Proto: https",
            "-H",
            "Forwarded: for=6.6.6.6;proto=https",
        ],
    );
    assert_eq!(vars["REMOTE_ADDR"], "127.0.0.3", "{vars:?}");
    assert_ne!(vars["REMOTE_PORT"], "");
    assert_eq!(vars["HTTPS"], "(unset)");
    assert_eq!(vars["REQUEST_SCHEME"], "http");
    // Passed on as plain headers, as nginx does.
    assert_eq!(vars["HTTP_X_FORWARDED_FOR"], "6.6.6.6");
    assert_eq!(vars["HTTP_X_FORWARDED_PROTO"], "https");
}

#[test]
fn forwarded_from_a_trusted_peer_gives_address_port_and_scheme() {
    let logs = tempfile::tempdir().unwrap();
    let server = site(&logs.path().join("access.log")).start();
    let url = format!("http://127.0.0.1:{}/vars.php", server.port());
    let vars = curl_vars(
        "127.0.0.2",
        &url,
        &[
            "-H",
            "Forwarded: for=6.6.6.6, for=\"[2001:db8::5]:4711\";proto=https, for=\"[fd00::1]\"",
            "-H",
            "X-Forwarded-For: 7.7.7.7",
        ],
    );
    // Forwarded wins over X-Forwarded-For; fd00::1 is a trusted hop.
    assert_eq!(vars["REMOTE_ADDR"], "2001:db8::5", "{vars:?}");
    assert_eq!(vars["REMOTE_PORT"], "4711");
    assert_eq!(vars["HTTPS"], "on");

    let (ok, errors) = Site::new()
        .server_settings("  trusted_proxies: [10.0.0.0/33, proxy.example]\n")
        .worker("app", "path: /\n")
        .check();
    assert!(!ok);
    assert!(errors.contains("server.trusted_proxies[0]"), "{errors}");
    assert!(errors.contains("prefix length must be 0 to 32"), "{errors}");
    assert!(errors.contains("server.trusted_proxies[1]"), "{errors}");
}
