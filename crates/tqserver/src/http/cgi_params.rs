//! Where CGI params are built: nginx's `fastcgi_params` plus what PHP needs,
//! encoded straight into the worker connection's write buffer.
//!
//! Every request header becomes `HTTP_*`, except `Proxy` (httpoxy: it would
//! become HTTP_PROXY, which HTTP clients in PHP read as their proxy) and
//! names with any character but letters, digits and '-' (dropped, as nginx's
//! `ignore_invalid_headers` does): PHP turns '_', '.', ' ' and '[' of a
//! variable name into '_', so `X.Forwarded.For` or `X_Real_IP` could pose as
//! `X-Forwarded-For` or `X-Real-IP`. Repeated headers are joined with ", "
//! ("; " for cookies).

use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;

use bytes::{BufMut, BytesMut};
use fastcgi::ParamsWriter;
use fastcgi::client::REQUEST_ID;
use fastcgi::params::put_pair_lengths;
use http::{HeaderMap, Method, Uri, Version, header};

use super::resolve::Script;
use crate::config::AppConfig;

/// Apps pick URL-rewriting behaviour by server name (WordPress offers pretty
/// permalinks to Apache, nginx and Caddy only); tqserver routes like nginx's
/// `try_files`, and says so.
pub const SERVER_SOFTWARE: &str = concat!(
    "tqserver/",
    env!("CARGO_PKG_VERSION"),
    " (nginx-compatible)"
);

/// What the params are built from.
pub struct CgiRequest<'a> {
    pub config: &'a AppConfig,
    pub script: &'a Script,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub version: Version,
    pub headers: &'a HeaderMap,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Length of the body that will be sent as STDIN.
    pub content_length: Option<u64>,
    /// The request came over TLS: `HTTPS=on`, `REQUEST_SCHEME=https`.
    pub https: bool,
}

/// Appends the PARAMS stream (and its end record) to `buf`.
pub fn write(buf: &mut BytesMut, request: &CgiRequest<'_>) {
    let config = request.config;
    let script = request.script;
    let mut params = ParamsWriter::new(buf, REQUEST_ID);

    let request_uri = request
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let query = request.uri.query().unwrap_or("");
    let document_root = config.document_root.as_os_str().as_bytes();

    params.pair(b"GATEWAY_INTERFACE", b"CGI/1.1");
    params.pair(b"SERVER_SOFTWARE", SERVER_SOFTWARE.as_bytes());
    params.pair(
        b"SERVER_PROTOCOL",
        crate::observe::protocol_name(request.version).as_bytes(),
    );
    if request.https {
        params.pair(b"REQUEST_SCHEME", b"https");
        params.pair(b"HTTPS", b"on");
    } else {
        params.pair(b"REQUEST_SCHEME", b"http");
    }
    params.pair(b"REQUEST_METHOD", request.method.as_str().as_bytes());
    params.pair(b"REQUEST_URI", request_uri.as_bytes());
    params.pair(b"QUERY_STRING", query.as_bytes());
    params.pair(b"DOCUMENT_ROOT", document_root);
    params.pair_parts(
        &[b"SCRIPT_NAME"],
        &[config.route.as_bytes(), script.name.as_bytes()],
    );
    params.pair_parts(
        &[b"DOCUMENT_URI"],
        &[
            config.route.as_bytes(),
            script.name.as_bytes(),
            script.path_info.as_bytes(),
        ],
    );
    params.pair(b"SCRIPT_FILENAME", script.filename.as_os_str().as_bytes());
    if !script.path_info.is_empty() {
        params.pair(b"PATH_INFO", script.path_info.as_bytes());
        params.pair_parts(
            &[b"PATH_TRANSLATED"],
            &[document_root, script.path_info.as_bytes()],
        );
    }
    params.pair(b"REDIRECT_STATUS", b"200");
    params.pair(b"REMOTE_USER", &remote_user(request.headers));

    let mut numbers = itoa::Buffer::new();
    let mut ip = IpText::default();
    params.pair(b"REMOTE_ADDR", ip.format(&request.peer));
    params.pair(
        b"REMOTE_PORT",
        numbers.format(request.peer.port()).as_bytes(),
    );
    params.pair(b"SERVER_ADDR", ip.format(&request.local));
    params.pair(
        b"SERVER_PORT",
        numbers.format(request.local.port()).as_bytes(),
    );
    match server_name(request) {
        Some(name) => params.pair(b"SERVER_NAME", name.as_bytes()),
        None => params.pair(b"SERVER_NAME", ip.format(&request.local)),
    };

    let content_type = request
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    params.pair(b"CONTENT_TYPE", content_type);
    match request.content_length {
        Some(length) => params.pair(b"CONTENT_LENGTH", numbers.format(length).as_bytes()),
        None => params.pair(b"CONTENT_LENGTH", b""),
    };

    // HeaderMap yields the values of one name one after another; a name
    // with a single value (nearly all of them) needs no second lookup.
    let mut headers = request.headers.iter().peekable();
    while let Some((name, value)) = headers.next() {
        let repeated = headers.peek().is_some_and(|(next, _)| *next == name);
        if name == header::CONTENT_TYPE
            || name == header::CONTENT_LENGTH
            || name.as_str() == "proxy"
            || !is_plain_name(name.as_str())
        {
            continue;
        }
        let separator: &[u8] = if name == header::COOKIE { b"; " } else { b", " };
        let out = params.buffer();
        if !repeated {
            put_http_name(out, name, value.len());
            out.put_slice(value.as_bytes());
            continue;
        }
        let values = request.headers.get_all(name);
        let count = values.iter().count();
        let value_len =
            values.iter().map(|v| v.len()).sum::<usize>() + separator.len() * (count - 1);
        put_http_name(out, name, value_len);
        for (index, value) in values.iter().enumerate() {
            if index > 0 {
                out.put_slice(separator);
            }
            out.put_slice(value.as_bytes());
        }
        while headers.peek().is_some_and(|(next, _)| *next == name) {
            headers.next();
        }
    }
    params.finish();
}

/// Whether a header name is letters, digits and '-' only (header names are
/// lower case here).
fn is_plain_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The user name of `Authorization: Basic`, as nginx's `$remote_user` (which
/// its `fastcgi_params` passes as REMOTE_USER whether or not the site checks
/// passwords); empty without one.
fn remote_user(headers: &HeaderMap) -> Vec<u8> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Vec::new();
    };
    let value = value.as_bytes();
    if value.len() < 6 || !value[..6].eq_ignore_ascii_case(b"basic ") {
        return Vec::new();
    }
    let Some(decoded) = base64_decode(value[6..].trim_ascii()) else {
        return Vec::new();
    };
    let user = decoded.split(|&b| b == b':').next().unwrap_or_default();
    // A user name with control characters is not passed on.
    if user.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Vec::new();
    }
    user.to_vec()
}

/// Standard base64 with padding; `None` if malformed.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    fn value(byte: u8) -> Option<u32> {
        Some(match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    if text.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for (index, quad) in text.chunks(4).enumerate() {
        let last = index == text.len() / 4 - 1;
        let padding = quad.iter().rev().take_while(|&&b| b == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut bits = 0u32;
        for &byte in &quad[..4 - padding] {
            bits = (bits << 6) | value(byte)?;
        }
        bits <<= 6 * padding as u32;
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - padding]);
    }
    Some(out)
}

/// The lengths of an `HTTP_*` pair and its name, upper-cased in place.
fn put_http_name(out: &mut BytesMut, name: &http::HeaderName, value_len: usize) {
    let name = name.as_str().as_bytes();
    put_pair_lengths(out, 5 + name.len(), value_len);
    out.put_slice(b"HTTP_");
    for &byte in name {
        out.put_u8(if byte == b'-' {
            b'_'
        } else {
            byte.to_ascii_uppercase()
        });
    }
}

/// An IP address as text, without the formatting machinery for IPv4.
#[derive(Default)]
struct IpText {
    buf: Vec<u8>,
}

impl IpText {
    fn format(&mut self, addr: &SocketAddr) -> &[u8] {
        self.buf.clear();
        let v4 = match addr {
            SocketAddr::V4(v4) => Some(*v4.ip()),
            // IPv4 clients on a dual-stack socket show as themselves.
            SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped(),
        };
        match v4 {
            Some(ip) => {
                let mut digits = itoa::Buffer::new();
                for (index, octet) in ip.octets().iter().enumerate() {
                    if index > 0 {
                        self.buf.push(b'.');
                    }
                    self.buf.extend_from_slice(digits.format(*octet).as_bytes());
                }
            }
            None => self.buf.extend_from_slice(addr.ip().to_string().as_bytes()),
        }
        &self.buf
    }
}

/// The Host header without its port, if it is a plausible host name.
fn server_name<'a>(request: &'a CgiRequest<'_>) -> Option<&'a str> {
    let host = request
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri.host())?;
    let name = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map(|(name, _)| name).unwrap_or(host)
    };
    (!name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b)))
    .then_some(name)
}

#[cfg(test)]
mod tests {
    use super::{base64_decode, is_plain_name, remote_user};
    use http::{HeaderMap, HeaderValue, header};

    #[test]
    fn only_letters_digits_and_dashes_pass() {
        assert!(is_plain_name("x-forwarded-for"));
        assert!(is_plain_name("x-api-key2"));
        for name in ["x_real_ip", "x.forwarded.for", "x[forwarded", "x~y"] {
            assert!(!is_plain_name(name), "{name}");
        }
    }

    #[test]
    fn base64_round_trips_and_refuses_garbage() {
        assert_eq!(base64_decode(b"YWxpY2U6c2VjcmV0").unwrap(), b"alice:secret");
        assert_eq!(base64_decode(b"YQ==").unwrap(), b"a");
        assert_eq!(base64_decode(b"YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode(b"").unwrap(), b"");
        assert!(base64_decode(b"YQ=").is_none());
        assert!(base64_decode(b"YQ==YQ==").is_none());
        assert!(base64_decode(b"Y*==").is_none());
    }

    #[test]
    fn remote_user_is_the_basic_auth_name() {
        let mut headers = HeaderMap::new();
        assert_eq!(remote_user(&headers), b"");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6c2VjcmV0"),
        );
        assert_eq!(remote_user(&headers), b"alice");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(remote_user(&headers), b"");
    }
}
