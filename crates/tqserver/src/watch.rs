//! Watches the configuration files and asks for a reload when they change.
//!
//! Watched, each without recursion (a document root full of uploads is never
//! watched): the directory of server.yaml, the workers directory (apps added
//! or removed), each app folder (its `config/` appearing) and each app's
//! `config/` directory. Directories rather than files are watched, so editors
//! that save by writing a temporary file and renaming it over the old one are
//! seen. Bursts of events are debounced into one reload. The certificate
//! and key files of `server.tls` are watched the same way (their
//! directories), so a renewed certificate is served without a signal; the
//! set watched is the one the server started with.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config::Config;

/// Quiet time after the last change before reloading.
const DEBOUNCE: Duration = Duration::from_millis(300);

pub struct ConfigWatcher {
    _watcher: Arc<Mutex<notify::RecommendedWatcher>>,
}

struct Paths {
    server_file: PathBuf,
    workers_dir: PathBuf,
    /// `server.tls`'s certificate and key files.
    cert_files: Vec<PathBuf>,
}

impl Paths {
    /// Whether a change at `path` can change the configuration.
    fn relevant(&self, path: &Path) -> bool {
        if path == self.server_file || self.cert_files.iter().any(|file| file == path) {
            return true;
        }
        let Ok(rest) = path.strip_prefix(&self.workers_dir) else {
            return false;
        };
        let parts: Vec<_> = rest.components().collect();
        match parts.len() {
            // An app folder appeared or went away.
            1 => true,
            // Its config/ directory.
            2 => parts[1].as_os_str() == "config",
            3 => parts[1].as_os_str() == "config" && parts[2].as_os_str() == "worker.yaml",
            _ => false,
        }
    }

    /// Directories to watch now.
    fn dirs(&self) -> BTreeSet<PathBuf> {
        let mut dirs = BTreeSet::new();
        if let Some(dir) = self.server_file.parent() {
            dirs.insert(dir.to_owned());
        }
        dirs.insert(self.workers_dir.clone());
        for file in &self.cert_files {
            if let Some(dir) = file.parent() {
                dirs.insert(dir.to_owned());
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.workers_dir) {
            for entry in entries.flatten() {
                let folder = entry.path();
                if folder.is_dir() {
                    dirs.insert(folder.clone());
                    let config = folder.join("config");
                    if config.is_dir() {
                        dirs.insert(config);
                    }
                }
            }
        }
        dirs
    }
}

pub fn start(config: &Config, reload: mpsc::Sender<&'static str>) -> notify::Result<ConfigWatcher> {
    let paths = Arc::new(Paths {
        server_file: absolute(&config.file),
        workers_dir: config.workers_dir.clone(),
        cert_files: config
            .tls_certificates
            .iter()
            .flat_map(|certificates| certificates.all())
            .flat_map(|certificate| [&certificate.files.cert, &certificate.files.key])
            .map(|file| absolute_in_dir(file))
            .collect(),
    });
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<()>();
    let filter = paths.clone();
    let watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            // Reading the files (as a reload does) is no change.
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
            Ok(event) if event.paths.iter().any(|p| filter.relevant(p)) => {
                debug!(?event, "config change");
                let _ = events_tx.send(());
            }
            Ok(_) => {}
            Err(err) => warn!("config watcher: {err}"),
        })?;
    let watcher = Arc::new(Mutex::new(watcher));
    let watched = Arc::new(Mutex::new(BTreeSet::new()));
    sync_watches(&watcher, &watched, &paths);

    let handle = watcher.clone();
    tokio::spawn(async move {
        // Ends when the watcher (and so the sender) is dropped.
        while events_rx.recv().await.is_some() {
            // Debounce: wait until the files are quiet.
            loop {
                match tokio::time::timeout(DEBOUNCE, events_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            sync_watches(&handle, &watched, &paths);
            debug!("configuration files changed");
            if reload.send("configuration files changed").await.is_err() {
                return;
            }
        }
    });
    Ok(ConfigWatcher { _watcher: watcher })
}

/// Adds watches for directories that appeared since the last look.
fn sync_watches(
    watcher: &Mutex<notify::RecommendedWatcher>,
    watched: &Mutex<BTreeSet<PathBuf>>,
    paths: &Paths,
) {
    let (Ok(mut watcher), Ok(mut watched)) = (watcher.lock(), watched.lock()) else {
        return;
    };
    let wanted = paths.dirs();
    watched.retain(|dir| wanted.contains(dir));
    for dir in wanted {
        if !watched.contains(&dir) {
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                Err(err) => debug!(dir = %dir.display(), "cannot watch: {err}"),
            }
        }
    }
}

/// `path` with its directory made canonical, as the watcher reports paths
/// in a watched directory (the file itself may be a symlink, as certbot's
/// are, or not exist for a moment while it is replaced).
fn absolute_in_dir(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => absolute(dir).join(name),
        _ => path.to_owned(),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_config_paths_are_relevant() {
        let paths = Paths {
            server_file: "/srv/config/server.yaml".into(),
            workers_dir: "/srv/workers".into(),
            cert_files: vec!["/srv/certs/site.pem".into(), "/srv/certs/site.key".into()],
        };
        assert!(paths.relevant(Path::new("/srv/certs/site.pem")));
        assert!(paths.relevant(Path::new("/srv/certs/site.key")));
        assert!(!paths.relevant(Path::new("/srv/certs/other.pem")));
        assert!(paths.relevant(Path::new("/srv/config/server.yaml")));
        assert!(paths.relevant(Path::new("/srv/workers/blog")));
        assert!(paths.relevant(Path::new("/srv/workers/blog/config")));
        assert!(paths.relevant(Path::new("/srv/workers/blog/config/worker.yaml")));
        assert!(!paths.relevant(Path::new("/srv/workers/blog/config/.worker.yaml.swp")));
        assert!(!paths.relevant(Path::new("/srv/workers/blog/public/index.php")));
        assert!(!paths.relevant(Path::new("/srv/config/other.yaml")));
    }
}
