//! The FastCGI listeners of the running apps: bound at start or on a
//! reload, each served under its own stop token, replaced or closed by a
//! reload.

use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::ServerState;
use crate::config::{AppConfig, FastcgiConfig};
use crate::listener;

pub(super) struct RunningListener {
    pub(super) shared: Arc<listener::Shared>,
    pub(super) stop: CancellationToken,
}

pub(super) async fn start_listener(
    state: &Arc<ServerState>,
    app: &AppConfig,
) -> anyhow::Result<()> {
    let Some(fastcgi) = &app.fastcgi else {
        return Ok(());
    };
    let bound = bind_listener(app, fastcgi).await?;
    run_listener(state, app, fastcgi, bound);
    Ok(())
}

pub(super) async fn bind_listener(
    app: &AppConfig,
    fastcgi: &FastcgiConfig,
) -> anyhow::Result<listener::Bound> {
    listener::bind(fastcgi).await.with_context(|| {
        format!(
            "app {}: cannot listen on fastcgi.listen {:?}",
            app.name, fastcgi.listen
        )
    })
}

/// Serves a bound listener, replacing (and stopping) any earlier one of the
/// same app.
pub(super) fn run_listener(
    state: &Arc<ServerState>,
    app: &AppConfig,
    fastcgi: &FastcgiConfig,
    bound: listener::Bound,
) {
    let shared = listener::Shared::new(
        app.name.clone(),
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
    info!(worker = %app.name, listen = ?fastcgi.listen, "FastCGI listener ready");
    if let Ok(mut listeners) = state.listeners.lock()
        && let Some(old) = listeners.insert(app.name.clone(), RunningListener { shared, stop })
    {
        old.stop.cancel();
    }
}

pub(super) fn stop_listener(state: &ServerState, name: &str) {
    if let Ok(mut listeners) = state.listeners.lock()
        && let Some(listener) = listeners.remove(name)
    {
        listener.stop.cancel();
    }
}
