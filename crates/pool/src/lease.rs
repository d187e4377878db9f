//! A worker lent to one request.
//!
//! The lease owns the worker's connection for the request and decides what
//! happens to it afterwards:
//! - [`Lease::complete`] after END_REQUEST: the worker goes back to the pool
//!   (or retires, after its `max_requests`th request);
//! - [`Lease::kill`] when the request timed out or the connection is broken:
//!   the process is stopped and replaced;
//! - dropped mid-request (the client went away): if the whole request reached
//!   PHP, a tracked task reads and discards the rest of the response and then
//!   returns the worker, within what is left of `request_timeout`; if the
//!   request was cut off mid-write the connection is unusable and the worker
//!   is stopped.

use std::sync::Arc;
use std::time::Duration;

use fastcgi::client::{ClientConnection, ResponseEvent};
use fastcgi::record::{RecordType, put_stream_end};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::pool::{PoolInner, Worker};
use crate::socket::WorkerStream;
use crate::stats::{PoolCounters, RequestInfo};

/// Why a worker is being killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillReason {
    /// The request ran past `request_timeout`.
    Timeout,
    /// The connection broke or the worker broke the protocol.
    Broken,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Nothing sent yet: the connection is clean.
    Fresh,
    /// The request is being written; a drop now leaves a partial record.
    Sending,
    /// The request is fully written; the response may be partly read.
    Sent,
}

pub struct Lease {
    pool: Arc<PoolInner>,
    worker: Option<Worker>,
    retiring: bool,
    stage: Stage,
    started: Instant,
    queue_wait: Duration,
}

impl Lease {
    pub(crate) fn new(
        pool: Arc<PoolInner>,
        worker: Worker,
        retiring: bool,
        queue_wait: Duration,
    ) -> Self {
        Self {
            pool,
            worker: Some(worker),
            retiring,
            stage: Stage::Fresh,
            started: Instant::now(),
            queue_wait,
        }
    }

    pub(crate) fn set_queue_wait(&mut self, wait: Duration) {
        self.queue_wait = wait;
    }

    /// Takes the worker back out without any accounting (the caller undoes
    /// the checkout itself).
    pub(crate) fn into_worker(mut self) -> Worker {
        self.worker.take().expect("a fresh lease holds its worker")
    }

    fn worker(&self) -> &Worker {
        self.worker
            .as_ref()
            .expect("lease holds its worker until consumed")
    }

    fn worker_mut(&mut self) -> &mut Worker {
        self.worker
            .as_mut()
            .expect("lease holds its worker until consumed")
    }

    /// The kept-alive FastCGI connection to this worker.
    pub fn connection(&mut self) -> &mut ClientConnection<WorkerStream> {
        &mut self.worker_mut().conn
    }

    pub fn pid(&self) -> u32 {
        self.worker().shared.pid
    }

    /// How long the request waited in the queue for this worker.
    pub fn queue_wait(&self) -> Duration {
        self.queue_wait
    }

    /// The pool's request timeout (the same for every front end).
    pub fn request_timeout(&self) -> Duration {
        self.pool.config.request_timeout
    }

    /// Marks the start of writing a request; shown on status pages.
    pub fn begin(&mut self, info: RequestInfo) {
        self.stage = Stage::Sending;
        self.started = Instant::now();
        self.worker().shared.begin_request(info);
    }

    /// The whole request (params and body) has been written.
    pub fn sent(&mut self) {
        self.stage = Stage::Sent;
    }

    /// The worker answered END_REQUEST: the connection is ready for the next.
    pub fn complete(mut self) {
        self.finish_clean();
    }

    /// Stops the worker (SIGTERM, then SIGKILL after the pool's grace) and
    /// lets the pool replace it.
    pub fn kill(mut self, reason: KillReason) {
        if let Some(worker) = self.worker.take() {
            if reason == KillReason::Timeout {
                PoolCounters::bump(&self.pool.counters.timeouts);
                warn!(
                    worker = %self.pool.config.name,
                    pid = worker.shared.pid,
                    timeout = ?self.pool.config.request_timeout,
                    "request timed out; killing its worker"
                );
            }
            worker.shared.end_request();
            self.pool.checkin(worker, self.retiring, false);
        }
    }

    fn finish_clean(&mut self) {
        if let Some(worker) = self.worker.take() {
            if self.stage != Stage::Fresh {
                PoolCounters::bump(&self.pool.counters.completed);
                worker.shared.note_completed();
                worker.shared.end_request();
            }
            self.pool.checkin(worker, self.retiring, true);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        match self.stage {
            Stage::Fresh => {
                self.worker = Some(worker);
                self.finish_clean();
            }
            Stage::Sending => {
                debug!(
                    pid = worker.shared.pid,
                    "request abandoned mid-write; stopping worker"
                );
                worker.shared.end_request();
                self.pool.checkin(worker, self.retiring, false);
            }
            Stage::Sent => {
                let deadline = self.started + self.pool.config.request_timeout;
                let pool = self.pool.clone();
                let retiring = self.retiring;
                // Inside the runtime (always, for leases made by acquire);
                // outside it there is nothing to drain with, so stop the worker.
                if tokio::runtime::Handle::try_current().is_ok() {
                    let tasks = pool.tasks.clone();
                    tasks.spawn(drain(pool, worker, retiring, deadline));
                } else {
                    worker.shared.end_request();
                    pool.checkin(worker, retiring, false);
                }
            }
        }
    }
}

/// Reads and discards the rest of an abandoned response, then returns the
/// worker; kills it if PHP does not finish by `deadline`.
async fn drain(pool: Arc<PoolInner>, mut worker: Worker, retiring: bool, deadline: Instant) {
    let finished = tokio::time::timeout_at(deadline, async {
        loop {
            match worker.conn.next_event().await {
                Ok(ResponseEvent::End(_)) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    worker.shared.end_request();
    match finished {
        Ok(true) => {
            PoolCounters::bump(&pool.counters.completed);
            worker.shared.note_completed();
            pool.checkin(worker, retiring, true);
        }
        Ok(false) => pool.checkin(worker, retiring, false),
        Err(_) => {
            PoolCounters::bump(&pool.counters.timeouts);
            warn!(
                worker = %pool.config.name,
                pid = worker.shared.pid,
                "abandoned request still running at its timeout; killing its worker"
            );
            pool.checkin(worker, retiring, false);
        }
    }
}

/// Ends the STDIN stream of a request whose body was cut short, so PHP sees
/// end of input instead of waiting for more.
pub fn end_stdin(conn: &mut ClientConnection<WorkerStream>) {
    put_stream_end(
        conn.write_buf(),
        RecordType::Stdin,
        fastcgi::client::REQUEST_ID,
    );
}
