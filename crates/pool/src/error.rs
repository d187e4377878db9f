//! Errors of the pool. Spawn errors explain themselves (program, exit status,
//! the worker's last stderr lines); acquire errors tell the front end which
//! HTTP status to answer with.
//!
//! Each message already says what its cause said, so causes are not also
//! chained as `source()`: `{:#}` at the binary's edge would print them twice.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create the worker socket: {0}")]
    Socket(std::io::Error),
    #[error("cannot start {}: {cause}", program.display())]
    Exec {
        program: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "cannot start {} as user {user}: it {blocked}; the user needs x on every directory above {} and r and x on it (give it access, e.g. with chmod o+x or setfacl -m u:{user}:x on that directory, or choose another php.user)",
        program.display(),
        cwd.display()
    )]
    NoAccess {
        program: PathBuf,
        user: String,
        cwd: PathBuf,
        blocked: crate::access::Blocked,
    },
    #[error("worker exited during start-up ({status}){}", stderr_suffix(stderr))]
    Exited { status: String, stderr: String },
    #[error(
        "worker did not answer its first request: {reason}{}",
        stderr_suffix(stderr)
    )]
    Probe { reason: String, stderr: String },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; its stderr said:\n{stderr}")
    }
}

/// Why a request got no worker. Each maps to a response: queue full and queue
/// timeout are "503 + Retry-After", a stopping pool is "503".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    #[error("pool {pool}: {max_queue} requests already waiting for a worker")]
    QueueFull { pool: String, max_queue: usize },
    #[error("pool {pool}: no worker became free within {waited:?}")]
    QueueTimeout { pool: String, waited: Duration },
    #[error("pool {pool} is stopping")]
    Stopping { pool: String },
}

/// Start-up failure of a whole pool.
#[derive(Debug, thiserror::Error)]
#[error("pool {pool}: worker {slot} failed to start: {cause}")]
pub struct StartError {
    pub pool: String,
    pub slot: u64,
    // Not a `source`: the message says it (see the module's doc).
    pub cause: SpawnError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_error_says_its_cause_once() {
        let error = StartError {
            pool: "app".into(),
            slot: 1,
            cause: SpawnError::Exec {
                program: "/usr/bin/php-cgi".into(),
                cause: std::io::Error::from_raw_os_error(libc::EACCES),
            },
        };
        // `{:#}` of an anyhow error walks source(): nothing to repeat.
        assert!(std::error::Error::source(&error).is_none());
        let text = error.to_string();
        assert_eq!(text.matches("Permission denied").count(), 1, "{text}");
        assert!(text.contains("cannot start /usr/bin/php-cgi"), "{text}");
    }
}
