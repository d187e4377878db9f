//! The pool: dispatch, the wait queue, and the bookkeeping that decides when
//! processes start and stop.
//!
//! All mutable state sits in one `PoolState` behind a std mutex that is never
//! held across an await: dispatch is "lock, pop the most recently used idle
//! worker, unlock". A request that finds none joins a FIFO queue (bounded in
//! length and time) and asks for a spawn in the same critical section.
//! Workers are handed to waiters directly by whoever frees or creates one, so
//! a queued request never races a new arrival for the worker.
//!
//! Three kinds of task touch the state: requests (acquire, release), worker
//! tasks (ready, exit), and one manager task per pool that wakes about once a
//! second for what is slow on purpose (idle stops, crash backoff).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fastcgi::client::ClientConnection;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::PoolConfig;
use crate::error::{AcquireError, SpawnError, StartError};
use crate::lease::Lease;
use crate::process::{self, Spawned};
use crate::scaling::{self, Counts, Failure};
use crate::socket::WorkerStream;
use crate::stats::{PoolCounters, PoolStatus, WorkerShared, WorkerState};

/// A worker that is not in a process task's hands: idle in the pool or
/// carried by a lease. Owns the kept-alive connection.
pub(crate) struct Worker {
    pub(crate) shared: Arc<WorkerShared>,
    pub(crate) conn: ClientConnection<WorkerStream>,
    idle_since: Instant,
    /// Requests started on this worker, the current one included.
    started_requests: u64,
}

/// A queued request. A worker travels to it as a ready-made lease, so a
/// request that gives up after the worker was sent (its future dropped)
/// still returns the worker: the lease's drop checks it back in.
struct Waiter {
    id: u64,
    tx: oneshot::Sender<Lease>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// No new requests; queued and running ones finish.
    Draining,
    Stopped,
}

struct PoolState {
    phase: Phase,
    /// Least recently used first; dispatch pops from the end.
    idle: Vec<Worker>,
    waiters: VecDeque<Waiter>,
    next_waiter_id: u64,
    /// Every live process that finished starting, by worker id.
    workers: BTreeMap<u64, Arc<WorkerShared>>,
    spawning: usize,
    /// Workers carried by leases (including retiring ones).
    busy: usize,
    /// Busy workers serving their last request before recycling.
    retiring: usize,
    /// Failed spawns and exits of workers that never completed a request,
    /// oldest first, for crash-loop detection.
    crash_times: VecDeque<Instant>,
    backoff: Option<Duration>,
    respawn_not_before: Option<Instant>,
    last_idle_stop: Option<Instant>,
    max_active: usize,
    max_queue_len: usize,
    /// In a "max_workers reached" episode (counted and logged once).
    at_max: bool,
}

impl PoolState {
    fn counts(&self) -> Counts {
        Counts {
            capacity: self.idle.len() + self.busy - self.retiring,
            spawning: self.spawning,
            idle: self.idle.len(),
            waiting: self.waiters.len(),
        }
    }

    /// Drops queue entries whose request went away.
    fn prune_waiters(&mut self) {
        self.waiters.retain(|waiter| !waiter.tx.is_closed());
    }
}

pub(crate) struct PoolInner {
    /// Handle to this pool for the tasks it spawns from under its own lock.
    me: std::sync::Weak<PoolInner>,
    pub(crate) config: PoolConfig,
    /// Exec per worker, or the pool's zygote.
    launcher: process::Launcher,
    state: Mutex<PoolState>,
    pub(crate) counters: PoolCounters,
    next_worker_id: AtomicU64,
    started_at: SystemTime,
    /// Wakes the manager before its next tick.
    wake: Notify,
    /// Signalled when a lease returns or a worker exits while draining.
    settled: Notify,
    /// Rejections are counted always, logged at most once a second.
    rejection_log: LogThrottle,
    /// Worker, drain and manager tasks: all awaited when the pool stops.
    pub(crate) tasks: TaskTracker,
    cancel: CancellationToken,
}

/// Lets a log line through at most once a second, counting the ones it held
/// back, so an overload does not also flood the log.
#[derive(Default)]
struct LogThrottle {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// `Some(lines held back since the last one)` when a line may be logged.
    fn allow(&self) -> Option<u64> {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now_ms = START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
            + 1000;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= 1000
            && self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// A pool of worker processes for one app. Cheap to clone.
#[derive(Clone)]
pub struct WorkerPool {
    inner: Arc<PoolInner>,
}

impl WorkerPool {
    /// Starts the pool's initial workers and waits until every one has
    /// answered a probe request. Any failure stops the others and is returned.
    pub async fn start(config: PoolConfig) -> Result<Self, StartError> {
        config.debug_check();
        let initial = config.initial();
        let launcher = process::Launcher::new(&config.command, &config.name);
        // PHP starts in the zygote now, not on the first request, even for a
        // pool that starts no worker (ondemand).
        if let process::Launcher::Zygote(zygote) = &launcher {
            zygote
                .start_now(config.spawn_timeout)
                .await
                .map_err(|cause| StartError {
                    pool: config.name.clone(),
                    slot: 0,
                    cause,
                })?;
        }
        let inner = Arc::new_cyclic(|me| PoolInner {
            me: me.clone(),
            launcher,
            state: Mutex::new(PoolState {
                phase: Phase::Running,
                idle: Vec::with_capacity(config.max_workers),
                waiters: VecDeque::new(),
                next_waiter_id: 0,
                workers: BTreeMap::new(),
                spawning: 0,
                busy: 0,
                retiring: 0,
                crash_times: VecDeque::new(),
                backoff: None,
                respawn_not_before: None,
                last_idle_stop: None,
                max_active: 0,
                max_queue_len: 0,
                at_max: false,
            }),
            config,
            counters: PoolCounters::default(),
            next_worker_id: AtomicU64::new(1),
            started_at: SystemTime::now(),
            wake: Notify::new(),
            settled: Notify::new(),
            rejection_log: LogThrottle::default(),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
        });

        let mut starting = tokio::task::JoinSet::new();
        for _ in 0..initial {
            let id = inner.next_worker_id.fetch_add(1, Ordering::Relaxed);
            let config = inner.config.clone();
            let launcher = inner.launcher.clone();
            starting.spawn(async move {
                let result = process::spawn(
                    &launcher,
                    &config.command,
                    &config.name,
                    id,
                    config.spawn_timeout,
                )
                .await;
                (id, result)
            });
        }
        let mut ready = Vec::with_capacity(initial);
        let mut failure = None;
        while let Some(joined) = starting.join_next().await {
            match joined {
                Ok((id, Ok(spawned))) => ready.push((id, spawned)),
                Ok((id, Err(cause))) => {
                    failure.get_or_insert(StartError {
                        pool: inner.config.name.clone(),
                        slot: id,
                        cause,
                    });
                }
                Err(join_error) => {
                    failure.get_or_insert(StartError {
                        pool: inner.config.name.clone(),
                        slot: 0,
                        cause: SpawnError::Probe {
                            reason: join_error.to_string(),
                            stderr: String::new(),
                        },
                    });
                }
            }
        }
        if let Some(failure) = failure {
            // Dropping the children kills them (kill_on_drop).
            drop(ready);
            return Err(failure);
        }
        {
            let mut state = inner.lock();
            state.spawning += ready.len();
        }
        for (id, spawned) in ready {
            inner.clone().adopt(id, spawned);
        }
        inner.tasks.spawn(inner.clone().manage());
        info!(
            worker = %inner.config.name,
            manager = inner.config.manager.as_str(),
            workers = initial,
            max = inner.config.max_workers,
            "pool started"
        );
        Ok(Self { inner })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// Takes a worker for one request: the most recently used idle one, or
    /// the first to become free while this request waits in the queue.
    pub async fn acquire(&self) -> Result<Lease, AcquireError> {
        let inner = &self.inner;
        let (waiter_id, mut rx) = {
            let mut state = inner.lock();
            if state.phase != Phase::Running {
                return Err(AcquireError::Stopping {
                    pool: inner.config.name.clone(),
                });
            }
            PoolCounters::bump(&inner.counters.accepted);
            while let Some(mut worker) = state.idle.pop() {
                // A worker that died while idle may not be reaped yet; its
                // connection already shows it.
                if !worker.conn.is_reusable() {
                    worker.shared.request_stop(inner.config.kill_grace);
                    continue;
                }
                if worker.shared.is_alive() {
                    let retiring = inner.checkout(&mut state, &mut worker);
                    if retiring || state.idle.is_empty() {
                        // A replacement for a retiring worker, or the last
                        // idle worker is taken: get ahead of demand.
                        inner.spawn_if_needed(&mut state);
                    }
                    drop(state);
                    return Ok(Lease::new(inner.clone(), worker, retiring, Duration::ZERO));
                }
            }
            state.prune_waiters();
            if state.waiters.len() >= inner.config.max_queue {
                PoolCounters::bump(&inner.counters.rejected_queue_full);
                if let Some(suppressed) = inner.rejection_log.allow() {
                    warn!(
                        worker = %inner.config.name,
                        max_queue = inner.config.max_queue,
                        similar_since_last = suppressed,
                        "request rejected with 503: wait queue full"
                    );
                }
                return Err(AcquireError::QueueFull {
                    pool: inner.config.name.clone(),
                    max_queue: inner.config.max_queue,
                });
            }
            let (tx, rx) = oneshot::channel();
            let id = state.next_waiter_id;
            state.next_waiter_id += 1;
            state.waiters.push_back(Waiter { id, tx });
            state.max_queue_len = state.max_queue_len.max(state.waiters.len());
            inner.spawn_if_needed(&mut state);
            let counts = state.counts();
            if counts.capacity + counts.spawning >= inner.config.max_workers && !state.at_max {
                state.at_max = true;
                PoolCounters::bump(&inner.counters.max_children_reached);
                warn!(
                    worker = %inner.config.name,
                    max_workers = inner.config.max_workers,
                    "every worker is busy and the pool is at max_workers; requests are queueing"
                );
            }
            (id, rx)
        };
        let queued_at = Instant::now();
        PoolCounters::bump(&inner.counters.queued);
        let lease = tokio::select! {
            lease = &mut rx => lease.ok(),
            _ = tokio::time::sleep(inner.config.queue_timeout) => {
                let mut state = inner.lock();
                state.waiters.retain(|waiter| waiter.id != waiter_id);
                if state.phase != Phase::Running {
                    inner.settled.notify_waiters();
                }
                drop(state);
                // A worker may have been sent just before we left the queue.
                rx.try_recv().ok()
            }
        };
        let waited = queued_at.elapsed();
        inner
            .counters
            .queue_wait_micros
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        match lease {
            Some(mut lease) => {
                lease.set_queue_wait(waited);
                Ok(lease)
            }
            None if inner.lock().phase != Phase::Running => Err(AcquireError::Stopping {
                pool: inner.config.name.clone(),
            }),
            None => {
                PoolCounters::bump(&inner.counters.rejected_queue_timeout);
                if let Some(suppressed) = inner.rejection_log.allow() {
                    warn!(
                        worker = %inner.config.name,
                        waited_ms = waited.as_millis() as u64,
                        similar_since_last = suppressed,
                        "request rejected with 503: no worker became free within queue_timeout"
                    );
                }
                Err(AcquireError::QueueTimeout {
                    pool: inner.config.name.clone(),
                    waited,
                })
            }
        }
    }

    /// Graceful stop: refuse new requests, let queued and running ones finish
    /// for up to `grace`, then stop every process (SIGTERM, then SIGKILL after
    /// the pool's `kill_grace`) and wait for them.
    pub async fn drain(&self, grace: Duration) {
        let inner = &self.inner;
        {
            let mut state = inner.lock();
            if state.phase == Phase::Running {
                state.phase = Phase::Draining;
            }
            for worker in std::mem::take(&mut state.idle) {
                worker.shared.request_stop(inner.config.kill_grace);
            }
        }
        let deadline = Instant::now() + grace;
        loop {
            let settled = inner.settled.notified();
            {
                let mut state = inner.lock();
                // Queued requests whose clients went away count for nothing.
                state.prune_waiters();
                if state.busy == 0 && state.waiters.is_empty() {
                    break;
                }
            }
            // Woken when a request ends; the short tick also catches queued
            // requests that were cancelled without telling the pool.
            let tick = deadline.min(Instant::now() + Duration::from_millis(100));
            let _ = tokio::time::timeout_at(tick, settled).await;
            if Instant::now() >= deadline {
                let state = inner.lock();
                if state.busy > 0 {
                    warn!(
                        worker = %inner.config.name,
                        busy = state.busy,
                        "grace period over; stopping workers with requests still running"
                    );
                }
                break;
            }
        }
        self.stop_now().await;
    }

    /// Stops every process now (SIGTERM, then SIGKILL after `kill_grace`) and
    /// waits for them; queued requests get [`AcquireError::Stopping`].
    pub async fn stop_now(&self) {
        let inner = &self.inner;
        {
            let mut state = inner.lock();
            state.phase = Phase::Stopped;
            state.waiters.clear();
            for worker in std::mem::take(&mut state.idle) {
                worker.shared.request_stop(inner.config.kill_grace);
            }
            for shared in state.workers.values() {
                shared.request_stop(inner.config.kill_grace);
            }
        }
        inner.cancel.cancel();
        inner.tasks.close();
        let limit = inner.config.kill_grace + Duration::from_secs(2);
        if tokio::time::timeout(limit, inner.tasks.wait())
            .await
            .is_err()
        {
            error!(worker = %inner.config.name, "worker tasks did not finish within {limit:?}");
        }
        // The workers are gone: their zygote has nothing left to do.
        if let process::Launcher::Zygote(zygote) = &inner.launcher {
            zygote.stop().await;
        }
    }

    pub fn status(&self) -> PoolStatus {
        let inner = &self.inner;
        let c = &inner.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (
            idle,
            busy,
            spawning,
            queue_len,
            max_queue_len,
            max_active,
            draining,
            workers,
            backoff,
        ) = {
            let mut state = inner.lock();
            state.prune_waiters();
            let workers: Vec<_> = state.workers.values().cloned().collect();
            (
                state.idle.len(),
                state.busy,
                state.spawning,
                state.waiters.len(),
                state.max_queue_len,
                state.max_active,
                state.phase != Phase::Running,
                workers,
                state
                    .respawn_not_before
                    .map(|until| until.saturating_duration_since(Instant::now())),
            )
        };
        PoolStatus {
            name: inner.config.name.clone(),
            manager: inner.config.manager.as_str(),
            started_at: inner.started_at,
            draining,
            min_workers: inner.config.floor(),
            max_workers: inner.config.max_workers,
            max_queue: inner.config.max_queue,
            idle,
            busy,
            spawning,
            total: workers.len(),
            queue_len,
            max_queue_len,
            max_active,
            backoff_remaining: backoff.filter(|d| !d.is_zero()),
            accepted: load(&c.accepted),
            completed: load(&c.completed),
            spawns: load(&c.spawns),
            spawn_failures: load(&c.spawn_failures),
            recycles: load(&c.recycles),
            timeouts: load(&c.timeouts),
            crashes: load(&c.crashes),
            rejected_queue_full: load(&c.rejected_queue_full),
            rejected_queue_timeout: load(&c.rejected_queue_timeout),
            max_children_reached: load(&c.max_children_reached),
            slow_requests: load(&c.slow_requests),
            queued: load(&c.queued),
            queue_wait_total: Duration::from_micros(load(&c.queue_wait_micros)),
            workers: workers.iter().map(|w| w.snapshot()).collect(),
            zygote: match &inner.launcher {
                process::Launcher::Zygote(zygote) => Some(zygote.status()),
                process::Launcher::Exec => None,
            },
        }
    }

    /// Counts a request that the front end found slower than its threshold.
    pub fn record_slow_request(&self) {
        PoolCounters::bump(&self.inner.counters.slow_requests);
    }

    /// Pids of the live worker processes.
    pub fn pids(&self) -> Vec<u32> {
        self.inner.lock().workers.values().map(|w| w.pid).collect()
    }
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding the lock leaves counts that are still
        // consistent enough to serve; keep going rather than poison everyone.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Accounts for a worker leaving the pool for a request. Returns whether
    /// this is its last request before recycling.
    fn checkout(&self, state: &mut PoolState, worker: &mut Worker) -> bool {
        state.busy += 1;
        state.max_active = state.max_active.max(state.busy);
        worker.started_requests += 1;
        worker.shared.set_state(WorkerState::Busy);
        let retiring =
            self.config.max_requests > 0 && worker.started_requests >= self.config.max_requests;
        if retiring {
            // The caller starts the replacement once the handover holds, so
            // capacity never dips.
            state.retiring += 1;
        }
        retiring
    }

    fn undo_checkout(&self, state: &mut PoolState, worker: &mut Worker, retiring: bool) {
        state.busy -= 1;
        worker.started_requests -= 1;
        if retiring {
            state.retiring -= 1;
        }
    }

    /// A lease gives its worker back. `reusable` is false when the connection
    /// cannot carry another request (the lease kills the worker then).
    pub(crate) fn checkin(&self, worker: Worker, retiring: bool, reusable: bool) {
        let mut state = self.lock();
        state.busy -= 1;
        if retiring {
            state.retiring -= 1;
        }
        if retiring || !reusable || !worker.shared.is_alive() {
            if retiring && reusable {
                PoolCounters::bump(&self.counters.recycles);
            }
            worker.shared.request_stop(self.config.kill_grace);
            drop(worker);
            self.spawn_if_needed(&mut state);
        } else {
            self.hand_over(&mut state, worker);
        }
        if state.phase != Phase::Running {
            self.settled.notify_waiters();
        }
    }

    /// Gives a free worker to the first queued request, or parks it idle.
    fn hand_over(&self, state: &mut PoolState, mut worker: Worker) {
        while let Some(waiter) = state.waiters.pop_front() {
            if waiter.tx.is_closed() {
                continue;
            }
            let Some(pool) = self.me.upgrade() else { break };
            let retiring = self.checkout(state, &mut worker);
            match waiter
                .tx
                .send(Lease::new(pool, worker, retiring, Duration::ZERO))
            {
                Ok(()) => {
                    if retiring {
                        self.spawn_if_needed(state);
                    }
                    return;
                }
                Err(returned) => {
                    // Disarmed before it drops: we hold the pool lock here.
                    worker = returned.into_worker();
                    self.undo_checkout(state, &mut worker, retiring);
                }
            }
        }
        if state.phase != Phase::Running {
            worker.shared.request_stop(self.config.kill_grace);
            return;
        }
        worker.idle_since = Instant::now();
        worker.shared.set_state(WorkerState::Idle);
        state.idle.push(worker);
    }

    /// Starts as many spawns as the scaling policy asks for right now.
    fn spawn_if_needed(&self, state: &mut PoolState) {
        if state.phase != Phase::Running {
            return;
        }
        if let Some(until) = state.respawn_not_before {
            if Instant::now() < until {
                return;
            }
            state.respawn_not_before = None;
        }
        let wanted = scaling::spawns_needed(&self.config, state.counts());
        for _ in 0..wanted {
            state.spawning += 1;
            let id = self.next_worker_id.fetch_add(1, Ordering::Relaxed);
            let Some(this) = self.me.upgrade() else {
                return;
            };
            self.tasks.spawn(this.run_worker(id));
        }
    }

    /// Spawns one worker process and then owns it until it exits.
    async fn run_worker(self: Arc<Self>, id: u64) {
        let spawned = process::spawn(
            &self.launcher,
            &self.config.command,
            &self.config.name,
            id,
            self.config.spawn_timeout,
        )
        .await;
        match spawned {
            Ok(spawned) => self.adopt_and_supervise(id, spawned).await,
            Err(err) => self.on_spawn_failed(id, err),
        }
    }

    /// Registers a spawned worker (it becomes visible and takes requests at
    /// once) and starts the task that owns its process.
    fn adopt(self: Arc<Self>, id: u64, spawned: Spawned) {
        let (shared, child, control_rx) = self.register(id, spawned);
        let tasks = self.tasks.clone();
        tasks.spawn(self.supervise(shared, child, control_rx));
    }

    async fn adopt_and_supervise(self: Arc<Self>, id: u64, spawned: Spawned) {
        let (shared, child, control_rx) = self.register(id, spawned);
        self.supervise(shared, child, control_rx).await;
    }

    fn register(
        &self,
        id: u64,
        spawned: Spawned,
    ) -> (
        Arc<WorkerShared>,
        process::WorkerProcess,
        mpsc::UnboundedReceiver<process::Control>,
    ) {
        let Spawned {
            process: child,
            pid,
            conn,
            started_in,
        } = spawned;
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(WorkerShared::new(id, pid, started_in, control_tx));
        let mut state = self.lock();
        state.spawning -= 1;
        state.workers.insert(id, shared.clone());
        PoolCounters::bump(&self.counters.spawns);
        let worker = Worker {
            shared: shared.clone(),
            conn,
            idle_since: Instant::now(),
            started_requests: 0,
        };
        self.hand_over(&mut state, worker);
        (shared, child, control_rx)
    }

    async fn supervise(
        self: Arc<Self>,
        shared: Arc<WorkerShared>,
        child: process::WorkerProcess,
        control_rx: mpsc::UnboundedReceiver<process::Control>,
    ) {
        let exit = process::supervise(child, shared.pid, control_rx).await;
        self.on_exit(&shared, exit);
    }

    fn on_spawn_failed(&self, id: u64, err: SpawnError) {
        PoolCounters::bump(&self.counters.spawn_failures);
        let mut state = self.lock();
        state.spawning -= 1;
        error!(worker = %self.config.name, slot = id, "worker failed to start: {err}");
        self.note_failure(&mut state, Failure::Spawn);
        self.spawn_if_needed(&mut state);
    }

    fn on_exit(&self, shared: &Arc<WorkerShared>, exit: process::Exit) {
        shared.mark_dead();
        let mut state = self.lock();
        state.workers.remove(&shared.id);
        state.idle.retain(|worker| worker.shared.id != shared.id);
        if !exit.requested {
            PoolCounters::bump(&self.counters.crashes);
            let status = match exit.status {
                Ok(status) => process::describe(status),
                Err(err) => err.to_string(),
            };
            let completed_requests = shared.completed_requests();
            error!(
                worker = %self.config.name,
                pid = shared.pid,
                requests = completed_requests,
                "worker exited unexpectedly ({status}); replacing it"
            );
            self.note_failure(&mut state, Failure::Exit { completed_requests });
        }
        self.spawn_if_needed(&mut state);
        if state.phase != Phase::Running {
            self.settled.notify_waiters();
        }
    }

    /// Records a failed spawn or an unexpected exit and, when workers keep
    /// failing before they serve, holds spawning back with exponential
    /// backoff. A worker that served and then died is simply replaced.
    fn note_failure(&self, state: &mut PoolState, failure: Failure) {
        if !failure.is_crash_loop_sign() {
            return;
        }
        let now = Instant::now();
        state.crash_times.push_back(now);
        while state.crash_times.len() > self.config.crash_threshold.max(1) * 2 {
            state.crash_times.pop_front();
        }
        let crashes: Vec<_> = state.crash_times.iter().copied().collect();
        match scaling::respawn_backoff(&self.config, now, &crashes, state.backoff) {
            Some(delay) => {
                state.backoff = Some(delay);
                state.respawn_not_before = Some(now + delay);
                error!(
                    worker = %self.config.name,
                    crashes = crashes.len(),
                    window_s = self.config.crash_window.as_secs_f64(),
                    "CRASH LOOP: workers keep dying; next spawn in {delay:?}"
                );
                self.wake.notify_one();
            }
            None => state.backoff = None,
        }
    }

    /// The slow loop: idle stops and the end of crash backoff.
    async fn manage(self: Arc<Self>) {
        loop {
            let next = self.maintain(Instant::now());
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    fn maintain(&self, now: Instant) -> Instant {
        let mut state = self.lock();
        let mut next = now + scaling::SCALE_DOWN_INTERVAL;
        if state.phase != Phase::Running {
            return next;
        }
        state.prune_waiters();
        // A "max_workers reached" episode ends when a worker has been idle
        // at a maintenance pass (as php-fpm counts it once a second), not at
        // every momentary idle under sustained load.
        if !state.idle.is_empty() && state.waiters.is_empty() {
            state.at_max = false;
        }
        let idle_since: Vec<_> = state.idle.iter().map(|w| w.idle_since).collect();
        let capacity = state.counts().capacity;
        let to_stop = scaling::idle_to_stop(
            &self.config,
            now,
            capacity,
            &idle_since,
            state.last_idle_stop,
        );
        for index in to_stop.into_iter().rev() {
            let worker = state.idle.remove(index);
            info!(
                worker = %self.config.name,
                pid = worker.shared.pid,
                "stopping idle worker"
            );
            worker.shared.request_stop(self.config.kill_grace);
            state.last_idle_stop = Some(now);
        }
        self.spawn_if_needed(&mut state);
        if let Some(until) = state.respawn_not_before {
            next = next.min(until);
        }
        next
    }
}
