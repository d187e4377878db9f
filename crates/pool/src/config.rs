//! Typed pool settings. The binary validates its YAML into these; the pool
//! trusts them (min <= start <= max and so on are checked by the caller and
//! asserted in debug builds by [`PoolConfig::debug_check`]).

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the number of worker processes is managed (php-fpm's `pm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    /// `max_workers` processes, always.
    Static,
    /// Between `min_workers` and `max_workers`, spawning on demand and
    /// stopping idle workers gently.
    Dynamic,
    /// None at start; spawned on demand, each stopped after `idle_timeout`.
    Ondemand,
}

impl Manager {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Dynamic => "dynamic",
            Self::Ondemand => "ondemand",
        }
    }
}

/// Where a worker listens. tqserver binds the socket and hands it to the
/// process as fd 0, so a worker is reachable the moment it exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// A unix socket in this private (0700) directory. The path is unlinked as
    /// soon as tqserver has connected, so no one else can ever reach the worker.
    Unix { dir: PathBuf },
    /// A TCP port from `ports` on `host` (the seed's 9010+ layout).
    Tcp {
        host: IpAddr,
        ports: std::ops::Range<u16>,
    },
}

/// How a worker process comes to be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Launch {
    /// Exec the program for each worker (php-cgi).
    #[default]
    Exec,
    /// Exec the program once as a zygote (`--zygote`, tqserver-php) and fork
    /// each worker from it.
    Zygote,
}

/// The program a worker runs and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The complete environment: nothing is inherited from tqserver.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    /// Run as this uid/gid (when tqserver runs as root).
    pub credentials: Option<(u32, u32)>,
    pub socket: SocketKind,
    pub launch: Launch,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    /// The worker (app) name, used in logs and status.
    pub name: String,
    pub manager: Manager,
    pub min_workers: usize,
    pub max_workers: usize,
    pub start_workers: usize,
    /// Keep at least this many idle workers warm (0: off).
    pub min_spare: usize,
    /// Stop idle workers beyond this many, one per second (None: off).
    pub max_spare: Option<usize>,
    /// Most spawns in flight at once.
    pub max_spawn_rate: usize,
    /// Retire a worker after this many requests (0: never).
    pub max_requests: u64,
    pub idle_timeout: Duration,
    /// Longest a request may run; enforced by the caller through
    /// [`crate::Lease::kill`], kept here so every front end reads one value.
    pub request_timeout: Duration,
    /// Most requests waiting for a worker.
    pub max_queue: usize,
    /// Longest a request waits for a worker.
    pub queue_timeout: Duration,
    /// Longest a new process may take to answer its first (probe) request.
    pub spawn_timeout: Duration,
    /// Between SIGTERM and SIGKILL when stopping a worker.
    pub kill_grace: Duration,
    /// Crash-loop detection: this many unexpected exits within
    /// `crash_window` trigger exponential respawn backoff.
    pub crash_threshold: usize,
    pub crash_window: Duration,
    /// Longest respawn backoff.
    pub max_backoff: Duration,
    pub command: WorkerCommand,
}

impl PoolConfig {
    /// Processes the pool keeps at minimum.
    pub fn floor(&self) -> usize {
        match self.manager {
            Manager::Static => self.max_workers,
            Manager::Dynamic => self.min_workers,
            Manager::Ondemand => 0,
        }
    }

    /// Processes started with the pool.
    pub fn initial(&self) -> usize {
        match self.manager {
            Manager::Static => self.max_workers,
            Manager::Dynamic => self.start_workers.clamp(self.min_workers, self.max_workers),
            Manager::Ondemand => 0,
        }
    }

    pub fn debug_check(&self) {
        debug_assert!(self.max_workers >= 1);
        debug_assert!(self.min_workers <= self.max_workers);
        debug_assert!(self.max_spawn_rate >= 1);
    }

    /// Settings for tests and embedding; every duration and limit at the
    /// documented default.
    pub fn with_command(name: impl Into<String>, command: WorkerCommand) -> Self {
        Self {
            name: name.into(),
            manager: Manager::Static,
            min_workers: 1,
            max_workers: 4,
            start_workers: 2,
            min_spare: 0,
            max_spare: None,
            max_spawn_rate: 32,
            max_requests: 0,
            idle_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_queue: 1024,
            queue_timeout: Duration::from_secs(30),
            spawn_timeout: Duration::from_secs(10),
            kill_grace: Duration::from_secs(2),
            crash_threshold: 5,
            crash_window: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
            command,
        }
    }
}
