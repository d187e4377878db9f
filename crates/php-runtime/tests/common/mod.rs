//! What the runtime's tests share: a tqserver-php (or php-cgi) serving
//! FastCGI on a socket at fd 0, as tqserver's pool runs it, and requests to
//! it over one kept-alive connection.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use fastcgi::record::{RecordType, Role, put_begin_request, put_stream, put_stream_end};
use fastcgi::{ParamsWriter, RecordDecoder};

pub const SETTINGS: &[&str] = &[
    "display_errors=0",
    "log_errors=1",
    "error_reporting=32767",
    "html_errors=0",
    "session.save_path=/tmp",
    "expose_php=1",
];

pub struct Worker {
    pub child: Child,
    pub stream: UnixStream,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(program: &Path, dir: &Path, name: &str) -> Worker {
    start_with(program, dir, name, &[])
}

/// With more arguments (`--worker SCRIPT`).
pub fn start_with(program: &Path, dir: &Path, name: &str, args: &[&str]) -> Worker {
    let socket = dir.join(format!("{name}.sock"));
    let listener = UnixListener::bind(&socket).expect("bind");
    let mut command = Command::new(program);
    command.args(args);
    for setting in SETTINGS {
        command.arg("-d").arg(setting);
    }
    let child = command
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PHP_FCGI_MAX_REQUESTS", "0")
        .env("TQ_PARITY", "1")
        .current_dir(dir)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let stream = UnixStream::connect(&socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    Worker { child, stream }
}

pub struct Response {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

pub fn request(worker: &mut Worker, params: &[(String, String)], body: &[u8]) -> Response {
    let mut wire = BytesMut::new();
    put_begin_request(&mut wire, 1, Role::Responder, true);
    {
        let mut writer = ParamsWriter::new(&mut wire, 1);
        for (name, value) in params {
            writer.pair(name.as_bytes(), value.as_bytes());
        }
        writer.finish();
    }
    for chunk in body.chunks(60_000) {
        put_stream(&mut wire, RecordType::Stdin, 1, chunk);
    }
    put_stream_end(&mut wire, RecordType::Stdin, 1);
    worker.stream.write_all(&wire).expect("send request");

    let mut decoder = RecordDecoder::new();
    let mut input = BytesMut::new();
    let mut response = Response {
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    loop {
        while let Some(record) = decoder.decode(&mut input).expect("valid records") {
            match record.record_type {
                RecordType::Stdout => response.stdout.extend_from_slice(&record.content),
                RecordType::Stderr => response.stderr.extend_from_slice(&record.content),
                RecordType::EndRequest => return response,
                _ => {}
            }
        }
        let mut buf = [0u8; 65536];
        let n = worker.stream.read(&mut buf).expect("read response");
        assert!(n > 0, "the worker closed the connection mid-response");
        input.extend_from_slice(&buf[..n]);
    }
}

pub fn base(
    root: &Path,
    script: &str,
    uri: &str,
    query: &str,
    method: &str,
) -> Vec<(String, String)> {
    let root = root.display().to_string();
    [
        ("GATEWAY_INTERFACE", "CGI/1.1".to_owned()),
        ("SERVER_SOFTWARE", "tqserver".to_owned()),
        ("REQUEST_METHOD", method.to_owned()),
        ("QUERY_STRING", query.to_owned()),
        (
            "REQUEST_URI",
            if query.is_empty() {
                uri.to_owned()
            } else {
                format!("{uri}?{query}")
            },
        ),
        ("DOCUMENT_URI", uri.to_owned()),
        ("SCRIPT_NAME", script.to_owned()),
        ("SCRIPT_FILENAME", format!("{root}{script}")),
        ("DOCUMENT_ROOT", root),
        ("SERVER_PROTOCOL", "HTTP/1.1".to_owned()),
        ("REMOTE_ADDR", "127.0.0.1".to_owned()),
        ("REMOTE_PORT", "40000".to_owned()),
        ("SERVER_ADDR", "127.0.0.1".to_owned()),
        ("SERVER_PORT", "8080".to_owned()),
        ("SERVER_NAME", "localhost".to_owned()),
        ("REDIRECT_STATUS", "200".to_owned()),
        ("HTTP_HOST", "localhost:8080".to_owned()),
        ("HTTP_USER_AGENT", "parity-test".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
