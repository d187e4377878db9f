//! php-cgi processes started by fcgi-bench itself, the way php-fpm and
//! tqserver start them: a listening unix socket bound here becomes the
//! child's fd 0, and we connect to it once.
//!
//! No supervision and no recycling: this is the ceiling, PHP with nothing in
//! front. Children get SIGKILL when fcgi-bench exits (kill on drop, and the
//! parent-death signal for when fcgi-bench itself is killed).

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tokio::net::UnixStream;

/// How to start php-cgi.
pub struct PhpCommand {
    pub binary: PathBuf,
    pub config_file: Option<PathBuf>,
    /// `-d key=value` settings.
    pub defines: Vec<String>,
}

/// One running php-cgi; killed and reaped on drop.
pub struct Worker {
    child: Child,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts php-cgi on a socket named `socket` and returns it with the one
/// connection to it (queued by the kernel before php-cgi calls accept).
pub async fn spawn(php: &PhpCommand, socket: &Path) -> io::Result<(Worker, UnixStream)> {
    let listener = UnixListener::bind(socket)?;
    let mut cmd = Command::new(&php.binary);
    if let Some(ini) = &php.config_file {
        cmd.arg("-c").arg(ini);
    }
    for define in &php.defines {
        cmd.arg("-d").arg(define);
    }
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // php-cgi exits after 500 requests by default; the ceiling never recycles.
        .env("PHP_FCGI_MAX_REQUESTS", "0")
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group, so a Ctrl-C meant for the harness reaches us, not PHP.
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot start {}: {err}", php.binary.display()),
        )
    })?;
    let worker = Worker { child };
    let stream = UnixStream::connect(socket).await?;
    // The listening socket lives on as the child's fd 0; the name is not needed.
    let _ = std::fs::remove_file(socket);
    Ok((worker, stream))
}
