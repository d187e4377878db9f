//! Symlinks under a document root, judged by `security.symlinks`.
//!
//! The common case never comes here: `DocumentRoot::open_with` opens a path
//! in one `openat2(RESOLVE_BENEATH)`, which succeeds whenever every symlink
//! on the way stays inside the root. When it refuses (a link leaves the root,
//! or is absolute), [`open_walk`] opens the path again one component at a
//! time and judges each symlink it meets by where it really led:
//!
//! - inside the root: followed in every mode;
//! - outside, `beneath`: refused;
//! - outside, `owner`: followed when the link and the file it led to have
//!   the same owner, as nginx's `disable_symlinks if_not_owner` and Apache's
//!   `SymLinksIfOwnerMatch` do. Debian's packaged apps (root-owned links to
//!   root-owned files in /usr/share) work; a link the web user planted
//!   (owned by www-data) to a root-owned file such as /etc/shadow does not;
//! - outside, `follow`: followed (that mode never walks).
//!
//! A refusal is a [`SymlinkRefusal`]: which link, what it says, where it led,
//! and which setting would allow it, for the log and `tqserver check`.
//!
//! Races: each component is opened first and judged from the opened file
//! descriptor (its real path, its owner), so what is served is what was
//! judged. The link's own owner comes from an `fstatat(AT_SYMLINK_NOFOLLOW)`
//! made after the open, as nginx does; someone who can rename entries in a
//! directory on the path could swap the link between the two calls for an
//! entry owned by the target's owner. That needs write access to the
//! directory and a file owned by the target's owner to move in, which in the
//! case this mode protects against (a web user against root's files) they do
//! not have. A script is then run by php-cgi from its path name, which PHP
//! resolves again by itself: the check and PHP's open are not one operation,
//! as with nginx in front of php-fpm.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};

use crate::config::{AppConfig, SymlinkPolicy};

/// Why a path could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The system said no (missing, not a directory, permission, loop).
    Io(Errno),
    /// A symlink on the path is not followed under the policy.
    Refused(SymlinkRefusal),
}

/// A symlink that was not followed, with what an operator needs to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymlinkRefusal {
    /// The link, as an absolute path under the document root.
    pub link: PathBuf,
    /// What the link says (its `readlink`), if it could be read.
    pub points_to: Option<PathBuf>,
    /// Where it really led, if known.
    pub leads_to: Option<PathBuf>,
    /// The policy that refused it (`beneath` or `owner`).
    pub policy: SymlinkPolicy,
    /// Under `owner`: the link's owner and its target's owner.
    pub owners: Option<(u32, u32)>,
}

impl fmt::Display for SymlinkRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "symlink {}", self.link.display())?;
        if let Some(points_to) = &self.points_to {
            write!(f, " -> {}", points_to.display())?;
        }
        f.write_str(" leads out of the document root")?;
        if let Some(leads_to) = &self.leads_to
            && self.points_to.as_ref() != Some(leads_to)
        {
            write!(f, " (to {})", leads_to.display())?;
        }
        match (self.policy, self.owners) {
            (SymlinkPolicy::Owner, Some((link_uid, target_uid))) => write!(
                f,
                "; not followed: its owner (uid {link_uid}) is not its target's (uid {target_uid}) \
                 and security.symlinks is `owner` (give the link its target's owner with \
                 `chown -h`, or set security.symlinks: follow)"
            ),
            _ => write!(
                f,
                "; not followed: security.symlinks is `{}` (`owner` follows a link whose target \
                 has the link's owner, `follow` any link)",
                self.policy
            ),
        }
    }
}

/// Opens `relative` (normalized: no empty, `.` or `..` segments) below the
/// directory `root_fd`, whose path is `root`, one component at a time,
/// judging every component that leads out of the root by `policy`. The last
/// component is opened with `last_flags`, the others as directories.
pub fn open_walk(
    root_fd: BorrowedFd<'_>,
    root: &Path,
    relative: &[u8],
    policy: SymlinkPolicy,
    last_flags: OFlag,
) -> Result<OwnedFd, OpenError> {
    let components: Vec<&[u8]> = relative
        .split(|&b| b == b'/')
        .filter(|segment| !segment.is_empty() && *segment != b".")
        .collect();
    if components.iter().any(|segment| *segment == b"..") {
        // Callers normalize; a `..` here would step over the root unjudged.
        return Err(OpenError::Io(Errno::EXDEV));
    }
    let Some(last) = components.len().checked_sub(1) else {
        return open_component(root_fd, OsStr::new("."), last_flags).map_err(OpenError::Io);
    };
    let mut dir: Option<OwnedFd> = None;
    for (index, component) in components.iter().enumerate() {
        let name = OsStr::from_bytes(component);
        let flags = if index == last {
            last_flags
        } else {
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
        };
        let parent = dir.as_ref().map_or(root_fd, |fd| fd.as_fd());
        // Open first (following a link), then judge the opened file.
        let opened = open_component(parent, name, flags).map_err(OpenError::Io)?;
        let entry = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(OpenError::Io)?;
        let target = fstat(opened.as_fd()).map_err(OpenError::Io)?;
        let is_link = SFlag::from_bits_truncate(entry.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK;
        let same_entry = entry.st_dev == target.st_dev && entry.st_ino == target.st_ino;
        if is_link || !same_entry {
            // A symlink (or the entry changed under us): where did it lead?
            let leads_to = fd_path(opened.as_fd());
            let inside = leads_to
                .as_deref()
                .is_some_and(|path| path.starts_with(root));
            let followed = inside
                || match policy {
                    SymlinkPolicy::Follow => true,
                    SymlinkPolicy::Beneath => false,
                    SymlinkPolicy::Owner => entry.st_uid == target.st_uid,
                };
            if !followed {
                let mut link = root.to_path_buf();
                for segment in &components[..=index] {
                    link.push(OsStr::from_bytes(segment));
                }
                return Err(OpenError::Refused(SymlinkRefusal {
                    link,
                    points_to: nix::fcntl::readlinkat(parent, name).ok().map(PathBuf::from),
                    leads_to,
                    policy,
                    owners: (policy == SymlinkPolicy::Owner)
                        .then_some((entry.st_uid, target.st_uid)),
                }));
            }
        }
        dir = Some(opened);
    }
    dir.ok_or(OpenError::Io(Errno::ENOENT))
}

/// Opens one name below `dir`, following it if it is a symlink, but never
/// through a /proc "magic link".
fn open_component(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlag) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(dir, name, how) {
        // No openat2 (kernel before 5.6, or a seccomp filter that does not
        // know it): a plain openat of one name.
        Err(Errno::ENOSYS | Errno::EPERM) => nix::fcntl::openat(dir, name, flags, Mode::empty()),
        other => other,
    }
}

/// The path the kernel has for an open file, from /proc/self/fd. `None`
/// without /proc: the caller then treats the file as outside the root.
fn fd_path(fd: BorrowedFd<'_>) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

/// Remembers which links' refusals were logged in full, so each is logged
/// at warn once per app start or reload and at debug after that.
///
/// Once per link and not once per request: the links are few and made by
/// whoever writes the document root, but a client chooses how often to hit
/// one (`/etc-link/a`, `/etc-link/b`, ...), so a line per request would let
/// any client fill the log. The first line says all an operator needs.
#[derive(Debug, Default)]
pub struct RefusalLog {
    seen: Mutex<HashSet<PathBuf>>,
}

/// More distinct links than this are not remembered (their refusals go to
/// the debug level), so the set cannot grow without bound.
const MAX_REMEMBERED: usize = 1024;

impl RefusalLog {
    /// Whether this is the first refusal of `link` to log at warn.
    pub fn first(&self, link: &Path) -> bool {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.len() < MAX_REMEMBERED && seen.insert(link.to_path_buf())
    }
}

/// What `tqserver check` found under a document root.
#[derive(Debug, Default)]
pub struct Scan {
    /// Links that leave the root and are not followed under the policy.
    pub refused: Vec<SymlinkRefusal>,
    /// Entries looked at.
    pub entries: usize,
    /// The walk stopped at its bound on entries or depth.
    pub truncated: bool,
}

/// Most entries and directory depth `tqserver check` walks under a document
/// root, so a huge tree (a mounted media library) cannot hang it: 100,000
/// entries take well under a second on a warm cache.
pub const SCAN_MAX_ENTRIES: usize = 100_000;
pub const SCAN_MAX_DEPTH: usize = 32;

/// Finds the symlinks under `root` that lead out of it and that `policy`
/// does not follow, judged as a request would be. Symlinked directories are
/// not entered, nor entries for which `reachable` (given a file name) says
/// no request can get there (dotfiles).
pub fn scan(
    root: &Path,
    policy: SymlinkPolicy,
    reachable: &dyn Fn(&OsStr) -> bool,
    max_entries: usize,
    max_depth: usize,
) -> Scan {
    let mut scan = Scan::default();
    if policy == SymlinkPolicy::Follow {
        return scan;
    }
    let Ok(root_fd) = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return scan;
    };
    let mut stack: Vec<(PathBuf, usize)> = vec![(PathBuf::new(), 0)];
    while let Some((relative, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&relative)) else {
            continue;
        };
        for entry in entries.flatten() {
            if scan.entries >= max_entries {
                scan.truncated = true;
                return scan;
            }
            scan.entries += 1;
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !reachable(&entry.file_name()) {
                continue;
            }
            let path = relative.join(entry.file_name());
            if kind.is_symlink() {
                let flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
                let bytes = path.as_os_str().as_bytes();
                if let Err(OpenError::Refused(refusal)) =
                    open_walk(root_fd.as_fd(), root, bytes, policy, flags)
                {
                    scan.refused.push(refusal);
                }
            } else if kind.is_dir() {
                if depth + 1 >= max_depth {
                    scan.truncated = true;
                } else {
                    stack.push((path, depth + 1));
                }
            }
        }
    }
    scan.refused.sort_by(|a, b| a.link.cmp(&b.link));
    scan
}

/// Links listed by name in a `tqserver check` warning; more are counted.
const REPORT_MAX_LINKS: usize = 20;

/// `tqserver check`'s warning about the links under an app's document root
/// that a request would be refused through; `None` when there are none.
pub fn check_warning(app: &AppConfig) -> Option<String> {
    let (worker_file, root, policy) = (&app.file, &app.document_root, app.security.symlinks);
    let security = &app.security;
    let reachable = |name: &OsStr| {
        let name = name.as_bytes();
        security.allow_dotfiles
            || !name.starts_with(b".")
            || security
                .allowed_dot_paths
                .iter()
                .any(|allowed| allowed.as_bytes() == name)
    };
    let scan = scan(root, policy, &reachable, SCAN_MAX_ENTRIES, SCAN_MAX_DEPTH);
    let bound = if scan.truncated {
        format!(
            " (looked at the first {} entries, {SCAN_MAX_DEPTH} directories deep)",
            scan.entries
        )
    } else {
        String::new()
    };
    if scan.refused.is_empty() {
        return None;
    }
    let count = scan.refused.len();
    let mut text = format!(
        "warning: {}: security.symlinks: {count} symlink{} under {} lead{} out of it and {} not followed under `{policy}`{bound}:",
        worker_file.display(),
        if count == 1 { "" } else { "s" },
        root.display(),
        if count == 1 { "s" } else { "" },
        if count == 1 { "is" } else { "are" },
    );
    for refusal in scan.refused.iter().take(REPORT_MAX_LINKS) {
        let link = refusal.link.strip_prefix(root).unwrap_or(&refusal.link);
        text.push_str(&format!("\n  {}", link.display()));
        if let Some(points_to) = &refusal.points_to {
            text.push_str(&format!(" -> {}", points_to.display()));
        }
        if let Some((link_uid, target_uid)) = refusal.owners {
            text.push_str(&format!(
                " (link owner uid {link_uid}, target owner uid {target_uid})"
            ));
        }
    }
    if count > REPORT_MAX_LINKS {
        text.push_str(&format!("\n  ... and {} more", count - REPORT_MAX_LINKS));
    }
    let them = if count == 1 { "it" } else { "them" };
    text.push_str(&match policy {
        SymlinkPolicy::Owner => format!(
            "\n  requests through {them} get 404; give a link its target's owner (`chown -h`), or set security.symlinks: follow"
        ),
        _ => format!(
            "\n  requests through {them} get 404; set security.symlinks: owner to follow links whose target has the link's owner, or follow for any link"
        ),
    });
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        /// root/ with inside.txt, sub/file.txt; outside/secret.txt next to it.
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            std::fs::create_dir_all(root.join("sub")).unwrap();
            std::fs::create_dir_all(dir.path().join("outside/dir")).unwrap();
            std::fs::write(root.join("inside.txt"), "inside").unwrap();
            std::fs::write(root.join("sub/file.txt"), "file").unwrap();
            std::fs::write(dir.path().join("outside/secret.txt"), "secret").unwrap();
            std::fs::write(dir.path().join("outside/dir/asset.js"), "asset").unwrap();
            Self { dir }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("root").canonicalize().unwrap()
        }

        fn link(&self, target: &str, name: &str) {
            let target = if target.starts_with('/') {
                PathBuf::from(target)
            } else {
                self.dir.path().join(target)
            };
            symlink(target, self.root().join(name)).unwrap();
        }

        fn open(&self, relative: &str, policy: SymlinkPolicy) -> Result<String, OpenError> {
            let root = self.root();
            let fd = nix::fcntl::open(
                &root,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .unwrap();
            let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
            let file = open_walk(fd.as_fd(), &root, relative.as_bytes(), policy, flags)?;
            Ok(std::fs::read_to_string(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap())
        }
    }

    fn refused(result: Result<String, OpenError>) -> SymlinkRefusal {
        match result {
            Err(OpenError::Refused(refusal)) => refusal,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn links_inside_the_root_are_followed_in_every_mode() {
        let tree = Tree::new();
        let root = tree.root();
        tree.link(root.join("inside.txt").to_str().unwrap(), "absolute-inside");
        symlink("sub", root.join("relative-sub")).unwrap();
        for policy in [SymlinkPolicy::Beneath, SymlinkPolicy::Owner] {
            assert_eq!(tree.open("absolute-inside", policy).unwrap(), "inside");
            assert_eq!(tree.open("relative-sub/file.txt", policy).unwrap(), "file");
        }
    }

    #[test]
    fn beneath_refuses_a_link_out_and_says_which_and_where() {
        let tree = Tree::new();
        tree.link("outside/dir", "assets");
        let refusal = refused(tree.open("assets/asset.js", SymlinkPolicy::Beneath));
        assert_eq!(refusal.link, tree.root().join("assets"));
        assert_eq!(refusal.points_to, Some(tree.dir.path().join("outside/dir")));
        assert_eq!(
            refusal.leads_to,
            Some(tree.dir.path().join("outside/dir").canonicalize().unwrap())
        );
        let text = refusal.to_string();
        assert!(text.contains("security.symlinks is `beneath`"), "{text}");
        assert!(text.contains("`owner` follows"), "{text}");
    }

    #[test]
    fn owner_follows_a_link_out_when_owners_match_and_refuses_otherwise() {
        let tree = Tree::new();
        tree.link("outside/dir", "assets");
        tree.link("outside/secret.txt", "secret.txt");
        // Same owner (whoever runs the test made both).
        assert_eq!(
            tree.open("assets/asset.js", SymlinkPolicy::Owner).unwrap(),
            "asset"
        );
        assert_eq!(
            tree.open("secret.txt", SymlinkPolicy::Owner).unwrap(),
            "secret"
        );
        // A link to a file someone else owns: /etc/passwd is root's; as
        // root, give the link to nobody instead.
        tree.link("/etc/passwd", "planted");
        let me = nix::unistd::geteuid();
        if me.is_root() {
            std::os::unix::fs::lchown(tree.root().join("planted"), Some(65534), None).unwrap();
        }
        let refusal = refused(tree.open("planted", SymlinkPolicy::Owner));
        let link_uid = if me.is_root() { 65534 } else { me.as_raw() };
        assert_eq!(refusal.owners, Some((link_uid, 0)));
        assert!(refusal.to_string().contains("chown -h"), "{refusal}");
        assert!(tree.open("planted", SymlinkPolicy::Follow).is_ok());
    }

    #[test]
    fn missing_files_and_files_as_directories_keep_their_errors() {
        let tree = Tree::new();
        tree.link("outside/dir", "assets");
        assert!(matches!(
            tree.open("assets/missing.js", SymlinkPolicy::Owner),
            Err(OpenError::Io(Errno::ENOENT))
        ));
        assert!(matches!(
            tree.open("assets/asset.js/x.php", SymlinkPolicy::Owner),
            Err(OpenError::Io(Errno::ENOTDIR))
        ));
        assert!(matches!(
            tree.open("../root/inside.txt", SymlinkPolicy::Owner),
            Err(OpenError::Io(Errno::EXDEV))
        ));
    }

    #[test]
    fn scan_finds_the_links_a_request_would_refuse() {
        let tree = Tree::new();
        tree.link("outside/dir", "assets");
        tree.link("outside/secret.txt", "sub/secret.txt");
        tree.link(tree.root().join("inside.txt").to_str().unwrap(), "in.txt");
        tree.link("outside/missing", "dangling");
        tree.link("outside/secret.txt", ".hidden");
        let all = |_: &OsStr| true;
        let visible = |name: &OsStr| !name.as_bytes().starts_with(b".");
        let scan = scan(&tree.root(), SymlinkPolicy::Beneath, &visible, 1000, 10);
        let links: Vec<_> = scan.refused.iter().map(|r| r.link.clone()).collect();
        assert_eq!(
            links,
            vec![
                tree.root().join("assets"),
                tree.root().join("sub/secret.txt")
            ]
        );
        assert!(!scan.truncated);
        assert!(
            super::scan(&tree.root(), SymlinkPolicy::Owner, &all, 1000, 10)
                .refused
                .is_empty()
        );
        let with_dotfiles = super::scan(&tree.root(), SymlinkPolicy::Beneath, &all, 1000, 10);
        assert_eq!(with_dotfiles.refused.len(), 3);
        let bounded = super::scan(&tree.root(), SymlinkPolicy::Beneath, &all, 2, 10);
        assert!(bounded.truncated);
        assert_eq!(bounded.entries, 2);
    }

    #[test]
    fn each_link_is_logged_in_full_once() {
        let log = RefusalLog::default();
        assert!(log.first(Path::new("/a")));
        assert!(!log.first(Path::new("/a")));
        assert!(log.first(Path::new("/b")));
    }
}
