//! `type: http` apps: programs in any language (Go, Node, Bun...) that
//! tqserver builds, runs, supervises and reverse-proxies a route to.
//!
//! Theory of operation: an [`HttpApp`] is in the router like a PHP app. It
//! serves from one *generation*: a set of `instances` processes started from
//! one build, each on a port of `server.http_apps.ports` and supervised by a
//! task of its own ([`instance`]). Requests go to the healthy instance with
//! the fewest in flight ([`proxy`]). When a watched file changes, the app
//! builds again (one build at a time; changes during a build queue one
//! more), starts a new generation, waits until every instance of it is
//! healthy, then switches traffic to it in one atomic store; the old
//! generation drains (in-flight requests finish) and stops. A failed build
//! or start keeps the old generation serving and is shown in the log and on
//! `/status`. A change of the app's worker.yaml is a reload: a new
//! `HttpApp` starts and takes over the same way (server/reload.rs).

pub mod instance;
pub mod ports;
pub mod proxy;
pub mod upgrade;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::validate::display_route;
use crate::config::{HttpAppConfig, HttpAppsSettings};
use crate::observe::{AppTelemetry, Telemetry};
use crate::status::{BuildPage, HttpAppPage, InstancePage};
use instance::Instance;

/// Quiet time after the last change to a watched file before building.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Most of a build's output kept for the log and `/status`.
const MAX_BUILD_OUTPUT: usize = 16 * 1024;

/// The instances serving together, started from one build.
pub struct Generation {
    pub id: u64,
    pub instances: Vec<Arc<Instance>>,
}

/// Build and swap outcomes, for `/status`.
#[derive(Default)]
struct Reports {
    last_build: Option<BuildPage>,
    last_error: Option<String>,
    swaps: u64,
    last_swap_ms: u64,
}

pub struct HttpApp {
    pub config: Arc<HttpAppConfig>,
    pub telemetry: Arc<AppTelemetry>,
    settings: HttpAppsSettings,
    /// The generation taking requests; swapped whole.
    generation: ArcSwap<Generation>,
    next_generation: AtomicU64,
    reports: Mutex<Reports>,
    /// Development mode: open pages reload after a swap.
    live_reload: Option<Arc<crate::dev::LiveReload>>,
    /// Stops the file watcher and its swaps.
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl HttpApp {
    /// Builds the app (if it has `build`) and starts its instances; fails,
    /// with the build's or the instances' output, unless all are healthy.
    pub async fn start(
        config: Arc<HttpAppConfig>,
        telemetry: &Telemetry,
        settings: &HttpAppsSettings,
        live_reload: Option<Arc<crate::dev::LiveReload>>,
    ) -> anyhow::Result<Arc<Self>> {
        let name = &config.name;
        let access_log = config
            .access_log
            .as_ref()
            .map(|log| telemetry.access_log(log))
            .transpose()
            .map_err(|err| anyhow::anyhow!("app {name}: cannot open access log: {err}"))?;
        let app_telemetry = Arc::new(AppTelemetry {
            name: name.clone(),
            metrics: telemetry.metrics.for_app(name),
            access_log,
            slow_log: telemetry
                .slow_log(None)
                .map_err(|err| anyhow::anyhow!("app {name}: cannot open slow log: {err}"))?,
            pool: None,
        });
        let mut reports = Reports::default();
        if let Some(build) = &config.build {
            let report = run_build(&config, settings, build).await;
            let ok = report.ok;
            let output = report.output.clone();
            reports.last_build = Some(report);
            if !ok {
                anyhow::bail!("app {name}: build failed:\n{output}");
            }
        }
        let generation = start_generation(&config, settings, 1)
            .await
            .map_err(|err| anyhow::anyhow!("app {name}: {err}"))?;
        let app = Arc::new(Self {
            config,
            telemetry: app_telemetry,
            settings: settings.clone(),
            generation: ArcSwap::from_pointee(generation),
            next_generation: AtomicU64::new(2),
            reports: Mutex::new(reports),
            live_reload,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        if !app.config.watch.is_empty() {
            match watch_sources(&app) {
                Ok(()) => {}
                Err(err) => warn!(worker = %app.config.name, "files will not be watched: {err}"),
            }
        }
        Ok(app)
    }

    /// The healthy instance with the fewest requests in flight, but those
    /// in `excluded` (tried already).
    pub fn pick_excluding(&self, excluded: &[Arc<Instance>]) -> Option<Arc<Instance>> {
        let generation = self.generation.load();
        generation
            .instances
            .iter()
            .filter(|instance| instance.routable())
            .filter(|instance| !excluded.iter().any(|e| Arc::ptr_eq(e, instance)))
            .min_by_key(|instance| instance.in_flight.load(Ordering::Relaxed))
            .cloned()
    }

    /// Stops watching, then drains and stops every instance.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let generation = self.generation.load_full();
        stop_generation(&generation).await;
    }

    /// Builds and starts a new generation; switches to it once healthy.
    /// On failure the running generation stays.
    pub async fn rebuild_and_swap(&self, why: &str) {
        let started = Instant::now();
        let name = &self.config.name;
        info!(worker = %name, "{why}: {}", if self.config.build.is_some() { "building" } else { "starting new instances" });
        if let Some(build) = &self.config.build {
            let report = run_build(&self.config, &self.settings, build).await;
            let ok = report.ok;
            let output = report.output.clone();
            if let Ok(mut reports) = self.reports.lock() {
                reports.last_build = Some(report);
                if !ok {
                    reports.last_error = Some(format!("build failed:\n{output}"));
                }
            }
            if !ok {
                error!(worker = %name, "build failed; the running instances keep serving:\n{output}");
                return;
            }
        }
        let id = self.next_generation.fetch_add(1, Ordering::Relaxed);
        match start_generation(&self.config, &self.settings, id).await {
            Ok(generation) => {
                if self.stop.is_cancelled() {
                    stop_generation(&generation).await;
                    return;
                }
                let old = self.generation.swap(Arc::new(generation));
                let took = started.elapsed();
                if let Ok(mut reports) = self.reports.lock() {
                    reports.swaps += 1;
                    reports.last_swap_ms = took.as_millis() as u64;
                    reports.last_error = None;
                }
                info!(
                    worker = %name,
                    generation = id,
                    took_ms = took.as_millis() as u64,
                    "new instances serving; the old ones drain"
                );
                if let Some(live) = &self.live_reload {
                    live.changed(&format!("new instances of {name}"));
                }
                stop_generation(&old).await;
            }
            Err(err) => {
                error!(worker = %name, "new instances did not start; the running ones keep serving: {err}");
                if let Ok(mut reports) = self.reports.lock() {
                    reports.last_error = Some(err);
                }
            }
        }
    }

    /// A snapshot for `/status` and the metrics.
    pub fn status(&self) -> HttpAppPage {
        let generation = self.generation.load();
        let reports = self.reports.lock();
        let (last_build, last_error, swaps, last_swap_ms) = match &reports {
            Ok(r) => (
                r.last_build.clone(),
                r.last_error.clone(),
                r.swaps,
                r.last_swap_ms,
            ),
            Err(_) => (None, None, 0, 0),
        };
        HttpAppPage {
            name: self.config.name.clone(),
            route: display_route(&self.config.route).to_owned(),
            generation: generation.id,
            swaps,
            last_swap_ms,
            last_build,
            last_error,
            instances: generation
                .instances
                .iter()
                .map(|instance| InstancePage {
                    index: instance.index,
                    generation: instance.generation,
                    state: instance.state().as_str().to_owned(),
                    pid: instance.pid(),
                    port: instance.port,
                    restarts: instance.restarts.load(Ordering::Relaxed),
                    in_flight: instance.in_flight.load(Ordering::Relaxed) as u64,
                    requests: instance.requests.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

/// Drains and stops every instance of a generation, together.
async fn stop_generation(generation: &Generation) {
    let mut stopping = tokio::task::JoinSet::new();
    for instance in &generation.instances {
        let instance = instance.clone();
        stopping.spawn(async move { instance.stop().await });
    }
    while stopping.join_next().await.is_some() {}
}

/// Starts `config.instances` processes and waits until each is healthy;
/// if one is not, all are stopped and the error holds its output.
async fn start_generation(
    config: &Arc<HttpAppConfig>,
    settings: &HttpAppsSettings,
    id: u64,
) -> Result<Generation, String> {
    let env = base_env(config, settings);
    let mut instances = Vec::new();
    for index in 0..config.instances {
        let Some(port) = ports::take(settings.ports) else {
            let generation = Generation { id, instances };
            stop_generation(&generation).await;
            return Err(format!(
                "no free port in server.http_apps.ports ({}-{})",
                settings.ports.0, settings.ports.1
            ));
        };
        instances.push(Instance::spawn(
            config.clone(),
            env.clone(),
            id,
            index,
            port,
        ));
    }
    let mut failure = None;
    for instance in &instances {
        if let Err(output) = instance.wait_started().await {
            failure = Some(format!(
                "instance #{} did not become healthy:\n{output}",
                instance.index
            ));
            break;
        }
    }
    let generation = Generation { id, instances };
    if let Some(failure) = failure {
        stop_generation(&generation).await;
        return Err(failure);
    }
    Ok(generation)
}

/// What every instance (and the build) gets: PATH, HOME and LANG, the
/// `WORKER_*` variables but the port, then the app's `env`. Nothing else of
/// tqserver's environment.
fn base_env(config: &HttpAppConfig, settings: &HttpAppsSettings) -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned());
    let home = match config.credentials {
        Some((uid, _)) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|user| user.dir.display().to_string()),
        None => std::env::var("HOME").ok(),
    };
    let mut env = vec![("PATH".to_owned(), path)];
    if let Some(home) = home {
        env.push(("HOME".to_owned(), home));
    }
    if let Ok(lang) = std::env::var("LANG") {
        env.push(("LANG".to_owned(), lang));
    }
    env.push(("WORKER_NAME".to_owned(), config.name.clone()));
    env.push((
        "WORKER_ROUTE".to_owned(),
        display_route(&config.route).to_owned(),
    ));
    env.push(("WORKER_MODE".to_owned(), settings.mode.as_str().to_owned()));
    for (key, value) in &config.env {
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value.clone()));
    }
    env
}

/// Runs `build` in the app folder within `build_timeout`, with its output
/// (stdout, then stderr).
async fn run_build(
    config: &HttpAppConfig,
    settings: &HttpAppsSettings,
    build: &[String],
) -> BuildPage {
    let started = Instant::now();
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // As tqserver's user, with its HOME: the build writes into the app
    // folder and its tools keep caches in HOME (Go's build cache).
    let mut env = base_env(config, settings);
    if let Ok(home) = std::env::var("HOME") {
        env.retain(|(key, _)| key != "HOME");
        env.push(("HOME".to_owned(), home));
    }
    for (key, value) in &config.env {
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value.clone()));
    }
    let mut cmd = instance::command(config, build, &env, None);
    let (ok, output) = match cmd.spawn() {
        Err(err) => (false, format!("cannot run {}: {err}", build[0])),
        Ok(mut child) => {
            let mut stdout = child.stdout.take();
            let mut stderr = child.stderr.take();
            let collect = async {
                let (mut out, mut err) = (Vec::new(), Vec::new());
                let read_out = async {
                    if let Some(pipe) = stdout.as_mut() {
                        let _ = pipe.read_to_end(&mut out).await;
                    }
                };
                let read_err = async {
                    if let Some(pipe) = stderr.as_mut() {
                        let _ = pipe.read_to_end(&mut err).await;
                    }
                };
                tokio::join!(read_out, read_err);
                let status = child.wait().await;
                out.extend_from_slice(&err);
                (status, out)
            };
            match tokio::time::timeout(config.build_timeout, collect).await {
                Ok((Ok(status), output)) => {
                    let mut text = String::from_utf8_lossy(&output).into_owned();
                    if !status.success() {
                        text.push_str(&format!("\n[{} {status}]", build.join(" ")));
                    }
                    (status.success(), text)
                }
                Ok((Err(err), _)) => (false, err.to_string()),
                Err(_) => (
                    false,
                    format!(
                        "{} did not finish within build_timeout ({:?})",
                        build.join(" "),
                        config.build_timeout
                    ),
                ),
            }
        }
    };
    let output = tail_of(output.trim_end(), MAX_BUILD_OUTPUT);
    let duration_ms = started.elapsed().as_millis() as u64;
    if ok {
        info!(worker = %config.name, took_ms = duration_ms, "build done");
    }
    BuildPage {
        ok,
        at,
        duration_ms,
        output,
    }
}

fn tail_of(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[...]{}", &text[start..])
}

/// Watches the app folder (recursively) for changes to files that match
/// `watch`; each burst of changes is one rebuild and swap.
fn watch_sources(app: &Arc<HttpApp>) -> notify::Result<()> {
    let folder = std::fs::canonicalize(&app.config.folder).unwrap_or(app.config.folder.clone());
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<()>();
    let globs = app.config.watch.clone();
    let root = folder.clone();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
            Ok(event) => {
                if event.paths.iter().any(|path| watched(&root, path, &globs)) {
                    let _ = events_tx.send(());
                }
            }
            Err(err) => warn!("source watcher: {err}"),
        })?;
    watcher.watch(&folder, RecursiveMode::Recursive)?;
    let app_ref = app.clone();
    let stop = app.stop.clone();
    app.tasks.spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                event = events_rx.recv() => if event.is_none() { return },
            }
            // Debounce: wait until the files are quiet. Changes made during
            // a build wait in the channel and make one more round.
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    event = tokio::time::timeout(DEBOUNCE, events_rx.recv()) => match event {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    },
                }
            }
            app_ref.rebuild_and_swap("files changed").await;
        }
    });
    Ok(())
}

/// Whether `path` (absolute) is under `root` and matches one of `globs`.
fn watched(root: &Path, path: &Path, globs: &[crate::rules::Pattern]) -> bool {
    let Ok(relative) = path.strip_prefix(root) else {
        return false;
    };
    let Some(relative) = relative.to_str() else {
        return false;
    };
    globs.iter().any(|glob| glob.matches_relative(relative))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Pattern;

    #[test]
    fn watched_files_match_globs_relative_to_the_folder() {
        let globs = [
            Pattern::glob("/**/*.go").unwrap(),
            Pattern::glob("/go.mod").unwrap(),
        ];
        let root = Path::new("/srv/workers/api");
        assert!(watched(root, Path::new("/srv/workers/api/main.go"), &globs));
        assert!(watched(
            root,
            Path::new("/srv/workers/api/cmd/x/y.go"),
            &globs
        ));
        assert!(watched(root, Path::new("/srv/workers/api/go.mod"), &globs));
        assert!(!watched(
            root,
            Path::new("/srv/workers/api/bin/app"),
            &globs
        ));
        assert!(!watched(
            root,
            Path::new("/srv/workers/other/main.go"),
            &globs
        ));
    }

    #[test]
    fn long_build_output_keeps_its_end() {
        assert_eq!(tail_of("short", 10), "short");
        assert_eq!(tail_of("0123456789abc", 3), "[...]abc");
    }
}
