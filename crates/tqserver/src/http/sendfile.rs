//! X-Accel-Redirect and X-Sendfile: a script hands a download to tqserver.
//! PHP checks who may have the file and answers with a header naming it;
//! tqserver serves the file itself (Range, conditional requests, the file's
//! Content-Type unless PHP set one, PHP's other headers such as
//! Content-Disposition kept), the worker is free at once, and the header
//! never reaches the client.
//!
//! Where a header may point is the app's to say, and nothing else is ever
//! served:
//! - `X-Accel-Redirect: /protected/report.pdf` names a URL under one of the
//!   app's `internal:` locations, served from that location's `root` (a
//!   directory outside the document root, so no client URL reaches it);
//! - `X-Sendfile: /srv/app/private/report.pdf` names a file inside one of
//!   the app's `x_sendfile:` directories.
//!
//! A target outside those places is a 500 and an error naming the app and
//! the header's value. An app with neither setting gets the header dropped
//! (never passed to the client: it names a path on the server) and PHP's
//! response as it is, with a warning once per app and header.
//!
//! Files are opened beneath their directory with `openat2` and the app's
//! `security.symlinks`, as the document root's are.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::Mutex;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use tracing::{error, info, warn};

use super::body::Body;
use super::{errors, static_files};
use crate::config::AppConfig;
use crate::docroot::DocumentRoot;

const X_ACCEL_REDIRECT: HeaderName = HeaderName::from_static("x-accel-redirect");
const X_SENDFILE: HeaderName = HeaderName::from_static("x-sendfile");

/// A response extension: PHP asked for this file to be served instead of
/// its body.
#[derive(Clone, Debug)]
pub enum Redirect {
    /// X-Accel-Redirect: a URL under an `internal:` location.
    Accel(HeaderValue),
    /// X-Sendfile: a file path inside an `x_sendfile:` directory.
    Sendfile(HeaderValue),
}

impl Redirect {
    fn header(&self) -> (&'static str, &HeaderValue) {
        match self {
            Redirect::Accel(value) => ("X-Accel-Redirect", value),
            Redirect::Sendfile(value) => ("X-Sendfile", value),
        }
    }
}

/// Takes X-Accel-Redirect and X-Sendfile out of PHP's headers. Returns what
/// to serve if the app configured the header used; a header it did not
/// configure is dropped (and logged once).
pub fn take(config: &AppConfig, headers: &mut HeaderMap) -> Option<Redirect> {
    let accel = headers.remove(X_ACCEL_REDIRECT);
    let sendfile = headers.remove(X_SENDFILE);
    if let Some(value) = accel {
        if !config.internal.is_empty() {
            return Some(Redirect::Accel(value));
        }
        warn_unconfigured(config, "X-Accel-Redirect", "internal");
    }
    if let Some(value) = sendfile {
        if !config.x_sendfile.is_empty() {
            return Some(Redirect::Sendfile(value));
        }
        warn_unconfigured(config, "X-Sendfile", "x_sendfile");
    }
    None
}

fn warn_unconfigured(config: &AppConfig, header: &'static str, key: &str) {
    static WARNED: Mutex<BTreeSet<(String, &'static str)>> = Mutex::new(BTreeSet::new());
    let first = WARNED
        .lock()
        .map(|mut warned| warned.insert((config.name.clone(), header)))
        .unwrap_or(false);
    if first {
        warn!(
            worker = %config.name,
            "a script sent {header}, which this app does not allow: the header is dropped and PHP's own response sent; set `{key}` in {} to serve such files",
            config.file.display()
        );
    }
}

/// Serves the file a redirect names, with PHP's headers (`php`) over the
/// file's, or refuses.
pub fn serve(
    config: &AppConfig,
    method: &Method,
    request_headers: &HeaderMap,
    php: HeaderMap,
    redirect: Redirect,
) -> Response<Body> {
    let (name, value) = redirect.header();
    let found = match &redirect {
        Redirect::Accel(value) => accel_target(config, value.as_bytes()),
        Redirect::Sendfile(value) => sendfile_target(config, value.as_bytes()),
    };
    let Some((dir, relative)) = found else {
        error!(
            worker = %config.name,
            "{name}: {:?} is outside every place this app allows (internal / x_sendfile); not served",
            String::from_utf8_lossy(value.as_bytes())
        );
        return errors::status(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let opened = DocumentRoot::open(dir, &config.name).and_then(|root| {
        let file = root
            .open_beneath(&relative, config.security.symlinks)
            .map_err(std::io::Error::from)?;
        let meta = file.metadata()?;
        Ok((file, meta))
    });
    let (file, meta) = match opened {
        Ok((file, meta)) if meta.is_file() => (file, meta),
        Ok(_) | Err(_) => {
            info!(
                worker = %config.name,
                "{name}: {:?}: no such file",
                String::from_utf8_lossy(value.as_bytes())
            );
            return errors::status(StatusCode::NOT_FOUND);
        }
    };
    // As nginx: the file is got with GET whatever the script was asked with.
    let method = if method == Method::HEAD {
        &Method::HEAD
    } else {
        &Method::GET
    };
    let path = dir.join(OsStr::from_bytes(&relative));
    let mut response = static_files::serve(method, request_headers, file, &meta, &path, None);
    let headers = response.headers_mut();
    let mut last: Option<HeaderName> = None;
    for (name, value) in php {
        // HeaderMap's owned iterator names only the first of several values.
        let name = match name {
            Some(name) => {
                last = Some(name.clone());
                name
            }
            None => match &last {
                Some(name) => name.clone(),
                None => continue,
            },
        };
        if is_the_files(&name) {
            continue;
        }
        if name == header::CONTENT_TYPE {
            // One the script chose wins over the file's; PHP's default
            // (`default_mimetype`, sent when the script set none) does not.
            if !value
                .as_bytes()
                .eq_ignore_ascii_case(PHP_DEFAULT_CONTENT_TYPE.as_bytes())
            {
                headers.insert(header::CONTENT_TYPE, value);
            }
            continue;
        }
        headers.append(name, value);
    }
    response
}

/// What PHP sends as Content-Type when a script sets none (its
/// `default_mimetype` and `default_charset` defaults).
const PHP_DEFAULT_CONTENT_TYPE: &str = "text/html; charset=UTF-8";

/// Headers that describe the file's bytes: the file's own, never PHP's.
fn is_the_files(name: &HeaderName) -> bool {
    *name == header::CONTENT_LENGTH
        || *name == header::CONTENT_RANGE
        || *name == header::ACCEPT_RANGES
        || *name == header::ETAG
        || *name == header::LAST_MODIFIED
        || *name == header::CONTENT_ENCODING
        || *name == header::TRANSFER_ENCODING
}

/// An X-Accel-Redirect URL (query dropped, percent-decoded once) under one
/// of the app's `internal:` locations: that location's root and the path
/// below it.
fn accel_target<'a>(config: &'a AppConfig, value: &[u8]) -> Option<(&'a Path, Vec<u8>)> {
    let path = value.split(|&b| b == b'?').next().unwrap_or_default();
    let decoded: Vec<u8> = percent_encoding::percent_decode(path).collect();
    let location = config
        .internal
        .iter()
        .filter(|internal| decoded.starts_with(internal.location.as_bytes()))
        .max_by_key(|internal| internal.location.len())?;
    let rest = &decoded[location.location.len()..];
    Some((&location.root, plain_relative(rest)?))
}

/// An X-Sendfile path inside one of the app's `x_sendfile:` directories.
fn sendfile_target<'a>(config: &'a AppConfig, value: &[u8]) -> Option<(&'a Path, Vec<u8>)> {
    let path = Path::new(OsStr::from_bytes(value));
    let dir = config.x_sendfile.iter().find(|dir| path.starts_with(dir))?;
    let rest = path.strip_prefix(dir).ok()?;
    Some((dir, plain_relative(rest.as_os_str().as_bytes())?))
}

/// A relative path of plain names: no `..`, no `.`, no control
/// characters or backslashes, not empty.
fn plain_relative(path: &[u8]) -> Option<Vec<u8>> {
    if path.iter().any(|&b| b < 0x20 || b == 0x7f || b == b'\\') {
        return None;
    }
    let mut names: Vec<&[u8]> = Vec::new();
    for component in Path::new(OsStr::from_bytes(path)).components() {
        match component {
            Component::Normal(name) => names.push(name.as_bytes()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    if names.is_empty() {
        return None;
    }
    Some(names.join(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::plain_relative;

    #[test]
    fn only_plain_relative_paths_pass() {
        assert_eq!(plain_relative(b"a/b.pdf").unwrap(), b"a/b.pdf");
        assert_eq!(plain_relative(b"/a//./b.pdf").unwrap(), b"a/b.pdf");
        assert!(plain_relative(b"../x").is_none());
        assert!(plain_relative(b"a/../../x").is_none());
        assert!(plain_relative(b"a\\b").is_none());
        assert!(plain_relative(b"a\nb").is_none());
        assert!(plain_relative(b"").is_none());
        assert!(plain_relative(b"/").is_none());
    }
}
