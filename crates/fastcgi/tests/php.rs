//! `ClientConnection` against real PHP, started by each test: php-cgi (Debian
//! package php-cgi) handed a listening unix socket as its stdin, the way a
//! process pool runs it, and php-fpm (Debian package php-fpm) with a pool on
//! a unix socket. Over one kept-alive connection: GET, a 256 KiB POST body
//! echoed back byte for byte, more than 1 MiB of output streamed in many
//! STDOUT events, error_log() arriving as FastCGI STDERR, a missing script;
//! plus GET_VALUES, and 600 requests on one connection to show that
//! PHP_FCGI_MAX_REQUESTS=0 lifts php-cgi's default limit of 500.

mod support;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fastcgi::ParamsWriter;
use fastcgi::client::{ClientConnection, REQUEST_ID, ResponseEvent};
use fastcgi::record::put_begin_request;
use fastcgi::{EndRequest, ProtocolStatus, Role};
use tokio::net::UnixStream;

use support::{
    ChildGuard, bounded, connect_when_ready, require_program, running_as_root,
    world_readable_tempdir, write_file,
};

/// Lines of big.php's output, 64 bytes each: 1 280 000 bytes in all.
const BIG_LINES: usize = 20_000;

const HELLO_PHP: &str = r#"<?php
header('X-Test: yes');
echo 'hello ', $_GET['name'] ?? 'nobody', ' ', $_SERVER['REQUEST_METHOD'], ' pid=', getmypid();
"#;

const ECHO_PHP: &str = r#"<?php
$body = file_get_contents('php://input');
header('Content-Type: application/octet-stream');
header('X-Body-Length: ' . strlen($body));
header('X-Content-Length: ' . ($_SERVER['CONTENT_LENGTH'] ?? 'none'));
echo $body;
"#;

const BIG_PHP: &str = r#"<?php
for ($i = 0; $i < 20000; $i++) {
    echo str_pad((string) $i, 63, '.'), "\n";
}
"#;

const STDERR_PHP: &str = r#"<?php
error_log('tq-stderr-marker');
echo 'after stderr';
"#;

const PID_PHP: &str = "<?php echo getmypid();";

fn write_scripts(dir: &Path) {
    write_file(dir, "hello.php", HELLO_PHP);
    write_file(dir, "echo.php", ECHO_PHP);
    write_file(dir, "big.php", BIG_PHP);
    write_file(dir, "stderr.php", STDERR_PHP);
    write_file(dir, "pid.php", PID_PHP);
}

fn big_expected() -> Vec<u8> {
    (0..BIG_LINES)
        .flat_map(|i| format!("{i:.<63}\n").into_bytes())
        .collect()
}

/// Request body with every byte value in it, NULs included.
fn binary_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 256) as u8).collect()
}

/// Starts php-cgi the way a pool does: fd 0 is a listening unix socket, and
/// PHP_FCGI_MAX_REQUESTS=0 so it never retires itself. error_log is unset so
/// that error_log() goes to the FastCGI STDERR stream.
fn start_php_cgi(dir: &Path) -> (ChildGuard, PathBuf) {
    let php_cgi = require_program(&["php-cgi"], "php-cgi");
    let socket = dir.join("php-cgi.sock");
    let listener =
        UnixListener::bind(&socket).unwrap_or_else(|e| panic!("bind {}: {e}", socket.display()));
    let log = dir.join("php-cgi.log");
    let mut command = Command::new(php_cgi);
    command
        .args([
            "-d",
            "error_log=",
            "-d",
            "log_errors=1",
            "-d",
            "display_errors=0",
        ])
        .env_clear()
        .env("PHP_FCGI_MAX_REQUESTS", "0")
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(File::create(&log).expect("create the php-cgi log"));
    (ChildGuard::spawn(command, "php-cgi", Some(log)), socket)
}

/// Starts php-fpm in the foreground with one static pool of two workers on
/// a unix socket. As root the workers run as www-data (php-fpm refuses to run
/// them as root without -R), so `dir` must be world-readable.
fn start_php_fpm(dir: &Path) -> (ChildGuard, PathBuf) {
    let php_fpm = require_program(
        &["php-fpm8.2", "php-fpm8.4", "php-fpm8.3", "php-fpm"],
        "php-fpm",
    );
    let socket = dir.join("fpm.sock");
    let log = dir.join("fpm.log");
    let user = if running_as_root(dir) {
        "user = www-data\ngroup = www-data\n"
    } else {
        ""
    };
    let config = format!(
        "[global]\n\
         pid = {dir}/fpm.pid\n\
         error_log = {log}\n\
         daemonize = no\n\
         \n\
         [www]\n\
         {user}\
         listen = {socket}\n\
         pm = static\n\
         pm.max_children = 2\n\
         php_admin_value[error_log] = \n\
         php_admin_flag[log_errors] = on\n",
        dir = dir.display(),
        log = log.display(),
        socket = socket.display(),
    );
    let config = write_file(dir, "php-fpm.conf", &config);
    let mut command = Command::new(php_fpm);
    command
        .arg("-F")
        .arg("-y")
        .arg(&config)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("fpm.stderr")).expect("create the fpm stderr log"));
    (ChildGuard::spawn(command, "php-fpm", Some(log)), socket)
}

/// Sends one request for `script` in `dir` as nginx would (BEGIN_REQUEST with
/// keep-conn, CGI params, the body as STDIN, the end of STDIN).
async fn send_request(
    conn: &mut ClientConnection<UnixStream>,
    dir: &Path,
    script: &str,
    query: &str,
    body: Option<&[u8]>,
) {
    let filename = dir.join(script);
    let uri = if query.is_empty() {
        format!("/{script}")
    } else {
        format!("/{script}?{query}")
    };
    let method: &[u8] = if body.is_some() { b"POST" } else { b"GET" };
    put_begin_request(conn.write_buf(), REQUEST_ID, Role::Responder, true);
    let mut params = ParamsWriter::new(conn.write_buf(), REQUEST_ID);
    params
        .pair(b"GATEWAY_INTERFACE", b"CGI/1.1")
        .pair(b"SERVER_PROTOCOL", b"HTTP/1.1")
        .pair(b"REQUEST_METHOD", method)
        .pair(b"SCRIPT_FILENAME", filename.to_str().unwrap().as_bytes())
        .pair(b"SCRIPT_NAME", format!("/{script}").as_bytes())
        .pair(b"DOCUMENT_ROOT", dir.to_str().unwrap().as_bytes())
        .pair(b"REQUEST_URI", uri.as_bytes())
        .pair(b"QUERY_STRING", query.as_bytes())
        .pair(b"SERVER_NAME", b"localhost")
        .pair(b"SERVER_PORT", b"80")
        .pair(b"REMOTE_ADDR", b"127.0.0.1")
        .pair(b"REDIRECT_STATUS", b"200")
        .pair_parts(&[b"HTTP_", b"HOST"], &[b"localhost"]);
    if let Some(body) = body {
        params
            .pair(b"CONTENT_TYPE", b"application/octet-stream")
            .pair(b"CONTENT_LENGTH", body.len().to_string().as_bytes());
    }
    params.finish();
    conn.write_stdin(body.unwrap_or_default())
        .await
        .expect("send the request");
    conn.end_stdin().await.expect("end the request body");
}

/// One response as the client streamed it.
struct Response {
    headers: String,
    body: Vec<u8>,
    stderr: Vec<u8>,
    stdout_events: usize,
    end: EndRequest,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }
}

async fn read_response(conn: &mut ClientConnection<UnixStream>) -> Response {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut stdout_events = 0;
    let end = loop {
        match conn.next_event().await.expect("response event") {
            ResponseEvent::Stdout(data) => {
                assert!(!data.is_empty(), "empty Stdout event");
                stdout_events += 1;
                stdout.extend_from_slice(&data);
            }
            ResponseEvent::Stderr(data) => stderr.extend_from_slice(&data),
            ResponseEvent::End(end) => break end,
        }
    };
    assert!(
        !conn.has_buffered_input(),
        "bytes left after END_REQUEST on a kept-alive connection"
    );
    let split = stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&stdout)));
    Response {
        headers: String::from_utf8(stdout[..split].to_vec()).expect("ASCII headers"),
        body: stdout[split + 4..].to_vec(),
        stderr,
        stdout_events,
        end,
    }
}

async fn request(
    conn: &mut ClientConnection<UnixStream>,
    dir: &Path,
    script: &str,
    query: &str,
    body: Option<&[u8]>,
) -> Response {
    send_request(conn, dir, script, query, body).await;
    read_response(conn).await
}

fn assert_complete(response: &Response) {
    assert_eq!(
        response.end,
        EndRequest {
            app_status: 0,
            protocol_status: ProtocolStatus::RequestComplete
        }
    );
}

/// The scenario both PHP servers must pass on one kept-alive connection;
/// returns the pid that served the first request.
async fn kept_alive_scenario(conn: &mut ClientConnection<UnixStream>, dir: &Path) -> u32 {
    let hello = request(conn, dir, "hello.php", "name=world", None).await;
    assert_complete(&hello);
    assert_eq!(hello.header("X-Test"), Some("yes"));
    assert_eq!(hello.header("Status"), None, "200 has no Status header");
    let pid: u32 = hello
        .body_str()
        .strip_prefix("hello world GET pid=")
        .unwrap_or_else(|| panic!("unexpected body {:?}", hello.body_str()))
        .parse()
        .expect("pid");

    let body = binary_body(256 * 1024);
    let echo = request(conn, dir, "echo.php", "", Some(&body)).await;
    assert_complete(&echo);
    assert_eq!(echo.header("X-Body-Length"), Some("262144"));
    assert_eq!(echo.header("X-Content-Length"), Some("262144"));
    assert!(echo.body == body, "echoed body differs from the one sent");

    let big = request(conn, dir, "big.php", "", None).await;
    assert_complete(&big);
    assert_eq!(big.body.len(), BIG_LINES * 64);
    assert!(big.body == big_expected(), "big output corrupted");
    assert!(
        big.stdout_events >= 20,
        "1.28 MB arrived in only {} Stdout events: not streamed",
        big.stdout_events
    );

    let logged = request(conn, dir, "stderr.php", "", None).await;
    assert_complete(&logged);
    assert_eq!(logged.body_str(), "after stderr");
    let stderr = String::from_utf8_lossy(&logged.stderr);
    assert!(
        stderr.contains("tq-stderr-marker"),
        "error_log() did not arrive as FastCGI STDERR: {stderr:?}"
    );

    let missing = request(conn, dir, "missing.php", "", None).await;
    assert_eq!(missing.header("Status"), Some("404 Not Found"));

    let again = request(conn, dir, "hello.php", "", Some(b"")).await;
    assert_complete(&again);
    assert!(
        again.body_str().starts_with("hello nobody POST pid="),
        "{:?}",
        again.body_str()
    );
    pid
}

#[tokio::test]
async fn php_cgi_serves_many_kinds_of_request_on_one_connection() {
    let dir = world_readable_tempdir();
    write_scripts(dir.path());
    let (php, socket) = start_php_cgi(dir.path());
    bounded("php-cgi scenario", async {
        let stream = UnixStream::connect(&socket)
            .await
            .expect("connect to php-cgi");
        let mut conn = ClientConnection::new(stream);
        let pid = kept_alive_scenario(&mut conn, dir.path()).await;
        assert_eq!(
            pid,
            php.pid(),
            "a single php-cgi process serves the connection"
        );
    })
    .await;
}

#[tokio::test]
async fn php_cgi_answers_get_values_and_keeps_the_connection() {
    let dir = world_readable_tempdir();
    write_scripts(dir.path());
    let (_php, socket) = start_php_cgi(dir.path());
    bounded("php-cgi GET_VALUES", async {
        let stream = UnixStream::connect(&socket)
            .await
            .expect("connect to php-cgi");
        let mut conn = ClientConnection::new(stream);
        let values = conn
            .get_values(&["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"])
            .await
            .expect("GET_VALUES_RESULT");
        // One process without PHP_FCGI_CHILDREN: one connection, one request
        // at a time, no multiplexing.
        assert_eq!(values.get_str("FCGI_MAX_CONNS"), Some("1"));
        assert_eq!(values.get_str("FCGI_MAX_REQS"), Some("1"));
        assert_eq!(values.get_str("FCGI_MPXS_CONNS"), Some("0"));
        assert_eq!(values.len(), 3);
        let hello = request(&mut conn, dir.path(), "hello.php", "", None).await;
        assert_complete(&hello);
        assert!(hello.body_str().starts_with("hello nobody GET"));
    })
    .await;
}

#[tokio::test]
async fn php_cgi_with_max_requests_zero_serves_600_requests_on_one_connection() {
    let dir = world_readable_tempdir();
    write_scripts(dir.path());
    let (php, socket) = start_php_cgi(dir.path());
    bounded("600 requests", async {
        let stream = UnixStream::connect(&socket)
            .await
            .expect("connect to php-cgi");
        let mut conn = ClientConnection::new(stream);
        // php-cgi's default PHP_FCGI_MAX_REQUESTS is 500: past it the process
        // exits and this connection would close.
        for n in 0..600 {
            let response = request(&mut conn, dir.path(), "pid.php", "", None).await;
            assert_complete(&response);
            assert_eq!(
                response.body_str(),
                php.pid().to_string(),
                "request {n} served by another process"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn php_fpm_serves_many_kinds_of_request_on_one_connection() {
    let dir = world_readable_tempdir();
    write_scripts(dir.path());
    let (mut fpm, socket) = start_php_fpm(dir.path());
    bounded("php-fpm scenario", async {
        let stream = connect_when_ready(&socket, &mut fpm, Duration::from_secs(10)).await;
        let mut conn = ClientConnection::new(stream);
        let pid = kept_alive_scenario(&mut conn, dir.path()).await;
        assert_ne!(pid, fpm.pid(), "a worker, not the master, runs PHP");
        // Everything on one connection goes to the worker that accepted it.
        let again = request(&mut conn, dir.path(), "pid.php", "", None).await;
        assert_eq!(again.body_str(), pid.to_string());
    })
    .await;
}

#[tokio::test]
async fn php_fpm_answers_get_values_and_keeps_the_connection() {
    let dir = world_readable_tempdir();
    write_scripts(dir.path());
    let (mut fpm, socket) = start_php_fpm(dir.path());
    bounded("php-fpm GET_VALUES", async {
        let stream = connect_when_ready(&socket, &mut fpm, Duration::from_secs(10)).await;
        let mut conn = ClientConnection::new(stream);
        let values = conn
            .get_values(&["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"])
            .await
            .expect("GET_VALUES_RESULT");
        // php-fpm only states that it does not multiplex; its limits live in
        // the pool configuration, not in GET_VALUES.
        assert_eq!(values.get_str("FCGI_MPXS_CONNS"), Some("0"));
        assert_eq!(values.get_str("FCGI_MAX_CONNS"), None);
        let hello = request(&mut conn, dir.path(), "hello.php", "", None).await;
        assert_complete(&hello);
        assert!(hello.body_str().starts_with("hello nobody GET"));
    })
    .await;
}
