//! Lifecycle: start, serve, reload, stop.
//!
//! Signals map to phases: SIGTERM, SIGINT and SIGQUIT are a graceful stop
//! (for `drain_delay`, `/readyz` fails while every listener still serves, so a
//! balancer takes the node out first; then stop accepting, let in-flight
//! requests finish within `grace_period`, then stop the workers: SIGTERM, then
//! SIGKILL); a second SIGINT stops at once.
//! SIGHUP (or `tqserver reload`, or an edit of a config file) reloads; SIGUSR1
//! reopens the log files.
//!
//! A reload is a diff between the running configuration and the new,
//! validated one: new apps start, removed or disabled ones drain and stop,
//! changed ones get a new pool that is warm before traffic moves to it (the
//! old pool finishes its in-flight requests, then stops), and untouched apps
//! are not disturbed. An invalid configuration changes nothing; its errors
//! are logged and shown by the admin endpoint.
//!
//! Here: [`ServerState`], what the parts of a running server share. By
//! concept: `lifecycle` (start, signals, the graceful stop), `reload` (the
//! executor of [`crate::reload::plan`]), `listeners` (the FastCGI listeners'
//! sockets), `runtime_dirs` (socket and cache directories, the pid file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::observe::Telemetry;
use crate::readiness::{self, PoolLoad};
use crate::router::Router;

mod lifecycle;
mod listeners;
mod reload;
mod runtime_dirs;

pub use crate::readiness::Phase;
pub use lifecycle::{run, start_apps, stop_apps};
use listeners::RunningListener;
pub use reload::{reload, restart_app};

/// The outcome of the last reload, for the status output.
#[derive(Clone, Debug, Default)]
pub struct ReloadReport {
    /// How many reloads were attempted (and are done).
    pub seq: u64,
    /// How many reloads have begun: `seq + 1` while one runs.
    pub begun: u64,
    pub ok: bool,
    /// Seconds since the epoch; 0 before any reload.
    pub at_unix: u64,
    pub errors: Vec<String>,
}

/// Everything the running server shares between its parts.
pub struct ServerState {
    config_path: PathBuf,
    config: ArcSwap<Config>,
    pub router: Arc<ArcSwap<Router>>,
    pub telemetry: Arc<Telemetry>,
    phase: AtomicU8,
    started: Instant,
    last_reload: Mutex<ReloadReport>,
    socket_dir: PathBuf,
    listeners: Mutex<BTreeMap<String, RunningListener>>,
    /// The TLS port's certificates, which a reload replaces; None without
    /// `server.tls`.
    tls_resolver: Mutex<Option<Arc<crate::tls::CertResolver>>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    /// Connections of every front end; apps being retired drain here too.
    connections: TaskTracker,
    background: TaskTracker,
    /// Development mode's page reloads (None in production).
    live_reload: Option<Arc<crate::dev::LiveReload>>,
}

impl ServerState {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Running,
            2 => Phase::Draining,
            _ => Phase::Stopping,
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn last_reload(&self) -> ReloadReport {
        self.last_reload
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Why the server cannot take work right now, if it cannot (see
    /// [`crate::readiness`]).
    pub fn not_ready_reason(&self) -> Option<String> {
        let config = self.config.load();
        if let Some(reason) = readiness::phase_not_ready(self.phase(), config.server.drain_delay) {
            return Some(reason);
        }
        let router = self.router.load();
        router.apps().iter().find_map(|app| {
            let limit = app.config.ready_max_queue.unwrap_or(config.ready_max_queue);
            let status = app.pool.status();
            readiness::pool_not_ready(&PoolLoad::new(&app.config.name, &status), limit)
        })
    }

    /// A reload begins: it reads the configuration files after this.
    fn reload_begun(&self) {
        if let Ok(mut report) = self.last_reload.lock() {
            report.begun = report.seq + 1;
        }
    }

    fn report(&self, ok: bool, errors: Vec<String>) {
        if let Ok(mut report) = self.last_reload.lock() {
            *report = ReloadReport {
                seq: report.seq + 1,
                begun: report.seq + 1,
                ok,
                at_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                errors,
            };
        }
    }
}
