//! The FastCGI listener as a drop-in php-fpm: a real nginx in front
//! (keep-alive on and off), cgi-fcgi as an outside client, and raw sockets for
//! every kind of bad input, each followed by a good request. The tests named
//! `in_process_*` drive the listener without a socket or a tqserver process,
//! over `tokio::io::duplex` pipes.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::fcgi::{
    AsyncFcgiConn, FcgiConn, begin_and_params, cgi_params, is_complete, stdin,
};
use crate::support::nginx::Nginx;
use crate::support::{
    Runtime, Server, Site, free_port, md5, multipart, on_both_runtimes, wait_until,
};
use arc_swap::ArcSwap;
use fastcgi::record::{ProtocolStatus, RecordType, put_abort_request, put_record};
use nix::sys::signal::Signal;
use tokio::io::DuplexStream;
use tokio_util::sync::CancellationToken;
use tqserver::app::App;
use tqserver::listener;
use tqserver::metrics::{BuildInfo, Metrics};
use tqserver::observe::Telemetry;
use tqserver::router::Router;

const ECHO_PHP: &str = r#"<?php
echo 'method=', $_SERVER['REQUEST_METHOD'], "\n";
echo 'query=', $_SERVER['QUERY_STRING'] ?? '', "\n";
echo 'script=', $_SERVER['SCRIPT_NAME'] ?? '', "\n";
echo 'path_info=', $_SERVER['PATH_INFO'] ?? '', "\n";
echo 'post=', json_encode($_POST), "\n";
echo 'https=', $_SERVER['HTTPS'] ?? '', "\n";
echo 'proxy=', $_SERVER['HTTP_PROXY'] ?? '(unset)', "\n";
"#;

struct Fixture {
    server: Server,
    fastcgi_port: u16,
}

impl Fixture {
    /// The app on `runtime`, its listener with the default settings.
    fn on(runtime: Runtime) -> Self {
        Self::start_on(runtime, "", "")
    }

    /// The app on php-cgi, with extra `fastcgi:` and `server:` settings.
    fn start(fastcgi_extra: &str, server_settings: &str) -> Self {
        Self::start_on(Runtime::Cgi, fastcgi_extra, server_settings)
    }

    fn start_on(runtime: Runtime, fastcgi_extra: &str, server_settings: &str) -> Self {
        let fastcgi_port = free_port();
        let site = Site::on(runtime)
            .server_settings(server_settings)
            .with_admin()
            .worker(
                "app",
                &format!(
                    "path: /\nphp:\n  settings:\n    upload_max_filesize: 32M\n    post_max_size: 32M\n  pool:\n    manager: static\n    max_workers: 4\n    request_timeout: 10s\nfastcgi:\n  listen: 127.0.0.1:{fastcgi_port}\n  status_path: /fpm-status\n  ping_path: /fpm-ping\n{fastcgi_extra}"
                ),
            )
            .file("app", "echo.php", ECHO_PHP)
            .file("app", "index.php", "<?php echo 'front ', $_SERVER['REQUEST_URI'];")
            .file("app", "info.php", "<?php phpinfo(); phpinfo(INFO_MODULES);")
            .file(
                "app",
                "upload.php",
                "<?php $f = $_FILES['file'] ?? null; echo 'size=', $f['size'] ?? 0, \"\\nmd5=\", $f ? md5_file($f['tmp_name']) : '', \"\\n\";",
            )
            .file(
                "app",
                "sleep.php",
                "<?php file_put_contents(sys_get_temp_dir() . '/tq-sleep-' . ($_GET['tag'] ?? 'x'), getmypid()); usleep((int)($_GET['ms'] ?? 100) * 1000); echo 'slept';",
            )
            .file("app", "stderr.php", "<?php error_log('listener stderr line'); echo 'ok';");
        site.write("workers/app/secret.php", "<?php echo 'SECRET EXECUTED';");
        let server = site.start();
        Self {
            server,
            fastcgi_port,
        }
    }

    fn docroot(&self) -> String {
        self.server.docroot("app")
    }

    fn nginx(&self, keepalive: bool) -> Nginx {
        let (upstream_keepalive, keep_conn) = if keepalive {
            ("keepalive 8;", "fastcgi_keep_conn on;")
        } else {
            ("", "")
        };
        let root = self.docroot();
        let outside = self
            .server
            .site
            .root()
            .join("workers/app/secret.php")
            .canonicalize()
            .unwrap();
        Nginx::start(
            &format!(
                "upstream tq {{ server 127.0.0.1:{}; {upstream_keepalive} }}",
                self.fastcgi_port
            ),
            &format!(
                "root {root};\n\
                 location / {{ try_files $uri $uri/ /index.php?$args; }}\n\
                 location = /outside.php {{\n\
                   include /etc/nginx/fastcgi_params;\n\
                   fastcgi_param SCRIPT_FILENAME {outside};\n\
                   fastcgi_pass tq; {keep_conn}\n\
                 }}\n\
                 location ~ ^/fpm-(status|ping)$ {{\n\
                   include /etc/nginx/fastcgi_params;\n\
                   fastcgi_param SCRIPT_NAME $uri;\n\
                   fastcgi_pass tq; {keep_conn}\n\
                 }}\n\
                 location ~ [^/]\\.php(/|$) {{\n\
                   fastcgi_split_path_info ^(.+?\\.php)(/.*)$;\n\
                   include /etc/nginx/fastcgi_params;\n\
                   fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;\n\
                   fastcgi_param PATH_INFO $fastcgi_path_info;\n\
                   fastcgi_param HTTPS on;\n\
                   fastcgi_pass tq; {keep_conn}\n\
                 }}",
                outside = outside.display()
            ),
        )
    }
}

fn post_form(nginx: &Nginx, path: &str, body: &str) -> support::Response {
    nginx.request(format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

fn exercise_nginx(nginx: &Nginx) {
    let get = nginx.get("/echo.php/more/info?a=1");
    assert_eq!(get.status, 200, "{}", nginx.error_log());
    let vars = get.vars();
    assert_eq!(vars["method"], "GET");
    assert_eq!(vars["query"], "a=1");
    assert_eq!(vars["script"], "/echo.php");
    assert_eq!(vars["path_info"], "/more/info");
    assert_eq!(vars["https"], "on", "params pass through as sent");

    let post = post_form(nginx, "/echo.php", "x=1&y=two");
    assert_eq!(post.vars()["post"], r#"{"x":"1","y":"two"}"#);

    let pretty = nginx.get("/some/pretty/url?z=9");
    assert_eq!(pretty.text(), "front /some/pretty/url?z=9");

    let data: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let body = multipart("bnd42", "file", "big.bin", &data);
    let mut request = format!(
        "POST /upload.php HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=bnd42\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let upload = nginx.request(&request);
    assert_eq!(upload.status, 200, "{}", nginx.error_log());
    assert_eq!(upload.vars()["size"], data.len().to_string());
    assert_eq!(upload.vars()["md5"], md5(&data));

    let info = nginx.get("/info.php");
    assert_eq!(info.status, 200);
    assert!(info.body.len() > 100 * 1024, "{}", info.body.len());
    assert!(info.text().trim_end().ends_with("</html>"));
}

/// Every TCP connection to `port` that the kernel still knows of, open or
/// recently closed (TIME_WAIT lasts a minute), named by the port of its
/// other end. Both ends of a loopback connection are listed; either names
/// the connection by the same ephemeral port. Counts what the listener
/// accepted without asking tqserver.
fn connections_to(port: u16) -> std::collections::BTreeSet<u16> {
    const LISTEN: &str = "0A";
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port_of = |address: &str| {
        let (_, hex) = address.rsplit_once(':')?;
        u16::from_str_radix(hex, 16).ok()
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote) = (port_of(fields.get(1)?)?, port_of(fields.get(2)?)?);
            match *fields.get(3)? {
                LISTEN => None,
                _ if local == port => Some(remote),
                _ if remote == port => Some(local),
                _ => None,
            }
        })
        .collect()
}

/// The FastCGI connections tqserver holds open right now (its gauge).
fn open_fastcgi_connections(fixture: &Fixture) -> f64 {
    fixture
        .server
        .metric("tqserver_fastcgi_connections{worker=\"app\"}")
        .expect("the FastCGI connection gauge")
}

/// Runs 20 requests through nginx one after another; returns how many
/// FastCGI connections they opened.
fn connections_for_20_requests(fixture: &Fixture, nginx: &Nginx) -> usize {
    let before = connections_to(fixture.fastcgi_port);
    for _ in 0..20 {
        assert_eq!(nginx.get("/echo.php").status, 200);
    }
    connections_to(fixture.fastcgi_port)
        .difference(&before)
        .count()
}

fn behind_nginx_with_keep_alive(runtime: Runtime) {
    let fixture = Fixture::on(runtime);
    let nginx = fixture.nginx(true);
    exercise_nginx(&nginx);
    // The upstream connections were reused: 20 requests in a row travel
    // over the connection nginx already has.
    let opened = connections_for_20_requests(&fixture, &nginx);
    assert!(
        opened <= 1,
        "20 requests opened {opened} FastCGI connections"
    );
    // tqserver holds the kept-alive connection open between requests.
    assert!(open_fastcgi_connections(&fixture) >= 1.0);
}

#[test]
fn behind_nginx_without_keep_alive() {
    let fixture = Fixture::start("", "");
    let nginx = fixture.nginx(false);
    exercise_nginx(&nginx);
    // The control for the test above: here each request has a connection
    // of its own, counted the same way, and none stays open. (At least 15:
    // the kernel may reuse a loopback port still in TIME_WAIT.)
    let opened = connections_for_20_requests(&fixture, &nginx);
    assert!(
        opened >= 15,
        "20 requests opened {opened} FastCGI connections"
    );
    wait_until("no open FastCGI connection", Duration::from_secs(5), || {
        open_fastcgi_connections(&fixture) == 0.0
    });
}

fn two_hundred_concurrent_requests_through_nginx(runtime: Runtime) {
    let fixture = Fixture::on(runtime);
    let nginx = fixture.nginx(true);
    let port = nginx.port;
    let threads: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                let mut conn = support::Conn::open(port);
                conn.send(
                    format!("GET /echo.php?i={i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
                let response = conn.read_response(false);
                (i, response.status, response.vars().get("query").cloned())
            })
        })
        .collect();
    for thread in threads {
        let (i, status, query) = thread.join().unwrap();
        assert_eq!(status, 200, "request {i}");
        assert_eq!(
            query,
            Some(format!("i={i}")),
            "request {i} got someone else's answer"
        );
    }
}

/// The pid sleep.php wrote to `marker` once it runs (it then sleeps).
fn script_pid(marker: &std::path::Path) -> u32 {
    let mut pid = None;
    wait_until("the script to start", Duration::from_secs(5), || {
        pid = std::fs::read_to_string(marker)
            .ok()
            .and_then(|text| text.trim().parse().ok());
        pid.is_some()
    });
    pid.unwrap()
}

fn a_worker_killed_mid_request_is_a_clean_502_at_nginx(runtime: Runtime) {
    let fixture = Fixture::on(runtime);
    let nginx = fixture.nginx(true);
    let tag = format!("kill{}", std::process::id());
    let marker = std::path::PathBuf::from(format!("/tmp/tq-sleep-{tag}"));
    let _ = std::fs::remove_file(&marker);
    let port = nginx.port;
    let path = format!("/sleep.php?ms=5000&tag={tag}");
    let started = Instant::now();
    let client = std::thread::spawn(move || {
        let mut conn = support::Conn::open(port);
        conn.send(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        conn.read_response(false).status
    });
    let pid = script_pid(&marker);
    support::kill(pid, Signal::SIGKILL);
    assert_eq!(client.join().unwrap(), 502);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_file(&marker);
    // And the next request is fine.
    assert_eq!(nginx.get("/echo.php").status, 200);
}

#[test]
fn script_filename_outside_the_document_root_is_refused() {
    let fixture = Fixture::start("", "");
    let nginx = fixture.nginx(true);
    let response = nginx.get("/outside.php");
    assert_eq!(response.status, 403);
    assert!(!response.text().contains("SECRET EXECUTED"));
    assert!(fixture.server.log().contains("outside the document root"));
}

/// Debian's MediaWiki: the document root is /var/lib/mediawiki, whose
/// index.php is a symlink to /usr/share/mediawiki/index.php. nginx sends
/// SCRIPT_FILENAME=<root>/index.php, inside the root as written.
fn script_filename_through_a_symlink_follows_the_symlink_policy(runtime: Runtime) {
    for (security, expected) in [
        ("", 200),
        ("security:\n  allow_symlinks_outside_root: true\n", 200),
        ("security:\n  symlinks: follow\n", 200),
        ("security:\n  symlinks: beneath\n", 403),
    ] {
        let fastcgi_port = free_port();
        let site = Site::on(runtime).worker(
            "wiki",
            &format!(
                "path: /\n{security}php:\n  pool:\n    manager: static\n    max_workers: 1\nfastcgi:\n  listen: 127.0.0.1:{fastcgi_port}\n"
            ),
        );
        site.write(
            "share/wiki/index.php",
            "<?php echo 'wiki ', $_SERVER['SCRIPT_FILENAME'];",
        );
        std::os::unix::fs::symlink(
            site.root().join("share/wiki/index.php"),
            site.root().join("workers/wiki/public/index.php"),
        )
        .unwrap();
        let server = site.start();
        let root = server.docroot("wiki");
        let nginx = Nginx::start(
            &format!("upstream tq {{ server 127.0.0.1:{fastcgi_port}; }}"),
            &format!(
                "root {root};\n\
                 location ~ \\.php$ {{\n\
                   include /etc/nginx/fastcgi_params;\n\
                   fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;\n\
                   fastcgi_pass tq;\n\
                 }}"
            ),
        );
        let response = nginx.get("/index.php");
        assert_eq!(response.status, expected, "{security}: {}", response.text());
        let log = server.log();
        if expected == 200 {
            assert_eq!(response.text(), format!("wiki {root}/index.php"));
        } else {
            // The log says which link, where it leads, and which key.
            let line = format!(
                "symlink {root}/index.php -> {} leads out of the document root",
                site_file(&server, "share/wiki/index.php")
            );
            assert!(log.contains(&line), "{log}");
            assert!(log.contains("security.symlinks is `beneath`"), "{log}");
            assert!(!log.contains("SCRIPT_FILENAME outside"), "{log}");
        }
    }
}

fn site_file(server: &Server, relative: &str) -> String {
    server.site.root().join(relative).display().to_string()
}

#[test]
fn limit_extensions_apply_to_the_listener() {
    let fixture = Fixture::start("", "");
    let docroot = fixture.docroot();
    let mut conn = FcgiConn::tcp(fixture.fastcgi_port);
    let filename = format!("{docroot}/index.html");
    let params = cgi_params(&docroot, &filename, "/index.html", "");
    let response = conn.request(1, &params, b"", true);
    assert_eq!(response.status(), 403);
    assert!(response.body().contains("Access denied"));
}

#[test]
fn status_and_ping_are_answered_by_tqserver() {
    let fixture = Fixture::start("", "");
    let nginx = fixture.nginx(true);
    let ping = nginx.get("/fpm-ping");
    assert_eq!(ping.status, 200);
    assert_eq!(ping.text(), "pong\n");
    let status = nginx.get("/fpm-status?json&full");
    assert_eq!(status.status, 200);
    assert_eq!(status.header("content-type"), Some("application/json"));
    let text = status.text();
    assert!(text.contains("\"pool\":\"app\""), "{text}");
    assert!(text.contains("\"processes\":["), "{text}");
    let plain = nginx.get("/fpm-status");
    assert!(
        plain.text().contains("process manager:      static"),
        "{}",
        plain.text()
    );
}

fn cgi_fcgi_as_an_outside_client(runtime: Runtime) {
    let fixture = Fixture::on(runtime);
    let docroot = fixture.docroot();
    let output = std::process::Command::new("cgi-fcgi")
        .args([
            "-bind",
            "-connect",
            &format!("127.0.0.1:{}", fixture.fastcgi_port),
        ])
        .env_clear()
        .env("REQUEST_METHOD", "GET")
        .env("SCRIPT_FILENAME", format!("{docroot}/echo.php"))
        .env("SCRIPT_NAME", "/echo.php")
        .env("QUERY_STRING", "from=cgi-fcgi")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REDIRECT_STATUS", "200")
        .output()
        .expect("cgi-fcgi from Debian's libfcgi-bin");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("query=from=cgi-fcgi"), "{stdout}");
    assert!(stdout.contains("method=GET"), "{stdout}");
}

#[test]
fn get_values_is_answered_truthfully() {
    let fixture = Fixture::start("  max_connections: 77\n", "");
    let mut conn = FcgiConn::tcp(fixture.fastcgi_port);
    let mut buf = bytes::BytesMut::new();
    let mut pairs = bytes::BytesMut::new();
    for name in ["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"] {
        fastcgi::params::put_pair(&mut pairs, name.as_bytes(), b"");
    }
    put_record(&mut buf, RecordType::GetValues, 0, &pairs);
    conn.send(&buf);
    let record = conn.read_record().expect("GET_VALUES_RESULT");
    assert_eq!(record.record_type, RecordType::GetValuesResult);
    let values = fastcgi::Params::parse(record.content, fastcgi::ParamsLimits::default()).unwrap();
    assert_eq!(values.get_str("FCGI_MAX_CONNS"), Some("77"));
    assert_eq!(values.get_str("FCGI_MAX_REQS"), Some("77"));
    assert_eq!(values.get_str("FCGI_MPXS_CONNS"), Some("0"));
    // The connection still serves requests.
    let docroot = fixture.docroot();
    let response = conn.get(&docroot, "/echo.php", "q=1", false);
    assert!(response.text().contains("query=q=1"));
}

#[test]
fn a_second_request_id_is_refused_with_cant_mpx_conn() {
    let fixture = Fixture::start("", "");
    let docroot = fixture.docroot();
    let filename = format!("{docroot}/echo.php");
    let mut conn = FcgiConn::tcp(fixture.fastcgi_port);
    conn.begin_and_params(
        1,
        &cgi_params(&docroot, &filename, "/echo.php", "who=one"),
        true,
    );
    conn.begin_and_params(
        2,
        &cgi_params(&docroot, &filename, "/echo.php", "who=two"),
        true,
    );
    conn.stdin(2, b"");
    conn.stdin(1, b"");
    // Request 2 is refused; request 1 is answered, never mixed up.
    let refusal = conn.read_record().unwrap();
    assert_eq!(refusal.request_id, 2);
    assert_eq!(refusal.record_type, RecordType::EndRequest);
    assert_eq!(refusal.content[4], ProtocolStatus::CantMpxConn.as_u8());
    let response = conn.response(1);
    assert!(is_complete(&response));
    assert!(
        response.text().contains("query=who=one"),
        "{}",
        response.text()
    );
    // The connection carries on.
    let again = conn.request(
        1,
        &cgi_params(&docroot, &filename, "/echo.php", "who=three"),
        b"",
        true,
    );
    assert!(again.text().contains("query=who=three"));
}

fn abort_request_ends_the_request_and_frees_the_worker(runtime: Runtime) {
    let fixture = Fixture::on(runtime);
    let docroot = fixture.docroot();
    let filename = format!("{docroot}/sleep.php");
    let tag = format!("abort{}", std::process::id());
    let marker = std::path::PathBuf::from(format!("/tmp/tq-sleep-{tag}"));
    let _ = std::fs::remove_file(&marker);
    let mut conn = FcgiConn::tcp(fixture.fastcgi_port);
    conn.request_start(
        1,
        &cgi_params(
            &docroot,
            &filename,
            "/sleep.php",
            &format!("ms=1500&tag={tag}"),
        ),
    );
    // The script runs (and sleeps) before the web server gives up on it.
    script_pid(&marker);
    let started = Instant::now();
    let mut buf = bytes::BytesMut::new();
    put_abort_request(&mut buf, 1);
    conn.send(&buf);
    let end = conn.response(1);
    assert!(end.end.is_some(), "END_REQUEST after the abort");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // The worker goes back to the pool when PHP finishes: busy drops to 0.
    wait_until("the worker to be freed", Duration::from_secs(5), || {
        FcgiConn::tcp(fixture.fastcgi_port)
            .request(
                1,
                &cgi_params(&docroot, &format!("{docroot}/x.php"), "/fpm-status", "json"),
                b"",
                false,
            )
            .text()
            .contains("\"active processes\":0")
    });
    let _ = std::fs::remove_file(&marker);
}

fn good_request_still_works(fixture: &Fixture) {
    let docroot = fixture.docroot();
    let response =
        FcgiConn::tcp(fixture.fastcgi_port).get(&docroot, "/echo.php", "still=alive", false);
    assert!(
        response.text().contains("query=still=alive"),
        "{:?}\n{}",
        response,
        fixture.server.log()
    );
}

#[test]
fn bad_input_closes_only_that_connection() {
    let fixture = Fixture::start("", "  read_timeout: 1s\n");
    let port = fixture.fastcgi_port;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "wrong version byte",
            vec![2, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        ),
        ("params before BEGIN_REQUEST", {
            let mut buf = bytes::BytesMut::new();
            let mut writer = fastcgi::ParamsWriter::new(&mut buf, 1);
            writer.pair(b"A", b"1");
            writer.finish();
            buf.to_vec()
        }),
        ("management record with a request id", {
            let mut buf = bytes::BytesMut::new();
            put_record(&mut buf, RecordType::GetValues, 5, b"");
            buf.to_vec()
        }),
        ("params beyond the limit", {
            let mut buf = bytes::BytesMut::new();
            fastcgi::record::put_begin_request(&mut buf, 1, fastcgi::Role::Responder, true);
            let huge = vec![b'x'; 2 * 1024 * 1024];
            let mut writer = fastcgi::ParamsWriter::new(&mut buf, 1);
            writer.pair(b"HUGE", &huge);
            writer.finish();
            buf.to_vec()
        }),
    ];
    for (what, bytes) in cases {
        let mut conn = FcgiConn::tcp(port);
        conn.send(&bytes);
        assert!(conn.closed(), "{what}: connection should be closed");
        good_request_still_works(&fixture);
    }
    // A truncated record, then the client closes.
    {
        let mut conn = FcgiConn::tcp(port);
        conn.send(&[1, 1, 0, 1, 0, 8]);
    }
    good_request_still_works(&fixture);
    // A peer that stalls mid-record is cut off after read_timeout.
    let started = Instant::now();
    let mut conn = FcgiConn::tcp(port);
    conn.begin_and_params_partial();
    assert!(conn.closed(), "stalled connection should be closed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    good_request_still_works(&fixture);
    let log = fixture.server.log();
    assert!(log.contains("FastCGI connection dropped"), "{log}");
    assert!(log.contains("unsupported FastCGI version"), "{log}");
}

#[test]
fn allowed_clients_are_enforced_on_tcp() {
    let fixture = Fixture::start("  allowed_clients: [10.9.8.7]\n", "");
    let docroot = fixture.docroot();
    let filename = format!("{docroot}/echo.php");
    let mut conn = FcgiConn::tcp(fixture.fastcgi_port);
    conn.begin_and_params(1, &cgi_params(&docroot, &filename, "/echo.php", ""), false);
    conn.stdin(1, b"");
    assert!(
        conn.closed(),
        "a client not in allowed_clients must be refused"
    );
    assert!(
        fixture
            .server
            .log()
            .contains("not in fastcgi.allowed_clients")
    );

    let allowed = Fixture::start("  allowed_clients: [127.0.0.1]\n", "");
    good_request_still_works(&allowed);
}

#[test]
fn unix_socket_listener_gets_owner_and_mode() {
    let site = Site::new()
        .worker(
            "app",
            "path: /\nphp:\n  pool:\n    manager: static\n    max_workers: 1\nfastcgi:\n  listen: ./run/php.sock\n  mode: \"0600\"\n  owner: www-data\n",
        )
        .file("app", "echo.php", ECHO_PHP);
    std::fs::create_dir_all(site.root().join("workers/app/run")).unwrap();
    let server = site.start();
    let socket = server.site.root().join("workers/app/run/php.sock");
    wait_until("the socket", Duration::from_secs(5), || socket.exists());
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let www_data = std::process::Command::new("id")
        .args(["-u", "www-data"])
        .output()
        .unwrap();
    let uid: u32 = String::from_utf8_lossy(&www_data.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(meta.uid(), uid);
    let docroot = server.docroot("app");
    let response = FcgiConn::unix(&socket).get(&docroot, "/echo.php", "via=unix", false);
    assert!(response.text().contains("query=via=unix"));
}

fn stderr_is_relayed_to_the_web_server_and_logged(runtime: Runtime) {
    let fixture = Fixture::on(runtime);
    let docroot = fixture.docroot();
    let response = FcgiConn::tcp(fixture.fastcgi_port).get(&docroot, "/stderr.php", "", false);
    assert!(String::from_utf8_lossy(&response.stderr).contains("listener stderr line"));
    assert!(
        fixture
            .server
            .wait_for_log("listener stderr line", Duration::from_secs(3))
    );
}

fn httpoxy_proxy_param_is_dropped(runtime: Runtime) {
    let fixture = Fixture::on(runtime);
    let docroot = fixture.docroot();
    let filename = format!("{docroot}/echo.php");
    let mut params = cgi_params(&docroot, &filename, "/echo.php", "");
    params.push(("HTTP_PROXY", "http://evil.example:3128"));
    let response = FcgiConn::tcp(fixture.fastcgi_port).request(1, &params, b"", false);
    assert!(
        response.text().contains("proxy=(unset)"),
        "{}",
        response.text()
    );
}

trait PartialRequests {
    fn request_start(&mut self, id: u16, params: &[(&str, &str)]);
    fn begin_and_params_partial(&mut self);
}

impl PartialRequests for FcgiConn {
    fn request_start(&mut self, id: u16, params: &[(&str, &str)]) {
        self.begin_and_params(id, params, true);
        self.stdin(id, b"");
    }

    fn begin_and_params_partial(&mut self) {
        let mut buf = bytes::BytesMut::new();
        fastcgi::record::put_begin_request(&mut buf, 1, fastcgi::Role::Responder, true);
        // Half of a PARAMS record header, then nothing.
        buf.extend_from_slice(&[1, 4, 0]);
        self.send(&buf);
    }
}

fn graceful_stop_closes_idle_kept_alive_connections_at_once(runtime: Runtime) {
    // The test site stops with grace_period 10s.
    let mut fixture = Fixture::on(runtime);
    let docroot = fixture.docroot();
    let filename = format!("{docroot}/echo.php");
    let mut conn = FcgiConn::tcp(fixture.fastcgi_port);
    let response = conn.request(
        1,
        &cgi_params(&docroot, &filename, "/echo.php", "kept=1"),
        b"",
        true,
    );
    assert!(response.text().contains("query=kept=1"));
    // The web server keeps the connection open; tqserver is told to stop.
    let started = Instant::now();
    fixture.server.signal(Signal::SIGTERM);
    assert!(conn.closed(), "idle connection closed by the stop");
    let status = fixture.server.wait_exit(Duration::from_secs(10));
    assert!(status.is_some(), "tqserver still running");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop waited for an idle connection: {:?}",
        started.elapsed()
    );
}

fn a_worker_that_stops_reading_the_body_gets_a_504_at_the_request_timeout(runtime: Runtime) {
    let fastcgi_port = free_port();
    let server = Site::on(runtime)
        .worker(
            "app",
            &format!(
                "path: /\nphp:\n  settings:\n    enable_post_data_reading: '0'\n  pool:\n    manager: static\n    max_workers: 1\n    request_timeout: 2s\nfastcgi:\n  listen: 127.0.0.1:{fastcgi_port}\n"
            ),
        )
        .file("app", "stuck.php", "<?php sleep(30); echo 'late';")
        .file("app", "echo.php", ECHO_PHP)
        .start();
    let docroot = server.docroot("app");
    let filename = format!("{docroot}/stuck.php");
    let body = vec![b'x'; 8 << 20];
    let length = body.len().to_string();
    let mut params = cgi_params(&docroot, &filename, "/stuck.php", "");
    params.retain(|(name, _)| *name != "REQUEST_METHOD");
    params.push(("REQUEST_METHOD", "POST"));
    params.push(("CONTENT_TYPE", "application/octet-stream"));
    params.push(("CONTENT_LENGTH", &length));
    let started = Instant::now();
    // Kept alive, so tqserver reads (and drops) the rest of the body after
    // answering instead of resetting the connection.
    let response = FcgiConn::tcp(fastcgi_port).request(1, &params, &body, true);
    assert_eq!(response.status(), 504, "{}", response.text());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(server.wait_for_log("request timed out", Duration::from_secs(3)));
    // The pool replaced the worker and serves the next request.
    let echo = FcgiConn::tcp(fastcgi_port).get(&docroot, "/echo.php", "next=1", false);
    assert!(echo.text().contains("query=next=1"), "{}", server.log());
}

fn slow_requests_through_the_listener_name_their_pid_and_script(runtime: Runtime) {
    let fastcgi_port = free_port();
    let server = Site::on(runtime)
        .server_yaml("logging:\n  slow_log:\n    threshold: 300ms\n")
        .worker(
            "app",
            &format!(
                "path: /\nphp:\n  pool:\n    manager: static\n    max_workers: 1\nfastcgi:\n  listen: 127.0.0.1:{fastcgi_port}\n"
            ),
        )
        .file(
            "app",
            "slow.php",
            "<?php usleep(500000); echo getmypid();",
        )
        .start();
    let docroot = server.docroot("app");
    let mut conn = FcgiConn::tcp(fastcgi_port);
    let response = conn.get(&docroot, "/slow.php", "", false);
    assert!(is_complete(&response));
    let pid = response.body();
    assert!(
        server.wait_for_log("slow request", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let log = server.log();
    let line = log.lines().find(|l| l.contains("slow request")).unwrap();
    for part in [
        format!("pid={pid}"),
        format!("script={docroot}/slow.php"),
        "uri=/slow.php".to_owned(),
        "worker=app".to_owned(),
    ] {
        assert!(line.contains(&part), "{part} missing in {line}");
    }
}

// What a web server sees of PHP through the listener, the same on both
// runtimes. (The tests above that PHP takes no part in, protocol errors,
// refusals and the listener's own socket, run on php-cgi only.)
on_both_runtimes!(
    behind_nginx_with_keep_alive,
    two_hundred_concurrent_requests_through_nginx,
    a_worker_killed_mid_request_is_a_clean_502_at_nginx,
    script_filename_through_a_symlink_follows_the_symlink_policy,
    cgi_fcgi_as_an_outside_client,
    abort_request_ends_the_request_and_frees_the_worker,
    stderr_is_relayed_to_the_web_server_and_logged,
    httpoxy_proxy_param_is_dropped,
    graceful_stop_closes_idle_kept_alive_connections_at_once,
    a_worker_that_stops_reading_the_body_gets_a_504_at_the_request_timeout,
    slow_requests_through_the_listener_name_their_pid_and_script,
);

// In-process: the listener driven over `tokio::io::duplex` pipes, with no
// socket bound for it and no tqserver process; the app's pool is real
// php-cgi.

/// One app's FastCGI listener served in-process: each connection is a
/// duplex pipe whose far end `listener::serve_stream` serves, as it serves
/// an accepted socket.
struct InProcess {
    _site: Site,
    app: Arc<App>,
    metrics: Arc<Metrics>,
    shared: Arc<listener::Shared>,
    stop: CancellationToken,
}

impl InProcess {
    async fn start() -> Self {
        // The address is never bound: the test hands connections over itself.
        let site = Site::new()
            .worker(
                "app",
                &format!(
                    "path: /\nphp:\n  pool:\n    manager: static\n    max_workers: 2\nfastcgi:\n  listen: 127.0.0.1:{}\n  max_connections: 77\n",
                    free_port()
                ),
            )
            .file("app", "echo.php", ECHO_PHP);
        let config = tqserver::config::load(&site.config_path()).expect("a valid config");
        let mut worker = config.apps[0].clone();
        // Worker sockets in a folder of this test's own, as tqserver makes
        // one per process.
        let sockets = site.root().join("run");
        pool::socket::prepare_socket_dir(&sockets).unwrap();
        Arc::make_mut(&mut worker).pool.command.socket = pool::SocketKind::Unix { dir: sockets };
        let router = Arc::new(ArcSwap::from_pointee(Router::default()));
        let metrics = Metrics::new(router.clone(), BuildInfo { version: "test" });
        let telemetry = Telemetry::new(metrics.clone(), None, None, None).unwrap();
        let app = App::start(worker.clone(), &telemetry)
            .await
            .expect("the app's pool starts");
        router.store(Arc::new(Router::new(vec![app.clone()])));
        let shared = listener::Shared::new(
            worker.name.clone(),
            router,
            telemetry,
            worker.fastcgi.clone().expect("a fastcgi section"),
            config.server.clone(),
        );
        Self {
            _site: site,
            app,
            metrics,
            shared,
            stop: CancellationToken::new(),
        }
    }

    fn docroot(&self) -> String {
        self.app.config.document_root.display().to_string()
    }

    /// A new connection: the web server's end of the pipe, and the task
    /// serving the listener's end (it ends when the connection does).
    fn connect(&self) -> (AsyncFcgiConn<DuplexStream>, tokio::task::JoinHandle<()>) {
        let (web_server, listener_end) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(listener::serve_stream(
            listener_end,
            self.shared.clone(),
            self.stop.clone(),
        ));
        (AsyncFcgiConn::new(web_server), served)
    }

    /// The listener's open-connection gauge, from the metrics page.
    fn open_connections(&self) -> f64 {
        let sample = "tqserver_fastcgi_connections{worker=\"app\"}";
        self.metrics
            .encode(false)
            .lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
            .expect("the FastCGI connection gauge")
    }

    async fn stop(self) {
        self.stop.cancel();
        self.app.pool.drain(Duration::from_secs(5)).await;
    }
}

/// Waits for a connection's task to end, as it must once the connection is
/// over.
async fn ended(served: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the connection ended")
        .expect("the connection task did not panic");
}

#[tokio::test]
async fn in_process_requests_over_one_kept_connection() {
    let listener = InProcess::start().await;
    let docroot = listener.docroot();
    let (mut conn, served) = listener.connect();
    for i in 0..3 {
        let response = conn
            .get(&docroot, "/echo.php", &format!("i={i}"), true)
            .await;
        assert!(is_complete(&response), "{response:?}");
        assert!(
            response.text().contains(&format!("query=i={i}")),
            "{}",
            response.text()
        );
    }
    assert_eq!(listener.open_connections(), 1.0);
    // The web server closes its end: the listener's connection ends.
    drop(conn);
    ended(served).await;
    assert_eq!(listener.open_connections(), 0.0);
    listener.stop().await;
}

#[tokio::test]
async fn in_process_a_malformed_record_closes_only_its_connection() {
    let listener = InProcess::start().await;
    let docroot = listener.docroot();
    let (mut good, _good_served) = listener.connect();
    let (mut bad, bad_served) = listener.connect();
    let response = good.get(&docroot, "/echo.php", "before=1", true).await;
    assert!(response.text().contains("query=before=1"), "{response:?}");
    assert_eq!(listener.open_connections(), 2.0);
    // A record header with version 2.
    bad.send(&[2, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
        .await;
    assert!(bad.closed().await, "the bad connection is closed");
    ended(bad_served).await;
    assert_eq!(listener.open_connections(), 1.0);
    let response = good.get(&docroot, "/echo.php", "still=alive", true).await;
    assert!(
        response.text().contains("query=still=alive"),
        "{response:?}"
    );
    listener.stop().await;
}

#[tokio::test]
async fn in_process_get_values_and_a_second_request_id() {
    let listener = InProcess::start().await;
    let docroot = listener.docroot();
    let (mut conn, _served) = listener.connect();
    let mut asked = bytes::BytesMut::new();
    for name in ["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"] {
        fastcgi::params::put_pair(&mut asked, name.as_bytes(), b"");
    }
    let mut record = bytes::BytesMut::new();
    put_record(&mut record, RecordType::GetValues, 0, &asked);
    conn.send(&record).await;
    let answer = conn.read_record().await.expect("GET_VALUES_RESULT");
    assert_eq!(answer.record_type, RecordType::GetValuesResult);
    let values = fastcgi::Params::parse(answer.content, fastcgi::ParamsLimits::default()).unwrap();
    assert_eq!(values.get_str("FCGI_MAX_CONNS"), Some("77"));
    assert_eq!(values.get_str("FCGI_MAX_REQS"), Some("77"));
    assert_eq!(values.get_str("FCGI_MPXS_CONNS"), Some("0"));
    // One request at a time: a second id is refused, the first answered.
    let filename = format!("{docroot}/echo.php");
    let mut both = begin_and_params(
        1,
        &cgi_params(&docroot, &filename, "/echo.php", "who=one"),
        true,
    );
    both.extend_from_slice(&begin_and_params(
        2,
        &cgi_params(&docroot, &filename, "/echo.php", "who=two"),
        true,
    ));
    both.extend_from_slice(&stdin(2, b""));
    both.extend_from_slice(&stdin(1, b""));
    conn.send(&both).await;
    let refusal = conn.read_record().await.expect("END_REQUEST for id 2");
    assert_eq!(refusal.request_id, 2);
    assert_eq!(refusal.record_type, RecordType::EndRequest);
    assert_eq!(refusal.content[4], ProtocolStatus::CantMpxConn.as_u8());
    let response = conn.response(1).await;
    assert!(is_complete(&response));
    assert!(response.text().contains("query=who=one"), "{response:?}");
    listener.stop().await;
}

#[tokio::test]
async fn in_process_a_stalled_peer_is_cut_off_at_read_timeout() {
    let listener = InProcess::start().await;
    let (mut conn, served) = listener.connect();
    // BEGIN_REQUEST, then half of a PARAMS record header, then nothing.
    let mut partial = bytes::BytesMut::new();
    fastcgi::record::put_begin_request(&mut partial, 1, fastcgi::Role::Responder, true);
    partial.extend_from_slice(&[1, 4, 0]);
    conn.send(&partial).await;
    // The default read_timeout (30 s) passes on paused time: nothing but
    // timers is awaited until the listener gives up.
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    assert!(conn.closed().await, "the stalled connection is closed");
    let waited = started.elapsed();
    tokio::time::resume();
    let read_timeout = Duration::from_secs(30);
    assert!(
        waited >= read_timeout && waited < read_timeout + Duration::from_secs(1),
        "{waited:?}"
    );
    ended(served).await;
    listener.stop().await;
}
