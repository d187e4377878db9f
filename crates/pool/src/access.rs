//! Whether a worker's user can reach a directory, asked as that user.
//!
//! When tqserver runs as root, workers run as another uid and gid with no
//! supplementary groups (std drops them when root starts a process as
//! another user). A site under a 0700 home directory then cannot start:
//! php-cgi cannot enter its working directory. To say which directory is in
//! the way, a child process takes the same uid and gid and calls access(2)
//! on every directory from `/` down (x on each, r and x on the last), so the
//! kernel decides: modes, ACLs and mount options all count. The child never
//! runs a program; it exits with the position of the first refusal.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A directory on the way that the user cannot pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub dir: PathBuf,
    /// What is missing: "x" (enter) for a directory above, "r and x" (list
    /// and enter) for the directory itself.
    pub need: &'static str,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.need == "x" {
            "enter"
        } else {
            "read and enter"
        };
        write!(
            f,
            "cannot {verb} {} ({})",
            self.dir.display(),
            describe(&self.dir)
        )
    }
}

/// Most directories checked in one go: the child's exit status carries the
/// position of the first refusal.
const MAX_DEPTH: usize = 250;

/// The first directory on the way to `dir` (an absolute path) that `uid` and
/// `gid` cannot pass, or None when every one lets them through.
pub fn first_blocked(dir: &Path, uid: u32, gid: u32) -> std::io::Result<Option<Blocked>> {
    let mut chain: Vec<&Path> = dir.ancestors().collect();
    chain.reverse();
    if !dir.is_absolute() || chain.len() > MAX_DEPTH {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} is not an absolute path of fewer than {MAX_DEPTH} parts",
                dir.display()
            ),
        ));
    }
    let paths: Vec<CString> = chain
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut command = Command::new("/bin/true");
    command
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child, after the uid and gid
    // changes, and makes only async-signal-safe calls (access, _exit) on
    // memory allocated before the fork. It never returns, so nothing is
    // executed.
    unsafe {
        command.pre_exec(move || {
            for (index, path) in paths.iter().enumerate() {
                let mode = if index + 1 == paths.len() {
                    libc::R_OK | libc::X_OK
                } else {
                    libc::X_OK
                };
                if libc::access(path.as_ptr(), mode) != 0 {
                    libc::_exit(index as i32 + 1);
                }
            }
            libc::_exit(0)
        });
    }
    let status = command.status()?;
    match status.code() {
        Some(0) => Ok(None),
        Some(code) if (code as usize) <= chain.len() => {
            let index = code as usize - 1;
            Ok(Some(Blocked {
                dir: chain[index].to_owned(),
                need: if index + 1 == chain.len() {
                    "r and x"
                } else {
                    "x"
                },
            }))
        }
        _ => Err(std::io::Error::other(format!(
            "the access check as uid {uid} failed: {status}"
        ))),
    }
}

/// "drwx------ root:root", as ls shows a directory.
pub fn describe(path: &Path) -> String {
    let Ok(meta) = std::fs::metadata(path) else {
        return "cannot stat".to_owned();
    };
    let mode = meta.permissions().mode();
    let mut text = String::from(if meta.is_dir() { "d" } else { "-" });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let user = nix::unistd::User::from_uid(meta.uid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.uid().to_string(), |u| u.name);
    let group = nix::unistd::Group::from_gid(meta.gid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.gid().to_string(), |g| g.name);
    format!("{text} {user}:{group}")
}

/// The name of a uid, or the number.
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_like_ls() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        assert!(describe(dir.path()).starts_with("drwxr-x--- "));
    }

    #[test]
    fn a_0700_directory_blocks_another_user() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to check as another user");
            return;
        }
        let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
            eprintln!("skipped: no user nobody");
            return;
        };
        let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
        let outer = tempfile::tempdir().unwrap();
        let private = outer.path().join("private");
        let root = private.join("site/public");
        std::fs::create_dir_all(&root).unwrap();
        for dir in [outer.path(), &private.join("site"), &root] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            first_blocked(&root, uid, gid).unwrap(),
            Some(Blocked {
                dir: private.clone(),
                need: "x"
            })
        );
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(first_blocked(&root, uid, gid).unwrap(), None);
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(
            first_blocked(&root, uid, gid).unwrap(),
            Some(Blocked {
                dir: root.clone(),
                need: "r and x"
            })
        );
    }
}
