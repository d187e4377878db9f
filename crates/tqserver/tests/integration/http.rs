//! The HTTP front against real php-cgi: requests and responses as a browser
//! or curl sees them, routing, static files, and the CGI environment PHP gets.

use crate::support;

use std::time::Duration;

use crate::support::{Site, md5, multipart, wait_until, worker_yaml};
use nix::sys::signal::Signal;

const ENV_PHP: &str = r#"<?php
foreach (['REQUEST_METHOD','REQUEST_URI','SCRIPT_NAME','SCRIPT_FILENAME','PATH_INFO','PATH_TRANSLATED',
          'QUERY_STRING','DOCUMENT_ROOT','DOCUMENT_URI','CONTENT_TYPE','CONTENT_LENGTH','SERVER_PROTOCOL',
          'SERVER_NAME','SERVER_PORT','SERVER_ADDR','REMOTE_ADDR','REMOTE_PORT','GATEWAY_INTERFACE',
          'SERVER_SOFTWARE','REDIRECT_STATUS','HTTP_HOST','HTTP_X_CUSTOM','HTTP_PROXY','PHP_SELF'] as $k) {
    echo $k, '=', $_SERVER[$k] ?? '(unset)', "\n";
}
echo 'GET=', json_encode($_GET), "\n";
echo 'POST=', json_encode($_POST), "\n";
echo 'ENV_HTTP_PROXY=', getenv('HTTP_PROXY') === false ? '(unset)' : getenv('HTTP_PROXY'), "\n";
echo 'USER=', function_exists('posix_geteuid') ? posix_getpwuid(posix_geteuid())['name'] : '?', "\n";
"#;

fn blog_site() -> Site {
    Site::new()
        .worker("blog", &worker_yaml("/blog", 2))
        .file("blog", "env.php", ENV_PHP)
        .file("blog", "index.php", ENV_PHP)
        .file("blog", "hello.php", "<?php echo 'Hello, World!';")
        .file(
            "blog",
            "cookies.php",
            "<?php setcookie('a', '1'); setcookie('b', '2'); header('X-Multi: one'); header('X-Multi: two', false); echo 'ok';",
        )
        .file(
            "blog",
            "redirect.php",
            "<?php header('Location: /blog/hello.php'); exit;",
        )
        .file(
            "blog",
            "status.php",
            "<?php http_response_code(418); echo 'teapot';",
        )
        .file(
            "blog",
            "upload.php",
            "<?php $f = $_FILES['file'] ?? null; echo 'error=', $f['error'] ?? 'none', \"\\nsize=\", $f['size'] ?? 0, \"\\nmd5=\", $f ? md5_file($f['tmp_name']) : '', \"\\nfield=\", $_POST['note'] ?? '', \"\\n\";",
        )
        .file(
            "blog",
            "input.php",
            "<?php $in = file_get_contents('php://input'); echo 'len=', strlen($in), \"\\nmd5=\", md5($in), \"\\n\";",
        )
        // Debian's php-cgi alone prints ~70 KB; with the module tables twice
        // the page is over 100 KB, as on a server with more extensions.
        .file("blog", "info.php", "<?php phpinfo(); phpinfo(INFO_MODULES);")
        .file("blog", "assets/data.txt", "0123456789abcdefghijklmnopqrstuvwxyz")
}

#[test]
fn get_with_query_string() {
    let server = blog_site().start();
    let response = server.get("/blog/env.php?a=1&b=two%20words");
    assert_eq!(response.status, 200);
    let vars = response.vars();
    assert_eq!(vars["REQUEST_METHOD"], "GET");
    assert_eq!(vars["REQUEST_URI"], "/blog/env.php?a=1&b=two%20words");
    assert_eq!(vars["QUERY_STRING"], "a=1&b=two%20words");
    assert_eq!(vars["GET"], r#"{"a":"1","b":"two words"}"#);
    assert_eq!(vars["SCRIPT_NAME"], "/blog/env.php");
    assert!(vars["SCRIPT_FILENAME"].ends_with("/workers/blog/public/env.php"));
    assert_eq!(vars["PATH_INFO"], "(unset)");
    assert_eq!(vars["GATEWAY_INTERFACE"], "CGI/1.1");
    assert!(vars["SERVER_SOFTWARE"].starts_with("tqserver/"));
    assert_eq!(vars["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(vars["SERVER_NAME"], "localhost");
    assert_eq!(vars["SERVER_PORT"], server.port().to_string());
    assert_eq!(vars["REMOTE_ADDR"], "127.0.0.1");
    assert!(vars["REMOTE_PORT"].parse::<u16>().is_ok());
    assert_eq!(vars["REDIRECT_STATUS"], "200");
    assert_eq!(
        response.header("content-type"),
        Some("text/html; charset=UTF-8")
    );
}

#[test]
fn post_urlencoded() {
    let server = blog_site().start();
    let body = "name=Ada+Lovelace&lang=php";
    let response = server.request(format!(
        "POST /blog/env.php HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(response.status, 200);
    let vars = response.vars();
    assert_eq!(vars["POST"], r#"{"name":"Ada Lovelace","lang":"php"}"#);
    assert_eq!(vars["CONTENT_TYPE"], "application/x-www-form-urlencoded");
    assert_eq!(vars["CONTENT_LENGTH"], body.len().to_string());
}

#[test]
fn five_megabyte_multipart_upload() {
    let server = blog_site().start();
    let data: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let digest = md5(&data);
    let body = multipart("XyZ123boundary", "file", "big.bin", &data);
    let mut request = format!(
        "POST /blog/upload.php HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=XyZ123boundary\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let response = server.request(&request);
    assert_eq!(response.status, 200, "{}", response.text());
    let vars = response.vars();
    assert_eq!(vars["error"], "0");
    assert_eq!(vars["size"], data.len().to_string());
    assert_eq!(vars["md5"], digest);
}

#[test]
fn chunked_request_body_reaches_php_with_its_length() {
    let server = blog_site().start();
    let mut conn = server.connect();
    conn.send(b"POST /blog/input.php HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let response = conn.read_response(false);
    assert_eq!(response.status, 200);
    let vars = response.vars();
    assert_eq!(vars["len"], "11");
    assert_eq!(vars["md5"], md5(b"hello world"));
}

#[test]
fn large_chunked_request_body_reaches_php_whole_and_oversized_is_413() {
    let server = blog_site()
        .server_settings("  max_body_bytes: 1M\n")
        .start();
    // 700 KB in uneven chunks: past the in-memory limit, so spooled.
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let mut request =
        b"POST /blog/input.php HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in data.chunks(12_345) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let mut conn = server.connect();
    conn.send(&request);
    let response = conn.read_response(false);
    assert_eq!(response.status, 200, "{}", response.text());
    let vars = response.vars();
    assert_eq!(vars["len"], data.len().to_string());
    assert_eq!(vars["md5"], md5(&data));
    // Over max_body_size: refused, and PHP never runs.
    let mut big = b"POST /blog/input.php HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..20 {
        big.extend_from_slice(b"10000\r\n");
        big.extend_from_slice(&[b'y'; 0x10000]);
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b"0\r\n\r\n");
    let mut conn = server.connect();
    conn.send(&big);
    assert_eq!(conn.read_response(false).status, 413);
}

#[test]
fn several_set_cookie_headers_are_kept() {
    let server = blog_site().start();
    let response = server.get("/blog/cookies.php");
    assert_eq!(response.status, 200);
    let cookies = response.headers_named("set-cookie");
    assert_eq!(cookies, vec!["a=1", "b=2"]);
    assert_eq!(response.headers_named("x-multi"), vec!["one", "two"]);
}

#[test]
fn redirects_and_status_codes() {
    let server = blog_site().start();
    let response = server.get("/blog/redirect.php");
    assert_eq!(response.status, 302);
    assert_eq!(response.header("location"), Some("/blog/hello.php"));
    let response = server.get("/blog/status.php");
    assert_eq!(response.status, 418);
    assert_eq!(response.text(), "teapot");
    // A directory without its slash.
    let response = server.get("/blog/assets?x=1");
    assert_eq!(response.status, 301);
    assert_eq!(response.header("location"), Some("/blog/assets/?x=1"));
    let response = server.get("/blog");
    assert_eq!(response.status, 301);
    assert_eq!(response.header("location"), Some("/blog/"));
}

#[test]
fn not_found() {
    let server = blog_site().start();
    assert_eq!(server.get("/blog/missing.php").status, 404);
    assert_eq!(server.get("/blog/sub/missing.php").status, 404);
    // Like try_files, any other missing path goes to the front controller.
    let fallback = server.get("/blog/assets/missing.css");
    assert_eq!(fallback.status, 200);
    assert_eq!(fallback.vars()["SCRIPT_NAME"], "/blog/index.php");
    assert_eq!(server.get("/elsewhere").status, 404);
    // A directory without an index is not listed.
    assert_eq!(server.get("/blog/assets/").status, 403);
}

#[test]
fn phpinfo_over_100_kb_streams_whole() {
    let server = blog_site().start();
    let response = server.get("/blog/info.php");
    assert_eq!(response.status, 200);
    assert!(response.body.len() > 100 * 1024, "{}", response.body.len());
    assert!(response.text().contains("PHP Version"));
    assert!(response.text().trim_end().ends_with("</html>"));
}

#[test]
fn static_file_range_conditional_and_head() {
    let server = blog_site().start();
    let full = server.get("/blog/assets/data.txt");
    assert_eq!(full.status, 200);
    assert_eq!(full.text(), "0123456789abcdefghijklmnopqrstuvwxyz");
    assert_eq!(
        full.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    let etag = full.header("etag").unwrap().to_owned();
    let last_modified = full.header("last-modified").unwrap().to_owned();

    let range = server.request(
        "GET /blog/assets/data.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=10-15\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(range.status, 206);
    assert_eq!(range.text(), "abcdef");
    assert_eq!(range.header("content-range"), Some("bytes 10-15/36"));

    let suffix = server.request(
        "GET /blog/assets/data.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=-3\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(suffix.text(), "xyz");

    let unsatisfiable = server.request(
        "GET /blog/assets/data.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=100-\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(unsatisfiable.status, 416);

    let cached = server.request(format!(
        "GET /blog/assets/data.txt HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());

    let since = server.request(format!(
        "GET /blog/assets/data.txt HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: {last_modified}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(since.status, 304);

    let mut conn = server.connect();
    conn.send(b"HEAD /blog/assets/data.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let head = conn.read_response(true);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("36"));

    let post = server.request(
        "POST /blog/assets/data.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(post.status, 405);
}

#[test]
fn pretty_urls_go_through_the_front_controller() {
    let server = blog_site().start();
    let response = server.get("/blog/2024/hello-world/?utm=x");
    assert_eq!(response.status, 200);
    let vars = response.vars();
    assert_eq!(vars["REQUEST_URI"], "/blog/2024/hello-world/?utm=x");
    assert_eq!(vars["SCRIPT_NAME"], "/blog/index.php");
    assert_eq!(vars["PATH_INFO"], "(unset)");
    assert_eq!(vars["QUERY_STRING"], "utm=x");
    assert_eq!(vars["PHP_SELF"], "/blog/index.php");

    let response = server.get("/blog/env.php/extra/path?q=1");
    assert_eq!(response.status, 200);
    let vars = response.vars();
    assert_eq!(vars["SCRIPT_NAME"], "/blog/env.php");
    assert_eq!(vars["PATH_INFO"], "/extra/path");
    assert!(vars["PATH_TRANSLATED"].ends_with("/workers/blog/public/extra/path"));
    assert_eq!(vars["PHP_SELF"], "/blog/env.php/extra/path");
    assert_eq!(vars["REQUEST_URI"], "/blog/env.php/extra/path?q=1");

    // The directory index.
    let response = server.get("/blog/");
    assert_eq!(response.vars()["SCRIPT_NAME"], "/blog/index.php");
}

#[test]
fn two_workers_route_by_longest_prefix_on_segment_boundaries() {
    let server = Site::new()
        .worker("blog", &worker_yaml("/blog", 1))
        .file("blog", "who.php", "<?php echo 'blog';")
        .file("blog", "index.php", "<?php echo 'blog-front';")
        .worker("site", &worker_yaml("/", 1))
        .file("site", "who.php", "<?php echo 'site';")
        .file(
            "site",
            "index.php",
            "<?php echo 'site-front ', $_SERVER['REQUEST_URI'];",
        )
        .start();
    assert_eq!(server.get("/blog/who.php").text(), "blog");
    assert_eq!(server.get("/who.php").text(), "site");
    assert_eq!(server.get("/blog/anything").text(), "blog-front");
    assert_eq!(server.get("/blogx").text(), "site-front /blogx");
    assert_eq!(server.get("/blogx/who.php").status, 404);
    assert_eq!(server.get("/other/page").text(), "site-front /other/page");
}

#[test]
fn an_upload_refused_as_too_large_still_gets_its_413() {
    // curl without `Expect: 100-continue` sends the whole body; the 413 must
    // reach it rather than a connection reset halfway through the upload.
    let server = blog_site()
        .server_settings("  max_body_bytes: 1K\n")
        .start();
    let body = vec![b'z'; 2 << 20];
    let mut conn = server.connect();
    conn.send(
        format!(
            "POST /blog/input.php HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let mut upload = conn.stream().try_clone().unwrap();
    let uploader = std::thread::spawn(move || {
        use std::io::Write;
        for piece in body.chunks(16 * 1024) {
            upload.write_all(piece)?;
            // An upload still arriving when the 413 goes out: pacing that
            // is the point of the test, not synchronisation.
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok::<(), std::io::Error>(())
    });
    let response = conn.read_response(false);
    assert_eq!(response.status, 413);
    let sent = uploader.join().unwrap();
    assert!(sent.is_ok(), "upload cut off: {sent:?}");
}

#[test]
fn keep_alive_carries_many_requests() {
    let server = blog_site().start();
    let mut conn = server.connect();
    for i in 0..50 {
        conn.send(
            format!("GET /blog/env.php?i={i} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
        );
        let response = conn.read_response(false);
        assert_eq!(response.status, 200);
        assert_eq!(response.vars()["QUERY_STRING"], format!("i={i}"));
    }
}

#[test]
fn custom_headers_pass_and_proxy_does_not() {
    let server = blog_site().start();
    let response = server.request(
        "GET /blog/env.php HTTP/1.1\r\nHost: example.org:8080\r\nX-Custom: a\r\nX-Custom: b\r\nProxy: http://evil.example:3128\r\nConnection: close\r\n\r\n",
    );
    let vars = response.vars();
    assert_eq!(vars["HTTP_X_CUSTOM"], "a, b");
    assert_eq!(vars["HTTP_HOST"], "example.org:8080");
    assert_eq!(vars["SERVER_NAME"], "example.org");
    assert_eq!(vars["HTTP_PROXY"], "(unset)");
    assert_eq!(vars["ENV_HTTP_PROXY"], "(unset)");
}

#[test]
fn workers_run_as_www_data_when_started_as_root() {
    if !support::is_root() {
        return;
    }
    let server = blog_site().start();
    assert_eq!(server.get("/blog/env.php").vars()["USER"], "www-data");
}

#[test]
fn oversized_body_is_refused_with_413() {
    let server = Site::new()
        .server_settings("  max_body_bytes: 1K\n")
        .worker("blog", &worker_yaml("/blog", 1))
        .file(
            "blog",
            "input.php",
            "<?php echo strlen(file_get_contents('php://input'));",
        );
    let server = server.start();
    let body = "x".repeat(2000);
    let response = server.request(format!(
        "POST /blog/input.php HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(response.status, 413);
    let small = server.request(
        "POST /blog/input.php HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert_eq!(small.text(), "3");
}

#[test]
fn worker_stderr_reaches_the_log_with_worker_and_pid() {
    let server = blog_site()
        .file(
            "blog",
            "warn.php",
            "<?php error_log('something odd happened'); echo 'done';",
        )
        .start();
    assert_eq!(server.get("/blog/warn.php").text(), "done");
    assert!(
        server.wait_for_log("something odd happened", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("something odd happened"))
        .unwrap()
        .to_owned();
    assert!(line.contains("worker=blog"), "{line}");
    assert!(line.contains("pid="), "{line}");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = blog_site().start();
    let mut conn = server.connect();
    conn.send(
        b"GET /blog/env.php?n=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /blog/assets/data.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /blog/env.php?n=3 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(conn.read_response(false).vars()["QUERY_STRING"], "n=1");
    assert_eq!(
        conn.read_response(false).text(),
        "0123456789abcdefghijklmnopqrstuvwxyz"
    );
    assert_eq!(conn.read_response(false).vars()["QUERY_STRING"], "n=3");
}

/// One client that pipelines requests without pause must not hold the
/// server's thread: another client's request is answered meanwhile.
#[test]
fn a_flooding_connection_does_not_starve_the_others() {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let server = blog_site().server_settings("  threads: 1\n").start();
    let flood = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let writer = {
        let (mut flood, stop) = (flood.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            let batch = b"GET /blog/assets/data.txt HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4096);
            let started = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(20) {
                if flood.write_all(&batch).is_err() {
                    break;
                }
            }
        })
    };
    let reader = {
        let (mut flood, answered) = (flood, answered.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(read) = flood.read(&mut buf) {
                if read == 0 {
                    break;
                }
                let responses = buf[..read].windows(8).filter(|w| w == b"HTTP/1.1").count();
                answered.fetch_add(responses as u64, Ordering::Relaxed);
            }
        })
    };
    // The flood is being served...
    wait_until("the flood to be served", Duration::from_secs(10), || {
        answered.load(Ordering::Relaxed) >= 1000
    });
    // ...and a second client still gets its answer at once: while it waits,
    // the flood gets a few turns' worth of responses, not thousands (without
    // turns: thousands, over 60 ms). Both must be seen to call it starved: a
    // busy machine can delay the answer, or the flood's reader can count
    // late responses that were already buffered, but not both by chance.
    let before = answered.load(Ordering::Relaxed);
    let started = std::time::Instant::now();
    let response = server.get("/blog/assets/data.txt");
    let waited = started.elapsed();
    let served_meanwhile = answered.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(response.text(), "0123456789abcdefghijklmnopqrstuvwxyz");
    assert!(
        served_meanwhile < 1000 || waited < Duration::from_millis(20),
        "the second client waited {waited:?} while the flood got {served_meanwhile} responses"
    );
    drop(server);
    writer.join().unwrap();
    reader.join().unwrap();
}

/// A small body that arrives with its head goes to PHP whole, and the
/// request pipelined behind it is not taken for part of it.
#[test]
fn a_body_that_arrived_with_its_head_and_a_pipelined_request_after_it() {
    let server = blog_site().start();
    let mut conn = server.connect();
    conn.send(
        b"POST /blog/input.php HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /blog/env.php?n=2 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let posted = conn.read_response(false);
    assert_eq!(posted.vars()["len"], "5");
    assert_eq!(posted.vars()["md5"], md5(b"hello"));
    assert_eq!(conn.read_response(false).vars()["QUERY_STRING"], "n=2");
}

#[test]
fn http_1_0_keep_alive_and_close() {
    let server = blog_site().start();
    let mut conn = server.connect();
    conn.send(b"GET /blog/hello.php HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let first = conn.read_response(false);
    assert!(first.status == 200 && first.header("connection") == Some("keep-alive"));
    conn.send(b"GET /blog/hello.php HTTP/1.0\r\n\r\n");
    let second = conn.read_response(false);
    assert_eq!(second.text(), "Hello, World!");
    assert_eq!(second.header("connection"), Some("close"));
}

#[test]
fn expect_100_continue_gets_its_interim_response() {
    let server = blog_site().start();
    let mut conn = server.connect();
    conn.send(b"POST /blog/input.php HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let interim = conn.read_response(true);
    assert_eq!(interim.status, 100);
    conn.send(b"hello");
    let response = conn.read_response(false);
    assert_eq!(response.vars()["len"], "5");
}

#[test]
fn streamed_php_output_is_chunked_and_arrives_as_it_is_flushed() {
    let server = blog_site()
        .file(
            "blog",
            "stream.php",
            "<?php while (ob_get_level()) { ob_end_flush(); } for ($i = 0; $i < 5; $i++) { echo \"part $i\\n\"; flush(); usleep(100000); }",
        )
        .start();
    let mut conn = server.connect();
    let started = std::time::Instant::now();
    conn.send(b"GET /blog/stream.php HTTP/1.1\r\nHost: x\r\n\r\n");
    let response = conn.read_response(false);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.text(), "part 0\npart 1\npart 2\npart 3\npart 4\n");
    assert!(started.elapsed() >= Duration::from_millis(400));
    // The connection carries on.
    conn.send(b"GET /blog/hello.php HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(conn.read_response(false).text(), "Hello, World!");
}

/// tqserver's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_large_response_to_a_slow_reader_is_streamed_not_buffered() {
    let server = blog_site()
        .file(
            "blog",
            "big.php",
            "<?php $line = str_repeat('0123456789abcdef', 64); for ($i = 0; $i < 48 * 1024; $i++) { echo $line; }",
        )
        .with_admin()
        .start();
    assert_eq!(server.get("/blog/hello.php").text(), "Hello, World!");
    let before = rss_kib(server.pid());
    let mut conn = server.connect();
    conn.send(b"GET /blog/big.php HTTP/1.1\r\nHost: x\r\n\r\n");
    // The client does not read yet: PHP's output goes to the response
    // buffer (memory up to response_buffer_memory, then a file), not 48 MiB
    // into tqserver's memory. Measured once PHP is done and its worker free.
    wait_until(
        "PHP to finish into the response buffer",
        Duration::from_secs(20),
        || {
            server
                .metric("tqserver_responses_buffered_total{worker=\"blog\"}")
                .is_some_and(|n| n >= 1.0)
                && server.busy_workers("blog") == 0.0
        },
    );
    let grown = rss_kib(server.pid()).saturating_sub(before);
    assert!(grown < 16 * 1024, "tqserver grew by {grown} KiB");
    let response = conn.read_response(false);
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 48 << 20);
    assert!(
        response
            .body
            .chunks(16)
            .all(|chunk| chunk == b"0123456789abcdef")
    );
    conn.send(b"GET /blog/hello.php HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(conn.read_response(false).text(), "Hello, World!");
}

#[test]
fn a_slow_request_head_times_out_and_an_idle_connection_closes() {
    let server = Site::new()
        .server_settings("  read_timeout: 1s\n  idle_timeout: 2s\n")
        .worker("blog", &worker_yaml("/blog", 1))
        .file("blog", "hello.php", "<?php echo 'hi';")
        .start();
    use std::io::Read;
    // Slowloris: a head that never ends gets 408 after read_timeout.
    let mut slow = server.connect();
    slow.send(b"GET /blog/hello.php HTTP/1.1\r\nHost: x\r\n");
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = slow.stream().read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // A kept-alive connection may idle longer than read_timeout, up to
    // idle_timeout.
    let mut idle = server.connect();
    idle.send(b"GET /blog/hello.php HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(idle.read_response(false).text(), "hi");
    // Idle past read_timeout, within idle_timeout: the time is the point of
    // the test, not synchronisation.
    std::thread::sleep(Duration::from_millis(1500));
    idle.send(b"GET /blog/hello.php HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(idle.read_response(false).text(), "hi");
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = idle.stream().read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn each_pool_gets_a_private_opcache_file_cache_removed_at_stop() {
    let site = blog_site().server_yaml("php:\n  cache_dir: cache\n").file(
        "blog",
        "opcache.php",
        "<?php echo ini_get('opcache.file_cache');",
    );
    let cache_base = site.root().join("cache");
    let mut server = site.start();
    let dir = server.get("/blog/opcache.php").text();
    let dir = std::path::PathBuf::from(dir);
    assert!(dir.starts_with(&cache_base), "{}", dir.display());
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    if support::is_root() {
        // Owned by the workers' user, who write it.
        assert_ne!(meta.uid(), 0);
    }
    // Compiled scripts land there (once they are older than OPcache's
    // file_update_protection, 2 s).
    wait_until("a file cache written", Duration::from_secs(8), || {
        server.get("/blog/env.php");
        !walk(&dir).is_empty()
    });
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
    assert!(!dir.exists(), "the file cache outlived the server");
}

#[test]
fn settings_that_choose_for_opcache_turn_the_file_cache_off() {
    let server = Site::new()
        .worker(
            "blog",
            "path: /blog\nphp:\n  settings:\n    opcache.enable: 0\n  pool:\n    manager: static\n    max_workers: 1\n",
        )
        .file("blog", "opcache.php", "<?php echo '[', ini_get('opcache.file_cache'), ']';")
        .start();
    assert_eq!(server.get("/blog/opcache.php").text(), "[]");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn workers_on_tcp_ports_from_a_range() {
    let base = support::free_ports(21);
    let server = Site::new()
        .worker(
            "blog",
            &format!(
                "path: /blog\nphp:\n  socket: tcp\n  port_range: {base}-{}\n  pool:\n    manager: static\n    max_workers: 2\n",
                base + 20
            ),
        )
        .file("blog", "hello.php", "<?php echo 'over tcp';")
        .start();
    assert_eq!(server.get("/blog/hello.php").text(), "over tcp");
    // The workers listen on ports of the range.
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let in_range = listening
        .lines()
        .skip(1)
        .filter(|line| line.split_whitespace().nth(3) == Some("0A"))
        .filter_map(|line| {
            let local = line.split_whitespace().nth(1)?;
            u16::from_str_radix(local.split(':').nth(1)?, 16).ok()
        })
        .filter(|port| (base..=base + 20).contains(port))
        .count();
    // At least the two workers: another test running at the same time may
    // have taken a free port inside the range too.
    assert!(in_range >= 2, "{in_range} listening ports in the range");
}

#[test]
fn each_app_runs_its_own_php_binary() {
    // Two "PHP versions" side by side: wrappers around php-cgi that say
    // which one they are through a setting PHP prints back.
    let site = Site::new();
    for (name, tag) in [("legacy", "111M"), ("modern", "222M")] {
        let wrapper = site.root().join(format!("php-{name}"));
        std::fs::write(
            &wrapper,
            format!("#!/bin/sh\nexec php-cgi -d memory_limit={tag} \"$@\"\n"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let root = site.root().to_owned();
    let server = site
        .worker(
            "legacy",
            &format!(
                "path: /legacy\nphp:\n  binary: {}\n  pool:\n    manager: static\n    max_workers: 1\n",
                root.join("php-legacy").display()
            ),
        )
        .file("legacy", "v.php", "<?php echo ini_get('memory_limit');")
        .worker(
            "modern",
            &format!(
                "path: /modern\nphp:\n  binary: {}\n  pool:\n    manager: static\n    max_workers: 1\n",
                root.join("php-modern").display()
            ),
        )
        .file("modern", "v.php", "<?php echo ini_get('memory_limit');")
        .start();
    assert_eq!(server.get("/legacy/v.php").text(), "111M");
    assert_eq!(server.get("/modern/v.php").text(), "222M");
}
