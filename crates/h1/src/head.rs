//! Request heads: parsing (httparse's, within the configured limits), the
//! Host rules of RFC 9112 3.2, and how the body is framed. The rules that
//! keep requests unambiguous between tqserver and anything in front of it:
//! a body is delimited by Content-Length or by chunked Transfer-Encoding,
//! never both; several different Content-Lengths, other transfer codings,
//! or chunked on HTTP/1.0 are refused; HTTP/1.1 requests have exactly one
//! valid Host.

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// What bounds a request head.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Most bytes in the head (request line and fields).
    pub max_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
}

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Why a request head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Longer than `max_bytes`, or more than `max_headers` fields (431).
    TooLarge,
    /// The request line alone is longer than the head may be.
    UriTooLong,
    Malformed(&'static str),
    /// Not HTTP/1.0 or 1.x (505).
    Version,
}

impl HeadError {
    /// The status the client gets, and the reason for the log.
    pub fn status(self) -> (StatusCode, &'static str) {
        match self {
            Self::TooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            ),
            Self::UriTooLong => (StatusCode::URI_TOO_LONG, "request target too long"),
            Self::Version => (
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "unsupported HTTP version",
            ),
            Self::Malformed(why) => (StatusCode::BAD_REQUEST, why),
        }
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is
/// incomplete (and within the limits); once complete, its bytes are split
/// off `buf` (shared by the parsed head, not copied) and what follows, a
/// body or the next request, stays.
pub fn parse_head(buf: &mut BytesMut, limits: HeadLimits) -> Result<Option<Head>, HeadError> {
    let HeadLimits {
        max_bytes,
        max_headers,
    } = limits;
    // Tolerate blank lines before a request (RFC 9112 2.2), CRLF or LF.
    loop {
        if buf.starts_with(b"\r\n") {
            let _ = buf.split_to(2);
        } else if buf.starts_with(b"\n") {
            let _ = buf.split_to(1);
        } else {
            break;
        }
    }
    // The usual limit fits on the stack; a larger configured one is honoured
    // with a heap allocation.
    let (mut stack, mut heap);
    let slots: &mut [httparse::Header<'_>] = if max_headers <= 128 {
        stack = [httparse::EMPTY_HEADER; 128];
        &mut stack[..max_headers]
    } else {
        heap = vec![httparse::EMPTY_HEADER; max_headers];
        &mut heap
    };
    // A later HTTP/1.x is served as HTTP/1.1 (RFC 9110 2.5: a minor
    // version is compatible), which httparse does not know.
    downgrade_minor_version(buf);
    let mut parsed = httparse::Request::new(slots);
    let too_large = |buf: &[u8]| {
        let line_end = memchr::memchr(b'\n', &buf[..buf.len().min(max_bytes + 1)]);
        if line_end.is_none() {
            HeadError::UriTooLong
        } else {
            HeadError::TooLarge
        }
    };
    let length = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_bytes {
                Err(too_large(buf))
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Version),
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    };
    if length > max_bytes {
        return Err(too_large(buf));
    }
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(HeadError::Version),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Malformed("bad method"))?;
    let path = parsed.path.unwrap_or("");
    // Offsets into the buffer, so the head's bytes can be shared, not copied.
    let base = buf.as_ptr() as usize;
    let offset = |slice: &[u8]| slice.as_ptr() as usize - base;
    let path_at = (offset(path.as_bytes()), path.len());
    let fields: Vec<(usize, usize, usize, usize)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                offset(h.name.as_bytes()),
                h.name.len(),
                offset(h.value),
                h.value.len(),
            )
        })
        .collect();
    let head = buf.split_to(length).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_at.0..path_at.0 + path_at.1))
        .map_err(|_| HeadError::Malformed("bad request target"))?;
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name_at, name_len, value_at, value_len) in fields {
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len])
            .map_err(|_| HeadError::Malformed("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
            .map_err(|_| HeadError::Malformed("bad header value"))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        method,
        uri,
        version,
        headers,
    }))
}

/// Rewrites `HTTP/1.2` (to `.9`) at the end of a complete request line to
/// `HTTP/1.1`; anything else is left for the parser to refuse.
pub fn downgrade_minor_version(buf: &mut BytesMut) {
    let Some(end) = memchr::memchr(b'\n', buf) else {
        return;
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let Some(at) = line.len().checked_sub(8) else {
        return;
    };
    if line[at..at + 7] == *b"HTTP/1." && (b'2'..=b'9').contains(&line[at + 7]) {
        buf[at + 7] = b'1';
    }
}

/// Checks the request's authority (RFC 9112 3.2): an HTTP/1.1 request has
/// exactly one Host; a Host is a valid `uri-host [":" port]`; in an
/// absolute-form target the target's authority wins and replaces Host, and
/// userinfo in it is refused (RFC 9110 4.2.4).
pub fn check_authority(head: &mut Head) -> Result<(), &'static str> {
    // Host itself is checked whatever the target's form (RFC 9112 3.2).
    let mut hosts = head.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err("more than one Host"),
        (None, _) if head.version == Version::HTTP_11 => {
            return Err("HTTP/1.1 request without Host");
        }
        (Some(host), None) if !valid_host(host.as_bytes()) => return Err("invalid Host"),
        _ => {}
    }
    if let Some(authority) = head.uri.authority() {
        match head.uri.scheme_str() {
            Some(scheme)
                if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") => {}
            _ => return Err("request target with a scheme other than http"),
        }
        if authority.as_str().contains('@') {
            return Err("userinfo in the request target");
        }
        if !valid_host(authority.as_str().as_bytes()) {
            return Err("invalid host in the request target");
        }
        let value = HeaderValue::from_str(authority.as_str())
            .map_err(|_| "invalid host in the request target")?;
        // The target's authority wins over Host (RFC 9112 3.2.2).
        head.headers.insert(header::HOST, value);
    }
    Ok(())
}

/// `uri-host [":" port]` (RFC 3986): a bracketed IP literal or a reg-name
/// (unreserved, percent-encoded and sub-delims characters), never empty
/// (nginx refuses an empty Host too).
pub fn valid_host(host: &[u8]) -> bool {
    let (name, port) = if host.first() == Some(&b'[') {
        let Some(end) = host.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &host[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match &host[end + 1..] {
            [] => (&host[..=end], None),
            [b':', port @ ..] => (&host[..=end], Some(port)),
            _ => return false,
        }
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
            None => (host, None),
        }
    };
    let name_ok = name.first() == Some(&b'[')
        || (!name.is_empty()
            && name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b)));
    name_ok
        && port.is_none_or(|port| {
            port.len() <= 5
                && port.iter().all(u8::is_ascii_digit)
                && (port.is_empty()
                    || std::str::from_utf8(port).is_ok_and(|p| p.parse::<u16>().is_ok()))
        })
}

/// How the request body is delimited, refusing anything ambiguous.
pub fn framing(head: &Head) -> Result<Framing, (StatusCode, &'static str)> {
    let bad = |why| Err((StatusCode::BAD_REQUEST, why));
    let mut transfer = head.headers.get_all(header::TRANSFER_ENCODING).iter();
    let chunked = match (transfer.next(), transfer.next()) {
        (None, _) => false,
        (Some(value), None) if value.as_bytes().eq_ignore_ascii_case(b"chunked") => true,
        _ => {
            return Err((
                StatusCode::NOT_IMPLEMENTED,
                "only chunked transfer coding is supported",
            ));
        }
    };
    let mut length = None;
    for value in head.headers.get_all(header::CONTENT_LENGTH) {
        let parsed = std::str::from_utf8(value.as_bytes())
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok());
        match (parsed, length) {
            (None, _) => return bad("bad Content-Length"),
            (Some(a), Some(b)) if a != b => return bad("conflicting Content-Length"),
            (Some(a), _) => length = Some(a),
        }
    }
    match (chunked, length) {
        (true, Some(_)) => bad("both Content-Length and Transfer-Encoding"),
        (true, None) if head.version == Version::HTTP_10 => bad("chunked body on HTTP/1.0"),
        (true, None) => Ok(Framing::Chunked),
        (false, Some(length)) => Ok(Framing::Length(length)),
        (false, None) => Ok(Framing::None),
    }
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value
            .to_str()
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

pub fn wants_keep_alive(head: &Head) -> bool {
    match head.version {
        Version::HTTP_11 => !connection_has(&head.headers, "close"),
        _ => connection_has(&head.headers, "keep-alive"),
    }
}

pub fn expects_continue(head: &Head) -> bool {
    head.version == Version::HTTP_11
        && head
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn hosts() {
        for good in [
            "localhost",
            "example.com:8080",
            "127.0.0.1",
            "[::1]",
            "[::1]:80",
            "xn--caf-dma.example",
            "a.b:",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            ":80",
            "evil.com/x",
            "evil.com x",
            "a b",
            "host:port",
            "host:123456",
            "host:65536",
            "host:99999",
            "[::1",
            "[zz]",
            "[::1]x",
            "user@host",
            "a\\b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn later_minor_versions_become_1_1() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.2\r\nHost: x\r\n\r\n"[..]);
        downgrade_minor_version(&mut buf);
        assert!(buf.starts_with(b"GET / HTTP/1.1\r\n"));
        for other in [&b"GET / HTTP/2.0\r\n"[..], b"GET / HTTP/1.0\r\n", b"GET /"] {
            let mut buf = BytesMut::from(other);
            downgrade_minor_version(&mut buf);
            assert_eq!(&buf[..], other);
        }
    }

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 8192,
        max_headers: 32,
    };

    #[test]
    fn a_head_is_split_off_and_the_rest_stays() {
        let mut buf = BytesMut::from(
            &b"\r\nPOST /x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET"[..],
        );
        let mut head = parse_head(&mut buf, LIMITS).unwrap().unwrap();
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.uri.path(), "/x");
        assert_eq!(&buf[..], b"abcGET");
        assert_eq!(check_authority(&mut head), Ok(()));
        assert_eq!(framing(&head), Ok(Framing::Length(3)));
        assert!(wants_keep_alive(&head));

        let mut partial = BytesMut::from(&b"GET / HTTP/1.1\r\nHost"[..]);
        assert!(parse_head(&mut partial, LIMITS).unwrap().is_none());
        assert_eq!(partial.len(), 20);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let head = |fields: &str| {
            let text = format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
            parse_head(&mut BytesMut::from(text.as_bytes()), LIMITS)
                .unwrap()
                .unwrap()
        };
        assert_eq!(
            framing(&head("Transfer-Encoding: chunked\r\n")),
            Ok(Framing::Chunked)
        );
        for fields in [
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
            "Content-Length: 3\r\nContent-Length: 4\r\n",
            "Content-Length: +3\r\n",
            "Transfer-Encoding: gzip\r\n",
        ] {
            assert!(framing(&head(fields)).is_err(), "{fields}");
        }
    }

    #[test]
    fn limits_give_their_own_errors() {
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
        assert_eq!(
            parse_head(&mut BytesMut::from(long.as_bytes()), LIMITS).unwrap_err(),
            HeadError::UriTooLong
        );
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse_head(&mut BytesMut::from(text.as_bytes()), LIMITS).unwrap_err(),
            HeadError::TooLarge
        );
        let mut v2 = BytesMut::from(&b"GET / HTTP/2.0\r\n\r\n"[..]);
        assert_eq!(parse_head(&mut v2, LIMITS).unwrap_err(), HeadError::Version);
    }

    proptest::proptest! {
        /// Whatever the bytes, parsing never panics and never takes more
        /// than the buffer held; a head it returns took at least a line.
        #[test]
        fn any_bytes_parse_or_are_refused(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)
        ) {
            let mut buf = BytesMut::from(&bytes[..]);
            let before = buf.len();
            if let Ok(Some(mut head)) = parse_head(&mut buf, LIMITS) {
                proptest::prop_assert!(buf.len() + 4 <= before);
                let _ = check_authority(&mut head);
                let _ = framing(&head);
            } else {
                proptest::prop_assert!(buf.len() <= before);
            }
        }
    }
}
