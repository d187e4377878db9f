//! The server side (`RequestReader` + `ResponseWriter`) as a tiny echo
//! responder on a unix socket and on TCP 127.0.0.1, driven by a real outside
//! client: `cgi-fcgi -bind -connect` from the Debian package libfcgi-bin.
//! cgi-fcgi sends its whole environment as PARAMS (alternating 1- and 4-byte
//! lengths on purpose), its stdin up to CONTENT_LENGTH as unpadded STDIN
//! records, prints STDOUT and STDERR content as it arrives, and exits with
//! the END_REQUEST app status. The tests check all of that end to end.

mod support;

use std::collections::BTreeMap;
use std::process::{ExitStatus, Stdio};

use fastcgi::ParamsLimits;
use fastcgi::server::{RequestReader, ResponseWriter, ServerError, ServerEvent, ServerValues};
use fastcgi::{Params, ProtocolStatus};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use support::{bounded, require_program, world_readable_tempdir};

/// Bodies up to this size are echoed back whole; cgi-fcgi mishandles a
/// record header split across two of its 8 KiB reads, so responses stay
/// below that.
const ECHO_LIMIT: usize = 2048;

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The response to one request: every param as a `NAME=VALUE` line in the
/// order received, then the body's length and hash, then the body itself if
/// it is small. `stderr=1` in the query adds a STDERR message and
/// `status=N` sets the app status.
fn respond(
    writer: &mut ResponseWriter<impl AsyncWrite + Unpin>,
    id: u16,
    params: &Params,
    body: &[u8],
) {
    let mut out = b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    for (name, value) in params.iter() {
        out.extend_from_slice(name);
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out.extend_from_slice(format!("body-length: {}\n", body.len()).as_bytes());
    out.extend_from_slice(format!("body-fnv: {:016x}\n", fnv1a(body)).as_bytes());
    if body.len() <= ECHO_LIMIT {
        out.extend_from_slice(b"body: ");
        out.extend_from_slice(body);
    }
    let query = params.get_str("QUERY_STRING").unwrap_or_default();
    let mut had_stderr = false;
    let mut app_status = 0;
    for item in query.split('&') {
        match item.split_once('=') {
            Some(("stderr", "1")) => {
                writer.stderr(id, b"responder: something to log\n");
                had_stderr = true;
            }
            Some(("status", n)) => app_status = n.parse().unwrap_or(255),
            _ => {}
        }
    }
    writer.stdout(id, &out);
    writer.end_request(id, app_status, ProtocolStatus::RequestComplete, had_stderr);
}

/// Serves one connection until the peer closes it or a request without
/// keep-conn has been answered.
async fn serve_connection<S: AsyncRead + AsyncWrite>(stream: S) -> Result<(), ServerError> {
    let (read, write) = tokio::io::split(stream);
    let mut reader = RequestReader::new(read, ParamsLimits::default());
    let mut writer = ResponseWriter::new(write);
    let mut keep_conn = false;
    let mut params = Params::default();
    let mut body = Vec::new();
    while let Some(event) = reader.next_event().await? {
        match event {
            ServerEvent::GetValues(asked) => {
                let values = ServerValues {
                    max_conns: 16,
                    max_reqs: 16,
                    mpxs_conns: false,
                };
                writer.get_values_result(&asked, values);
                writer.flush().await?;
            }
            ServerEvent::UnknownManagement(record_type) => {
                writer.unknown_type(record_type);
                writer.flush().await?;
            }
            ServerEvent::Begin {
                keep_conn: keep, ..
            } => {
                keep_conn = keep;
                body.clear();
            }
            ServerEvent::Params { params: got, .. } => params = got,
            ServerEvent::Stdin { data, .. } => body.extend_from_slice(&data),
            ServerEvent::StdinEnd { request_id } => {
                respond(&mut writer, request_id, &params, &body);
                writer.flush().await?;
                reader.finish_request();
                if !keep_conn {
                    writer.shutdown().await?;
                    return Ok(());
                }
            }
            ServerEvent::Multiplexed { request_id } => {
                writer.end_request(request_id, 0, ProtocolStatus::CantMpxConn, false);
                writer.flush().await?;
            }
            ServerEvent::Abort { request_id } => {
                writer.end_request(request_id, 1, ProtocolStatus::RequestComplete, false);
                writer.flush().await?;
                reader.finish_request();
            }
            ServerEvent::Data { .. } => {}
        }
    }
    Ok(())
}

/// The echo responder's accept loop; each connection's outcome is reported
/// on `results` so that server-side protocol errors fail the test.
struct Responder {
    results: mpsc::UnboundedReceiver<Result<(), ServerError>>,
    accept_loop: JoinHandle<()>,
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Responder {
    fn spawn(listener: Listener) -> Self {
        let (report, results) = mpsc::unbounded_channel();
        let accept_loop = tokio::spawn(async move {
            loop {
                let report = report.clone();
                match &listener {
                    Listener::Unix(listener) => {
                        let Ok((stream, _)) = listener.accept().await else {
                            return;
                        };
                        tokio::spawn(async move {
                            let _ = report.send(serve_connection(stream).await);
                        });
                    }
                    Listener::Tcp(listener) => {
                        let Ok((stream, _)) = listener.accept().await else {
                            return;
                        };
                        tokio::spawn(async move {
                            let _ = report.send(serve_connection(stream).await);
                        });
                    }
                }
            }
        });
        Self {
            results,
            accept_loop,
        }
    }

    /// Waits for the next connection to finish and fails on a server error.
    async fn connection_succeeded(&mut self) {
        match self.results.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => panic!("responder failed: {e}"),
            None => panic!("responder stopped"),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cgi-fcgi -bind -connect <address>` with exactly `env` as its
/// environment and `stdin` as its standard input.
async fn cgi_fcgi(address: &str, env: &BTreeMap<String, String>, stdin: &[u8]) -> Output {
    let program = require_program(&["cgi-fcgi"], "libfcgi-bin");
    let mut child = tokio::process::Command::new(program)
        .args(["-bind", "-connect", address])
        .env_clear()
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start cgi-fcgi");
    let mut input = child.stdin.take().expect("piped stdin");
    let feed = async move {
        // cgi-fcgi stops reading after CONTENT_LENGTH bytes or on failure;
        // the assertions on its output say what went wrong.
        let _ = input.write_all(stdin).await;
    };
    let (_, output) = tokio::join!(feed, child.wait_with_output());
    let output = output.expect("wait for cgi-fcgi");
    Output {
        status: output.status,
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

fn cgi_env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// Splits the echo responder's output into its param lines and the rest.
fn echoed(stdout: &str) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (head, rest) = stdout
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {stdout:?}"));
    assert!(head.starts_with("Status: 200 OK"), "{head:?}");
    let mut params = BTreeMap::new();
    let mut summary = BTreeMap::new();
    for line in rest.lines() {
        if let Some((name, value)) = line.split_once(": ") {
            summary.insert(name.to_string(), value.to_string());
        } else if let Some((name, value)) = line.split_once('=') {
            params.insert(name.to_string(), value.to_string());
        }
    }
    (params, summary)
}

#[tokio::test]
async fn cgi_fcgi_environment_arrives_as_params_over_a_unix_socket() {
    let dir = world_readable_tempdir();
    let socket = dir.path().join("responder.sock");
    let mut responder = Responder::spawn(Listener::Unix(
        UnixListener::bind(&socket).expect("bind the responder socket"),
    ));
    // Names and values on both sides of the 127/128 length boundary.
    let name_127 = format!("TQ_{}", "N".repeat(124));
    let name_128 = format!("TQ_{}", "M".repeat(125));
    let value_128 = "v".repeat(128);
    let cookie = format!("session={}", "c".repeat(300));
    let env = cgi_env(&[
        ("REQUEST_METHOD", "GET"),
        ("QUERY_STRING", "a=1&b=two"),
        ("SCRIPT_NAME", "/echo"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("HTTP_COOKIE", &cookie),
        ("EMPTY", ""),
        (&name_127, "x"),
        (&name_128, &value_128),
    ]);
    let output = bounded("cgi-fcgi over a unix socket", async {
        let output = cgi_fcgi(socket.to_str().unwrap(), &env, b"").await;
        responder.connection_succeeded().await;
        output
    })
    .await;
    assert!(
        output.status.success(),
        "cgi-fcgi: {:?} {}",
        output.status,
        output.stderr
    );
    assert_eq!(output.stderr, "");
    let (params, summary) = echoed(&output.stdout);
    assert_eq!(params, env, "params differ from cgi-fcgi's environment");
    assert_eq!(summary["body-length"], "0");
}

#[tokio::test]
async fn cgi_fcgi_post_body_arrives_whole_over_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind TCP");
    let address = listener.local_addr().expect("local address").to_string();
    let mut responder = Responder::spawn(Listener::Tcp(listener));

    for len in [5, 1500, 150_000] {
        let body: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        let env = cgi_env(&[
            ("REQUEST_METHOD", "POST"),
            ("CONTENT_TYPE", "application/x-www-form-urlencoded"),
            ("CONTENT_LENGTH", &len.to_string()),
        ]);
        let output = bounded("cgi-fcgi over TCP", async {
            let output = cgi_fcgi(&address, &env, &body).await;
            responder.connection_succeeded().await;
            output
        })
        .await;
        assert!(
            output.status.success(),
            "cgi-fcgi: {:?} {}",
            output.status,
            output.stderr
        );
        let (params, summary) = echoed(&output.stdout);
        assert_eq!(params, env);
        assert_eq!(summary["body-length"], len.to_string());
        assert_eq!(summary["body-fnv"], format!("{:016x}", fnv1a(&body)));
        if len <= ECHO_LIMIT {
            assert_eq!(summary["body"].as_bytes(), &body[..]);
        }
    }
}

#[tokio::test]
async fn cgi_fcgi_prints_stderr_and_exits_with_the_app_status() {
    let dir = world_readable_tempdir();
    let socket = dir.path().join("responder.sock");
    let mut responder = Responder::spawn(Listener::Unix(
        UnixListener::bind(&socket).expect("bind the responder socket"),
    ));
    let env = cgi_env(&[
        ("REQUEST_METHOD", "GET"),
        ("QUERY_STRING", "stderr=1&status=3"),
    ]);
    let output = bounded("cgi-fcgi with stderr", async {
        let output = cgi_fcgi(socket.to_str().unwrap(), &env, b"").await;
        responder.connection_succeeded().await;
        output
    })
    .await;
    assert_eq!(output.status.code(), Some(3), "exit code is the app status");
    assert_eq!(output.stderr, "responder: something to log\n");
    let (params, _) = echoed(&output.stdout);
    assert_eq!(params, env);
}
