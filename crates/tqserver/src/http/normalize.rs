//! The one normal form of a request path, from which the app is chosen and
//! the file resolved, so the two can never disagree.
//!
//! Routing on the raw path and resolving on the decoded one let
//! `/%62log/x`, `//blog/x` or `/blog/../x` name one app's prefix to the
//! router and another app's file to the resolver. Here the path is decoded
//! once (an encoded slash is a slash, as nginx treats it), refused if it
//! holds NUL, control characters or backslashes, or climbs above `/`, its
//! empty and `.` segments dropped and its `..` segments applied. The result
//! is re-encoded (every byte outside RFC 3986's `pchar`, and `%` itself), so
//! the resolver's own decoding gives back exactly these bytes.

use std::fmt::Write as _;

/// Why a path has no normal form (the request gets 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an origin-form path (does not start with `/`).
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// NUL, another control character, or a backslash.
    Forbidden,
    /// More `..` segments than there are segments to climb.
    Climbs,
}

impl PathError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotAbsolute => "request path does not start with '/'",
            Self::BadEscape => "malformed percent-encoding in path",
            Self::Forbidden => "control character or backslash in path",
            Self::Climbs => "path climbs above the document root",
        }
    }
}

/// The normal form of `raw` (the path of the request target, without its
/// query), percent-encoded.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    let raw = raw.as_bytes();
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode(raw)?;
    if decoded.iter().any(|&b| b < 0x20 || b == 0x7f || b == b'\\') {
        return Err(PathError::Forbidden);
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split(|&b| b == b'/').skip(1) {
        trailing_slash = false;
        match segment {
            b"" | b"." => trailing_slash = true,
            b".." => {
                segments.pop().ok_or(PathError::Climbs)?;
                trailing_slash = true;
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(raw.len());
    for segment in &segments {
        out.push('/');
        encode_into(&mut out, segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

fn decode(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut index = 0;
    while index < raw.len() {
        let byte = raw[index];
        if byte == b'%' {
            let high = raw.get(index + 1).and_then(|&b| hex(b));
            let low = raw.get(index + 2).and_then(|&b| hex(b));
            match (high, low) {
                (Some(high), Some(low)) => out.push((high * 16 + low) as u8),
                _ => return Err(PathError::BadEscape),
            }
            index += 3;
        } else {
            out.push(byte);
            index += 1;
        }
    }
    Ok(out)
}

/// Appends `segment`, encoding every byte that is not a `pchar` other than
/// `%` (RFC 3986 3.3).
fn encode_into(out: &mut String, segment: &[u8]) {
    for &byte in segment {
        let plain = byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte);
        if plain {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{PathError, normalize};

    #[test]
    fn one_form_for_every_spelling() {
        for (raw, normal) in [
            ("/", "/"),
            ("/blog", "/blog"),
            ("/blog/", "/blog/"),
            ("//blog//x", "/blog/x"),
            ("/%62log/x", "/blog/x"),
            ("/blog%2Fx", "/blog/x"),
            ("/x/../blog/y", "/blog/y"),
            ("/blog/./y/.", "/blog/y/"),
            ("/blog/y/..", "/blog/"),
            ("/a/%2e%2e/blog", "/blog"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/100%25", "/100%25"),
            ("/q%3Fx", "/q%3Fx"),
            ("/%FF", "/%FF"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(normal), "{raw}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(normalize("blog"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a%2"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%00b"), Err(PathError::Forbidden));
        assert_eq!(normalize("/a%0Ab"), Err(PathError::Forbidden));
        assert_eq!(normalize("/a%5Cb"), Err(PathError::Forbidden));
        assert_eq!(normalize("/.."), Err(PathError::Climbs));
        assert_eq!(normalize("/a/../.."), Err(PathError::Climbs));
        assert_eq!(normalize("/..%2F.."), Err(PathError::Climbs));
    }

    #[test]
    fn normal_form_is_a_fixed_point() {
        for raw in ["//a/./b/../c/", "/%2e/x%2fy", "/caf%c3%a9/%3f", "/a b"] {
            let once = normalize(raw).unwrap();
            assert_eq!(normalize(&once).unwrap(), once, "{raw}");
        }
    }

    proptest::proptest! {
        /// Paths made of the characters that matter (slashes, dots,
        /// escapes, backslashes, controls): normalizing never panics, and
        /// what comes out is clean and its own normal form.
        #[test]
        fn any_path_normalizes_to_a_clean_fixed_point(
            raw in "/[/.%2eEfF5cC0aA:@b\\\\\u{1}\u{e9}]{0,40}"
        ) {
            if let Ok(normal) = normalize(&raw) {
                proptest::prop_assert!(normal.starts_with('/'));
                proptest::prop_assert!(!normal.contains("//"));
                for segment in normal.split('/') {
                    proptest::prop_assert!(segment != "." && segment != "..");
                }
                proptest::prop_assert!(!normal.contains('\\'));
                proptest::prop_assert_eq!(normalize(&normal), Ok(normal.clone()));
            }
        }
    }
}
