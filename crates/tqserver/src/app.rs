//! A running app ("worker" in the config): its validated config, its pool of
//! PHP processes, its opened document root, and its metric and log handles.

use std::sync::Arc;

use pool::WorkerPool;

use crate::config::WorkerConfig;
use crate::http::resolve::DocumentRoot;
use crate::metrics::AppMetrics;
use crate::observe::{AccessLog, Telemetry};

pub struct App {
    pub config: Arc<WorkerConfig>,
    pub pool: WorkerPool,
    pub root: DocumentRoot,
    pub metrics: AppMetrics,
    /// The app's own access log, if it has one (else the server's).
    pub access_log: Option<Arc<AccessLog>>,
}

impl App {
    /// Starts the app's pool; fails if its first workers cannot start.
    pub async fn start(
        config: Arc<WorkerConfig>,
        telemetry: &Telemetry,
    ) -> anyhow::Result<Arc<Self>> {
        let root = DocumentRoot::open(&config.document_root).map_err(|err| {
            anyhow::anyhow!(
                "worker {}: cannot open document root {}: {err}",
                config.name,
                config.document_root.display()
            )
        })?;
        let access_log = config
            .access_log
            .as_ref()
            .map(|log| telemetry.access_log(log))
            .transpose()
            .map_err(|err| {
                anyhow::anyhow!("worker {}: cannot open access log: {err}", config.name)
            })?;
        let metrics = telemetry.metrics.for_app(&config.name);
        let pool = WorkerPool::start(config.pool.clone()).await?;
        Ok(Arc::new(Self {
            config,
            pool,
            root,
            metrics,
            access_log,
        }))
    }
}
