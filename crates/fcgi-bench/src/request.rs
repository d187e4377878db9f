//! The one request every connection sends: encoded once, copied per request.
//!
//! The params are what nginx's `fastcgi_params` sends for a plain GET, so PHP
//! does the same work it does behind a web server.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use fastcgi::ParamsWriter;
use fastcgi::client::REQUEST_ID;
use fastcgi::record::{RecordType, Role, put_begin_request, put_stream_end};

/// What to ask for.
pub struct RequestSpec<'a> {
    pub script_filename: &'a Path,
    pub document_root: &'a Path,
    /// SCRIPT_NAME and DOCUMENT_URI, e.g. `/hello.php`.
    pub script_name: &'a str,
    pub query: &'a str,
    pub extra: &'a [(String, String)],
}

/// BEGIN_REQUEST, the PARAMS stream and an empty STDIN, ready to send.
pub fn encode(spec: &RequestSpec<'_>, keep_conn: bool) -> Bytes {
    let request_uri = if spec.query.is_empty() {
        spec.script_name.to_owned()
    } else {
        format!("{}?{}", spec.script_name, spec.query)
    };
    let script_filename = spec.script_filename.to_string_lossy();
    let document_root = spec.document_root.to_string_lossy();
    let mut buf = BytesMut::with_capacity(1024);
    put_begin_request(&mut buf, REQUEST_ID, Role::Responder, keep_conn);
    let mut params = ParamsWriter::new(&mut buf, REQUEST_ID);
    for (name, value) in [
        ("SCRIPT_FILENAME", script_filename.as_ref()),
        ("QUERY_STRING", spec.query),
        ("REQUEST_METHOD", "GET"),
        ("CONTENT_TYPE", ""),
        ("CONTENT_LENGTH", ""),
        ("SCRIPT_NAME", spec.script_name),
        ("REQUEST_URI", &request_uri),
        ("DOCUMENT_URI", spec.script_name),
        ("DOCUMENT_ROOT", document_root.as_ref()),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "fcgi-bench"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "40000"),
        ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_PORT", "80"),
        ("SERVER_NAME", "localhost"),
        ("REDIRECT_STATUS", "200"),
        ("HTTP_HOST", "localhost"),
        ("HTTP_USER_AGENT", "fcgi-bench"),
        ("HTTP_ACCEPT", "*/*"),
    ] {
        params.pair(name.as_bytes(), value.as_bytes());
    }
    for (name, value) in spec.extra {
        params.pair(name.as_bytes(), value.as_bytes());
    }
    params.finish();
    put_stream_end(&mut buf, RecordType::Stdin, REQUEST_ID);
    buf.freeze()
}

/// The HTTP status in a CGI response's headers (`Status: 404 Not Found`);
/// 200 when absent, as web servers read it. Looks only at `head`, the first
/// STDOUT piece, which holds the headers of any response PHP writes.
pub fn cgi_status(head: &[u8]) -> u16 {
    let headers_end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(head.len());
    head[..headers_end]
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let value = line.strip_prefix(b"Status:")?;
            let code = value.trim_ascii_start().get(..3)?;
            std::str::from_utf8(code).ok()?.parse().ok()
        })
        .unwrap_or(200)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastcgi::{ParamsLimits, RecordDecoder};

    #[test]
    fn status_is_read_from_the_headers_only() {
        assert_eq!(
            cgi_status(b"Content-type: text/html\r\n\r\nStatus: 500"),
            200
        );
        assert_eq!(cgi_status(b"Status: 404 Not Found\r\nX: y\r\n\r\n"), 404);
        assert_eq!(
            cgi_status(b"X-Powered-By: PHP\r\nStatus: 302 Found\r\n\r\n"),
            302
        );
    }

    #[test]
    fn request_is_begin_params_stdin() {
        let spec = RequestSpec {
            script_filename: Path::new("/srv/hello.php"),
            document_root: Path::new("/srv"),
            script_name: "/hello.php",
            query: "a=1",
            extra: &[("HTTPS".into(), "on".into())],
        };
        let mut buf = BytesMut::from(&encode(&spec, true)[..]);
        let mut decoder = RecordDecoder::new();
        let kinds: Vec<_> = std::iter::from_fn(|| decoder.decode(&mut buf).unwrap())
            .map(|r| (r.record_type, r.content))
            .collect();
        assert_eq!(kinds[0].0, RecordType::BeginRequest);
        let params = fastcgi::Params::parse(kinds[1].1.clone(), ParamsLimits::default()).unwrap();
        assert_eq!(params.get_str("REQUEST_URI"), Some("/hello.php?a=1"));
        assert_eq!(params.get_str("HTTPS"), Some("on"));
        assert_eq!(
            kinds[2..].iter().map(|k| k.0).collect::<Vec<_>>(),
            [RecordType::Params, RecordType::Stdin]
        );
    }
}
