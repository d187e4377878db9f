//! This is where a reload is decided: [`plan`] compares the apps that run
//! with a newly validated configuration and says what to start, keep,
//! replace and remove, and what each FastCGI listener must do. It touches no
//! process and no socket, so it is tested by the table below; the server
//! (`apply_reload` in server/reload.rs) carries a plan out. sozu's `ConfigState::diff`
//! is the model.

use std::fmt;
use std::sync::Arc;

use crate::config::{AppConfig, Config, FastcgiConfig};

/// What a reload changes.
#[derive(Debug, Default)]
pub struct ReloadPlan {
    /// Apps that are new: a pool starts, warm before traffic reaches it.
    pub start: Vec<Arc<AppConfig>>,
    /// Apps whose configuration changed: a new pool starts, traffic moves to
    /// it once it is warm, and the old one drains.
    pub replace: Vec<Arc<AppConfig>>,
    /// Apps that stay as they are (by name).
    pub keep: Vec<String>,
    /// Apps that are gone or disabled: they drain and stop (by name).
    pub remove: Vec<String>,
    /// What each FastCGI listener of a started or replaced app must do.
    pub listeners: Vec<ListenerChange>,
    /// Sections of server.yaml that changed but apply only on a restart.
    pub restart_needed: Vec<&'static str>,
}

/// What happens to one app's FastCGI listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerChange {
    /// A new address: bound before anything switches.
    Bind { app: String },
    /// The same address with other settings (owner, mode, allowed
    /// clients, status paths): applied to the running listener.
    Reconfigure {
        app: String,
        /// `max_connections` changed, which needs a new address or a
        /// restart.
        max_connections_changed: bool,
    },
    /// The app no longer listens (or is gone).
    Close { app: String },
}

/// How a reload ended without changing anything.
#[derive(Debug)]
pub enum ReloadError {
    /// The configuration files are invalid (each error names file, line
    /// and key).
    Invalid(Vec<String>),
    /// A new pool could not start.
    Start(String),
    /// A new listener address could not be bound.
    Bind(String),
}

impl ReloadError {
    /// One line per problem, for the log and `/status`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Self::Invalid(errors) => errors.clone(),
            Self::Start(error) => vec![format!("a new pool did not start: {error}")],
            Self::Bind(error) => vec![format!("a new listener was not bound: {error}")],
        }
    }
}

/// What a reload did, by app name.
#[derive(Debug, Default)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "added [{}], changed [{}], removed [{}]",
            self.added.join(", "),
            self.changed.join(", "),
            self.removed.join(", ")
        )
    }
}

/// Compares the running apps with `new`; `running_server` is the
/// configuration the server started with (its `server`, `admin` and
/// `logging` sections need a restart to change).
pub fn plan(running_server: &Config, running: &[Arc<AppConfig>], new: &Config) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    for (section, changed) in [
        ("server", new.server != running_server.server),
        ("admin", new.admin != running_server.admin),
        ("logging", new.logging != running_server.logging),
    ] {
        if changed {
            plan.restart_needed.push(section);
        }
    }
    for app in &new.apps {
        let old = running.iter().find(|old| old.name == app.name);
        match old {
            // A worker-mode app's code lives in its booted workers: a reload
            // boots new ones even when its configuration is the same.
            Some(old) if **old == **app && app.php.worker.is_none() => {
                plan.keep.push(app.name.clone())
            }
            Some(old) => {
                plan.replace.push(app.clone());
                plan.listeners.extend(listener_change(
                    &app.name,
                    old.fastcgi.as_ref(),
                    app.fastcgi.as_ref(),
                ));
            }
            None => {
                plan.start.push(app.clone());
                plan.listeners
                    .extend(listener_change(&app.name, None, app.fastcgi.as_ref()));
            }
        }
    }
    for old in running {
        if !new.apps.iter().any(|app| app.name == old.name) {
            plan.remove.push(old.name.clone());
            if old.fastcgi.is_some() {
                plan.listeners.push(ListenerChange::Close {
                    app: old.name.clone(),
                });
            }
        }
    }
    plan
}

fn listener_change(
    app: &str,
    old: Option<&FastcgiConfig>,
    new: Option<&FastcgiConfig>,
) -> Option<ListenerChange> {
    let app = app.to_owned();
    match (old, new) {
        (Some(old), Some(new)) if old.listen == new.listen => Some(ListenerChange::Reconfigure {
            app,
            max_connections_changed: old.max_connections != new.max_connections,
        }),
        (_, Some(_)) => Some(ListenerChange::Bind { app }),
        (Some(_), None) => Some(ListenerChange::Close { app }),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ListenAddr;

    /// One site folder whose apps each test rewrites: an app whose files
    /// did not change compares equal across loads.
    struct Site(tempfile::TempDir);

    impl Site {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("config")).unwrap();
            std::fs::write(
                dir.path().join("config/server.yaml"),
                "server:\n  port: 8080\nadmin:\n  enabled: false\n",
            )
            .unwrap();
            Self(dir)
        }

        fn load(&self, apps: &[(&str, &str)]) -> Config {
            let folders = self.0.path().join("workers");
            let _ = std::fs::remove_dir_all(&folders);
            for (name, yaml) in apps {
                let folder = folders.join(name);
                std::fs::create_dir_all(folder.join("config")).unwrap();
                std::fs::create_dir_all(folder.join("public")).unwrap();
                std::fs::write(folder.join("config/worker.yaml"), yaml).unwrap();
            }
            crate::config::load(&self.0.path().join("config/server.yaml")).unwrap()
        }
    }

    fn names(configs: &[Arc<AppConfig>]) -> Vec<&str> {
        configs.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn apps_are_started_kept_replaced_and_removed() {
        let site = Site::new();
        let old = site.load(&[
            ("same", "path: /same\n"),
            ("edited", "path: /edited\n"),
            ("gone", "path: /gone\n"),
        ]);
        let new = site.load(&[
            ("same", "path: /same\n"),
            ("edited", "path: /edited\nfront_controller: false\n"),
            ("fresh", "path: /fresh\n"),
        ]);
        let plan = plan(&old, &old.apps, &new);
        assert_eq!(names(&plan.start), ["fresh"]);
        assert_eq!(names(&plan.replace), ["edited"]);
        assert_eq!(plan.keep, ["same"]);
        assert_eq!(plan.remove, ["gone"]);
        assert!(plan.listeners.is_empty());
        assert!(plan.restart_needed.is_empty());
    }

    #[test]
    fn the_same_configuration_changes_nothing() {
        let old = Site::new().load(&[("a", "path: /a\n"), ("b", "path: /b\n")]);
        let plan = plan(&old, &old.apps, &old);
        assert!(plan.start.is_empty() && plan.replace.is_empty() && plan.remove.is_empty());
        assert_eq!(plan.keep, ["a", "b"]);
    }

    #[test]
    fn listeners_are_bound_reconfigured_or_closed() {
        let site = Site::new();
        let old = site.load(&[
            (
                "moves",
                "path: /moves\nfastcgi:\n  listen: 127.0.0.1:19001\n",
            ),
            (
                "stays",
                "path: /stays\nfastcgi:\n  listen: 127.0.0.1:19002\n",
            ),
            (
                "stops",
                "path: /stops\nfastcgi:\n  listen: 127.0.0.1:19003\n",
            ),
            (
                "removed",
                "path: /removed\nfastcgi:\n  listen: 127.0.0.1:19004\n",
            ),
        ]);
        let new = site.load(&[
            (
                "moves",
                "path: /moves\nfastcgi:\n  listen: 127.0.0.1:19011\n",
            ),
            (
                "stays",
                "path: /stays\nfastcgi:\n  listen: 127.0.0.1:19002\n  max_connections: 10\n",
            ),
            ("stops", "path: /stops\n"),
            (
                "added",
                "path: /added\nfastcgi:\n  listen: 127.0.0.1:19005\n",
            ),
        ]);
        let plan = plan(&old, &old.apps, &new);
        let has = |change: ListenerChange| plan.listeners.contains(&change);
        assert!(has(ListenerChange::Bind {
            app: "moves".into()
        }));
        assert!(has(ListenerChange::Reconfigure {
            app: "stays".into(),
            max_connections_changed: true,
        }));
        assert!(has(ListenerChange::Close {
            app: "stops".into()
        }));
        assert!(has(ListenerChange::Close {
            app: "removed".into()
        }));
        assert!(has(ListenerChange::Bind {
            app: "added".into()
        }));
        assert_eq!(plan.listeners.len(), 5);
        let moved = plan.replace.iter().find(|c| c.name == "moves").unwrap();
        assert_eq!(
            moved.fastcgi.as_ref().unwrap().listen,
            ListenAddr::Tcp("127.0.0.1:19011".parse().unwrap())
        );
    }

    #[test]
    fn server_sections_that_need_a_restart_are_named() {
        let site = Site::new();
        let old = site.load(&[("a", "path: /a\n")]);
        let mut new = site.load(&[("a", "path: /a\n")]);
        new.server.read_timeout = std::time::Duration::from_secs(1);
        let plan = plan(&old, &old.apps, &new);
        assert_eq!(plan.restart_needed, ["server"]);
        assert_eq!(plan.keep, ["a"]);
    }

    #[test]
    fn errors_read_as_lines() {
        let error = ReloadError::Invalid(vec!["a.yaml:3: bad".into(), "b.yaml:1: worse".into()]);
        assert_eq!(error.lines().len(), 2);
        let summary = ReloadSummary {
            added: vec!["x".into()],
            changed: vec![],
            removed: vec!["y".into(), "z".into()],
        };
        assert_eq!(summary.to_string(), "added [x], changed [], removed [y, z]");
    }
}
