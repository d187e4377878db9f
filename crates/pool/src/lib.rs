//! A supervised, auto-scaling pool of FastCGI worker processes.
//!
//! # Theory of operation
//! A [`WorkerPool`] runs one app's php-cgi processes. For each worker,
//! tqserver binds a listening socket, connects to it once (the kernel queues
//! the connection), and starts the process with that socket as fd 0, as
//! php-fpm and spawn-fcgi do. A probe request over the same connection proves
//! the process is serving before it takes traffic. From then on every request
//! to that worker travels over this one kept-alive connection: no connect or
//! accept per request.
//!
//! - [`process`]: spawning (fd 0 handoff, parent-death signal, own process
//!   group, dropped privileges) and the one task that owns each process;
//!   a process is exec'd (php-cgi) or forked by the app's zygote;
//! - [`zygote`]: the per-app `tqserver-php --zygote` that ran PHP's module
//!   startup once and forks workers on request (pidfds, exit reports);
//! - [`pool`]: dispatch (most recently used idle worker first), the bounded
//!   FIFO wait queue, and the bookkeeping of starts and exits;
//! - [`scaling`]: where the number of processes is decided (static, dynamic,
//!   ondemand), as pure functions;
//! - [`lease`]: a worker lent to one request, and what happens to it after;
//! - [`access`]: which directory keeps a worker's user out;
//! - [`stats`]: counters and status snapshots;
//! - [`usage`]: what each request cost its process (CPU, peak memory).
//!
//! The pool speaks FastCGI but knows nothing of HTTP: front ends (the HTTP
//! server, the FastCGI listener) write requests into a lease's connection and
//! read responses back.

pub mod access;
pub mod config;
pub mod error;
pub mod lease;
pub mod pool;
pub mod process;
pub mod scaling;
pub mod socket;
pub mod stats;
pub mod usage;
pub mod zygote;

pub use config::{Launch, Manager, PoolConfig, SocketKind, WorkerCommand};
pub use error::{AcquireError, SpawnError, StartError};
pub use lease::{KillReason, Lease};
pub use pool::WorkerPool;
pub use stats::{PoolStatus, RequestInfo, WorkerState, WorkerStatus, ZygoteStatus};
pub use usage::RequestUsage;
