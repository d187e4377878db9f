//! Where readiness is decided: whether `/readyz` tells a balancer or an
//! orchestrator to send this node work. Pure functions over the server's
//! phase and each pool's numbers, so the table of cases below is the spec.
//!
//! Not ready while the server starts, drains or stops; while a pool drains or
//! has no worker and cannot start one; and while more requests wait in a
//! pool's queue than `ready_max_queue` allows, so a balancer sheds load to
//! other nodes before requests here wait long (a queue that forms while a
//! pool scales up is normal: the limit is off by default, and a balancer's
//! `fall` count smooths a short spike).

use std::time::Duration;

use pool::PoolStatus;

use crate::config::QueueLimit;

/// Where the server is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    Running = 1,
    /// Stopping, but still serving for `server.drain_delay`: only `/readyz`
    /// says so, and no reload starts.
    Draining = 2,
    Stopping = 3,
}

/// What readiness needs to know of one pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLoad<'a> {
    pub name: &'a str,
    pub draining: bool,
    pub idle: usize,
    pub busy: usize,
    pub spawning: usize,
    pub total: usize,
    pub max_workers: usize,
    /// Crash-loop backoff holds spawning back.
    pub backing_off: bool,
    /// Requests waiting for a worker.
    pub queue_len: usize,
}

impl<'a> PoolLoad<'a> {
    pub fn new(name: &'a str, status: &PoolStatus) -> Self {
        Self {
            name,
            draining: status.draining,
            idle: status.idle,
            busy: status.busy,
            spawning: status.spawning,
            total: status.total,
            max_workers: status.max_workers,
            backing_off: status.backoff_remaining.is_some(),
            queue_len: status.queue_len,
        }
    }
}

/// Why the server as a whole cannot take work, if its phase says so.
pub fn phase_not_ready(phase: Phase, drain_delay: Duration) -> Option<String> {
    match phase {
        Phase::Starting => Some("starting".into()),
        Phase::Draining => Some(format!(
            "stopping: draining for {drain_delay:?} before the listeners close"
        )),
        Phase::Stopping => Some("stopping".into()),
        Phase::Running => None,
    }
}

/// Why one pool cannot take work, if it cannot.
pub fn pool_not_ready(pool: &PoolLoad, max_queue: QueueLimit) -> Option<String> {
    let name = pool.name;
    if pool.draining {
        return Some(format!("pool {name} is draining"));
    }
    let can_spawn = pool.total + pool.spawning < pool.max_workers && !pool.backing_off;
    if pool.idle == 0 && pool.spawning == 0 && !can_spawn && pool.busy == 0 {
        return Some(format!("pool {name} has no worker and cannot start one"));
    }
    if let QueueLimit::Max(max) = max_queue
        && pool.queue_len > max
    {
        return Some(format!(
            "pool {name} has {} requests waiting for a worker (ready_max_queue {max})",
            pool.queue_len
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUSY: PoolLoad = PoolLoad {
        name: "app",
        draining: false,
        idle: 0,
        busy: 4,
        spawning: 0,
        total: 4,
        max_workers: 4,
        backing_off: false,
        queue_len: 0,
    };

    #[test]
    fn phases() {
        let delay = Duration::from_secs(2);
        assert_eq!(phase_not_ready(Phase::Running, delay), None);
        assert_eq!(
            phase_not_ready(Phase::Starting, delay).as_deref(),
            Some("starting")
        );
        assert_eq!(
            phase_not_ready(Phase::Stopping, delay).as_deref(),
            Some("stopping")
        );
        // The drain says it is a stop, so a reader of /readyz knows why.
        let draining = phase_not_ready(Phase::Draining, delay).unwrap();
        assert!(
            draining.starts_with("stopping: draining for 2s"),
            "{draining}"
        );
    }

    #[test]
    fn pools() {
        let off = QueueLimit::Off;
        let cases: &[(&str, PoolLoad, QueueLimit, Option<&str>)] = &[
            ("all workers busy, nothing waits", BUSY, off, None),
            (
                "a queue with no limit",
                PoolLoad {
                    queue_len: 500,
                    ..BUSY
                },
                off,
                None,
            ),
            (
                "a queue at the limit",
                PoolLoad {
                    queue_len: 8,
                    ..BUSY
                },
                QueueLimit::Max(8),
                None,
            ),
            (
                "a queue above the limit",
                PoolLoad {
                    queue_len: 9,
                    ..BUSY
                },
                QueueLimit::Max(8),
                Some("pool app has 9 requests waiting for a worker (ready_max_queue 8)"),
            ),
            (
                "limit 0: any waiting request",
                PoolLoad {
                    queue_len: 1,
                    ..BUSY
                },
                QueueLimit::Max(0),
                Some("pool app has 1 requests waiting for a worker (ready_max_queue 0)"),
            ),
            (
                "draining",
                PoolLoad {
                    draining: true,
                    ..BUSY
                },
                off,
                Some("pool app is draining"),
            ),
            (
                "no worker, room to start one",
                PoolLoad {
                    busy: 0,
                    total: 0,
                    ..BUSY
                },
                off,
                None,
            ),
            (
                "no worker, backing off",
                PoolLoad {
                    busy: 0,
                    total: 0,
                    backing_off: true,
                    ..BUSY
                },
                off,
                Some("pool app has no worker and cannot start one"),
            ),
            (
                "one starting",
                PoolLoad {
                    busy: 0,
                    total: 0,
                    spawning: 1,
                    backing_off: true,
                    ..BUSY
                },
                off,
                None,
            ),
        ];
        for (what, pool, limit, expected) in cases {
            assert_eq!(pool_not_ready(pool, *limit).as_deref(), *expected, "{what}");
        }
    }
}
