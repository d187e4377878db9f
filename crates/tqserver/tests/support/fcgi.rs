//! A raw FastCGI client for tests, built on the project's codec, so a test
//! can send exactly the records it wants (good or bad): [`FcgiConn`] over a
//! blocking socket, [`AsyncFcgiConn`] over an async stream (a
//! `tokio::io::duplex` pipe to a listener served in-process).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::time::Duration;

use bytes::BytesMut;
use fastcgi::record::{
    EndRequest, ProtocolStatus, Record, RecordType, Role, put_begin_request, put_stream,
    put_stream_end,
};
use fastcgi::{ParamsWriter, RecordDecoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

pub struct FcgiConn {
    stream: Box<dyn Stream>,
    buf: BytesMut,
}

#[derive(Debug, Default)]
pub struct FcgiResponse {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub end: Option<EndRequest>,
}

impl FcgiResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The CGI body after the header block.
    pub fn body(&self) -> String {
        let text = self.text();
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or(text)
    }

    pub fn status(&self) -> u16 {
        let text = self.text();
        text.lines()
            .find_map(|l| l.strip_prefix("Status: "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or(200)
    }
}

impl FcgiConn {
    pub fn tcp(port: u16) -> Self {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        Self {
            stream: Box::new(stream),
            buf: BytesMut::new(),
        }
    }

    pub fn unix(path: &std::path::Path) -> Self {
        let stream = std::os::unix::net::UnixStream::connect(path).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        Self {
            stream: Box::new(stream),
            buf: BytesMut::new(),
        }
    }

    /// Writes bytes; a server that already closed the connection is
    /// noticed by the next read, so write errors are not fatal here.
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Next record, or None at EOF (or reset).
    pub fn read_record(&mut self) -> Option<Record> {
        let mut decoder = RecordDecoder::new();
        loop {
            if let Some(record) = decoder.decode(&mut self.buf).expect("valid record") {
                return Some(record);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Whether the server closed the connection (EOF) within the read timeout.
    pub fn closed(&mut self) -> bool {
        self.read_record().is_none()
    }

    pub fn begin_and_params(&mut self, id: u16, params: &[(&str, &str)], keep: bool) {
        self.send(&begin_and_params(id, params, keep));
    }

    pub fn stdin(&mut self, id: u16, data: &[u8]) {
        self.send(&stdin(id, data));
    }

    /// A whole request; reads records for `id` until END_REQUEST.
    pub fn request(
        &mut self,
        id: u16,
        params: &[(&str, &str)],
        stdin: &[u8],
        keep: bool,
    ) -> FcgiResponse {
        self.begin_and_params(id, params, keep);
        self.stdin(id, stdin);
        self.response(id)
    }

    /// A whole GET of `script` (a path under `docroot`) with nginx's params.
    pub fn get(&mut self, docroot: &str, script: &str, query: &str, keep: bool) -> FcgiResponse {
        let filename = format!("{docroot}{script}");
        self.request(1, &cgi_params(docroot, &filename, script, query), b"", keep)
    }

    pub fn response(&mut self, id: u16) -> FcgiResponse {
        let mut response = FcgiResponse::default();
        while let Some(record) = self.read_record() {
            if response.absorb(id, record) {
                break;
            }
        }
        response
    }
}

/// The same client over an async stream.
pub struct AsyncFcgiConn<S> {
    stream: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncFcgiConn<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Writes bytes; a peer that already closed is noticed by the next read.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Next record, or None at EOF.
    pub async fn read_record(&mut self) -> Option<Record> {
        let mut decoder = RecordDecoder::new();
        loop {
            if let Some(record) = decoder.decode(&mut self.buf).expect("valid record") {
                return Some(record);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Whether the server closes the connection (EOF) before sending
    /// anything more.
    pub async fn closed(&mut self) -> bool {
        self.read_record().await.is_none()
    }

    /// A whole request; reads records for `id` until END_REQUEST.
    pub async fn request(
        &mut self,
        id: u16,
        params: &[(&str, &str)],
        body: &[u8],
        keep: bool,
    ) -> FcgiResponse {
        let mut buf = begin_and_params(id, params, keep);
        buf.extend_from_slice(&stdin(id, body));
        self.send(&buf).await;
        self.response(id).await
    }

    /// A whole GET of `script` (a path under `docroot`) with nginx's params.
    pub async fn get(
        &mut self,
        docroot: &str,
        script: &str,
        query: &str,
        keep: bool,
    ) -> FcgiResponse {
        let filename = format!("{docroot}{script}");
        self.request(1, &cgi_params(docroot, &filename, script, query), b"", keep)
            .await
    }

    pub async fn response(&mut self, id: u16) -> FcgiResponse {
        let mut response = FcgiResponse::default();
        while let Some(record) = self.read_record().await {
            if response.absorb(id, record) {
                break;
            }
        }
        response
    }
}

impl FcgiResponse {
    /// Takes one record of request `id`'s response; true at its end.
    fn absorb(&mut self, id: u16, record: Record) -> bool {
        assert_eq!(
            record.request_id, id,
            "record for another request: {record:?}"
        );
        match record.record_type {
            RecordType::Stdout => self.stdout.extend_from_slice(&record.content),
            RecordType::Stderr => self.stderr.extend_from_slice(&record.content),
            RecordType::EndRequest => {
                self.end = EndRequest::parse(&record.content);
                return true;
            }
            other => panic!("unexpected {other:?}"),
        }
        false
    }
}

/// BEGIN_REQUEST (responder) and the whole PARAMS stream of request `id`.
pub fn begin_and_params(id: u16, params: &[(&str, &str)], keep: bool) -> BytesMut {
    let mut buf = BytesMut::new();
    put_begin_request(&mut buf, id, Role::Responder, keep);
    let mut writer = ParamsWriter::new(&mut buf, id);
    for (name, value) in params {
        writer.pair(name.as_bytes(), value.as_bytes());
    }
    writer.finish();
    buf
}

/// Request `id`'s whole STDIN stream: `data`, then its end.
pub fn stdin(id: u16, data: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    put_stream(&mut buf, RecordType::Stdin, id, data);
    put_stream_end(&mut buf, RecordType::Stdin, id);
    buf
}

/// The params nginx's fastcgi_params would send for a GET of `script`.
pub fn cgi_params<'a>(
    document_root: &'a str,
    script_filename: &'a str,
    script_name: &'a str,
    query: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "test"),
        ("REQUEST_METHOD", "GET"),
        ("SCRIPT_FILENAME", script_filename),
        ("SCRIPT_NAME", script_name),
        ("REQUEST_URI", script_name),
        ("DOCUMENT_URI", script_name),
        ("DOCUMENT_ROOT", document_root),
        ("QUERY_STRING", query),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("SERVER_NAME", "localhost"),
        ("REDIRECT_STATUS", "200"),
    ]
}

pub fn is_complete(response: &FcgiResponse) -> bool {
    response
        .end
        .is_some_and(|end| end.protocol_status == ProtocolStatus::RequestComplete)
}
