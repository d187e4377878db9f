//! HTTP/2 on the HTTP front (issue 16), as h2c with prior knowledge on the
//! plain port (`server.http2.h2c: true`), against real php-cgi: curl and
//! h2load as clients, and the h2 crate where a test needs a client that
//! misbehaves on purpose (reads nothing, resets streams).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use nix::sys::signal::Signal;
use tokio::net::TcpStream;

use crate::support::{Server, Site, Started, worker_yaml};

const VARS: &str = r#"<?php
foreach (['SERVER_PROTOCOL', 'HTTP_HOST', 'SERVER_NAME', 'REQUEST_URI', 'HTTP_COOKIE'] as $k) {
    echo $k, '=', $_SERVER[$k] ?? '<unset>', "\n";
}
"#;

const ECHO_BODY: &str = r#"<?php
$body = file_get_contents('php://input');
echo strlen($body), ' ', md5($body);
"#;

fn h2_site(workers: usize, settings: &str) -> Site {
    Site::new()
        .server_settings(&format!("  http2:\n    h2c: true\n{settings}"))
        .worker("app", &worker_yaml("/app", workers))
        .file("app", "vars.php", VARS)
        .file("app", "echo.php", ECHO_BODY)
        .file("app", "file.txt", "static text")
}

/// curl over HTTP/2 with prior knowledge; `args` go before the URL.
fn curl(server: &Server, path: &str, args: &[&str]) -> Output {
    Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "--max-time",
            "20",
            "-D",
            "-",
        ])
        .args(args)
        .arg(format!("http://127.0.0.1:{}{path}", server.port()))
        .output()
        .expect("run curl")
}

/// (status line, headers and body) of a curl `-D -` output.
fn split(output: &Output) -> (String, String) {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if text.is_empty() {
        eprintln!("curl: {}", String::from_utf8_lossy(&output.stderr));
    }
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_owned(), body.to_owned())
}

fn status_of(head: &str) -> u16 {
    let line = head.lines().next().unwrap_or("");
    assert!(line.starts_with("HTTP/2 "), "not HTTP/2: {line:?}");
    line[7..10].parse().unwrap()
}

#[test]
fn php_sees_http2_and_the_authority_and_http1_still_works() {
    let server = h2_site(1, "").start();
    let output = curl(
        &server,
        "/app/vars.php?x=1",
        &["-H", "Cookie: a=1", "-H", "Cookie: b=2"],
    );
    let (head, body) = split(&output);
    assert_eq!(status_of(&head), 200, "{head}");
    let port = server.port();
    assert!(body.contains("SERVER_PROTOCOL=HTTP/2.0\n"), "{body}");
    assert!(
        body.contains(&format!("HTTP_HOST=127.0.0.1:{port}\n")),
        "{body}"
    );
    assert!(body.contains("SERVER_NAME=127.0.0.1\n"), "{body}");
    assert!(body.contains("REQUEST_URI=/app/vars.php?x=1\n"), "{body}");
    assert!(body.contains("HTTP_COOKIE=a=1; b=2\n"), "{body}");
    // The same port still speaks HTTP/1.1.
    let response = server.get("/app/vars.php");
    assert_eq!(response.status, 200);
    assert!(response.text().contains("SERVER_PROTOCOL=HTTP/1.1"));
}

/// RFC 9113 8.3.1: a Host that names another origin than `:authority`
/// makes the request malformed; one naming the same origin is fine.
#[test]
fn a_host_naming_another_origin_than_the_authority_is_refused() {
    let server = h2_site(1, "").start();
    let port = server.port();
    let statuses = runtime().block_on(async {
        let (mut client, _conn) = connect(port).await;
        let mut statuses = Vec::new();
        for host in ["other.example", "LOCALHOST:{port}"] {
            let request = Request::get(format!("http://localhost:{port}/app/vars.php"))
                .header("host", host.replace("{port}", &port.to_string()))
                .body(())
                .unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            statuses.push(response.await.unwrap().status().as_u16());
        }
        statuses
    });
    assert_eq!(statuses, [400, 200]);
}

#[test]
fn static_files_with_ranges_and_head() {
    let server = h2_site(1, "").start();
    let (head, body) = split(&curl(&server, "/app/file.txt", &["-r", "2-5"]));
    assert_eq!(status_of(&head), 206, "{head}");
    assert_eq!(body, "atic");
    assert!(head.contains("content-range: bytes 2-5/11"), "{head}");
    let (head, _) = split(&curl(&server, "/app/file.txt", &["-I"]));
    assert_eq!(status_of(&head), 200, "{head}");
    assert!(head.contains("content-length: 11"), "{head}");
    // No connection-specific field reaches an HTTP/2 response.
    let (head, _) = split(&curl(&server, "/app/vars.php", &[]));
    assert!(!head.to_ascii_lowercase().contains("connection:"), "{head}");
}

#[test]
fn a_post_body_reaches_php_and_a_too_large_one_gets_413() {
    let server = h2_site(1, "  max_body_bytes: 512K\n").start();
    let data: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    let file = server.site.root().join("upload.bin");
    std::fs::write(&file, &data).unwrap();
    let upload = format!("@{}", file.display());
    let (head, body) = split(&curl(&server, "/app/echo.php", &["--data-binary", &upload]));
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(body, format!("400000 {}", crate::support::md5(&data)));

    let big = vec![b'x'; 600_000];
    std::fs::write(&file, &big).unwrap();
    // nghttp rather than curl: curl 7.88 reports the stream reset that
    // follows an early response (RST_STREAM NO_ERROR, RFC 9113 8.1) as an
    // error and drops the response.
    let output = Command::new("nghttp")
        .args(["-v", "-d"])
        .arg(&file)
        .arg(format!("http://127.0.0.1:{}/app/echo.php", server.port()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains(":status: 413"), "{text}");
    // The connection's other streams are unaffected: the next request on a
    // new connection is fine, and so is the server.
    let (head, _) = split(&curl(&server, "/app/file.txt", &[]));
    assert_eq!(status_of(&head), 200);
}

#[test]
fn a_body_without_length_past_the_limit_gets_413() {
    let server = h2_site(1, "  max_body_bytes: 256K\n").start();
    let runtime = runtime();
    let status = runtime.block_on(async {
        let (mut client, _conn) = connect(server.port()).await;
        let request = Request::post(format!("http://127.0.0.1:{}/app/echo.php", server.port()))
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        // 512 KiB without Content-Length, as the window allows.
        let sender = tokio::spawn(async move {
            for _ in 0..32 {
                body.reserve_capacity(16 * 1024);
                match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                    Some(Ok(_)) => {}
                    _ => return,
                }
                if body
                    .send_data(Bytes::from(vec![b'y'; 16 * 1024]), false)
                    .is_err()
                {
                    return;
                }
            }
            let _ = body.send_data(Bytes::new(), true);
        });
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("a response in time")
            .unwrap();
        sender.abort();
        response.status()
    });
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A client that stops sending its body gets 408 after `read_timeout`, and
/// no PHP worker waits for it meanwhile.
#[test]
fn a_stalled_body_gets_408_at_read_timeout() {
    let server = h2_site(1, "  read_timeout: 1s\n").start();
    let port = server.port();
    let (status, waited) = runtime().block_on(async {
        let (mut client, _conn) = connect(port).await;
        let request = Request::post(format!("http://127.0.0.1:{port}/app/echo.php"))
            .header("content-length", "100000")
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        body.send_data(Bytes::from_static(b"first bytes"), false)
            .unwrap();
        let started = Instant::now();
        let other = tokio::task::spawn_blocking(move || {
            let mut conn = crate::support::Conn::open(port);
            conn.send(b"GET /app/vars.php HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            conn.read_response(false).status
        });
        assert_eq!(other.await.unwrap(), 200);
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("a response in time")
            .unwrap();
        drop(body);
        (response.status(), started.elapsed())
    });
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
}

#[test]
fn many_concurrent_streams_on_few_connections_all_succeed() {
    let server = h2_site(2, "").start();
    let output = Command::new("h2load")
        .args(["-n", "200", "-c", "2", "-m", "20"])
        .arg(format!("http://127.0.0.1:{}/app/vars.php", server.port()))
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("200 total, 200 started, 200 done, 200 succeeded"),
        "{text}"
    );
    assert!(
        text.contains("status codes: 200 2xx, 0 3xx, 0 4xx, 0 5xx"),
        "{text}"
    );
}

#[test]
fn tricky_paths_get_the_same_answer_as_on_http1() {
    let server = h2_site(1, "")
        .file("app", "dir/inside.txt", "inside")
        .start();
    std::fs::write(server.site.root().join("workers/app/secret.txt"), "secret").unwrap();
    for path in [
        "/app/../secret.txt",
        "/app/%2e%2e/secret.txt",
        "/app/dir/../file.txt",
        "/app//file.txt",
        "/app/dir",
        "/app/%00.txt",
        "/nowhere",
    ] {
        let h1 = server.get(path).status;
        let (head, body) = split(&curl(&server, path, &["--path-as-is"]));
        assert_eq!(status_of(&head), h1, "{path}: {head}");
        assert!(!body.contains("secret"), "{path}");
    }
}

/// A client that reads nothing after the first bytes: PHP's output goes to
/// a buffer and the one worker serves others (compare hardening.rs
/// `a_slow_reader_does_not_hold_the_worker` for HTTP/1.1).
#[test]
fn a_slow_reader_does_not_hold_the_worker() {
    // Well past what the stream's window (64 KiB) and the socket between
    // PHP and tqserver hold.
    let megabytes = 4;
    let site = h2_site(1, "")
        .worker(
            "app",
            &format!("{}    queue_timeout: 5s\n", worker_yaml("/app", 1)),
        )
        .file(
            "app",
            "big.php",
            format!(
                "<?php while (ob_get_level()) ob_end_flush();\n\
                 $chunk = str_repeat('x', 65536);\n\
                 for ($i = 0; $i < {megabytes} * 16; $i++) {{ echo $chunk; flush(); }}"
            ),
        )
        .with_admin();
    let server = site.start();
    let runtime = runtime();
    runtime.block_on(async {
        let (mut client, _conn) = connect(server.port()).await;
        let request = Request::get(format!("http://127.0.0.1:{}/app/big.php", server.port()))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        // The first bytes, and then nothing read (no window given back)
        // while another request needs the one worker.
        let first = body.data().await.unwrap().unwrap();
        assert!(!first.is_empty());
        let port = server.port();
        let started = Instant::now();
        let other = tokio::task::spawn_blocking(move || {
            let mut conn = crate::support::Conn::open(port);
            conn.send(b"GET /app/vars.php HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            conn.read_response(false).status
        });
        assert_eq!(other.await.unwrap(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered only after {:?}",
            started.elapsed()
        );
        // Every byte still arrives.
        let mut total = first.len();
        let _ = body.flow_control().release_capacity(first.len());
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            total += data.len();
            let _ = body.flow_control().release_capacity(data.len());
        }
        assert_eq!(total, megabytes * 1024 * 1024);
    });
    assert!(
        server
            .metric("tqserver_responses_buffered_total{worker=\"app\"}")
            .is_some_and(|n| n >= 1.0)
    );
}

/// A stop lets the streams in flight finish and tells the client (GOAWAY)
/// to open no more on this connection.
#[test]
fn a_stop_finishes_streams_in_flight_and_sends_goaway() {
    let started = Started::new();
    let site = h2_site(1, "").file(
        "app",
        "slow.php",
        format!("<?php {} usleep(700000); echo 'finished';", started.php()),
    );
    let server = site.start();
    let runtime = runtime();
    runtime.block_on(async {
        let (mut client, conn) = connect(server.port()).await;
        let request = Request::get(format!("http://127.0.0.1:{}/app/slow.php", server.port()))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        tokio::task::spawn_blocking(move || started.wait(1))
            .await
            .unwrap();
        server.signal(Signal::SIGTERM);
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut text = Vec::new();
        while let Some(data) = body.data().await {
            text.extend_from_slice(&data.unwrap());
        }
        assert_eq!(text, b"finished");
        // GOAWAY: the connection ends cleanly, and a new stream is refused.
        let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
        assert!(matches!(closed, Ok(Ok(Ok(())))), "{closed:?}");
        let again = Request::get(format!("http://127.0.0.1:{}/app/file.txt", server.port()))
            .body(())
            .unwrap();
        let refused = match client.send_request(again, true) {
            Ok((response, _)) => response.await.is_err(),
            Err(_) => true,
        };
        assert!(refused);
    });
}

/// CVE-2023-44487: streams opened and reset at once, thousands of them,
/// get the connection closed and leave the server serving.
#[test]
fn a_rapid_reset_flood_is_cut_off_and_the_server_keeps_serving() {
    let server = h2_site(2, "").start();
    let runtime = runtime();
    runtime.block_on(async {
        let (mut client, conn) = connect(server.port()).await;
        let mut refused = false;
        for _ in 0..5_000 {
            let request = Request::get(format!("http://127.0.0.1:{}/app/vars.php", server.port()))
                .body(())
                .unwrap();
            match client.clone().ready().await {
                Ok(ready) => client = ready,
                Err(_) => {
                    refused = true;
                    break;
                }
            }
            match client.send_request(request, true) {
                Ok((response, mut stream)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    drop(response);
                }
                Err(_) => {
                    refused = true;
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        let closed = tokio::time::timeout(Duration::from_secs(10), conn).await;
        assert!(refused || closed.is_ok(), "the flood was never cut off");
    });
    // h2 itself cut this one off (resets of streams not yet accepted).
    assert!(
        server
            .log()
            .contains("pending-accept streams reached limit")
    );
    // The server is alive and serves both protocols.
    assert_eq!(server.get("/app/vars.php").status, 200);
    let (head, _) = split(&curl(&server, "/app/vars.php", &[]));
    assert_eq!(status_of(&head), 200);
}

/// The other form of rapid reset: each stream reset once tqserver has
/// started answering it. Beyond the allowance the connection gets GOAWAY
/// with ENHANCE_YOUR_CALM.
#[test]
fn streams_reset_after_they_started_get_the_connection_closed() {
    let server = h2_site(1, "")
        .file("app", "big.bin", vec![b'z'; 1024 * 1024])
        .start();
    let port = server.port();
    let reason = runtime().block_on(async {
        let (mut client, conn) = connect(port).await;
        for _ in 0..1_000 {
            let request = Request::get(format!("http://127.0.0.1:{port}/app/big.bin"))
                .body(())
                .unwrap();
            let Ok(ready) = client.clone().ready().await else {
                break;
            };
            client = ready;
            let Ok((response, _)) = client.send_request(request, true) else {
                break;
            };
            // The response has begun; dropping it resets the stream.
            let Ok(response) = response.await else {
                break;
            };
            assert_eq!(response.status(), StatusCode::OK);
            drop(response);
        }
        let closed = tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .expect("the connection closed")
            .unwrap();
        closed.err().and_then(|err| err.reason())
    });
    assert_eq!(reason, Some(h2::Reason::ENHANCE_YOUR_CALM));
    assert!(server.log().contains("resets streams too fast"));
    let (head, _) = split(&curl(&server, "/app/file.txt", &[]));
    assert_eq!(status_of(&head), 200);
}

/// A client that grants no more window (reads nothing) has its stream
/// reset after `write_timeout`; the connection's other streams go on.
#[test]
fn a_stream_without_window_is_reset_at_write_timeout() {
    let server = h2_site(1, "  write_timeout: 1s\n")
        .file("app", "big.bin", vec![b'z'; 1024 * 1024])
        .start();
    let port = server.port();
    runtime().block_on(async {
        let (mut client, _conn) = connect(port).await;
        let request = Request::get(format!("http://127.0.0.1:{port}/app/big.bin"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let mut body = response.await.unwrap().into_body();
        let started = Instant::now();
        // Data as far as the first window goes, none of it given back.
        let mut received = 0;
        let error = loop {
            match tokio::time::timeout(Duration::from_secs(10), body.data()).await {
                Ok(Some(Ok(data))) => received += data.len(),
                Ok(Some(Err(err))) => break err,
                Ok(None) => panic!("the whole body arrived without window"),
                Err(_) => panic!("no reset within 10 s"),
            }
        };
        assert_eq!(error.reason(), Some(h2::Reason::CANCEL), "{error}");
        assert!(received < 1024 * 1024);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(900));
        // The connection still serves.
        let request = Request::get(format!("http://127.0.0.1:{port}/app/file.txt"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        assert_eq!(response.await.unwrap().status(), StatusCode::OK);
    });
}

#[test]
fn h2c_is_off_unless_configured() {
    let server = Site::new()
        .worker("app", &worker_yaml("/app", 1))
        .file("app", "file.txt", "static text")
        .start();
    let output = curl(&server, "/app/file.txt", &[]);
    assert!(!output.status.success(), "h2c answered while off");
    assert_eq!(server.get("/app/file.txt").status, 200);
}

#[test]
fn an_idle_connection_gets_goaway() {
    let server = h2_site(1, "  idle_timeout: 1s\n").start();
    let runtime = runtime();
    runtime.block_on(async {
        let (_client, conn) = connect(server.port()).await;
        let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
        assert!(matches!(closed, Ok(Ok(Ok(())))), "{closed:?}");
    });
}

#[test]
fn too_many_header_bytes_get_431() {
    let server = h2_site(1, "  max_header_bytes: 16K\n").start();
    let big = format!("X-Big: {}", "b".repeat(20_000));
    let (head, _) = split(&curl(&server, "/app/vars.php", &["-H", &big]));
    assert_eq!(status_of(&head), 431, "{head}");
    let (head, _) = split(&curl(&server, "/app/vars.php", &[]));
    assert_eq!(status_of(&head), 200);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An h2 client connection; the connection future runs on its own task.
async fn connect(
    port: u16,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    (client, tokio::spawn(conn))
}

#[test]
fn bad_http2_settings_are_config_errors_naming_the_key() {
    let site = Site::new()
        .server_settings("  http2:\n    max_concurrent_streams: 0\n    h2c: maybe\n")
        .worker("app", &worker_yaml("/app", 1));
    let (ok, stderr) = site.check();
    assert!(!ok);
    assert!(stderr.contains("server.http2.h2c"), "{stderr}");
    let site = Site::new()
        .server_settings("  http2:\n    max_concurrent_streams: 0\n")
        .worker("app", &worker_yaml("/app", 1));
    let (ok, stderr) = site.check();
    assert!(!ok);
    assert!(
        stderr.contains(
            "server.http2.max_concurrent_streams: 0 is out of range; expected 1 to 10000"
        ),
        "{stderr}"
    );
    let site = Site::new()
        .server_settings("  http2:\n    max_streams: 10\n")
        .worker("app", &worker_yaml("/app", 1));
    let (ok, stderr) = site.check();
    assert!(!ok);
    assert!(
        stderr.contains("server.yaml:6: server.http2.max_streams: unknown key"),
        "{stderr}"
    );
}
