//! A running app ("worker" in the config): its validated config, its pool of
//! PHP processes, and its opened document root.

use std::sync::Arc;

use pool::WorkerPool;

use crate::config::WorkerConfig;
use crate::http::resolve::DocumentRoot;

pub struct App {
    pub config: Arc<WorkerConfig>,
    pub pool: WorkerPool,
    pub root: DocumentRoot,
}

impl App {
    /// Starts the app's pool; fails if its first workers cannot start.
    pub async fn start(config: Arc<WorkerConfig>) -> anyhow::Result<Arc<Self>> {
        let root = DocumentRoot::open(&config.document_root).map_err(|err| {
            anyhow::anyhow!(
                "worker {}: cannot open document root {}: {err}",
                config.name,
                config.document_root.display()
            )
        })?;
        let pool = WorkerPool::start(config.pool.clone()).await?;
        Ok(Arc::new(Self { config, pool, root }))
    }
}
