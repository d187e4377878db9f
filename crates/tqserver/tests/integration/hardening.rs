//! What a hostile or careless client could do to the HTTP front (issue 13),
//! against real php-cgi: hold a worker, lose bytes of a reply, spoof a
//! header PHP trusts, reach another app's files, or get a wrong answer.

use crate::support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{Conn, Runtime, Site, on_both_runtimes, wait_until, worker_yaml};
use nix::sys::signal::Signal;

const VARS: &str = r#"<?php
foreach (['HTTP_X_FORWARDED_FOR', 'HTTP_X_REAL_IP', 'REMOTE_USER', 'SERVER_NAME', 'HTTP_HOST', 'SERVER_PROTOCOL'] as $k) {
    echo $k, '=', $_SERVER[$k] ?? '<unset>', "\n";
}
echo 'ALL=', json_encode($_SERVER), "\n";
"#;

fn app_site(pool: usize, yaml_extra: &str) -> Site {
    app_site_on(Runtime::Cgi, pool, yaml_extra)
}

fn app_site_on(runtime: Runtime, pool: usize, yaml_extra: &str) -> Site {
    Site::on(runtime)
        .worker("app", &format!("{}{yaml_extra}", worker_yaml("/app", pool)))
        .file("app", "vars.php", VARS)
        .file("app", "file.txt", "static text")
        .file("app", "dir/inside.txt", "inside")
}

/// A PHP request is answered, and within `limit` (the one worker is free).
fn answered_within(server: &support::Server, limit: Duration, behind: &str) {
    let started = Instant::now();
    let response = server.get("/app/vars.php");
    assert_eq!(response.status, 200);
    assert!(
        started.elapsed() < limit,
        "waited {:?} {behind}",
        started.elapsed()
    );
}

fn raw(conn: &mut Conn, request: &str) -> support::Response {
    conn.send(request.as_bytes());
    conn.read_response(request.starts_with("HEAD "))
}

fn header_names_php_would_rewrite_never_reach_it(runtime: Runtime) {
    let server = app_site_on(runtime, 1, "").start();
    let response = server.request(
        "GET /app/vars.php HTTP/1.1\r\nHost: localhost\r\n\
         X.Forwarded.For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nX-Real.IP: 6.6.6.6\r\n\
         X-Forwarded-For: 1.2.3.4\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    let vars = response.vars();
    assert_eq!(vars["HTTP_X_FORWARDED_FOR"], "1.2.3.4");
    assert_eq!(vars["HTTP_X_REAL_IP"], "<unset>");
    assert!(!vars["ALL"].contains("6.6.6.6"), "{}", vars["ALL"]);
    // nginx passes REMOTE_USER, empty without Basic credentials.
    assert_eq!(vars["REMOTE_USER"], "");
    let response = server.request(
        "GET /app/vars.php HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Basic YWxpY2U6c2VjcmV0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.vars()["REMOTE_USER"], "alice");
}

#[test]
fn the_add_a_slash_redirect_stays_on_this_site() {
    let server = Site::new()
        .worker("root", &worker_yaml("/", 1))
        .file("root", "evil.example/index.html", "dir")
        .start();
    for target in ["//evil.example", "///evil.example", "/./evil.example"] {
        let response = server.get(target);
        assert_eq!(response.status, 301, "{target}");
        let location = response.header("location").unwrap();
        assert_eq!(location, "/evil.example/", "{target}");
    }
    let response = server.get("//evil.example?a=1");
    assert_eq!(response.header("location"), Some("/evil.example/?a=1"));
}

fn every_spelling_of_a_prefix_reaches_the_same_app(runtime: Runtime) {
    let server = Site::on(runtime)
        .worker("root", &worker_yaml("/", 1))
        .file("root", "blog/private.txt", "ROOT SECRET")
        .worker("blog", &worker_yaml("/blog", 1))
        .file(
            "blog",
            "index.php",
            "<?php echo 'blog:', $_SERVER['SCRIPT_NAME'];",
        )
        .start();
    for target in [
        "/blog/private.txt",
        "/%62log/private.txt",
        "/%62%6c%6f%67/private.txt",
        "//blog/private.txt",
        "/./blog/private.txt",
        "/x/../blog/private.txt",
        "/blog%2Fprivate.txt",
        "/blog//private.txt",
    ] {
        let response = server.get(target);
        assert!(!response.text().contains("ROOT SECRET"), "{target}");
        assert_eq!(response.status, 200, "{target}");
        assert_eq!(response.text(), "blog:/blog/index.php", "{target}");
    }
}

fn hosts_follow_rfc_9112(runtime: Runtime) {
    let server = app_site_on(runtime, 1, "").start();
    for host in [
        "Host: evil.com/x\r\n",
        "Host: \r\n",
        "Host: a b\r\n",
        "Host: a\r\nHost: b\r\n",
        "",
    ] {
        let response = server.request(format!(
            "GET /app/vars.php HTTP/1.1\r\n{host}Connection: close\r\n\r\n"
        ));
        assert_eq!(response.status, 400, "{host:?}");
    }
    // HTTP/1.0 may leave Host out.
    let response = server.request("GET /app/file.txt HTTP/1.0\r\n\r\n");
    assert_eq!(response.status, 200);
    // An absolute-form target's authority wins over Host.
    let response = server.request(
        "GET http://other.example:8080/app/vars.php HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    let vars = response.vars();
    assert_eq!(vars["SERVER_NAME"], "other.example");
    assert_eq!(vars["HTTP_HOST"], "other.example:8080");
    // Userinfo in it is refused.
    let response = server.request(
        "GET http://user:pw@other.example/app/vars.php HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 400);
}

fn odd_request_lines_get_the_right_status(runtime: Runtime) {
    let server = app_site_on(runtime, 1, "").start();
    let response = server
        .request("GET /app/vars.php HTTP/1.2\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.vars()["SERVER_PROTOCOL"], "HTTP/1.1");
    let long = format!("/app/file.txt?{}", "a".repeat(100 * 1024));
    let response = server.request(format!("GET {long} HTTP/1.1\r\nHost: localhost\r\n\r\n"));
    assert_eq!(response.status, 414);
    // Many headers are still 431.
    let headers: String = (0..2000)
        .map(|i| format!("X-H{i}: {}\r\n", "v".repeat(30)))
        .collect();
    let response = server.request(format!(
        "GET /app/file.txt HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n"
    ));
    assert_eq!(response.status, 431);
}

#[test]
fn chunked_bodies_bad_or_too_large_are_answered_at_once() {
    let server = app_site(1, "")
        .server_settings("  read_timeout: 30s\n  max_body_bytes: 1M\n")
        .start();
    // A bare CR inside a chunk extension.
    let response = server.request(
        "POST /app/vars.php HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
         3;a\rb\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(response.status, 400);
    // A chunk that alone passes max_body_bytes: 413 without waiting for it.
    let started = Instant::now();
    let response = server.request(
        "POST /app/vars.php HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
         200000\r\n",
    );
    assert_eq!(response.status, 413);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn continue_is_sent_only_for_a_body_that_will_be_read() {
    let server = Site::new()
        .worker(
            "app",
            &format!("{}front_controller: false\n", worker_yaml("/app", 1)),
        )
        .file("app", "vars.php", VARS)
        .start();
    let mut conn = server.connect();
    let response = raw(
        &mut conn,
        "POST /app/missing HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(response.status, 404, "no 100 Continue for a 404");

    let mut conn = server.connect();
    conn.send(
        b"POST /app/vars.php HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\
          Content-Type: text/plain\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    );
    let interim = conn.read_response(false);
    assert_eq!(interim.status, 100);
    conn.send(b"hello");
    assert_eq!(conn.read_response(false).status, 200);
}

#[test]
fn a_static_request_with_an_unsent_body_is_answered_at_once() {
    let server = app_site(1, "")
        .server_settings("  read_timeout: 20s\n")
        .start();
    let mut conn = server.connect();
    let started = Instant::now();
    // The client waits for the answer before it sends its body.
    let response = raw(
        &mut conn,
        "GET /app/file.txt HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "static text");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // It can still send the body and go on with the connection.
    conn.send(b"hello");
    let response = raw(
        &mut conn,
        "GET /app/file.txt HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(response.status, 200);
}

fn head_on_php_does_not_invent_a_length(runtime: Runtime) {
    let server = app_site_on(runtime, 1, "")
        .file(
            "app",
            "sized.php",
            "<?php header('Content-Length: 5'); echo 'hello';",
        )
        .start();
    let mut conn = server.connect();
    let response = raw(
        &mut conn,
        "HEAD /app/vars.php HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-length"),
        None,
        "{:?}",
        response.headers
    );
    let response = raw(
        &mut conn,
        "HEAD /app/sized.php HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(response.header("content-length"), Some("5"));
    // The connection is still in step.
    let response = raw(
        &mut conn,
        "GET /app/sized.php HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.text(), "hello");
}

#[test]
fn ranges_need_an_exact_validator_and_several_get_the_whole_file() {
    let server = app_site(1, "").start();
    let plain = server.get("/app/file.txt");
    let modified = plain.header("last-modified").unwrap().to_owned();
    let later = "Fri, 01 Jan 2100 00:00:00 GMT";
    let range = |if_range: &str| {
        server.request(format!(
            "GET /app/file.txt HTTP/1.1\r\nHost: localhost\r\nRange: bytes=0-5\r\n\
             If-Range: {if_range}\r\nConnection: close\r\n\r\n"
        ))
    };
    assert_eq!(range(&modified).status, 206);
    let response = range(later);
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "static text");
    let response = server.request(
        "GET /app/file.txt HTTP/1.1\r\nHost: localhost\r\nRange: bytes=0-1,4-5\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "static text");
}

#[test]
fn stalled_uploads_never_hold_a_worker() {
    let server = app_site(1, "")
        .server_settings("  read_timeout: 3s\n")
        .start();
    // More stalled uploads than workers, each with its first bytes sent.
    let mut stalled: Vec<Conn> = (0..3)
        .map(|_| {
            let mut conn = server.connect();
            conn.send(
                b"POST /app/vars.php HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n\
                  Content-Length: 100000\r\n\r\nfirst bytes",
            );
            conn
        })
        .collect();
    // tqserver has read what they sent (it could have taken the worker).
    wait_until(
        "tqserver to read the stalled uploads",
        Duration::from_secs(5),
        || support::server_caught_up(server.port()),
    );
    answered_within(&server, Duration::from_secs(2), "behind stalled uploads");
    // The stalled ones end with 408 at read_timeout, never reaching PHP.
    for conn in &mut stalled {
        assert_eq!(conn.read_response(false).status, 408);
    }
    assert!(server.log().contains("request body not received"));
}

/// A script writing `megabytes` MB in 64 KB pieces.
fn big_script(megabytes: usize) -> String {
    format!(
        "<?php while (ob_get_level()) ob_end_flush();\n\
         $chunk = str_repeat('x', 65536);\n\
         for ($i = 0; $i < {megabytes} * 16; $i++) {{ echo $chunk; flush(); }}"
    )
}

#[test]
fn a_slow_reader_does_not_hold_the_worker() {
    let site = app_site(1, "    queue_timeout: 5s\n")
        .file("app", "big.php", big_script(24))
        .with_admin();
    let server = site.start();
    let mut slow = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.write_all(b"GET /app/big.php HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 1024];
    slow.read_exact(&mut first).unwrap();
    // The slow client now reads nothing; PHP finishes anyway and the one
    // worker serves others.
    answered_within(&server, Duration::from_secs(5), "behind a slow reader");
    assert!(
        server
            .metric("tqserver_responses_buffered_total{worker=\"app\"}")
            .is_some_and(|n| n >= 1.0)
    );
    assert!(
        server
            .metric("tqserver_response_buffered_bytes_total{worker=\"app\",store=\"file\"}")
            .is_some_and(|n| n > 0.0)
    );
    // Every byte arrives, with the final chunk.
    let mut rest = Vec::new();
    slow.read_to_end(&mut rest).unwrap();
    let mut all = first.to_vec();
    all.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&all);
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(body.ends_with("\r\n0\r\n\r\n"), "no final chunk");
    let payload = body.bytes().filter(|&b| b == b'x').count();
    assert_eq!(payload, 24 * 1024 * 1024);
}

#[test]
fn a_closing_response_is_delivered_whole_to_a_client_that_keeps_sending() {
    let site = app_site(1, "");
    let big = vec![b'z'; 12 * 1024 * 1024];
    let site = site.file("app", "big.bin", &big);
    let server = site.start();
    let mut client = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    client
        .write_all(
            b"GET /app/big.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n\
              GET /app/file.txt HTTP/1.1\r\nHost: localhost\r\n",
        )
        .unwrap();
    let mut received = Vec::with_capacity(big.len() + 1024);
    let mut buf = vec![0u8; 256 * 1024];
    // More bytes once the response is going out (its first bytes are here,
    // 12 MB cannot all be in the socket buffers): unread input at close.
    let first = client.read(&mut buf).unwrap();
    assert!(first > 0, "no response");
    received.extend_from_slice(&buf[..first]);
    let _ = client.write_all(b"X-More: 1\r\n");
    loop {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => panic!("after {} bytes: {err}", received.len()),
        }
        // A slow reader: pacing that is the point of the test, not
        // synchronisation.
        std::thread::sleep(Duration::from_millis(2));
    }
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(received.len() - head_end, big.len());
}

fn a_complete_response_frees_the_connection_while_the_script_goes_on(runtime: Runtime) {
    let site = app_site_on(runtime, 2, "")
        .file(
            "app",
            "after.php",
            "<?php while (ob_get_level()) ob_end_flush();\n\
             header('Content-Length: 2'); echo 'ok'; flush(); sleep(2);",
        )
        .with_admin();
    let server = site.start();
    let mut conn = server.connect();
    let started = Instant::now();
    let response = raw(
        &mut conn,
        "GET /app/after.php HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(response.text(), "ok");
    let response = raw(
        &mut conn,
        "GET /app/file.txt HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the next request waited for the script: {:?}",
        started.elapsed()
    );
    assert_eq!(
        server.metric("tqserver_requests_total{worker=\"app\",code=\"499\"}"),
        None
    );
}

#[test]
fn while_draining_kept_alive_clients_are_told_to_go() {
    let server = app_site(1, "")
        .server_settings("  drain_delay: 3s\n")
        .start();
    let mut conn = server.connect();
    let response = raw(
        &mut conn,
        "GET /app/file.txt HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(response.header("connection"), None);
    server.signal(Signal::SIGTERM);
    assert!(server.wait_for_log("draining", Duration::from_secs(5)));
    // Still served, but the connection will not be kept.
    let response = raw(
        &mut conn,
        "GET /app/file.txt HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
}

#[test]
fn request_timeout_holds_while_output_keeps_flowing() {
    // A script that writes for 20 s to a client that keeps reading, more
    // slowly than PHP writes: request_timeout still cuts it at 2 s, with
    // buffering off (the worker streams to the client) as with it on (the
    // buffer fills and its task waits for room).
    for buffering in ["false", "true"] {
        let site = app_site(
            1,
            &format!(
                "    request_timeout: 2s\n  response_buffering: {buffering}\n  response_buffer_memory: 64K\n  max_response_buffer: 128K\n"
            ),
        )
        .file(
            "app",
            "endless.php",
            "<?php while (ob_get_level()) ob_end_flush();\n\
             $chunk = str_repeat('x', 8192);\n\
             $end = microtime(true) + 20;\n\
             while (microtime(true) < $end) { echo $chunk; flush(); }",
        );
        let server = site.start();
        let mut client = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        client
            .write_all(
                b"GET /app/endless.php HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
        let started = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        let mut received = 0usize;
        loop {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
            // Slower than PHP writes, so PHP always has more ready (pacing,
            // the point of the test; not synchronisation).
            std::thread::sleep(Duration::from_millis(5));
            assert!(
                started.elapsed() < Duration::from_secs(12),
                "buffering {buffering}: still streaming after {:?} ({received} bytes)",
                started.elapsed()
            );
        }
        assert!(received > 0, "buffering {buffering}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "buffering {buffering}: cut after {:?}",
            started.elapsed()
        );
    }
}

// What PHP sees of a request and what it may send back, the same on both
// runtimes. (The tests above that tqserver answers alone run on php-cgi.)
on_both_runtimes!(
    header_names_php_would_rewrite_never_reach_it,
    every_spelling_of_a_prefix_reaches_the_same_app,
    hosts_follow_rfc_9112,
    odd_request_lines_get_the_right_status,
    head_on_php_does_not_invent_a_length,
    a_complete_response_frees_the_connection_while_the_script_goes_on,
);
