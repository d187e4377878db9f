//! Static files: content type, Last-Modified and ETag, conditional requests
//! (If-None-Match, If-Modified-Since), single byte ranges (Range, If-Range),
//! and HEAD. Small files are read in one go; larger ones stream in chunks.

use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use super::body::{Body, FileStream};
use super::errors;

/// Files up to this size are read at once into one buffer.
const SMALL_FILE: u64 = 256 * 1024;

pub fn serve(
    method: &Method,
    headers: &HeaderMap,
    mut file: File,
    meta: &Metadata,
    path: &Path,
    cache_control: Option<&str>,
) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = errors::status(StatusCode::METHOD_NOT_ALLOWED);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let size = meta.len();
    let modified = UNIX_EPOCH + Duration::from_secs(meta.mtime().max(0) as u64);
    let etag = format!("\"{:x}-{:x}\"", meta.mtime(), size);

    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::LAST_MODIFIED, httpdate::fmt_http_date(modified))
        .header(header::ETAG, &etag);
    if let Some(cache_control) = cache_control {
        builder = builder.header(header::CACHE_CONTROL, cache_control);
    }

    if not_modified(headers, &etag, modified) {
        // Compression gives the 304 the Vary its 200 would have had.
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .extension(super::compress::NotModifiedType(content_type(path)))
            .body(Body::Empty)
            .unwrap_or_else(|_| errors::status(StatusCode::INTERNAL_SERVER_ERROR));
    }

    builder = builder.header(header::CONTENT_TYPE, content_type(path));
    let range = headers
        .get(header::RANGE)
        .filter(|_| if_range_matches(headers, &etag, modified))
        .map(|value| parse_range(value.as_bytes(), size));
    let (status, start, length) = match range {
        None | Some(Range::Ignore) => (StatusCode::OK, 0, size),
        Some(Range::Unsatisfiable) => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .header(header::CONTENT_LENGTH, 0)
                .body(Body::Empty)
                .unwrap_or_else(|_| errors::status(StatusCode::INTERNAL_SERVER_ERROR));
        }
        Some(Range::Bytes { start, end }) => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
    };
    builder = builder
        .status(status)
        .header(header::CONTENT_LENGTH, length);

    let body = if method == Method::HEAD || length == 0 {
        Body::Empty
    } else if start > 0 && file.seek(SeekFrom::Start(start)).is_err() {
        return errors::status(StatusCode::INTERNAL_SERVER_ERROR);
    } else if length <= SMALL_FILE {
        let mut buf = BytesMut::zeroed(length as usize);
        if file.read_exact(&mut buf).is_err() {
            return errors::status(StatusCode::INTERNAL_SERVER_ERROR);
        }
        Body::Bytes(Some(buf.freeze()))
    } else {
        Body::File(FileStream::new(file, length))
    };
    builder
        .body(body)
        .unwrap_or_else(|_| errors::status(StatusCode::INTERNAL_SERVER_ERROR))
}

fn content_type(path: &Path) -> HeaderValue {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let text = if mime.type_() == mime_guess::mime::TEXT
        || mime.essence_str() == "application/javascript"
        || mime.essence_str() == "application/json"
        || mime.essence_str() == "image/svg+xml"
    {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_owned()
    };
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// RFC 9110 13.2.2: If-None-Match wins over If-Modified-Since.
fn not_modified(headers: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    if let Some(value) = headers.get(header::IF_NONE_MATCH) {
        return etag_list_matches(value.as_bytes(), etag);
    }
    headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| modified <= since)
}

/// Weak comparison against a list such as `"a", W/"b"` or `*`.
fn etag_list_matches(list: &[u8], etag: &str) -> bool {
    let list = String::from_utf8_lossy(list);
    list.split(',').any(|candidate| {
        let candidate = candidate.trim();
        candidate == "*" || candidate.trim_start_matches("W/") == etag
    })
}

/// If-Range: the range applies only if the validator still matches exactly
/// (RFC 9110 13.1.5): the same strong ETag, or the very Last-Modified date
/// this file has; a later date is not a match (the file may have changed
/// and changed back within that time).
fn if_range_matches(headers: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    let Some(value) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if value.starts_with('"') {
        return value == etag;
    }
    httpdate::parse_http_date(value)
        .is_ok_and(|date| httpdate::fmt_http_date(modified) == httpdate::fmt_http_date(date))
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// Inclusive byte positions.
    Bytes {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
    /// Malformed or several ranges: serve the whole file, which RFC 9110
    /// 14.2 allows. Several ranges would need multipart/byteranges, which
    /// clients rarely ask for (download managers ask for one range per
    /// connection); they get the whole file with 200, never a wrong part.
    Ignore,
}

fn parse_range(value: &[u8], size: u64) -> Range {
    let Ok(value) = std::str::from_utf8(value) else {
        return Range::Ignore;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Range::Ignore;
    };
    if spec.contains(',') {
        return Range::Ignore;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Ignore;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix: the last N bytes.
        let Ok(suffix) = last.parse::<u64>() else {
            return Range::Ignore;
        };
        if suffix == 0 || size == 0 {
            return Range::Unsatisfiable;
        }
        return Range::Bytes {
            start: size.saturating_sub(suffix),
            end: size - 1,
        };
    }
    let Ok(start) = first.parse::<u64>() else {
        return Range::Ignore;
    };
    let end = if last.is_empty() {
        size.saturating_sub(1)
    } else {
        match last.parse::<u64>() {
            Ok(end) if end >= start => end.min(size.saturating_sub(1)),
            _ => return Range::Ignore,
        }
    };
    if start >= size {
        return Range::Unsatisfiable;
    }
    Range::Bytes { start, end }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range(b"bytes=0-9", 100),
            Range::Bytes { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(b"bytes=90-", 100),
            Range::Bytes { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(b"bytes=-10", 100),
            Range::Bytes { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(b"bytes=50-500", 100),
            Range::Bytes { start: 50, end: 99 }
        );
        assert_eq!(parse_range(b"bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-1,5-6", 100), Range::Ignore);
        assert_eq!(parse_range(b"items=0-1", 100), Range::Ignore);
        assert_eq!(parse_range(b"bytes=9-1", 100), Range::Ignore);
    }

    #[test]
    fn etag_lists() {
        assert!(etag_list_matches(b"\"a\", W/\"b\"", "\"b\""));
        assert!(etag_list_matches(b"*", "\"x\""));
        assert!(!etag_list_matches(b"\"a\"", "\"b\""));
    }

    #[test]
    fn if_range_needs_the_exact_date_or_etag() {
        use std::time::{Duration, UNIX_EPOCH};
        let modified = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let with = |value: String| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_RANGE, value.parse().unwrap());
            if_range_matches(&headers, "\"abc\"", modified)
        };
        assert!(if_range_matches(&HeaderMap::new(), "\"abc\"", modified));
        assert!(with(httpdate::fmt_http_date(modified)));
        assert!(!with(httpdate::fmt_http_date(
            modified + Duration::from_secs(60)
        )));
        assert!(!with(httpdate::fmt_http_date(
            modified - Duration::from_secs(60)
        )));
        assert!(with("\"abc\"".into()));
        assert!(!with("\"abd\"".into()));
        assert!(!with("W/\"abc\"".into()));
    }
}
