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
//!   root, so a symlink cannot lead outside it (unless allowed);
//! - only extensions in `php.limit_extensions` execute, and only a file that
//!   exists: `/uploads/image.jpg/x.php` never runs image.jpg, and a PHP file
//!   is never served as text.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

use crate::config::WorkerConfig;

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

/// See [`DocumentRoot::locate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Inside,
    Outside,
    Missing,
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

/// The document root of one worker, opened once.
#[derive(Debug)]
pub struct DocumentRoot {
    dir: OwnedFd,
    path: PathBuf,
}

impl DocumentRoot {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let dir = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            dir,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a file named by absolute path (a web server's SCRIPT_FILENAME)
    /// really is: inside this root, outside it, or nowhere. Symlinks are
    /// followed as far as the root allows, in one `openat2` for the common
    /// case of a path written under the root.
    pub fn locate(&self, file: &Path) -> Location {
        let result = match file.strip_prefix(&self.path) {
            Ok(relative) => self.open_beneath(relative.as_os_str().as_bytes(), false),
            // Written under another name (a symlinked root, `..`): resolve it.
            Err(_) => match std::fs::canonicalize(file) {
                Ok(real) => match real.strip_prefix(&self.path) {
                    Ok(relative) => self.open_beneath(relative.as_os_str().as_bytes(), false),
                    Err(_) => return Location::Outside,
                },
                Err(_) => return Location::Missing,
            },
        };
        match result {
            Ok(_) => Location::Inside,
            Err(Errno::EXDEV | Errno::ELOOP) => Location::Outside,
            Err(_) => Location::Missing,
        }
    }

    /// Opens `relative` (no leading slash, already normalized) for reading.
    fn open_beneath(&self, relative: &[u8], escape_allowed: bool) -> Result<File, Errno> {
        let relative = if relative.is_empty() {
            &b"."[..]
        } else {
            relative
        };
        let mut resolve = ResolveFlag::RESOLVE_NO_MAGICLINKS;
        if !escape_allowed {
            resolve |= ResolveFlag::RESOLVE_BENEATH;
        }
        // O_NONBLOCK: opening a FIFO must not hang the server.
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
            .resolve(resolve);
        match openat2(self.dir.as_fd(), OsStr::from_bytes(relative), how) {
            Ok(fd) => Ok(File::from(fd)),
            // RESOLVE_BENEATH refuses every absolute symlink, even one that
            // points back inside the root: check where it really leads.
            Err(Errno::EXDEV) => self.open_canonical(relative),
            // No openat2 (kernel before 5.6, or a seccomp filter that does
            // not know it): resolve the path and check it the slow way.
            Err(Errno::ENOSYS | Errno::EPERM) if !escape_allowed => self.open_canonical(relative),
            Err(Errno::ENOSYS | Errno::EPERM) => {
                let path = self.path.join(OsStr::from_bytes(relative));
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                    .open(path)
                    .map_err(|err| Errno::from_raw(err.raw_os_error().unwrap_or(libc::ENOENT)))
            }
            Err(err) => Err(err),
        }
    }

    fn open_canonical(&self, relative: &[u8]) -> Result<File, Errno> {
        let canonical = std::fs::canonicalize(self.path.join(OsStr::from_bytes(relative)))
            .map_err(|err| Errno::from_raw(err.raw_os_error().unwrap_or(libc::ENOENT)))?;
        if !canonical.starts_with(&self.path) {
            return Err(Errno::EXDEV);
        }
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(canonical)
            .map_err(|err| Errno::from_raw(err.raw_os_error().unwrap_or(libc::ENOENT)))
    }
}

/// Resolves the part of the URL path below the worker's route (`rest` starts
/// with '/' or is empty), still percent-encoded.
pub fn resolve(config: &WorkerConfig, root: &DocumentRoot, rest: &str) -> Target {
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
    let relative = segments.join(&b'/');
    let escape = config.security.allow_symlinks_outside_root;

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
                    path: root.path.join(OsStr::from_bytes(&relative)),
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

fn is_executable(config: &WorkerConfig, name: &[u8]) -> bool {
    std::str::from_utf8(name).is_ok_and(|name| config.is_executable(name))
}

fn script(root: &DocumentRoot, relative: &[u8], path_info: String) -> Target {
    let relative = String::from_utf8_lossy(relative);
    Target::Script(Script {
        name: format!("/{relative}"),
        filename: root.path.join(relative.as_ref()),
        path_info,
    })
}

/// A directory: its first index file, else 403.
fn directory_index(
    config: &WorkerConfig,
    root: &DocumentRoot,
    relative: &[u8],
    escape: bool,
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
            path: root.path.join(OsStr::from_bytes(&candidate)),
        };
    }
    Target::Forbidden
}

/// Some segment of the path is a file: it runs with the rest as PATH_INFO if
/// it is a script; otherwise nothing is there.
fn path_info_split(
    config: &WorkerConfig,
    root: &DocumentRoot,
    segments: &[&[u8]],
    escape: bool,
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
    config: &WorkerConfig,
    root: &DocumentRoot,
    segments: &[&[u8]],
    escape: bool,
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
