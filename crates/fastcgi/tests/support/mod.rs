//! Harness shared by the integration tests that run real programs: finding
//! them (a missing one fails the test and names its Debian package), keeping
//! each child in its own process group so that stopping it also stops its
//! workers, and bounding every wait.

// Each test crate includes this module and uses only part of it.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Upper bound for one whole test; a hung child fails the test instead of
/// hanging CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a child gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The first of `names` found in `PATH` or the sbin directories. Panics,
/// naming the Debian package to install, when none is there: these tests
/// exist to run against the real programs, so a missing one is a failure.
pub fn require_program(names: &[&str], package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    for name in names {
        for dir in &dirs {
            let candidate = dir.join(name);
            let executable = fs::metadata(&candidate)
                .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            if executable {
                return candidate;
            }
        }
    }
    panic!(
        "none of {names:?} found in PATH or /usr/sbin; install the Debian package \
         `{package}` (apt-get install -y {package})"
    );
}

/// A temporary directory that other users can read and traverse, so PHP
/// workers running as www-data can open the scripts written into it.
pub fn world_readable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("tq-fastcgi-")
        .tempdir()
        .expect("create a temporary directory");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
        .expect("make the temporary directory world-readable");
    dir
}

/// Writes `contents` to `dir/name` (mode 0644) and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    path
}

/// Whether this process runs as root (judged by who owns a file it made).
pub fn running_as_root(dir: &Path) -> bool {
    fs::metadata(dir)
        .map(|meta| meta.uid() == 0)
        .unwrap_or(false)
}

/// A child process in its own process group. Dropping it sends SIGTERM to
/// the group, waits up to [`STOP_GRACE`], then SIGKILLs whatever is left
/// (php-fpm's workers included) and reaps the child.
pub struct ChildGuard {
    child: Child,
    name: String,
    log: Option<PathBuf>,
}

impl ChildGuard {
    /// Starts `command` as the leader of a new process group. `log` is a file
    /// the child writes its diagnostics to, shown when it dies early.
    pub fn spawn(mut command: Command, name: &str, log: Option<PathBuf>) -> Self {
        command.process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        Self {
            child,
            name: name.to_owned(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the child's log if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}); its log:\n{}",
                self.name,
                self.log_text()
            );
        }
    }

    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .map(|path| fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})")))
            .unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let group = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                _ => break,
            }
        }
        // The leader may be gone while workers of its group are not.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Connects to a unix socket that a child is about to create, retrying until
/// `timeout`; fails early, with the child's log, if the child dies.
pub async fn connect_when_ready(
    path: &Path,
    child: &mut ChildGuard,
    timeout: Duration,
) -> tokio::net::UnixStream {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::net::UnixStream::connect(path).await {
            Ok(stream) => return stream,
            Err(e) if Instant::now() >= deadline => panic!(
                "{} did not listen on {} within {timeout:?} ({e}); its log:\n{}",
                child.name,
                path.display(),
                child.log_text()
            ),
            Err(_) => {
                child.assert_running();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Runs `future` with the whole-test time bound.
pub async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(TEST_TIMEOUT, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {TEST_TIMEOUT:?}"),
    }
}
