//! Development mode (`tqserver --dev`, or `server.mode: development`).
//!
//! - **Edits are served at once.** OPcache checks a script's time stamp on
//!   every request (`opcache.revalidate_freq=0`, unless the app set it). An
//!   app that would not see an edit that way, because it boots once (worker
//!   mode, `php.worker`) or because its settings tell OPcache not to check
//!   (`opcache.validate_timestamps: 0`, or a `revalidate_freq` above 0), gets
//!   new workers when one of its PHP files changes: a fresh pool, warm
//!   before traffic moves to it, as a reload does.
//! - **Pages reload themselves.** HTML responses get a small script that
//!   listens on [`LIVE_RELOAD_PATH`] (server-sent events) and reloads the
//!   page when anything it could show has changed: a file under an app's
//!   folder (code, templates, styles, scripts), new workers, a reload of the
//!   configuration.
//!
//! The watch covers each PHP app's folder, recursively, and leaves out what
//! apps write themselves (`vendor/`, `storage/`, `var/`, `cache/`, `.git/`,
//! `node_modules/`, log files), so a page that writes a log does not reload
//! itself forever.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode, header};
use http_body::Body as _;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::AppConfig;
use crate::http::body::Body;
use crate::router::Router;

/// Where the pages' script listens for changes (development mode only).
pub const LIVE_RELOAD_PATH: &str = "/.tqserver/livereload";

/// Quiet time after the last change before acting on a burst of them (an
/// editor's save, a `git checkout`).
const DEBOUNCE: Duration = Duration::from_millis(150);

/// A comment line sent this often keeps an idle event stream from being
/// cut by proxies in between.
const HEARTBEAT: Duration = Duration::from_secs(20);

/// Adjusts an app's PHP settings for development: OPcache checks time
/// stamps on every request unless the app chose otherwise.
pub fn php_settings(app: &mut AppConfig) {
    if setting(app, "opcache.revalidate_freq").is_none() {
        let args = &mut app.pool.command.args;
        args.push("-d".into());
        args.push("opcache.revalidate_freq=0".into());
    }
}

/// The value an app's `php.settings` give `key`, if any (the last one wins,
/// as with PHP's own `-d`).
fn setting(app: &AppConfig, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    app.pool
        .command
        .args
        .iter()
        .filter_map(|arg| arg.to_str())
        .filter_map(|arg| arg.strip_prefix(&prefix))
        .next_back()
        .map(str::to_owned)
}

/// Whether an edit of one of the app's PHP files needs new workers to be
/// seen.
pub fn restart_on_change(app: &AppConfig) -> bool {
    let off = |value: &str| {
        matches!(
            value.to_ascii_lowercase().as_str(),
            "0" | "off" | "false" | "no" | ""
        )
    };
    app.php.worker.is_some()
        || setting(app, "opcache.validate_timestamps").is_some_and(|v| off(&v))
        || setting(app, "opcache.revalidate_freq").is_some_and(|v| v.trim() != "0")
}

/// The pages' side of development mode: a count of changes, which each
/// page's event stream watches.
pub struct LiveReload {
    generation: watch::Sender<u64>,
    /// Cancelled when the server stops: open event streams end, so they do
    /// not hold the graceful stop for its whole grace period.
    stop: CancellationToken,
}

impl LiveReload {
    pub fn new(stop: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            generation: watch::Sender::new(0),
            stop,
        })
    }

    /// Something a page may show changed: open pages reload.
    pub fn changed(&self, what: &str) {
        self.generation.send_modify(|generation| *generation += 1);
        info!("development: {what}; open pages reload");
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// The event stream of [`LIVE_RELOAD_PATH`]: one `reload` event once
    /// the count of changes passes `since` (from the query), then the end.
    pub fn events(&self, query: Option<&str>) -> Response<Body> {
        let since = query
            .into_iter()
            .flat_map(|query| query.split('&'))
            .find_map(|pair| pair.strip_prefix("since="))
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or_else(|| self.generation());
        let mut changes = self.generation.subscribe();
        let stop = self.stop.clone();
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(2);
        tokio::spawn(async move {
            // The browser's EventSource retries this soon after a stream
            // ends (a restart of tqserver, say).
            if tx
                .send(Ok(Bytes::from_static(b"retry: 500\n\n")))
                .await
                .is_err()
            {
                return;
            }
            loop {
                if *changes.borrow_and_update() > since {
                    let _ = tx.send(Ok(Bytes::from_static(b"data: reload\n\n"))).await;
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(HEARTBEAT) => {
                        if tx.send(Ok(Bytes::from_static(b": \n\n"))).await.is_err() {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                    _ = stop.cancelled() => return,
                }
            }
        });
        let mut response = Response::new(Body::Channel(rx));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    /// Adds the reload script to an HTML page (a whole 200 response, not a
    /// HEAD, a range or an already encoded body). The script goes at the
    /// end of the body: browsers run a script after `</html>` as if it were
    /// inside the body, and the body need not be searched or held whole.
    pub fn inject(&self, response: &mut Response<Body>, is_head: bool) {
        let headers = response.headers();
        let html = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| {
                value
                    .split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/html"))
            });
        if is_head
            || response.status() != StatusCode::OK
            || !html
            || headers.contains_key(header::CONTENT_ENCODING)
            || headers.contains_key(header::CONTENT_RANGE)
        {
            return;
        }
        let script = Bytes::from(format!(
            "\n<script>/* tqserver development mode: reloads this page when the app changes */\
             (function(){{var s=new EventSource(\"{LIVE_RELOAD_PATH}?since={}\");\
             s.onmessage=function(){{s.close();location.reload();}};}})();</script>\n",
            self.generation()
        ));
        let headers = response.headers_mut();
        headers.remove(header::CONTENT_LENGTH);
        // The page's bytes changed: a validator of the original must not
        // match them.
        headers.remove(header::ETAG);
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let body = std::mem::replace(response.body_mut(), Body::Empty);
        *response.body_mut() = match body {
            Body::Bytes(Some(bytes)) => {
                let mut page = BytesMut::with_capacity(bytes.len() + script.len());
                page.extend_from_slice(&bytes);
                page.extend_from_slice(&script);
                Body::Bytes(Some(page.freeze()))
            }
            Body::Empty | Body::Bytes(None) => Body::Bytes(Some(script)),
            streamed => {
                // Forwards the body as it comes, then the script.
                let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(1);
                tokio::spawn(async move {
                    let mut body = std::pin::pin!(streamed);
                    while let Some(frame) =
                        std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                    {
                        let chunk = match frame {
                            Ok(frame) => match frame.into_data() {
                                Ok(data) => Ok(data),
                                Err(_) => continue,
                            },
                            Err(err) => Err(err),
                        };
                        let failed = chunk.is_err();
                        if tx.send(chunk).await.is_err() || failed {
                            return;
                        }
                    }
                    let _ = tx.send(Ok(script)).await;
                });
                Body::Channel(rx)
            }
        };
    }
}

/// What a changed file means for its app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    /// A page may look different (a template, a style sheet, a script).
    Asset,
    /// PHP code: new workers if the app would not see it otherwise.
    Code,
}

/// Folders an app writes into itself, never watched.
const IGNORED_DIRS: [&str; 7] = [
    "vendor",
    "storage",
    "var",
    "cache",
    ".git",
    "node_modules",
    "config",
];

fn classify(path: &Path) -> Option<Change> {
    let name = path.file_name()?.to_str()?;
    if name.starts_with(".#") || name.ends_with('~') || name.ends_with(".swp") {
        return None;
    }
    if name == ".user.ini" {
        return Some(Change::Code);
    }
    match path.extension().and_then(OsStr::to_str)? {
        "php" | "phtml" | "inc" => Some(Change::Code),
        "html" | "htm" | "css" | "js" | "mjs" | "twig" | "svg" | "png" | "jpg" | "jpeg" | "gif"
        | "webp" | "json" | "md" => Some(Change::Asset),
        _ => None,
    }
}

/// The app (by folder) a changed path belongs to, if the change counts.
fn app_of(folders: &[(String, PathBuf)], path: &Path) -> Option<(String, Change)> {
    let (name, folder) = folders
        .iter()
        .filter(|(_, folder)| path.starts_with(folder))
        .max_by_key(|(_, folder)| folder.as_os_str().len())?;
    let rest = path.strip_prefix(folder).ok()?;
    let in_ignored_dir = rest.parent().is_some_and(|dir| {
        dir.components().any(|c| {
            c.as_os_str()
                .to_str()
                .is_some_and(|c| IGNORED_DIRS.contains(&c))
        })
    });
    if in_ignored_dir {
        return None;
    }
    Some((name.clone(), classify(path)?))
}

/// Watches the workers folder; hands `(app, needs new workers)` to
/// `on_change` for each burst of changes to an app's files.
pub struct SourceWatcher {
    _watcher: notify::RecommendedWatcher,
}

pub fn watch_sources(
    workers_dir: &Path,
    router: Arc<ArcSwap<Router>>,
) -> notify::Result<(SourceWatcher, mpsc::Receiver<(String, bool)>)> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        for path in event.paths {
            let _ = raw_tx.send(path);
        }
    })?;
    watcher.watch(workers_dir, RecursiveMode::Recursive)?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(first) = raw_rx.recv().await {
            // A burst: everything until the files are quiet for DEBOUNCE.
            let mut paths = vec![first];
            while let Ok(Some(path)) = tokio::time::timeout(DEBOUNCE, raw_rx.recv()).await {
                paths.push(path);
            }
            // The apps routed now (reloads add and remove apps).
            let folders: Vec<(String, PathBuf)> = router
                .load()
                .apps()
                .iter()
                .map(|app| (app.config.name.clone(), app.config.folder.clone()))
                .collect();
            let mut changed: BTreeSet<(String, Change)> = BTreeSet::new();
            for path in &paths {
                if let Some(change) = app_of(&folders, path) {
                    changed.insert(change);
                }
            }
            let mut per_app: Vec<(String, bool)> = Vec::new();
            for (name, change) in changed {
                match per_app.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, code)) => *code |= change == Change::Code,
                    None => per_app.push((name, change == Change::Code)),
                }
            }
            for change in per_app {
                if tx.send(change).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok((SourceWatcher { _watcher: watcher }, rx))
}

/// Logs that the sources will not be watched, and why.
pub fn watch_failed(err: &notify::Error) {
    warn!("development: app files will not be watched: {err}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folders() -> Vec<(String, PathBuf)> {
        vec![
            ("blog".to_owned(), PathBuf::from("/site/workers/blog")),
            ("shop".to_owned(), PathBuf::from("/site/workers/shop")),
        ]
    }

    #[test]
    fn changes_are_told_apart() {
        let f = folders();
        let at = |p: &str| app_of(&f, Path::new(p));
        assert_eq!(
            at("/site/workers/blog/public/index.php"),
            Some(("blog".to_owned(), Change::Code))
        );
        assert_eq!(
            at("/site/workers/shop/templates/page.twig"),
            Some(("shop".to_owned(), Change::Asset))
        );
        assert_eq!(
            at("/site/workers/shop/public/.user.ini").map(|c| c.1),
            Some(Change::Code)
        );
        // What apps write themselves, and editors' scratch files.
        assert_eq!(at("/site/workers/blog/storage/logs/laravel.log"), None);
        assert_eq!(at("/site/workers/blog/vendor/x/y.php"), None);
        assert_eq!(at("/site/workers/blog/public/index.php~"), None);
        assert_eq!(at("/site/workers/blog/public/.index.php.swp"), None);
        assert_eq!(at("/site/workers/blog/public/upload.bin"), None);
        // config/ is the configuration watcher's.
        assert_eq!(at("/site/workers/blog/config/worker.yaml"), None);
        assert_eq!(at("/elsewhere/index.php"), None);
    }
}
