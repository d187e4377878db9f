//! A blocking raw FastCGI client for tests, built on the project's codec, so
//! a test can send exactly the records it wants (good or bad).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::time::Duration;

use bytes::BytesMut;
use fastcgi::record::{
    EndRequest, ProtocolStatus, Record, RecordType, Role, put_begin_request, put_stream,
    put_stream_end,
};
use fastcgi::{ParamsWriter, RecordDecoder};

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
        let mut buf = BytesMut::new();
        put_begin_request(&mut buf, id, Role::Responder, keep);
        let mut writer = ParamsWriter::new(&mut buf, id);
        for (name, value) in params {
            writer.pair(name.as_bytes(), value.as_bytes());
        }
        writer.finish();
        self.send(&buf);
    }

    pub fn stdin(&mut self, id: u16, data: &[u8]) {
        let mut buf = BytesMut::new();
        put_stream(&mut buf, RecordType::Stdin, id, data);
        put_stream_end(&mut buf, RecordType::Stdin, id);
        self.send(&buf);
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
            assert_eq!(
                record.request_id, id,
                "record for another request: {record:?}"
            );
            match record.record_type {
                RecordType::Stdout => response.stdout.extend_from_slice(&record.content),
                RecordType::Stderr => response.stderr.extend_from_slice(&record.content),
                RecordType::EndRequest => {
                    response.end = EndRequest::parse(&record.content);
                    return response;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        response
    }
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
