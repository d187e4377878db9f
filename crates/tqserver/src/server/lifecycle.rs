//! Start, serve, stop: the runtime directories and the pid file, the apps'
//! pools, the FastCGI listeners, then the HTTP port; signals; and the
//! graceful stop in phases (drain, stop accepting and let in-flight
//! requests finish, stop the workers).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::listeners::start_listener;
use super::reload::reload;
use super::runtime_dirs::{
    remove_stale_runtime_dirs, set_cache_dirs, set_socket_dirs, write_pid_file,
};
use super::{Phase, ReloadReport, ServerState};
use crate::app::App;
use crate::config::{AppConfig, Config, HttpAppConfig, HttpAppsSettings, validate::display_route};
use crate::http::{self, Frontend};
use crate::httpapp::HttpApp;
use crate::logging::LogFile;
use crate::metrics::{BuildInfo, Metrics};
use crate::observe::Telemetry;
use crate::router::Router;
use crate::{admin, systemd, watch};

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

pub(super) async fn serve(
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
    let shutdown = CancellationToken::new();
    let live_reload = config
        .server
        .development
        .then(|| crate::dev::LiveReload::new(shutdown.clone()));
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
        tls_resolver: Mutex::new(None),
        reloading: tokio::sync::Mutex::new(()),
        shutdown,
        connections: TaskTracker::new(),
        background: TaskTracker::new(),
        live_reload,
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

pub(super) async fn serve_until_stopped(
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
    let http_apps = match start_http_apps(
        &config.http_apps,
        &telemetry,
        &config.http,
        state.live_reload.as_ref(),
    )
    .await
    {
        Ok(http_apps) => http_apps,
        Err(err) => {
            state.shutdown.cancel();
            stop_apps(&apps, Duration::ZERO).await;
            return Err(err);
        }
    };
    router.store(Arc::new(Router::with_http_apps(
        apps.clone(),
        http_apps.clone(),
    )));
    // Watching starts before the port answers: no edit made after that is
    // missed.
    if let Some(live) = &state.live_reload {
        watch_sources(state, config, live);
    }
    // FastCGI listeners first: once the HTTP port answers, everything does.
    for app in &apps {
        if let Err(err) = start_listener(state, &app.config).await {
            state.shutdown.cancel();
            stop_apps(&apps, Duration::ZERO).await;
            stop_http_apps(&http_apps).await;
            return Err(err);
        }
    }
    let http_listener = match TcpListener::bind(config.server.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            state.shutdown.cancel();
            stop_apps(&apps, Duration::ZERO).await;
            stop_http_apps(&http_apps).await;
            return Err(err).with_context(|| format!("cannot listen on {}", config.server.listen));
        }
    };
    let acme = config
        .server
        .tls
        .as_ref()
        .and_then(|tls| tls.acme.clone())
        .map(crate::acme::Acme::new);
    let tls = match bind_tls(state, config, acme.as_ref()).await {
        Ok(tls) => tls,
        Err(err) => {
            state.shutdown.cancel();
            stop_apps(&apps, Duration::ZERO).await;
            return Err(err);
        }
    };
    let draining = CancellationToken::new();
    let front = Arc::new(Frontend {
        router: router.clone(),
        settings: config.server.clone(),
        telemetry: telemetry.clone(),
        draining: draining.clone(),
        live_reload: state.live_reload.clone(),
        acme_challenges: acme.as_ref().map(|acme| acme.challenges.clone()),
    });
    let accept = tokio::spawn(http::serve(
        http::Listeners {
            http: http_listener,
            tls,
        },
        front,
        state.shutdown.clone(),
        state.connections.clone(),
    ));
    // Once the ports answer challenges.
    if let Some(acme) = &acme {
        let (port, key, ca_port) = match acme.uses_tls_alpn() {
            false => (config.server.listen.port(), "server.port", 80),
            true => (
                config
                    .server
                    .tls
                    .as_ref()
                    .map_or(0, |tls| tls.listen.port()),
                "server.tls.port",
                443,
            ),
        };
        if port != ca_port {
            warn!(
                port,
                "server.tls.acme: the CA checks challenges on port {ca_port}; forward port {ca_port} to {key}"
            );
        }
        state
            .background
            .spawn(acme.clone().run(state.shutdown.clone()));
    }
    state.set_phase(Phase::Running);
    if let Some(tls) = &config.server.tls {
        info!(listen = %tls.listen, "TLS port ready");
    }
    info!(
        listen = %config.server.listen,
        apps = apps.len(),
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
    for app in &http_apps {
        info!(
            worker = %app.config.name,
            route = display_route(&app.config.route),
            instances = app.config.instances,
            "route ready (http app)"
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
                let http_apps_now = router.load().http_apps().to_vec();
                stop_http_apps(&http_apps_now).await;
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
    let http_apps_now = router.load().http_apps().to_vec();
    tokio::select! {
        _ = tokio::time::timeout_at(deadline, state.connections.wait()) => {}
        _ = sigint.recv() => {
            warn!("second SIGINT: stopping now");
            stop_apps(&apps_now, Duration::ZERO).await;
            stop_http_apps(&http_apps_now).await;
            return Ok(());
        }
    }
    // Phase 3: workers (anything still running is cut off at the deadline).
    // An http app's instances drain what the proxy still sends them, then
    // stop.
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::join!(stop_apps(&apps_now, left), stop_http_apps(&http_apps_now));
    state.background.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), state.background.wait()).await;
    telemetry.flush();
    Ok(())
}

/// Development mode: each burst of changes to an app's files reloads open
/// pages, after new workers for code the app would not see otherwise.
fn watch_sources(state: &Arc<ServerState>, config: &Config, live: &Arc<crate::dev::LiveReload>) {
    let (watcher, mut changes) =
        match crate::dev::watch_sources(&config.workers_dir, state.router.clone()) {
            Ok(watching) => watching,
            Err(err) => {
                crate::dev::watch_failed(&err);
                return;
            }
        };
    info!(
        "development mode: watching {} for changes",
        config.workers_dir.display()
    );
    let state = state.clone();
    let live = live.clone();
    state.clone().background.spawn(async move {
        let _watcher = watcher;
        loop {
            let (name, code) = tokio::select! {
                change = changes.recv() => match change {
                    Some(change) => change,
                    None => return,
                },
                _ = state.shutdown.cancelled() => return,
            };
            let app = state.router.load().app_named(&name).cloned();
            let Some(app) = app else { continue };
            if code && crate::dev::restart_on_change(&app.config) {
                drop(app);
                match super::restart_app(&state, &name).await {
                    Ok(()) => live.changed(&format!("app {name}: code changed, new workers")),
                    Err(err) => error!(worker = %name, "development: new workers failed to start, the old ones still serve: {err:#}"),
                }
            } else {
                live.changed(&format!("app {name}: files changed"));
            }
        }
    });
}

/// Starts every app concurrently; if one fails, the others are stopped.
pub async fn start_apps(
    apps: &[Arc<AppConfig>],
    telemetry: &Arc<Telemetry>,
) -> anyhow::Result<Vec<Arc<App>>> {
    let mut starting = tokio::task::JoinSet::new();
    for app in apps {
        let app = app.clone();
        let telemetry = telemetry.clone();
        starting.spawn(async move { App::start(app, &telemetry).await });
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

/// Starts every http app concurrently (builds, then healthy instances); if
/// one fails, the others are stopped.
pub async fn start_http_apps(
    apps: &[Arc<HttpAppConfig>],
    telemetry: &Arc<Telemetry>,
    settings: &HttpAppsSettings,
    live_reload: Option<&Arc<crate::dev::LiveReload>>,
) -> anyhow::Result<Vec<Arc<HttpApp>>> {
    let mut starting = tokio::task::JoinSet::new();
    for app in apps {
        let (app, telemetry, settings) = (app.clone(), telemetry.clone(), settings.clone());
        let live_reload = live_reload.cloned();
        starting
            .spawn(async move { HttpApp::start(app, &telemetry, &settings, live_reload).await });
    }
    let mut started = Vec::new();
    let mut failure = None;
    while let Some(joined) = starting.join_next().await {
        match joined {
            Ok(Ok(app)) => started.push(app),
            Ok(Err(err)) => {
                failure.get_or_insert(err);
            }
            Err(err) => {
                failure.get_or_insert(err.into());
            }
        }
    }
    if let Some(failure) = failure {
        stop_http_apps(&started).await;
        return Err(failure);
    }
    started.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    Ok(started)
}

/// Drains and stops http apps' instances, all apps together.
pub async fn stop_http_apps(apps: &[Arc<HttpApp>]) {
    let mut stopping = tokio::task::JoinSet::new();
    for app in apps {
        let app = app.clone();
        stopping.spawn(async move { app.stop().await });
    }
    while stopping.join_next().await.is_some() {}
}

pub async fn stop_apps(apps: &[Arc<App>], grace: Duration) {
    let mut stopping = tokio::task::JoinSet::new();
    for app in apps {
        let pool = app.pool.clone();
        stopping.spawn(async move { pool.drain(grace).await });
    }
    while stopping.join_next().await.is_some() {}
}

/// Binds the TLS port of `server.tls`, if set, with its certificates; the
/// certificate resolver goes into `state` for reloads to update. With
/// `acme`, its certificate serves its domains (and every name when there
/// are no certificate files).
async fn bind_tls(
    state: &ServerState,
    config: &Config,
    acme: Option<&Arc<crate::acme::Acme>>,
) -> anyhow::Result<Option<(TcpListener, tokio_rustls::TlsAcceptor)>> {
    let Some(settings) = &config.server.tls else {
        return Ok(None);
    };
    if config.tls_certificates.is_none() && acme.is_none() {
        return Ok(None);
    }
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on server.tls.port ({})", settings.listen))?;
    let mut resolver: Option<Arc<dyn tokio_rustls::rustls::server::ResolvesServerCert>> = None;
    if let Some(certificates) = &config.tls_certificates {
        for warning in certificates.warnings() {
            warn!("{warning}");
        }
        let files = Arc::new(crate::tls::CertResolver::new(certificates.clone()));
        if let Ok(mut slot) = state.tls_resolver.lock() {
            *slot = Some(files.clone());
        }
        resolver = Some(files);
    }
    if let Some(acme) = acme {
        resolver = Some(Arc::new(crate::acme::Resolver::new(acme.clone(), resolver)));
    }
    let Some(resolver) = resolver else {
        return Ok(None);
    };
    let acme_tls_alpn = acme.is_some_and(|acme| acme.uses_tls_alpn());
    let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
        resolver,
        config.server.http2.enabled,
        acme_tls_alpn,
    ));
    Ok(Some((listener, acceptor)))
}
