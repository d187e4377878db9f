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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::app::App;
use crate::config::{AppConfig, Config, validate::display_route};
use crate::http::{self, Frontend};
use crate::listener;
use crate::logging::LogFile;
use crate::metrics::{BuildInfo, Metrics};
use crate::observe::Telemetry;
use crate::readiness::{self, PoolLoad};
use crate::reload::{self, ListenerChange, ReloadError, ReloadSummary};
use crate::router::Router;
use crate::{admin, systemd, watch};

pub use crate::readiness::Phase;

/// The outcome of the last reload, for the status output.
#[derive(Clone, Debug, Default)]
pub struct ReloadReport {
    /// How many reloads were attempted.
    pub seq: u64,
    pub ok: bool,
    /// Seconds since the epoch; 0 before any reload.
    pub at_unix: u64,
    pub errors: Vec<String>,
}

struct RunningListener {
    shared: Arc<listener::Shared>,
    stop: CancellationToken,
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
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    /// Connections of every front end; apps being retired drain here too.
    connections: TaskTracker,
    background: TaskTracker,
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

    fn report(&self, ok: bool, errors: Vec<String>) {
        if let Ok(mut report) = self.last_reload.lock() {
            *report = ReloadReport {
                seq: report.seq + 1,
                ok,
                at_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                errors,
            };
        }
    }
}

pub async fn run(mut config: Config, log_file: LogFile) -> anyhow::Result<()> {
    // The admin endpoint first: its default socket belongs to this site, so
    // a second tqserver for the same site stops here, before it touches the
    // running one's pid file.
    let admin = match &config.admin {
        Some(listen) => Some(admin::bind(listen, &config.file).await?),
        None => None,
    };
    // Folders of earlier runs that died without cleaning up (kill -9).
    remove_stale_runtime_dirs(&config.socket_dir);
    remove_stale_runtime_dirs(&config.cache_dir);
    // Sockets of this process live in their own private directory.
    let socket_dir = config.socket_dir.join(std::process::id().to_string());
    pool::socket::prepare_socket_dir(&socket_dir)
        .with_context(|| format!("cannot create socket directory {}", socket_dir.display()))?;
    set_socket_dirs(&mut config, &socket_dir);
    // OPcache file caches of this process, emptied with it.
    let cache_dir = config.cache_dir.join(std::process::id().to_string());
    set_cache_dirs(&mut config, &cache_dir);
    let mut pid_file = config.server.pid_file.clone();
    if let Some(path) = &pid_file
        && let Err(err) = write_pid_file(path)
    {
        warn!("{err:#}; `tqserver reload` will not find this server (SIGHUP still works)");
        pid_file = None;
    }
    let result = serve(config, log_file, socket_dir.clone(), admin).await;
    let _ = std::fs::remove_dir_all(&socket_dir);
    let _ = std::fs::remove_dir_all(&cache_dir);
    if let Some(pid_file) = &pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    // The last thing before the process exits (the runtime has nothing
    // left to wait for).
    if result.is_ok() {
        info!("stopped");
    }
    result
}

fn set_socket_dirs(config: &mut Config, dir: &Path) {
    for worker in &mut config.apps {
        if let pool::SocketKind::Unix { dir: socket_dir } =
            &mut Arc::make_mut(worker).pool.command.socket
        {
            *socket_dir = dir.to_owned();
        }
    }
}

/// Removes `base/<pid>` folders whose process is gone.
fn remove_stale_runtime_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn set_cache_dirs(config: &mut Config, dir: &Path) {
    for worker in &mut config.apps {
        Arc::make_mut(worker).php.cache_dir = Some(dir.to_owned());
    }
}

fn write_pid_file(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write pid file {}", path.display()))
}

async fn serve(
    config: Config,
    log_file: LogFile,
    socket_dir: PathBuf,
    admin: Option<admin::AdminListener>,
) -> anyhow::Result<()> {
    let router = Arc::new(ArcSwap::from_pointee(Router::default()));
    let metrics = Metrics::new(
        router.clone(),
        BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
        },
    );
    let telemetry = Telemetry::new(
        metrics,
        config.logging.access_log.as_ref(),
        config.logging.slow_log_threshold,
        config.logging.slow_log_file.clone(),
    )
    .context("cannot open log files")?;
    let state = Arc::new(ServerState {
        config_path: config.file.clone(),
        config: ArcSwap::from_pointee(config.clone()),
        router: router.clone(),
        telemetry: telemetry.clone(),
        phase: AtomicU8::new(Phase::Starting as u8),
        started: Instant::now(),
        last_reload: Mutex::new(ReloadReport {
            ok: true,
            ..ReloadReport::default()
        }),
        socket_dir,
        listeners: Mutex::new(BTreeMap::new()),
        reloading: tokio::sync::Mutex::new(()),
        shutdown: CancellationToken::new(),
        connections: TaskTracker::new(),
        background: TaskTracker::new(),
    });
    state
        .background
        .spawn(telemetry.clone().flush_periodically(state.shutdown.clone()));

    // The admin endpoint answers (not ready) while the pools start and
    // while they drain; it stops last.
    let admin_stop = CancellationToken::new();
    let admin_connections = TaskTracker::new();
    if let (Some(listener), Some(listen)) = (admin, &config.admin) {
        info!(listen = %listen, "admin endpoint ready");
        admin_connections.spawn(admin::serve(
            listener,
            state.clone(),
            admin_stop.clone(),
            admin_connections.clone(),
        ));
    }
    let result = serve_until_stopped(&state, &config, log_file).await;
    admin_stop.cancel();
    admin_connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_connections.wait()).await;
    result
}

async fn serve_until_stopped(
    state: &Arc<ServerState>,
    config: &Config,
    log_file: LogFile,
) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while starting (a systemd reload
    // right after READY, say) must not hit the default action and kill us.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigquit = signal(SignalKind::quit())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    let router = state.router.clone();
    let telemetry = state.telemetry.clone();

    let apps = match start_apps(&config.apps, &telemetry).await {
        Ok(apps) => apps,
        Err(err) => {
            state.shutdown.cancel();
            return Err(err);
        }
    };
    router.store(Arc::new(Router::new(apps.clone())));
    // FastCGI listeners first: once the HTTP port answers, everything does.
    for app in &apps {
        if let Err(err) = start_listener(state, &app.config).await {
            state.shutdown.cancel();
            stop_apps(&apps, Duration::ZERO).await;
            return Err(err);
        }
    }
    let http_listener = match TcpListener::bind(config.server.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            state.shutdown.cancel();
            stop_apps(&apps, Duration::ZERO).await;
            return Err(err).with_context(|| format!("cannot listen on {}", config.server.listen));
        }
    };
    let draining = CancellationToken::new();
    let front = Arc::new(Frontend {
        router: router.clone(),
        settings: config.server.clone(),
        telemetry: telemetry.clone(),
        draining: draining.clone(),
    });
    let accept = tokio::spawn(http::serve(
        http_listener,
        front,
        state.shutdown.clone(),
        state.connections.clone(),
    ));
    state.set_phase(Phase::Running);
    info!(
        listen = %config.server.listen,
        workers = apps.len(),
        "tqserver {} serving",
        env!("CARGO_PKG_VERSION")
    );
    for app in &apps {
        info!(
            worker = %app.config.name,
            route = display_route(&app.config.route),
            php = %app.config.php.version,
            "route ready"
        );
    }
    systemd::ready();
    let watchdog = systemd::watchdog_interval();
    if let Some(interval) = watchdog {
        state
            .background
            .spawn(systemd::keep_alive(interval, state.shutdown.clone()));
    }

    // Reload requests from signals and the file watcher.
    let (reload_tx, mut reload_rx) = mpsc::channel::<&'static str>(4);
    let _watcher = match watch::start(config, reload_tx.clone()) {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            warn!(
                "config files will not be watched (SIGHUP and `tqserver reload` still work): {err}"
            );
            None
        }
    };

    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: stopping gracefully"); break; }
            _ = sigquit.recv() => { info!("SIGQUIT: stopping gracefully"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping gracefully (again to stop at once)"); break; }
            _ = sighup.recv() => reload(state, "SIGHUP").await,
            Some(why) = reload_rx.recv() => reload(state, why).await,
            _ = sigusr1.recv() => {
                let result = log_file.reopen().and_then(|()| telemetry.reopen().map_err(Into::into));
                match result {
                    Ok(()) => info!("SIGUSR1: log files reopened"),
                    Err(err) => error!("SIGUSR1: cannot reopen log files: {err}"),
                }
            }
        }
    }

    systemd::stopping();
    // Phase 1: readiness fails while everything still serves, long enough
    // for a balancer's health checks to take this node out of rotation.
    let drain_delay = state.config.load().server.drain_delay;
    if !drain_delay.is_zero() {
        state.set_phase(Phase::Draining);
        draining.cancel();
        info!("draining: /readyz fails for {drain_delay:?}, then the listeners close");
        tokio::select! {
            _ = tokio::time::sleep(drain_delay) => {}
            _ = sigint.recv() => {
                warn!("second SIGINT: stopping now");
                state.shutdown.cancel();
                let apps_now = router.load().apps().to_vec();
                stop_apps(&apps_now, Duration::ZERO).await;
                return Ok(());
            }
        }
    }
    // Phase 2: stop accepting; connections finish their requests.
    state.set_phase(Phase::Stopping);
    let grace = state.config.load().server.grace_period;
    let deadline = Instant::now() + grace;
    state.shutdown.cancel();
    let _ = accept.await;
    state.connections.close();
    let apps_now = router.load().apps().to_vec();
    tokio::select! {
        _ = tokio::time::timeout_at(deadline, state.connections.wait()) => {}
        _ = sigint.recv() => {
            warn!("second SIGINT: stopping now");
            stop_apps(&apps_now, Duration::ZERO).await;
            return Ok(());
        }
    }
    // Phase 3: workers (anything still running is cut off at the deadline).
    let left = deadline.saturating_duration_since(Instant::now());
    stop_apps(&apps_now, left).await;
    state.background.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), state.background.wait()).await;
    telemetry.flush();
    Ok(())
}

async fn start_listener(state: &Arc<ServerState>, worker: &AppConfig) -> anyhow::Result<()> {
    let Some(fastcgi) = &worker.fastcgi else {
        return Ok(());
    };
    let bound = bind_listener(worker, fastcgi).await?;
    run_listener(state, worker, fastcgi, bound);
    Ok(())
}

async fn bind_listener(
    worker: &AppConfig,
    fastcgi: &crate::config::FastcgiConfig,
) -> anyhow::Result<listener::Bound> {
    listener::bind(fastcgi).await.with_context(|| {
        format!(
            "worker {}: cannot listen on fastcgi.listen {:?}",
            worker.name, fastcgi.listen
        )
    })
}

/// Serves a bound listener, replacing (and stopping) any earlier one of the
/// same worker.
fn run_listener(
    state: &Arc<ServerState>,
    worker: &AppConfig,
    fastcgi: &crate::config::FastcgiConfig,
    bound: listener::Bound,
) {
    let shared = listener::Shared::new(
        worker.name.clone(),
        state.router.clone(),
        state.telemetry.clone(),
        fastcgi.clone(),
        state.config.load().server.clone(),
    );
    let stop = state.shutdown.child_token();
    state.background.spawn(listener::serve(
        bound,
        shared.clone(),
        stop.clone(),
        state.connections.clone(),
    ));
    info!(worker = %worker.name, listen = ?fastcgi.listen, "FastCGI listener ready");
    if let Ok(mut listeners) = state.listeners.lock()
        && let Some(old) = listeners.insert(worker.name.clone(), RunningListener { shared, stop })
    {
        old.stop.cancel();
    }
}

fn stop_listener(state: &ServerState, name: &str) {
    if let Ok(mut listeners) = state.listeners.lock()
        && let Some(listener) = listeners.remove(name)
    {
        listener.stop.cancel();
    }
}

/// Loads the configuration again and applies the difference.
pub async fn reload(state: &Arc<ServerState>, why: &str) {
    let _one_at_a_time = state.reloading.lock().await;
    if state.phase() != Phase::Running {
        return;
    }
    let started = Instant::now();
    systemd::reloading();
    info!("reloading configuration ({why})");
    let result = apply_reload(state).await;
    match result {
        Ok(summary) => {
            state.telemetry.metrics.reloads.inc();
            state.report(true, Vec::new());
            info!(
                took_ms = started.elapsed().as_millis() as u64,
                "configuration reloaded: {summary}"
            );
        }
        Err(error) => {
            state.telemetry.metrics.reload_failures.inc();
            let errors = error.lines();
            for error in &errors {
                error!("reload refused, the running configuration stays: {error}");
            }
            state.report(false, errors);
        }
    }
    systemd::ready();
}

/// Carries out a reload: the new configuration is loaded and validated,
/// [`reload::plan`] says what changes, and this applies it. Every new pool is
/// warm and every new listener bound before anything switches; if one is
/// not, nothing changes.
async fn apply_reload(state: &Arc<ServerState>) -> Result<ReloadSummary, ReloadError> {
    let mut new = tokio::task::spawn_blocking({
        let path = state.config_path.clone();
        move || crate::config::load(&path)
    })
    .await
    .map_err(|err| ReloadError::Invalid(vec![err.to_string()]))?
    .map_err(|errors| ReloadError::Invalid(errors.0.iter().map(ToString::to_string).collect()))?;
    set_socket_dirs(&mut new, &state.socket_dir);
    let cache_dir = new.cache_dir.join(std::process::id().to_string());
    set_cache_dirs(&mut new, &cache_dir);
    let old = state.config.load_full();

    let current: BTreeMap<String, Arc<App>> = state
        .router
        .load()
        .apps()
        .iter()
        .map(|app| (app.config.name.clone(), app.clone()))
        .collect();
    let running: Vec<Arc<AppConfig>> = current.values().map(|app| app.config.clone()).collect();
    let plan = reload::plan(&old, &running, &new);
    if !plan.restart_needed.is_empty() {
        warn!(
            "changes to server.yaml's {} section(s) take effect after a restart",
            plan.restart_needed.join(", ")
        );
    }

    // New pools are warm before any traffic moves to them.
    let to_start: Vec<Arc<AppConfig>> = plan.start.iter().chain(&plan.replace).cloned().collect();
    let started = start_apps(&to_start, &state.telemetry)
        .await
        .map_err(|err| ReloadError::Start(format!("{err:#}")))?;
    let started_app = |name: &str| started.iter().find(|app| app.config.name == name);
    let running_listener = |name: &str| {
        state
            .listeners
            .lock()
            .ok()
            .and_then(|listeners| listeners.get(name).map(|r| r.shared.clone()))
    };

    // New listener addresses are all bound before anything switches: if one
    // cannot be, the reload is refused and every old listener still serves.
    // A listener that should be running but is not is bound too.
    let mut bound = Vec::new();
    let mut reconfigure = Vec::new();
    for change in &plan.listeners {
        let (worker, shared) = match change {
            ListenerChange::Bind { worker } => (worker, None),
            ListenerChange::Reconfigure {
                worker,
                max_connections_changed,
            } => match running_listener(worker) {
                Some(shared) => {
                    if *max_connections_changed {
                        warn!(
                            worker = %worker,
                            "fastcgi.max_connections changes take effect after a restart (or a change of fastcgi.listen)"
                        );
                    }
                    (worker, Some(shared))
                }
                None => (worker, None),
            },
            ListenerChange::Close { .. } => continue,
        };
        let Some(app) = started_app(worker) else {
            continue;
        };
        let Some(fastcgi) = app.config.fastcgi.as_ref() else {
            continue;
        };
        match shared {
            Some(shared) => reconfigure.push((app, fastcgi, shared)),
            None => match bind_listener(&app.config, fastcgi).await {
                Ok(listener) => bound.push((app, fastcgi, listener)),
                Err(err) => {
                    drop(bound);
                    stop_apps(&started, Duration::ZERO).await;
                    return Err(ReloadError::Bind(format!("{err:#}")));
                }
            },
        }
    }
    for (app, fastcgi, shared) in reconfigure {
        if let Err(err) = listener::apply_access(fastcgi) {
            warn!(worker = %app.config.name, "fastcgi socket owner/mode not updated: {err}");
        }
        shared.reconfigure(fastcgi.clone());
    }
    for (app, fastcgi, listener) in bound {
        run_listener(state, &app.config, fastcgi, listener);
    }
    for change in &plan.listeners {
        if let ListenerChange::Close { worker } = change {
            stop_listener(state, worker);
        }
    }

    let mut apps: Vec<Arc<App>> = plan
        .keep
        .iter()
        .filter_map(|name| current.get(name).cloned())
        .collect();
    apps.extend(started.iter().cloned());
    state.router.store(Arc::new(Router::new(apps)));
    state.config.store(Arc::new(new));

    // The old pools finish what they are running, then stop.
    let grace = state.config.load().server.grace_period;
    let names = |configs: &[Arc<AppConfig>]| configs.iter().map(|c| c.name.clone()).collect();
    let summary = ReloadSummary {
        added: names(&plan.start),
        changed: names(&plan.replace),
        removed: plan.remove.clone(),
    };
    for name in summary.changed.iter().chain(&summary.removed) {
        if let Some(app) = current.get(name) {
            let pool = app.pool.clone();
            state
                .background
                .spawn(async move { pool.drain(grace).await });
        }
    }
    Ok(summary)
}

/// Starts every app concurrently; if one fails, the others are stopped.
pub async fn start_apps(
    workers: &[Arc<AppConfig>],
    telemetry: &Arc<Telemetry>,
) -> anyhow::Result<Vec<Arc<App>>> {
    let mut starting = tokio::task::JoinSet::new();
    for worker in workers {
        let worker = worker.clone();
        let telemetry = telemetry.clone();
        starting.spawn(async move { App::start(worker, &telemetry).await });
    }
    let mut apps = Vec::new();
    let mut failure = None;
    while let Some(joined) = starting.join_next().await {
        match joined {
            Ok(Ok(app)) => apps.push(app),
            Ok(Err(err)) => {
                failure.get_or_insert(err);
            }
            Err(err) => {
                failure.get_or_insert(err.into());
            }
        }
    }
    if let Some(failure) = failure {
        stop_apps(&apps, Duration::ZERO).await;
        return Err(failure);
    }
    apps.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    Ok(apps)
}

pub async fn stop_apps(apps: &[Arc<App>], grace: Duration) {
    let mut stopping = tokio::task::JoinSet::new();
    for app in apps {
        let pool = app.pool.clone();
        stopping.spawn(async move { pool.drain(grace).await });
    }
    while stopping.join_next().await.is_some() {}
}
