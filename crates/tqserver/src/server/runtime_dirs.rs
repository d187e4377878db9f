//! What a running server keeps on disk: its private socket and OPcache
//! directories (`<dir>/<pid>`, removed at exit, and those of dead earlier
//! runs removed at start) and its pid file.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::Config;

pub(super) fn set_socket_dirs(config: &mut Config, dir: &Path) {
    for app in &mut config.apps {
        if let pool::SocketKind::Unix { dir: socket_dir } =
            &mut Arc::make_mut(app).pool.command.socket
        {
            *socket_dir = dir.to_owned();
        }
    }
}

/// Removes `base/<pid>` folders whose process is gone.
pub(super) fn remove_stale_runtime_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

pub(super) fn set_cache_dirs(config: &mut Config, dir: &Path) {
    for app in &mut config.apps {
        Arc::make_mut(app).php.cache_dir = Some(dir.to_owned());
    }
}

pub(super) fn write_pid_file(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write pid file {}", path.display()))
}
