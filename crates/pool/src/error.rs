//! Errors of the pool. Spawn errors explain themselves (program, exit status,
//! the worker's last stderr lines); acquire errors tell the front end which
//! HTTP status to answer with.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create the worker socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("cannot start {}: {source}", program.display())]
    Exec {
        program: PathBuf,
        #[source]
        source: std::io::Error,
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
#[error("pool {pool}: worker {slot} failed to start: {source}")]
pub struct StartError {
    pub pool: String,
    pub slot: u64,
    #[source]
    pub source: SpawnError,
}
