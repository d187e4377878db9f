//! URL path → what to serve, the way nginx's
//! `try_files $uri $uri/ /index.php?$args` does, with the safety rules:
//!
//! - the path is percent-decoded once; NUL, other control characters and
//!   backslashes are refused (400), so a newline can never shift PATH_INFO
//!   (CVE-2019-11043);
//! - `.` and `..` segments are resolved; a path that climbs above the
//!   document root is refused (400);
//! - dot-named segments (`.env`, `.git/`) are 404 unless allowed;
//! - files are opened with `openat2(RESOLVE_BENEATH)` under the document
//!   root; a symlink that leads out of it is followed only as
//!   `security.symlinks` allows (see [`crate::docroot::symlinks`]), and each refusal
//!   is logged with its reason;
//! - only extensions in `php.limit_extensions` execute, and only a file that
//!   exists: `/uploads/image.jpg/x.php` never runs image.jpg, and a PHP file
//!   is never served as text;
//! - the app's `rules:` deny paths or keep scripts from running under them
//!   ([`crate::rules`]), on the same normalized path.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;

use crate::config::{AppConfig, SymlinkPolicy};
pub use crate::docroot::{DocumentRoot, Location};
use crate::rules::{DenyStatus, Verdict};

/// What a request path resolves to.
#[derive(Debug)]
pub enum Target {
    /// A file to send as it is.
    Static {
        file: File,
        meta: Metadata,
        path: PathBuf,
    },
    /// A script to run.
    Script(Script),
    /// A directory asked for without its trailing slash.
    AddSlash,
    /// A directory with no index file.
    Forbidden,
    NotFound,
    BadRequest(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// Path below the document root, starting with '/': "/index.php".
    pub name: String,
    /// Absolute file name.
    pub filename: PathBuf,
    /// Decoded path after the script ("/extra" for /x.php/extra), or "".
    pub path_info: String,
}

/// Resolves the part of the URL path below the app's route (`rest` starts
/// with '/' or is empty), still percent-encoded.
pub fn resolve(config: &AppConfig, root: &DocumentRoot, rest: &str) -> Target {
    let target = resolve_path(config, root, rest);
    apply_rules_to_target(config, root, target)
}

fn resolve_path(config: &AppConfig, root: &DocumentRoot, rest: &str) -> Target {
    if rest.is_empty() {
        // "/blog" for the app at /blog: its root directory, without the slash.
        return Target::AddSlash;
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(rest).collect();
    if decoded.iter().any(|&b| b < 0x20 || b == 0x7f || b == b'\\') {
        return Target::BadRequest("control character or backslash in path");
    }
    let trailing_slash = decoded.is_empty() || decoded.ends_with(b"/");
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                if segments.pop().is_none() {
                    return Target::BadRequest("path climbs above the document root");
                }
            }
            _ => segments.push(segment),
        }
    }
    if !config.security.allow_dotfiles
        && segments.iter().any(|segment| {
            segment.starts_with(b".")
                && !config
                    .security
                    .allowed_dot_paths
                    .iter()
                    .any(|allowed| allowed.as_bytes() == *segment)
        })
    {
        return Target::NotFound;
    }
    if let Some(denied) = apply_rules_to_request(config, &segments) {
        return denied;
    }
    let relative = segments.join(&b'/');
    let escape = config.security.symlinks;

    match root.open_beneath(&relative, escape) {
        Ok(file) => {
            let Ok(meta) = file.metadata() else {
                return Target::NotFound;
            };
            if meta.is_file() {
                let name = segments.last().copied().unwrap_or_default();
                if is_executable(config, name) {
                    let path_info = if trailing_slash && !segments.is_empty() {
                        "/"
                    } else {
                        ""
                    };
                    return script(root, &relative, path_info.to_owned());
                }
                if trailing_slash && !segments.is_empty() {
                    // "/style.css/" names a directory that does not exist.
                    return Target::NotFound;
                }
                if is_php_source(name) {
                    // PHP that is not configured to run is not shown either.
                    return Target::NotFound;
                }
                return Target::Static {
                    file,
                    meta,
                    path: root.path().join(OsStr::from_bytes(&relative)),
                };
            }
            if meta.is_dir() {
                if !trailing_slash {
                    return Target::AddSlash;
                }
                return directory_index(config, root, &relative, escape);
            }
            Target::NotFound
        }
        Err(Errno::ENOTDIR) => path_info_split(config, root, &segments, escape, trailing_slash),
        Err(Errno::ENOENT) => not_found(config, root, &segments, escape),
        // EXDEV: a symlink leads outside the root; ELOOP, EACCES and the rest
        // are as good as missing to a client.
        Err(_) => Target::NotFound,
    }
}

/// Extensions PHP code commonly hides behind; such files are never sent as
/// static files, whether or not they are configured to execute.
const PHP_SOURCE_EXTENSIONS: [&str; 12] = [
    ".php", ".php3", ".php4", ".php5", ".php7", ".php8", ".phtml", ".pht", ".phps", ".phar",
    ".inc", ".module",
];

fn is_php_source(name: &[u8]) -> bool {
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    let lower = name.to_ascii_lowercase();
    PHP_SOURCE_EXTENSIONS
        .iter()
        .any(|ext| lower.len() > ext.len() && lower.ends_with(ext))
}

fn is_executable(config: &AppConfig, name: &[u8]) -> bool {
    std::str::from_utf8(name).is_ok_and(|name| config.is_executable(name))
}

fn script(root: &DocumentRoot, relative: &[u8], path_info: String) -> Target {
    let relative = String::from_utf8_lossy(relative);
    Target::Script(Script {
        name: format!("/{relative}"),
        filename: root.path().join(relative.as_ref()),
        path_info,
    })
}

/// A directory: its first index file, else 403.
fn directory_index(
    config: &AppConfig,
    root: &DocumentRoot,
    relative: &[u8],
    escape: SymlinkPolicy,
) -> Target {
    for index in &config.index {
        let mut candidate = relative.to_vec();
        if !candidate.is_empty() {
            candidate.push(b'/');
        }
        candidate.extend_from_slice(index.as_bytes());
        let Ok(file) = root.open_beneath(&candidate, escape) else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        if config.is_executable(index) {
            return script(root, &candidate, String::new());
        }
        if is_php_source(index.as_bytes()) {
            continue;
        }
        return Target::Static {
            file,
            meta,
            path: root.path().join(OsStr::from_bytes(&candidate)),
        };
    }
    Target::Forbidden
}

/// Some segment of the path is a file: it runs with the rest as PATH_INFO if
/// it is a script; otherwise nothing is there.
fn path_info_split(
    config: &AppConfig,
    root: &DocumentRoot,
    segments: &[&[u8]],
    escape: SymlinkPolicy,
    trailing_slash: bool,
) -> Target {
    let mut prefix = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(segment);
        let Ok(file) = root.open_beneath(&prefix, escape) else {
            return Target::NotFound;
        };
        let Ok(meta) = file.metadata() else {
            return Target::NotFound;
        };
        if meta.is_dir() {
            continue;
        }
        if meta.is_file() && is_executable(config, segment) {
            let mut path_info = Vec::new();
            for rest in &segments[index + 1..] {
                path_info.push(b'/');
                path_info.extend_from_slice(rest);
            }
            if trailing_slash {
                path_info.push(b'/');
            }
            return script(
                root,
                &prefix,
                String::from_utf8_lossy(&path_info).into_owned(),
            );
        }
        return Target::NotFound;
    }
    Target::NotFound
}

/// Nothing at the path: the front controller takes it, unless the path names
/// a script (a missing .php is a 404, as nginx's `try_files $uri =404`).
fn not_found(
    config: &AppConfig,
    root: &DocumentRoot,
    segments: &[&[u8]],
    escape: SymlinkPolicy,
) -> Target {
    if segments
        .last()
        .is_some_and(|last| is_executable(config, last))
    {
        return Target::NotFound;
    }
    let Some(front) = &config.front_controller else {
        return Target::NotFound;
    };
    match root.open_beneath(front.as_bytes(), escape) {
        Ok(file) if file.metadata().is_ok_and(|m| m.is_file()) => {
            script(root, front.as_bytes(), String::new())
        }
        _ => Target::NotFound,
    }
}

/// The app's `rules:` on the requested path: a denied path answers as the
/// rule says, whatever is there.
fn apply_rules_to_request(config: &AppConfig, segments: &[&[u8]]) -> Option<Target> {
    match config.rules.verdict(segments) {
        Verdict::Deny { status, rule } => {
            tracing::debug!(
                worker = %config.name,
                path = %String::from_utf8_lossy(&segments.join(&b'/')),
                "denied by rules[{rule}] ({})",
                config.rules.0[rule].pattern
            );
            Some(denied(status))
        }
        Verdict::Allow | Verdict::StaticOnly { .. } => None,
    }
}

/// The app's `rules:` on what the path resolved to: a script under a
/// `static_only` path never runs (403), and a denied script or file (a
/// directory's index, `/x.php/info` for a glob on `*.php`) is not served.
/// The front controller runs for a missing path under a `static_only` path:
/// its code is not there.
fn apply_rules_to_target(config: &AppConfig, root: &DocumentRoot, target: Target) -> Target {
    if config.rules.is_empty() {
        return target;
    }
    let name = match &target {
        Target::Script(script) => script.name.as_bytes(),
        Target::Static { path, .. } => match path.strip_prefix(root.path()) {
            Ok(relative) => relative.as_os_str().as_bytes(),
            Err(_) => return target,
        },
        _ => return target,
    };
    let segments: Vec<&[u8]> = name
        .split(|&b| b == b'/')
        .filter(|s| !s.is_empty())
        .collect();
    match config.rules.verdict(&segments) {
        Verdict::Deny { status, rule } => {
            tracing::debug!(
                worker = %config.name,
                "{} denied by rules[{rule}] ({})",
                String::from_utf8_lossy(name),
                config.rules.0[rule].pattern
            );
            denied(status)
        }
        Verdict::StaticOnly { rule } if matches!(target, Target::Script(_)) => {
            tracing::debug!(
                worker = %config.name,
                "script {} not run: rules[{rule}] ({}) is static_only",
                String::from_utf8_lossy(name),
                config.rules.0[rule].pattern
            );
            Target::Forbidden
        }
        _ => target,
    }
}

fn denied(status: DenyStatus) -> Target {
    match status {
        DenyStatus::Forbidden => Target::Forbidden,
        DenyStatus::NotFound => Target::NotFound,
    }
}
