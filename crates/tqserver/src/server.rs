//! Lifecycle: start every app's pool, serve HTTP, and stop in order on a
//! signal.
//!
//! Signals map to phases: SIGTERM or SIGINT is a graceful stop (stop
//! accepting, let in-flight requests finish within `grace_period`, then stop
//! the workers); a second SIGINT stops at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::app::App;
use crate::config::{Config, WorkerConfig};
use crate::http::{self, Frontend};
use crate::listener;
use crate::logging::LogFile;
use crate::router::Router;

pub async fn run(mut config: Config, log_file: LogFile) -> anyhow::Result<()> {
    // Sockets of this process live in their own private directory.
    let socket_dir = config.socket_dir.join(std::process::id().to_string());
    pool::socket::prepare_socket_dir(&socket_dir)
        .with_context(|| format!("cannot create socket directory {}", socket_dir.display()))?;
    for worker in &mut config.workers {
        set_socket_dir(Arc::make_mut(worker), &socket_dir);
    }
    let result = serve(config, log_file).await;
    let _ = std::fs::remove_dir_all(&socket_dir);
    result
}

fn set_socket_dir(worker: &mut WorkerConfig, dir: &std::path::Path) {
    if let pool::SocketKind::Unix { dir: socket_dir } = &mut worker.pool.command.socket {
        *socket_dir = dir.to_owned();
    }
}

async fn serve(config: Config, log_file: LogFile) -> anyhow::Result<()> {
    let apps = start_apps(&config.workers).await?;
    let listener = match TcpListener::bind(config.server.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            stop_apps(&apps, Duration::ZERO).await;
            return Err(err).with_context(|| format!("cannot listen on {}", config.server.listen));
        }
    };
    let mut fastcgi_listeners = Vec::new();
    for app in &apps {
        let Some(fastcgi) = &app.config.fastcgi else {
            continue;
        };
        match listener::bind(fastcgi).await {
            Ok(bound) => fastcgi_listeners.push((app.clone(), fastcgi.clone(), bound)),
            Err(err) => {
                stop_apps(&apps, Duration::ZERO).await;
                return Err(err).with_context(|| {
                    format!(
                        "worker {}: cannot listen on fastcgi.listen {:?}",
                        app.config.name, fastcgi.listen
                    )
                });
            }
        }
    }
    info!(
        listen = %config.server.listen,
        workers = apps.len(),
        "tqserver {} serving",
        env!("CARGO_PKG_VERSION")
    );
    for app in &apps {
        info!(
            worker = %app.config.name,
            route = crate::config::validate::display_route(&app.config.route),
            php = %app.config.php.version,
            "route ready"
        );
    }
    let front = Arc::new(Frontend {
        router: ArcSwap::from_pointee(Router::new(apps.clone())),
        settings: config.server.clone(),
    });
    let shutdown = CancellationToken::new();
    let connections = TaskTracker::new();
    let accept = tokio::spawn(http::serve(
        listener,
        front.clone(),
        shutdown.clone(),
        connections.clone(),
    ));
    let mut fastcgi_accepts = Vec::new();
    for (app, fastcgi, bound) in fastcgi_listeners {
        info!(worker = %app.config.name, listen = ?fastcgi.listen, "FastCGI listener ready");
        fastcgi_accepts.push(tokio::spawn(listener::serve(
            bound,
            app,
            fastcgi,
            config.server.clone(),
            shutdown.clone(),
            connections.clone(),
        )));
    }

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: stopping gracefully"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping gracefully (again to stop at once)"); break; }
            _ = sigusr1.recv() => {
                match log_file.reopen() {
                    Ok(()) => info!("SIGUSR1: log files reopened"),
                    Err(err) => error!("SIGUSR1: cannot reopen log files: {err}"),
                }
            }
        }
    }

    // Phase 1: stop accepting; connections finish their requests.
    let grace = config.server.grace_period;
    let deadline = tokio::time::Instant::now() + grace;
    shutdown.cancel();
    let _ = accept.await;
    for accept in fastcgi_accepts {
        let _ = accept.await;
    }
    connections.close();
    let apps_now = front.router.load().apps().to_vec();
    tokio::select! {
        _ = tokio::time::timeout_at(deadline, connections.wait()) => {}
        _ = sigint.recv() => {
            warn!("second SIGINT: stopping now");
            stop_apps(&apps_now, Duration::ZERO).await;
            return Ok(());
        }
    }
    // Phase 2: workers (anything still running is cut off at the deadline).
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    stop_apps(&apps_now, left).await;
    info!("stopped");
    Ok(())
}

/// Starts every app concurrently; if one fails, the others are stopped.
pub async fn start_apps(workers: &[Arc<WorkerConfig>]) -> anyhow::Result<Vec<Arc<App>>> {
    let mut starting = tokio::task::JoinSet::new();
    for worker in workers {
        starting.spawn(App::start(worker.clone()));
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
