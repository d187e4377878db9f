//! The server log: tracing, text or JSON, to stdout or a file, at the level
//! set in server.yaml (RUST_LOG, when set, wins).

use std::fs::OpenOptions;
use std::sync::{Arc, Mutex};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LoggingConfig;

/// Installs the global subscriber. Returns the handle that reopens the log
/// file (SIGUSR1).
pub fn init(config: &LoggingConfig) -> anyhow::Result<LogFile> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},hyper=warn", config.level)));
    let file = LogFile::open(config.file.clone())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(file.clone())
        .with_target(false)
        .with_ansi(config.file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let result = if config.json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // Tests may start several servers in one process: keep the first.
    let _ = result;
    Ok(file)
}

/// Standard output, or a file that can be reopened after logrotate moved it.
#[derive(Clone)]
pub struct LogFile {
    path: Option<std::path::PathBuf>,
    file: Arc<Mutex<Option<std::fs::File>>>,
}

impl LogFile {
    pub fn open(path: Option<std::path::PathBuf>) -> anyhow::Result<Self> {
        let file = match &path {
            Some(path) => Some(open_append(path)?),
            None => None,
        };
        Ok(Self {
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// Reopens the file at its path (a no-op for stdout).
    pub fn reopen(&self) -> anyhow::Result<()> {
        if let Some(path) = &self.path {
            let fresh = open_append(path)?;
            if let Ok(mut file) = self.file.lock() {
                *file = Some(fresh);
            }
        }
        Ok(())
    }
}

fn open_append(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| anyhow::anyhow!("cannot open log file {}: {err}", path.display()))
}

pub struct LogWriter {
    file: Arc<Mutex<Option<std::fs::File>>>,
}

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.file.lock() {
            Ok(mut guard) => match guard.as_mut() {
                Some(file) => file.write_all(buf).map(|()| buf.len()),
                None => std::io::stdout().lock().write_all(buf).map(|()| buf.len()),
            },
            Err(_) => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter {
            file: self.file.clone(),
        }
    }
}
