//! What the pool counts and what a status page can see of it.
//!
//! Counters are atomics bumped on the request path; everything else is read
//! from the pool state when a snapshot is taken, so observing costs nothing
//! until someone looks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::process::Control;
use crate::usage::{ProcFiles, RequestUsage};

#[derive(Debug, Default)]
pub struct PoolCounters {
    /// Requests that asked for a worker.
    pub accepted: AtomicU64,
    /// Requests that ran to END_REQUEST.
    pub completed: AtomicU64,
    pub spawns: AtomicU64,
    pub spawn_failures: AtomicU64,
    pub recycles: AtomicU64,
    pub timeouts: AtomicU64,
    pub crashes: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    pub rejected_queue_timeout: AtomicU64,
    /// Episodes of "every worker busy and the pool at max_workers".
    pub max_children_reached: AtomicU64,
    /// Requests that had to wait for a worker, and their total wait.
    pub queued: AtomicU64,
    pub queue_wait_micros: AtomicU64,
    /// Requests slower than the front end's slow-log threshold.
    pub slow_requests: AtomicU64,
}

impl PoolCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerState {
    /// Waiting for a request.
    Idle = 0,
    /// Serving a request.
    Busy = 1,
    /// Being stopped (idle timeout, recycling, timeout kill, pool stop).
    Stopping = 2,
}

impl WorkerState {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Idle,
            1 => Self::Busy,
            _ => Self::Stopping,
        }
    }

    /// The word php-fpm's status page uses.
    pub fn fpm_name(self) -> &'static str {
        match self {
            Self::Idle => "Idle",
            Self::Busy => "Running",
            Self::Stopping => "Finishing",
        }
    }
}

/// What a request is, as far as status pages care. The three strings live
/// in one shared buffer, so a clone (one per status snapshot) is a
/// reference-count bump.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    text: std::sync::Arc<str>,
    method_end: usize,
    uri_end: usize,
    pub content_length: u64,
}

impl RequestInfo {
    pub fn new(method: &str, uri: &str, script: &str, content_length: u64) -> Self {
        let mut text = String::with_capacity(method.len() + uri.len() + script.len());
        text.push_str(method);
        text.push_str(uri);
        text.push_str(script);
        Self {
            text: text.into(),
            method_end: method.len(),
            uri_end: method.len() + uri.len(),
            content_length,
        }
    }

    pub fn method(&self) -> &str {
        &self.text[..self.method_end]
    }

    pub fn uri(&self) -> &str {
        &self.text[self.method_end..self.uri_end]
    }

    pub fn script(&self) -> &str {
        &self.text[self.uri_end..]
    }
}

#[derive(Clone, Debug, Default)]
struct Activity {
    current: Option<(RequestInfo, Instant)>,
    last: Option<(RequestInfo, Duration)>,
    /// The process's CPU time at the end of the request before the last
    /// one, and at the end of the last one: an idle php-cgi uses none, so
    /// the difference is the last request's (one /proc read per request).
    cpu_at_ends: (Option<u64>, Option<u64>),
}

/// The part of a worker everyone may see; the process itself is owned by its
/// task and the connection by whoever holds the worker.
#[derive(Debug)]
pub struct WorkerShared {
    pub id: u64,
    pub pid: u32,
    pub started_at: SystemTime,
    /// How long it took to start (in worker mode: to boot the app).
    pub started_in: Duration,
    state: AtomicU8,
    requests: AtomicU64,
    /// Requests that ran to END_REQUEST: a worker that completed one is
    /// known to serve (see [`crate::scaling::Failure`]).
    completed: AtomicU64,
    alive: AtomicBool,
    stop_requested: AtomicBool,
    activity: Mutex<Activity>,
    /// Where the per-request CPU and memory come from.
    proc_files: ProcFiles,
    control: mpsc::UnboundedSender<Control>,
}

impl WorkerShared {
    pub(crate) fn new(
        id: u64,
        pid: u32,
        started_in: Duration,
        control: mpsc::UnboundedSender<Control>,
    ) -> Self {
        Self {
            id,
            pid,
            started_at: SystemTime::now(),
            started_in,
            state: AtomicU8::new(WorkerState::Idle as u8),
            requests: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            alive: AtomicBool::new(true),
            stop_requested: AtomicBool::new(false),
            activity: Mutex::new(Activity::default()),
            proc_files: ProcFiles::open(pid),
            control,
        }
    }

    pub fn state(&self) -> WorkerState {
        WorkerState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub(crate) fn set_state(&self, state: WorkerState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub(crate) fn mark_dead(&self) {
        self.alive.store(false, Ordering::Release);
    }

    /// Asks the owning task to stop the process (SIGTERM, then SIGKILL after
    /// `grace`). Idempotent.
    pub(crate) fn request_stop(&self, grace: Duration) {
        self.set_state(WorkerState::Stopping);
        if !self.stop_requested.swap(true, Ordering::AcqRel) {
            let _ = self.control.send(Control::Stop { grace });
        }
    }

    pub(crate) fn begin_request(&self, info: RequestInfo) {
        self.set_state(WorkerState::Busy);
        if let Ok(mut activity) = self.activity.lock() {
            activity.current = Some((info, Instant::now()));
        }
    }

    pub(crate) fn end_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let cpu = self.proc_files.cpu_ns();
        if let Ok(mut activity) = self.activity.lock()
            && let Some((info, started)) = activity.current.take()
        {
            activity.cpu_at_ends = (activity.cpu_at_ends.1, cpu);
            activity.last = Some((info, started.elapsed()));
        }
    }

    /// The last request's CPU (see `cpu_at_ends`) and the peak memory
    /// since the previous status read, read when a status page asks, for an
    /// idle worker (while a request runs there is none: 0, as php-fpm
    /// shows). Measuring more per request costs every request: resetting
    /// the peak and reading the CPU at each start took about 3 µs of
    /// tqserver's 35 µs per hello.php request (bench, 2 CPUs).
    fn last_usage(&self, ends: (Option<u64>, Option<u64>), wall: Duration) -> Option<RequestUsage> {
        let cpu = match ends {
            (Some(before), Some(after)) => after.saturating_sub(before),
            // The first request: everything since the process started.
            (None, Some(after)) => after,
            _ => return None,
        };
        let peak = self.proc_files.peak_rss()?;
        self.proc_files.reset_peak();
        Some(crate::usage::usage(wall, cpu, peak))
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts a request that ran to END_REQUEST.
    pub(crate) fn note_completed(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn completed_requests(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> WorkerStatus {
        let (current, last, window) = match self.activity.lock() {
            Ok(activity) => (
                activity
                    .current
                    .as_ref()
                    .map(|(info, started)| (info.clone(), started.elapsed())),
                activity.last.clone(),
                activity.cpu_at_ends,
            ),
            Err(_) => (None, None, (None, None)),
        };
        let last_usage = match (&current, &last) {
            (None, Some((_, wall))) => self.last_usage(window, *wall),
            _ => None,
        };
        WorkerStatus {
            id: self.id,
            pid: self.pid,
            state: self.state(),
            started_at: self.started_at,
            started_in: self.started_in,
            requests: self.requests(),
            current,
            last,
            last_usage,
            rss_bytes: rss_bytes(self.pid),
            pss_bytes: pss_bytes(self.pid),
        }
    }
}

/// One worker, as a status page shows it.
#[derive(Clone, Debug)]
pub struct WorkerStatus {
    pub id: u64,
    pub pid: u32,
    pub state: WorkerState,
    pub started_at: SystemTime,
    /// From spawn to the probe's answer (worker mode: the app's boot).
    pub started_in: Duration,
    pub requests: u64,
    /// The request running now and for how long.
    pub current: Option<(RequestInfo, Duration)>,
    /// The previous request and how long it took.
    pub last: Option<(RequestInfo, Duration)>,
    /// What the previous request cost (when /proc could tell).
    pub last_usage: Option<RequestUsage>,
    /// Resident memory from /proc, if readable.
    pub rss_bytes: Option<u64>,
    /// Proportional set size (shared pages divided among the processes
    /// that map them), if readable: what a forked worker really costs.
    pub pss_bytes: Option<u64>,
}

/// A pool's zygote (`php.runtime: embed`), as a status page shows it.
#[derive(Clone, Debug, Default)]
pub struct ZygoteStatus {
    /// None between a zygote's death and its replacement.
    pub pid: Option<u32>,
    /// Zygotes started in this pool's life (more than 1: replaced).
    pub starts: u64,
    pub rss_bytes: Option<u64>,
    pub pss_bytes: Option<u64>,
}

/// A whole pool, as a status page shows it.
#[derive(Clone, Debug)]
pub struct PoolStatus {
    pub name: String,
    pub manager: &'static str,
    pub started_at: SystemTime,
    pub draining: bool,
    pub min_workers: usize,
    pub max_workers: usize,
    pub max_queue: usize,
    pub idle: usize,
    pub busy: usize,
    pub spawning: usize,
    /// Processes alive, whatever their state.
    pub total: usize,
    pub queue_len: usize,
    pub max_queue_len: usize,
    pub max_active: usize,
    /// When crash-loop backoff holds spawning back, until when.
    pub backoff_remaining: Option<Duration>,
    pub accepted: u64,
    pub completed: u64,
    pub spawns: u64,
    pub spawn_failures: u64,
    pub recycles: u64,
    pub timeouts: u64,
    pub crashes: u64,
    pub rejected_queue_full: u64,
    pub rejected_queue_timeout: u64,
    pub max_children_reached: u64,
    pub slow_requests: u64,
    pub queued: u64,
    pub queue_wait_total: Duration,
    pub workers: Vec<WorkerStatus>,
    /// For a pool whose workers are forked from a zygote.
    pub zygote: Option<ZygoteStatus>,
}

/// Resident set size of a process, from /proc/PID/statm.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page_size.max(1) as u64)
}

/// Proportional set size of a process, from /proc/PID/smaps_rollup.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kib: u64 = rollup
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pss_of_this_process_is_plausible() {
        let pss = pss_bytes(std::process::id()).unwrap();
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(pss > 100 * 1024 && pss <= rss + 4096, "{pss} {rss}");
    }

    #[test]
    fn rss_of_this_process_is_plausible() {
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(rss > 100 * 1024, "{rss}");
    }
}
