//! Taking a worker and handing it a request's first bytes, for both fronts:
//! the pool's queue and timeouts apply, a reload's successor pool takes
//! requests routed to a retiring one, a dead idle connection is retried once
//! on another worker, and every way it can end without PHP has one answer
//! ([`Unsent`]) that each front renders in its own protocol.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use http::StatusCode;
use pool::{AcquireError, KillReason, Lease, RequestInfo};
use tokio::time::Instant;
use tracing::warn;

use crate::app::App;
use crate::router::Router;

/// How sending the first bytes of a request to a worker ended.
pub enum Sent {
    /// They reached the worker; the request's deadline runs.
    Ready(Lease, Instant),
    /// No worker: the pool's queue was full or timed out, or it stopped.
    Refused(AcquireError),
    /// Two workers in a row had a dead connection.
    DeadWorkers,
    /// The worker did not take them before the request's deadline.
    TimedOut(Lease),
}

/// Takes a worker and sends it what `write` puts in its buffer (the
/// request's BEGIN_REQUEST, params, and whatever body is at hand), under the
/// request's deadline. A write that fails reached no PHP: the worker is
/// killed and the request tries once more on another one.
pub async fn send_head(
    app: &Arc<App>,
    router: &ArcSwap<Router>,
    info: &RequestInfo,
    mut write: impl FnMut(&mut BytesMut),
) -> Sent {
    let mut app = app.clone();
    for attempt in 0..2 {
        let mut lease = match acquire(&mut app, router).await {
            Ok(lease) => lease,
            Err(err) => return Sent::Refused(err),
        };
        lease.begin(info.clone());
        let deadline = Instant::now() + lease.request_timeout();
        write(lease.connection().write_buf());
        match tokio::time::timeout_at(deadline, lease.connection().flush()).await {
            Ok(Ok(())) => return Sent::Ready(lease, deadline),
            Ok(Err(err)) => {
                warn!(
                    worker = %app.config.name,
                    pid = lease.pid(),
                    attempt,
                    "worker connection was dead before the request reached PHP ({err}); retrying on another worker"
                );
                lease.kill(KillReason::Broken);
            }
            Err(_) => return Sent::TimedOut(lease),
        }
    }
    Sent::DeadWorkers
}

/// Takes a worker from the app's pool. A pool that stopped taking requests
/// was replaced by a reload after this request was routed: the request moves
/// to the app's new pool.
async fn acquire(app: &mut Arc<App>, router: &ArcSwap<Router>) -> Result<Lease, AcquireError> {
    match app.pool.acquire().await {
        Err(AcquireError::Stopping { pool }) => {
            let successor = router
                .load()
                .app_named(&app.config.name)
                .filter(|candidate| !Arc::ptr_eq(candidate, app))
                .cloned();
            match successor {
                Some(successor) => {
                    *app = successor;
                    app.pool.acquire().await
                }
                None => Err(AcquireError::Stopping { pool }),
            }
        }
        other => other,
    }
}

/// A request that never reached PHP: what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsent {
    pub status: StatusCode,
    /// Seconds for Retry-After (a saturated pool: try again shortly).
    pub retry_after: Option<u64>,
    /// The pid of a worker that took the request but not its bytes in time.
    pub pid: Option<u32>,
}

impl Sent {
    /// The worker and the request's deadline if the request reached PHP;
    /// otherwise the answer, after killing a worker that timed out.
    pub fn ready(self) -> Result<(Lease, Instant), Unsent> {
        let unsent = |status, retry_after, pid| {
            Err(Unsent {
                status,
                retry_after,
                pid,
            })
        };
        match self {
            Sent::Ready(lease, deadline) => Ok((lease, deadline)),
            Sent::Refused(AcquireError::QueueFull { .. } | AcquireError::QueueTimeout { .. }) => {
                unsent(StatusCode::SERVICE_UNAVAILABLE, Some(1), None)
            }
            Sent::Refused(AcquireError::Stopping { .. }) => {
                unsent(StatusCode::SERVICE_UNAVAILABLE, None, None)
            }
            Sent::DeadWorkers => unsent(StatusCode::BAD_GATEWAY, None, None),
            Sent::TimedOut(lease) => {
                let pid = lease.pid();
                lease.kill(KillReason::Timeout);
                unsent(StatusCode::GATEWAY_TIMEOUT, None, Some(pid))
            }
        }
    }
}
