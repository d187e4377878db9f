//! An app's document root, opened once: files below it are opened with
//! `openat2(RESOLVE_BENEATH)`, and symlinks that lead out of it are followed
//! only as `security.symlinks` says (symlinks.rs). Both fronts use it: the
//! HTTP front to open what a URL names, the FastCGI listener to check the
//! SCRIPT_FILENAME a web server sends.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

pub mod symlinks;

use crate::config::SymlinkPolicy;
use symlinks::{OpenError, RefusalLog, SymlinkRefusal};

/// See [`DocumentRoot::locate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Inside,
    Outside,
    Missing,
    /// Written inside the root, but through a symlink the policy does not
    /// follow.
    Refused(SymlinkRefusal),
}

/// The document root of one app, opened once.
#[derive(Debug)]
pub struct DocumentRoot {
    dir: OwnedFd,
    path: PathBuf,
    /// The app's name, for log lines.
    app: String,
    /// Links whose refusal was logged in full.
    refusals: RefusalLog,
}

impl DocumentRoot {
    pub fn open(path: &Path, app: &str) -> std::io::Result<Self> {
        let dir = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            dir,
            path: path.to_owned(),
            app: app.to_owned(),
            refusals: RefusalLog::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a file named by absolute path (a web server's SCRIPT_FILENAME)
    /// really is: inside this root, outside it, refused by the symlink
    /// policy, or nowhere. Symlinks on the way are judged by `policy`, as
    /// for a request on the HTTP front.
    pub fn locate(&self, file: &Path, policy: SymlinkPolicy) -> Location {
        let relative = match self.relative_path(file) {
            Some(relative) => relative,
            None if file.exists() => return Location::Outside,
            None => return Location::Missing,
        };
        match self.open_with(&relative, policy) {
            Ok(_) => Location::Inside,
            Err(OpenError::Refused(refusal)) => Location::Refused(refusal),
            Err(OpenError::Io(_)) => Location::Missing,
        }
    }

    /// The path of `file` below the root, normalized (`/root/a/./b` →
    /// `a/b`). Written under another name (a symlinked root), it is the path
    /// below the deepest directory on the way that really is the root or
    /// under it. `None` if neither, or if the path climbs out.
    pub fn relative_path(&self, file: &Path) -> Option<Vec<u8>> {
        self.relative_of(file)
            .or_else(|| self.relative_via_ancestor(file))
    }

    fn relative_of(&self, file: &Path) -> Option<Vec<u8>> {
        let segments = crate::rules::normalize(file.as_os_str().as_bytes())?;
        let root = crate::rules::normalize(self.path.as_os_str().as_bytes())?;
        let rest = segments.strip_prefix(root.as_slice())?;
        Some(rest.join(&b'/'))
    }

    fn relative_via_ancestor(&self, file: &Path) -> Option<Vec<u8>> {
        let segments = crate::rules::normalize(file.as_os_str().as_bytes())?;
        (0..segments.len()).rev().find_map(|keep| {
            let mut ancestor = PathBuf::from("/");
            for segment in &segments[..keep] {
                ancestor.push(OsStr::from_bytes(segment));
            }
            let real = std::fs::canonicalize(&ancestor).ok()?;
            let mut relative = real
                .strip_prefix(&self.path)
                .ok()?
                .as_os_str()
                .as_bytes()
                .to_vec();
            for segment in &segments[keep..] {
                if !relative.is_empty() {
                    relative.push(b'/');
                }
                relative.extend_from_slice(segment);
            }
            Some(relative)
        })
    }

    /// Opens `relative` (no leading slash, already normalized) for reading,
    /// following symlinks as `policy` allows.
    pub fn open_with(&self, relative: &[u8], policy: SymlinkPolicy) -> Result<File, OpenError> {
        let relative = if relative.is_empty() {
            &b"."[..]
        } else {
            relative
        };
        let mut resolve = ResolveFlag::RESOLVE_NO_MAGICLINKS;
        if policy != SymlinkPolicy::Follow {
            resolve |= ResolveFlag::RESOLVE_BENEATH;
        }
        // O_NONBLOCK: opening a FIFO must not hang the server.
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        let how = OpenHow::new().flags(flags).resolve(resolve);
        match openat2(self.dir.as_fd(), OsStr::from_bytes(relative), how) {
            Ok(fd) => Ok(File::from(fd)),
            // RESOLVE_BENEATH refuses every link that leaves the root, and
            // every absolute one, even back inside; no openat2 at all
            // (kernel before 5.6, or a seccomp filter that does not know
            // it): judge each component on its own.
            Err(Errno::EXDEV | Errno::ELOOP | Errno::ENOSYS | Errno::EPERM)
                if policy != SymlinkPolicy::Follow =>
            {
                symlinks::open_walk(self.dir.as_fd(), &self.path, relative, policy, flags)
                    .map(File::from)
            }
            Err(Errno::ENOSYS | Errno::EPERM) => {
                let path = self.path.join(OsStr::from_bytes(relative));
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                    .open(path)
                    .map_err(|err| {
                        OpenError::Io(Errno::from_raw(err.raw_os_error().unwrap_or(libc::ENOENT)))
                    })
            }
            Err(err) => Err(OpenError::Io(err)),
        }
    }

    /// [`Self::open_with`] for serving a request: a refusal is logged (in
    /// full once per link, see [`RefusalLog`]) and becomes EXDEV.
    pub(crate) fn open_beneath(
        &self,
        relative: &[u8],
        policy: SymlinkPolicy,
    ) -> Result<File, Errno> {
        self.open_with(relative, policy).map_err(|err| match err {
            OpenError::Io(errno) => errno,
            OpenError::Refused(refusal) => {
                self.report(&format!("/{}", String::from_utf8_lossy(relative)), &refusal);
                Errno::EXDEV
            }
        })
    }

    /// Logs a refused symlink: at warn the first time for each link, at
    /// debug after that.
    pub fn report(&self, path: &str, refusal: &SymlinkRefusal) {
        if self.refusals.first(&refusal.link) {
            tracing::warn!(
                worker = %self.app,
                path,
                "{refusal} (logged once per link; repeats at debug level)"
            );
        } else {
            tracing::debug!(worker = %self.app, path, "{refusal}");
        }
    }
}
