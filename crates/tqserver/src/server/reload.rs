//! Carrying out a reload: load and validate the new configuration, let
//! [`crate::reload::plan`] say what changes, start the new pools and bind
//! the new listeners (all or nothing), then switch the router and retire
//! what the plan removes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::lifecycle::{start_apps, start_http_apps, stop_apps, stop_http_apps};
use super::listeners::{bind_listener, run_listener, stop_listener};
use super::runtime_dirs::{set_cache_dirs, set_socket_dirs};
use super::{Phase, ServerState};
use crate::app::App;
use crate::config::AppConfig;
use crate::httpapp::HttpApp;
use crate::listener;
use crate::reload::{ListenerChange, ReloadError, ReloadSummary};
use crate::router::Router;
use crate::systemd;

/// Loads the configuration again and applies the difference.
pub async fn reload(state: &Arc<ServerState>, why: &str) {
    let _one_at_a_time = state.reloading.lock().await;
    if state.phase() != Phase::Running {
        return;
    }
    let started = Instant::now();
    state.reload_begun();
    systemd::reloading();
    info!("reloading configuration ({why})");
    let result = apply_reload(state).await;
    match result {
        Ok(summary) => {
            state.telemetry.metrics.reloads.inc();
            if let Some(live) = &state.live_reload {
                live.changed("configuration reloaded");
            }
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
/// [`crate::reload::plan`] says what changes, and this applies it. Every new pool is
/// warm and every new listener bound before anything switches; if one is
/// not, nothing changes.
pub(super) async fn apply_reload(state: &Arc<ServerState>) -> Result<ReloadSummary, ReloadError> {
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
    let plan = crate::reload::plan(&old, &running, &new);
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
    // http apps: one whose worker.yaml is the same keeps running (its own
    // watcher swaps its code); a new or changed one starts (built and
    // healthy) before traffic moves to it.
    let current_http: Vec<Arc<HttpApp>> = state.router.load().http_apps().to_vec();
    let (keep_http, start_http): (Vec<_>, Vec<_>) = new
        .http_apps
        .iter()
        .cloned()
        .partition(|config| current_http.iter().any(|app| app.config == *config));
    let started_http = match start_http_apps(
        &start_http,
        &state.telemetry,
        &new.http,
        state.live_reload.as_ref(),
    )
    .await
    {
        Ok(apps) => apps,
        Err(err) => {
            stop_apps(&started, Duration::ZERO).await;
            return Err(ReloadError::Start(format!("{err:#}")));
        }
    };
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
        let (name, shared) = match change {
            ListenerChange::Bind { app } => (app, None),
            ListenerChange::Reconfigure {
                app,
                max_connections_changed,
            } => match running_listener(app) {
                Some(shared) => {
                    if *max_connections_changed {
                        warn!(
                            worker = %app,
                            "fastcgi.max_connections changes take effect after a restart (or a change of fastcgi.listen)"
                        );
                    }
                    (app, Some(shared))
                }
                None => (app, None),
            },
            ListenerChange::Close { .. } => continue,
        };
        let Some(app) = started_app(name) else {
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
                    stop_http_apps(&started_http).await;
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
        if let ListenerChange::Close { app } = change {
            stop_listener(state, app);
        }
    }

    let mut apps: Vec<Arc<App>> = plan
        .keep
        .iter()
        .filter_map(|name| current.get(name).cloned())
        .collect();
    apps.extend(started.iter().cloned());
    let mut http_apps: Vec<Arc<HttpApp>> = current_http
        .iter()
        .filter(|app| keep_http.iter().any(|config| app.config == *config))
        .cloned()
        .collect();
    http_apps.extend(started_http.iter().cloned());
    let retired_http: Vec<Arc<HttpApp>> = current_http
        .iter()
        .filter(|app| !http_apps.iter().any(|kept| Arc::ptr_eq(kept, app)))
        .cloned()
        .collect();
    state
        .router
        .store(Arc::new(Router::with_http_apps(apps, http_apps)));
    // New TLS handshakes get the certificates as they are on disk now.
    if let (Ok(resolver), Some(certificates)) = (state.tls_resolver.lock(), &new.tls_certificates)
        && let Some(resolver) = resolver.as_ref()
    {
        for warning in certificates.warnings() {
            warn!("{warning}");
        }
        resolver.replace(certificates.clone());
    }
    state.config.store(Arc::new(new));

    // The old pools finish what they are running, then stop.
    let grace = state.config.load().server.grace_period;
    let names = |configs: &[Arc<AppConfig>]| configs.iter().map(|c| c.name.clone()).collect();
    let mut summary = ReloadSummary {
        added: names(&plan.start),
        changed: names(&plan.replace),
        removed: plan.remove.clone(),
    };
    for app in &started_http {
        let name = app.config.name.clone();
        if current_http.iter().any(|old| old.config.name == name) {
            summary.changed.push(name);
        } else {
            summary.added.push(name);
        }
    }
    for app in &retired_http {
        if !started_http
            .iter()
            .any(|new| new.config.name == app.config.name)
        {
            summary.removed.push(app.config.name.clone());
        }
        let app = app.clone();
        state.background.spawn(async move { app.stop().await });
    }
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

/// Development mode: a fresh pool for one app, with the same configuration
/// (its code changed where running workers would not see it). As in a
/// reload, the new pool is warm before traffic moves to it and the old one
/// finishes its requests; if it cannot start, the old one keeps serving.
pub async fn restart_app(state: &Arc<ServerState>, name: &str) -> anyhow::Result<()> {
    let _one_at_a_time = state.reloading.lock().await;
    if state.phase() != Phase::Running {
        return Ok(());
    }
    let Some(old) = state.router.load().app_named(name).cloned() else {
        return Ok(());
    };
    let started = start_apps(std::slice::from_ref(&old.config), &state.telemetry).await?;
    let apps: Vec<Arc<App>> = state
        .router
        .load()
        .apps()
        .iter()
        .filter(|app| app.config.name != name)
        .cloned()
        .chain(started)
        .collect();
    let http_apps = state.router.load().http_apps().to_vec();
    state
        .router
        .store(Arc::new(Router::with_http_apps(apps, http_apps)));
    let grace = state.config.load().server.grace_period;
    let pool = old.pool.clone();
    state
        .background
        .spawn(async move { pool.drain(grace).await });
    Ok(())
}
