//! Raw files → typed [`Config`]. Every problem in every file is collected, so
//! `tqserver check` shows them all at once. By concept: server.rs (server.yaml),
//! app.rs (a worker.yaml), pool.rs (`php.pool`), fastcgi.rs (`fastcgi`),
//! probe.rs (what is asked of the machine), acme.rs (`server.tls.acme`); shared helpers are here.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ::pool::{Manager, PoolConfig, SocketKind, WorkerCommand};

use super::yaml::{self, ConfigError, ConfigErrors, suggest};
use super::{
    AccessLogConfig, AppConfig, Config, FastcgiConfig, Http2Settings, HttpAppConfig,
    HttpAppsSettings, ListenAddr, LoggingConfig, PhpConfig, PhpRuntime, QueueLimit, ResponseBuffer,
    SecurityConfig, ServerSettings, SlowLogConfig, SymlinkPolicy, defaults,
};
use crate::config::raw::{
    RawAccessLog, RawAdmin, RawFastcgi, RawFrontController, RawPool, RawRule, RawSecurity,
    RawServerFile, RawWorkerFile,
};
use crate::rules::{DenyStatus, PathRule, PathRules, Pattern, RuleAction};

mod acme;
mod app;
mod edge;
mod fastcgi;
mod http_app;
mod probe;
mod process_pool;
mod server;
mod tls;

use app::*;
pub use app::{display_route, normalize_route};
use edge::*;
use fastcgi::*;
pub use probe::{EMBED_RUNTIME, find_binary, find_runtime, php_version};
use process_pool::*;
use server::access_log;
pub use server::{control_settings, load};

fn dur(value: Option<crate::config::raw::RawDuration>, default: Duration) -> Duration {
    value.map(|d| d.0).unwrap_or(default)
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(normalize_route("/blog/"), Ok("/blog".to_owned()));
        assert_eq!(normalize_route("/"), Ok(String::new()));
        assert!(normalize_route("blog").is_err());
        assert!(normalize_route("/a//b").is_err());
        assert!(normalize_route("/a/../b").is_err());
        assert!(normalize_route("/café").is_err());
        assert_eq!(normalize_route("/api~v1"), Ok("/api~v1".to_owned()));
    }

    /// A site with server.yaml `server_yaml` and one app `app` whose
    /// worker.yaml is `worker_yaml`.
    fn site(server_yaml: &str, worker_yaml: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::write(dir.path().join("config/server.yaml"), server_yaml).unwrap();
        std::fs::create_dir_all(dir.path().join("workers/app/config")).unwrap();
        std::fs::create_dir_all(dir.path().join("workers/app/public")).unwrap();
        std::fs::write(
            dir.path().join("workers/app/config/worker.yaml"),
            worker_yaml,
        )
        .unwrap();
        dir
    }

    fn load_site(dir: &tempfile::TempDir) -> Result<Config, ConfigErrors> {
        load(&dir.path().join("config/server.yaml"))
    }

    #[test]
    fn drain_delay_and_ready_max_queue_default_off() {
        let dir = site("server:\n  port: 8080\n", "path: /\n");
        let config = load_site(&dir).unwrap();
        assert_eq!(config.server.drain_delay, Duration::ZERO);
        assert_eq!(config.ready_max_queue, QueueLimit::Off);
        assert_eq!(config.apps[0].ready_max_queue, None);
    }

    #[test]
    fn drain_delay_and_ready_max_queue_are_read() {
        let dir = site(
            "server:\n  drain_delay: 5s\nadmin:\n  ready_max_queue: 16\n",
            "path: /\nphp:\n  pool:\n    ready_max_queue: off\n",
        );
        let config = load_site(&dir).unwrap();
        assert_eq!(config.server.drain_delay, Duration::from_secs(5));
        assert_eq!(config.ready_max_queue, QueueLimit::Max(16));
        assert_eq!(config.apps[0].ready_max_queue, Some(QueueLimit::Off));

        let dir = site(
            "admin:\n  ready_max_queue: off\n",
            "path: /\nphp:\n  pool:\n    ready_max_queue: 0\n",
        );
        let config = load_site(&dir).unwrap();
        assert_eq!(config.ready_max_queue, QueueLimit::Off);
        assert_eq!(config.apps[0].ready_max_queue, Some(QueueLimit::Max(0)));
    }

    #[test]
    fn a_bad_ready_max_queue_names_file_line_and_key() {
        let dir = site("admin:\n  ready_max_queue: lots\n", "path: /\n");
        let errors = load_site(&dir).unwrap_err().to_string();
        assert!(errors.contains("server.yaml:2"), "{errors}");
        assert!(errors.contains("admin.ready_max_queue"), "{errors}");
        assert!(
            errors.contains("`lots` is not a number of requests or off"),
            "{errors}"
        );

        let dir = site("server:\n  drain_delay: soon\n", "path: /\n");
        let errors = load_site(&dir).unwrap_err().to_string();
        assert!(errors.contains("server.drain_delay"), "{errors}");
    }

    #[test]
    fn max_connections_defaults_and_is_checked() {
        let dir = site("server:\n  port: 8080\n", "path: /\n");
        let config = load_site(&dir).unwrap();
        assert_eq!(config.server.max_connections, defaults::MAX_CONNECTIONS);

        let dir = site("server:\n  max_connections: 500\n", "path: /\n");
        assert_eq!(load_site(&dir).unwrap().server.max_connections, 500);

        for bad in ["0", "2000000"] {
            let dir = site(
                &format!("server:\n  port: 8080\n  max_connections: {bad}\n"),
                "path: /\n",
            );
            let errors = load_site(&dir).unwrap_err().to_string();
            assert!(errors.contains("server.yaml:3"), "{errors}");
            assert!(errors.contains("server.max_connections"), "{errors}");
            assert!(errors.contains("expected 1 to 1000000"), "{errors}");
        }
        let dir = site("server:\n  max_connections: many\n", "path: /\n");
        let errors = load_site(&dir).unwrap_err().to_string();
        assert!(errors.contains("server.max_connections"), "{errors}");
    }

    #[test]
    fn a_tls_section_needs_a_certificate_and_its_own_port() {
        let dir = site(
            "server:\n  port: 8443\n  tls:\n    redirect_http: true\n",
            "path: /\n",
        );
        let errors = load_site(&dir).unwrap_err().to_string();
        assert!(
            errors.contains("server.yaml:3: server.tls: needs a certificate"),
            "{errors}"
        );
        assert!(
            errors.contains("server.tls.port: 8443 is server.port too"),
            "{errors}"
        );

        let dir = site(
            "server:\n  tls:\n    port: 8443\n    certificates:\n      - cert: a.pem\n      - key: b.key\n",
            "path: /\n",
        );
        let errors = load_site(&dir).unwrap_err().to_string();
        assert!(
            errors.contains("server.yaml:5: server.tls.certificates[0].key: missing"),
            "{errors}"
        );
        assert!(
            errors.contains("server.yaml:6: server.tls.certificates[1].cert: missing"),
            "{errors}"
        );

        let dir = site(
            "server:\n  tls:\n    cert: a.pem\n    key: a.key\n    hsts:\n      include_subdomains: true\n",
            "path: /\n",
        );
        let errors = load_site(&dir).unwrap_err().to_string();
        assert!(
            errors.contains("server.tls.hsts: needs max_age"),
            "{errors}"
        );
        assert!(errors.contains("server.tls.cert: "), "{errors}");
        assert!(errors.contains("a.pem: cannot read it"), "{errors}");
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("9010-9099"), Some((9010, 9099)));
        assert_eq!(parse_port_range("9099-9010"), None);
    }
}
