//! Where scaling is decided: pure functions of the pool's counts and the
//! clock, so every rule is testable without processes or timers.
//!
//! Scale up at once: a request that finds no idle worker asks for a spawn in
//! the same call (no tick), and under a burst every waiting request has a
//! spawn in flight for it, up to `max_spawn_rate` at a time. php-fpm instead
//! spawns 1, 2, 4 ... per one-second maintenance pass; matching demand
//! directly reaches the needed size in one spawn time rather than several
//! seconds.
//!
//! Scale down gently: only the least recently used idle worker is stopped,
//! only once it has been idle for `idle_timeout`, at most one per second,
//! never below the floor and never below `min_spare` idle workers (which
//! would only be spawned again). Since dispatch takes the most recently used idle
//! worker first, a hovering load keeps a stable set warm and lets the rest
//! age out instead of cycling through all of them.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Manager, PoolConfig};

/// Least time between two idle stops (dynamic manager).
pub const SCALE_DOWN_INTERVAL: Duration = Duration::from_secs(1);

/// What the pool looks like right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Workers that can take requests: idle plus busy, minus those serving
    /// their last request before retirement.
    pub capacity: usize,
    /// Processes starting.
    pub spawning: usize,
    pub idle: usize,
    /// Requests waiting for a worker.
    pub waiting: usize,
}

/// How many spawns to start now.
pub fn spawns_needed(config: &PoolConfig, counts: Counts) -> usize {
    let planned = counts.capacity + counts.spawning;
    let room = config.max_workers.saturating_sub(planned);
    let for_floor = config.floor().saturating_sub(planned);
    let for_demand = counts.waiting.saturating_sub(counts.spawning);
    let for_spare = if config.manager == Manager::Dynamic {
        config
            .min_spare
            .saturating_sub(counts.idle + counts.spawning)
    } else {
        0
    };
    let rate_room = config.max_spawn_rate.saturating_sub(counts.spawning);
    for_floor
        .max(for_demand)
        .max(for_spare)
        .min(room)
        .min(rate_room)
}

/// Which idle workers to stop. `idle_since` lists the idle workers from least
/// to most recently used; the answer holds indexes into it.
pub fn idle_to_stop(
    config: &PoolConfig,
    now: Instant,
    capacity: usize,
    idle_since: &[Instant],
    last_stop: Option<Instant>,
) -> Vec<usize> {
    let expired = |since: &Instant| now.saturating_duration_since(*since) >= config.idle_timeout;
    match config.manager {
        Manager::Static => Vec::new(),
        Manager::Ondemand => idle_since
            .iter()
            .enumerate()
            .filter(|(_, since)| expired(since))
            .map(|(index, _)| index)
            .collect(),
        Manager::Dynamic => {
            if capacity <= config.min_workers {
                return Vec::new();
            }
            if last_stop.is_some_and(|at| now.saturating_duration_since(at) < SCALE_DOWN_INTERVAL) {
                return Vec::new();
            }
            let Some(oldest) = idle_since.first() else {
                return Vec::new();
            };
            let too_many_spare = config.max_spare.is_some_and(|max| idle_since.len() > max);
            // Stopping one of the last min_spare idle workers would only
            // have it spawned again.
            let above_spare = idle_since.len() > config.min_spare;
            if (expired(oldest) && above_spare) || too_many_spare {
                vec![0]
            } else {
                Vec::new()
            }
        }
    }
}

/// A worker that went away without being asked to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The process did not start, or did not answer its probe request.
    Spawn,
    /// The process exited after completing this many requests.
    Exit { completed_requests: u64 },
}

impl Failure {
    /// Whether this failure is a sign of a crash loop: a worker that fails
    /// before it serves (a broken binary or ini, a script that kills every
    /// process on its first request). A worker that completed requests and
    /// then died (kill -9 from outside, the OOM killer) is replaced at once:
    /// holding its replacement back only shrinks a healthy pool, and an
    /// OOM-killer storm would look like a loop otherwise.
    pub fn is_crash_loop_sign(self) -> bool {
        match self {
            Self::Spawn => true,
            Self::Exit { completed_requests } => completed_requests == 0,
        }
    }
}

/// Crash-loop guard: the delay before the next spawn, given the times of
/// recent crash-loop signs (oldest first, see [`Failure::is_crash_loop_sign`])
/// and the previous delay.
pub fn respawn_backoff(
    config: &PoolConfig,
    now: Instant,
    crashes: &[Instant],
    previous: Option<Duration>,
) -> Option<Duration> {
    let recent = crashes
        .iter()
        .filter(|at| now.saturating_duration_since(**at) <= config.crash_window)
        .count();
    if recent < config.crash_threshold.max(1) {
        return None;
    }
    let next = match previous {
        None => Duration::from_millis(250),
        Some(delay) => delay.saturating_mul(2),
    };
    Some(next.min(config.max_backoff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SocketKind, WorkerCommand};

    fn config(manager: Manager, min: usize, max: usize) -> PoolConfig {
        let mut config = PoolConfig::with_command(
            "test",
            WorkerCommand {
                program: "php-cgi".into(),
                args: vec![],
                env: vec![],
                cwd: None,
                credentials: None,
                launch: Default::default(),
                socket: SocketKind::Unix { dir: "/tmp".into() },
            },
        );
        config.manager = manager;
        config.min_workers = min;
        config.max_workers = max;
        config
    }

    #[test]
    fn static_keeps_max() {
        let config = config(Manager::Static, 0, 4);
        let counts = Counts {
            capacity: 2,
            ..Counts::default()
        };
        assert_eq!(spawns_needed(&config, counts), 2);
        let counts = Counts {
            capacity: 3,
            spawning: 1,
            ..Counts::default()
        };
        assert_eq!(spawns_needed(&config, counts), 0);
    }

    #[test]
    fn dynamic_spawns_one_per_waiting_request_up_to_max() {
        let config = config(Manager::Dynamic, 2, 10);
        // A burst of 17 waiting on 3 busy workers: 7 spawns, not 1.
        let counts = Counts {
            capacity: 3,
            spawning: 0,
            idle: 0,
            waiting: 17,
        };
        assert_eq!(spawns_needed(&config, counts), 7);
        // Spawns in flight already cover the waiting requests.
        let counts = Counts {
            capacity: 3,
            spawning: 4,
            idle: 0,
            waiting: 4,
        };
        assert_eq!(spawns_needed(&config, counts), 0);
    }

    #[test]
    fn spawn_rate_caps_concurrent_spawns() {
        let mut config = config(Manager::Dynamic, 0, 100);
        config.max_spawn_rate = 8;
        let counts = Counts {
            capacity: 0,
            spawning: 3,
            idle: 0,
            waiting: 50,
        };
        assert_eq!(spawns_needed(&config, counts), 5);
    }

    #[test]
    fn min_spare_keeps_idle_workers_warm() {
        let mut config = config(Manager::Dynamic, 1, 10);
        config.min_spare = 3;
        let counts = Counts {
            capacity: 4,
            spawning: 0,
            idle: 1,
            waiting: 0,
        };
        assert_eq!(spawns_needed(&config, counts), 2);
    }

    #[test]
    fn dynamic_scale_down_is_one_per_second_and_lru_first() {
        let config = config(Manager::Dynamic, 2, 10);
        let now = Instant::now();
        let old = now - Duration::from_secs(30);
        let fresh = now - Duration::from_secs(1);
        assert_eq!(
            idle_to_stop(&config, now, 5, &[old, old, fresh], None),
            vec![0]
        );
        // Stopped one half a second ago: wait.
        assert!(
            idle_to_stop(
                &config,
                now,
                4,
                &[old, fresh],
                Some(now - Duration::from_millis(500))
            )
            .is_empty()
        );
        // Never below min_workers.
        assert!(idle_to_stop(&config, now, 2, &[old, old], None).is_empty());
        // Nothing idle long enough.
        assert!(idle_to_stop(&config, now, 5, &[fresh], None).is_empty());
    }

    #[test]
    fn min_spare_idle_workers_are_not_stopped_and_respawned() {
        let mut config = config(Manager::Dynamic, 1, 10);
        config.min_spare = 2;
        let now = Instant::now();
        let old = now - Duration::from_secs(30);
        assert!(idle_to_stop(&config, now, 5, &[old, old], None).is_empty());
        assert_eq!(
            idle_to_stop(&config, now, 5, &[old, old, old], None),
            vec![0]
        );
    }

    #[test]
    fn max_spare_trims_without_waiting_for_idle_timeout() {
        let mut config = config(Manager::Dynamic, 1, 10);
        config.max_spare = Some(2);
        let now = Instant::now();
        assert_eq!(
            idle_to_stop(&config, now, 5, &[now, now, now], None),
            vec![0]
        );
    }

    #[test]
    fn ondemand_stops_every_expired_worker() {
        let config = config(Manager::Ondemand, 0, 10);
        let now = Instant::now();
        let old = now - Duration::from_secs(11);
        assert_eq!(
            idle_to_stop(&config, now, 3, &[old, old, now], None),
            vec![0, 1]
        );
    }

    #[test]
    fn static_never_stops_idle_workers() {
        let config = config(Manager::Static, 0, 4);
        let now = Instant::now();
        let old = now - Duration::from_secs(1000);
        assert!(idle_to_stop(&config, now, 4, &[old, old], None).is_empty());
    }

    #[test]
    fn backoff_starts_at_the_threshold_and_doubles_to_the_cap() {
        let config = config(Manager::Static, 0, 4);
        let now = Instant::now();
        let four: Vec<_> = (0..4).map(|_| now).collect();
        assert_eq!(respawn_backoff(&config, now, &four, None), None);
        let five: Vec<_> = (0..5).map(|_| now).collect();
        let first = respawn_backoff(&config, now, &five, None).unwrap();
        assert_eq!(first, Duration::from_millis(250));
        let second = respawn_backoff(&config, now, &five, Some(first)).unwrap();
        assert_eq!(second, Duration::from_millis(500));
        let capped = respawn_backoff(&config, now, &five, Some(Duration::from_secs(29))).unwrap();
        assert_eq!(capped, config.max_backoff);
        // Old crashes fall out of the window.
        let old: Vec<_> = (0..5).map(|_| now - Duration::from_secs(60)).collect();
        assert_eq!(respawn_backoff(&config, now, &old, Some(first)), None);
    }

    #[test]
    fn only_workers_that_never_served_are_signs_of_a_crash_loop() {
        assert!(Failure::Spawn.is_crash_loop_sign());
        let exit = |completed_requests| Failure::Exit { completed_requests };
        assert!(exit(0).is_crash_loop_sign());
        assert!(!exit(1).is_crash_loop_sign());
        assert!(!exit(500).is_crash_loop_sign());
    }

    #[test]
    fn served_workers_killed_every_250ms_never_back_off() {
        // kill -9 of a busy worker every 250 ms for 2.5 s: ten exits, each
        // after serving, well above the threshold of five in ten seconds.
        let config = config(Manager::Static, 0, 4);
        let start = Instant::now();
        let mut signs = Vec::new();
        let mut backoff = None;
        for kill in 0..10u32 {
            let now = start + Duration::from_millis(250) * kill;
            let failure = Failure::Exit {
                completed_requests: 100,
            };
            if failure.is_crash_loop_sign() {
                signs.push(now);
                backoff = respawn_backoff(&config, now, &signs, backoff);
            }
            assert_eq!(backoff, None, "kill {kill}");
        }
        // The same ten exits from workers that never served are a loop.
        let exits: Vec<_> = (0..10u32)
            .map(|kill| start + Duration::from_millis(250) * kill)
            .collect();
        let now = *exits.last().unwrap();
        assert!(
            Failure::Exit {
                completed_requests: 0
            }
            .is_crash_loop_sign()
        );
        assert!(respawn_backoff(&config, now, &exits, None).is_some());
    }
}
