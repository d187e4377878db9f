//! Parses the CGI response head that PHP writes before its body:
//! `Status:`, `Location:` and the other headers, repeated ones kept (several
//! Set-Cookie), hop-by-hop ones dropped.

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Largest response head accepted from a worker.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgiError {
    #[error("response head longer than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("malformed response header line {0:?}")]
    BadHeader(String),
    #[error("bad Status header {0:?}")]
    BadStatus(String),
}

#[derive(Debug)]
pub struct CgiHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

impl CgiHead {
    /// A `Status: 103` head: Early Hints, with the final head still to come.
    pub fn is_early_hints(&self) -> bool {
        self.status == StatusCode::EARLY_HINTS
    }
}

/// Collects STDOUT until the blank line that ends the head.
#[derive(Default)]
pub struct HeadParser {
    buf: BytesMut,
}

impl HeadParser {
    /// Feeds one STDOUT chunk. Returns the head and the body bytes that
    /// followed it once the head is complete.
    pub fn push(&mut self, data: Bytes) -> Result<Option<(CgiHead, Bytes)>, CgiError> {
        if self.buf.is_empty() {
            // Common case: the whole head is in the first chunk; no copy.
            if let Some(end) = head_end(&data) {
                let head = parse_head(&data[..end])?;
                return Ok(Some((head, data.slice(end..))));
            }
        }
        self.buf.extend_from_slice(&data);
        match head_end(&self.buf) {
            Some(end) => {
                let all = self.buf.split().freeze();
                let head = parse_head(&all[..end])?;
                Ok(Some((head, all.slice(end..))))
            }
            None if self.buf.len() > MAX_HEAD_BYTES => Err(CgiError::HeadTooLarge),
            None => Ok(None),
        }
    }

    /// The response ended before a blank line: whatever came is the head.
    pub fn finish(&mut self) -> Result<CgiHead, CgiError> {
        let all = self.buf.split();
        parse_head(&all)
    }
}

/// Offset just past the blank line ("\r\n\r\n" or "\n\n").
fn head_end(data: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for newline in memchr::memchr_iter(b'\n', data) {
        let line = &data[line_start..newline];
        if line.is_empty() || line == b"\r" {
            return Some(newline + 1);
        }
        line_start = newline + 1;
    }
    None
}

fn parse_head(head: &[u8]) -> Result<CgiHead, CgiError> {
    let mut status = None;
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return Err(CgiError::BadHeader(
                String::from_utf8_lossy(line).into_owned(),
            ));
        };
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"status") {
            status = Some(match parse_status(value) {
                Ok(status) => status,
                // An interim head (headers_send(103) in the embed runtime):
                // the final head follows it.
                Err(_) if value.starts_with(b"103") && (value.len() == 3 || value[3] == b' ') => {
                    StatusCode::EARLY_HINTS
                }
                Err(err) => return Err(err),
            });
            continue;
        }
        let Ok(name) = HeaderName::from_bytes(name) else {
            return Err(CgiError::BadHeader(
                String::from_utf8_lossy(line).into_owned(),
            ));
        };
        if is_hop_by_hop(&name) {
            continue;
        }
        let Ok(value) = HeaderValue::from_bytes(value) else {
            return Err(CgiError::BadHeader(
                String::from_utf8_lossy(line).into_owned(),
            ));
        };
        headers.append(name, value);
    }
    let status = match status {
        Some(status) => status,
        // CGI: a Location without a Status is a client redirect.
        None if headers.contains_key(http::header::LOCATION) => StatusCode::FOUND,
        None => StatusCode::OK,
    };
    Ok(CgiHead { status, headers })
}

/// "404" or "404 Not Found": three digits, then nothing or a space. A 1xx
/// cannot be a final response, so only 200..=999 pass.
pub(crate) fn parse_status(value: &[u8]) -> Result<StatusCode, CgiError> {
    let bad = || CgiError::BadStatus(String::from_utf8_lossy(value).into_owned());
    let (digits, rest) = value.split_at(value.len().min(3));
    if digits.len() != 3 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    if !rest.is_empty() && rest[0] != b' ' && rest[0] != b'\t' {
        return Err(bad());
    }
    match StatusCode::from_bytes(digits) {
        Ok(status) if status.as_u16() >= 200 => Ok(status),
        _ => Err(bad()),
    }
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &value[start..end]
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-connection"
            | "te"
            | "trailer"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_head_in_one_chunk() {
        let mut parser = HeadParser::default();
        let (head, rest) = parser
            .push(Bytes::from_static(
                b"Status: 404 Not Found\r\nContent-type: text/html\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nbody",
            ))
            .unwrap()
            .unwrap();
        assert_eq!(head.status, StatusCode::NOT_FOUND);
        assert_eq!(head.headers.get_all("set-cookie").iter().count(), 2);
        assert_eq!(rest.as_ref(), b"body");
    }

    #[test]
    fn status_must_be_three_digits_and_final() {
        for good in [&b"404"[..], b"404 Not Found", b"200 OK", b"599"] {
            assert!(
                parse_status(good).is_ok(),
                "{}",
                String::from_utf8_lossy(good)
            );
        }
        for bad in [
            &b"4040"[..],
            b"40",
            b"abc",
            b"103 Early Hints",
            b"100",
            b"20x",
            b"",
        ] {
            assert!(
                parse_status(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn an_early_hints_head_comes_before_the_final_one() {
        let mut parser = HeadParser::default();
        let (hints, rest) = parser
            .push(Bytes::from_static(
                b"Status: 103\r\nLink: </a.css>; rel=preload\r\n\r\nStatus: 200 OK\r\nContent-Type: text/plain\r\n\r\nbody",
            ))
            .unwrap()
            .unwrap();
        assert!(hints.is_early_hints());
        assert_eq!(hints.headers["link"], "</a.css>; rel=preload");
        let mut parser = HeadParser::default();
        let (head, body) = parser.push(rest).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(body.as_ref(), b"body");
        // Other 1xx stay refused.
        assert!(
            HeadParser::default()
                .push(Bytes::from_static(b"Status: 102\r\n\r\n"))
                .is_err()
        );
    }

    #[test]
    fn head_split_across_chunks_with_bare_newlines() {
        let mut parser = HeadParser::default();
        assert!(
            parser
                .push(Bytes::from_static(b"Location: /x\n"))
                .unwrap()
                .is_none()
        );
        let (head, rest) = parser.push(Bytes::from_static(b"\nrest")).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::FOUND);
        assert_eq!(head.headers["location"], "/x");
        assert_eq!(rest.as_ref(), b"rest");
    }

    #[test]
    fn hop_by_hop_headers_dropped_and_garbage_refused() {
        let mut parser = HeadParser::default();
        let (head, _) = parser
            .push(Bytes::from_static(b"Connection: close\r\nX-A: 1\r\n\r\n"))
            .unwrap()
            .unwrap();
        assert!(head.headers.get("connection").is_none());
        assert_eq!(head.headers["x-a"], "1");
        let mut parser = HeadParser::default();
        assert!(
            parser
                .push(Bytes::from_static(b"no colon here\r\n\r\n"))
                .is_err()
        );
        let mut parser = HeadParser::default();
        assert!(
            parser
                .push(Bytes::from_static(b"Status: abc\r\n\r\n"))
                .is_err()
        );
    }

    #[test]
    fn oversized_head_is_refused() {
        let mut parser = HeadParser::default();
        let line = Bytes::from(format!("X-Big: {}\r\n", "a".repeat(1000)));
        let mut result = Ok(None);
        for _ in 0..100 {
            result = parser.push(line.clone());
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result.err(), Some(CgiError::HeadTooLarge));
    }
}
