//! A running app ("worker" in the config): its validated config, its pool of
//! PHP processes, its opened document root, and its metric and log handles.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pool::WorkerPool;

use crate::config::AppConfig;
use crate::docroot::DocumentRoot;
use crate::observe::{AppTelemetry, Telemetry};
use crate::status::AppStatus;

pub struct App {
    pub config: Arc<AppConfig>,
    pub pool: WorkerPool,
    pub root: DocumentRoot,
    /// Metrics and logs, shared with the observations of its requests.
    pub telemetry: Arc<AppTelemetry>,
    /// This pool's OPcache file cache, removed with the app.
    opcache_dir: Option<PathBuf>,
}

/// Numbers the file caches of successive pools of one app (reloads).
static POOL_GENERATION: AtomicU64 = AtomicU64::new(1);

impl Drop for App {
    fn drop(&mut self) {
        if let Some(dir) = &self.opcache_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl App {
    /// Starts the app's pool; fails if its first workers cannot start.
    pub async fn start(config: Arc<AppConfig>, telemetry: &Telemetry) -> anyhow::Result<Arc<Self>> {
        let root = DocumentRoot::open(&config.document_root, &config.name).map_err(|err| {
            anyhow::anyhow!(
                "app {}: cannot open document root {}: {err}",
                config.name,
                config.document_root.display()
            )
        })?;
        let access_log = config
            .access_log
            .as_ref()
            .map(|log| telemetry.access_log(log))
            .transpose()
            .map_err(|err| anyhow::anyhow!("app {}: cannot open access log: {err}", config.name))?;
        let slow_log = telemetry
            .slow_log(config.slow_log.as_ref())
            .map_err(|err| anyhow::anyhow!("app {}: cannot open slow log: {err}", config.name))?;
        let metrics = telemetry.metrics.for_app(&config.name);
        let mut pool_config = config.pool.clone();
        let opcache_dir = match (&config.php.cache_dir, config.php.opcache_file_cache) {
            (Some(base), true) => {
                let dir = base.join(format!(
                    "{}-{}",
                    config.name,
                    POOL_GENERATION.fetch_add(1, Ordering::Relaxed)
                ));
                prepare_cache_dir(&dir, pool_config.command.credentials).map_err(|err| {
                    anyhow::anyhow!(
                        "app {}: cannot create the OPcache file cache {}: {err} \
                         (set php.opcache_file_cache: false, or php.cache_dir in server.yaml)",
                        config.name,
                        dir.display()
                    )
                })?;
                let mut setting = std::ffi::OsString::from("opcache.file_cache=");
                setting.push(&dir);
                pool_config.command.args.push("-d".into());
                pool_config.command.args.push(setting);
                Some(dir)
            }
            _ => None,
        };
        let pool = match WorkerPool::start(pool_config).await {
            Ok(pool) => pool,
            Err(err) => {
                if let Some(dir) = &opcache_dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
                return Err(err.into());
            }
        };
        let telemetry = Arc::new(AppTelemetry {
            name: config.name.clone(),
            metrics,
            access_log,
            slow_log,
            pool: Some(pool.clone()),
        });
        Ok(Arc::new(Self {
            config,
            pool,
            root,
            telemetry,
            opcache_dir,
        }))
    }

    /// A snapshot for status pages and the pool metrics.
    pub fn status(&self) -> AppStatus {
        AppStatus {
            name: self.config.name.clone(),
            route: crate::config::validate::display_route(&self.config.route).to_owned(),
            php_version: self.config.php.version.clone(),
            pool: self.pool.status(),
        }
    }
}

/// A fresh, empty folder only the pool's user can use (a cache from an
/// earlier run could hold code that changed since).
fn prepare_cache_dir(dir: &Path, credentials: Option<(u32, u32)>) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if let Some((uid, gid)) = credentials {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}
