//! server.yaml: the server, logging and admin sections, and where the apps are.

use super::tls;
#[allow(unused_imports)]
use super::*;

/// Only what `tqserver status` and `tqserver reload` need from server.yaml
/// (the admin address and the pid file), without validating the apps, so
/// they work even while a worker.yaml is broken.
pub fn control_settings(
    server_file: &Path,
) -> Result<(Option<ListenAddr>, Option<PathBuf>), ConfigError> {
    let (raw, text) = yaml::load::<RawServerFile>(server_file)?;
    let config_dir = absolute(server_file.parent().unwrap_or(Path::new(".")));
    let server = raw.server.unwrap_or_default();
    let root = match &server.root {
        Some(root) => config_dir.join(root),
        None => config_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or(config_dir.clone()),
    };
    let admin = admin_listen(&raw.admin.unwrap_or_default(), &root)
        .map_err(|message| ConfigError::at_key(server_file, &text, "admin.listen", message))?;
    let pid_file = match server.pid_file.as_deref() {
        Some("") | Some("off") => None,
        Some(path) => Some(root.join(path)),
        None => Some(root.join(defaults::PID_FILE)),
    };
    Ok((admin, pid_file))
}

/// Loads `config/server.yaml` and every enabled app under the workers
/// directory.
pub fn load(server_file: &Path) -> Result<Config, ConfigErrors> {
    let (raw, text) = yaml::load::<RawServerFile>(server_file)?;
    let mut errors = Vec::new();
    let at = |key: &str, message: String| ConfigError::at_key(server_file, &text, key, message);

    let server_raw = raw.server.unwrap_or_default();
    let config_dir = server_file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let config_dir = absolute(&config_dir);
    let root = match &server_raw.root {
        Some(root) => config_dir.join(root),
        None => config_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| config_dir.clone()),
    };

    let host = server_raw.host.as_deref().unwrap_or(defaults::HOST);
    let port = server_raw.port.unwrap_or(defaults::PORT);
    let listen = match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => {
            errors.push(at(
                "server.host",
                format!("`{host}` is not an IP address (e.g. 0.0.0.0, 127.0.0.1, ::)"),
            ));
            SocketAddr::from(([0, 0, 0, 0], port))
        }
    };
    let max_header_bytes = server_raw
        .max_header_bytes
        .map(|s| s.0 as usize)
        .unwrap_or(defaults::MAX_HEADER_BYTES);
    if max_header_bytes < 8192 {
        errors.push(at(
            "server.max_header_bytes",
            "must be at least 8K".to_owned(),
        ));
    }
    let max_headers = server_raw.max_headers.unwrap_or(defaults::MAX_HEADERS);
    if max_headers == 0 || max_headers > 10_000 {
        errors.push(at(
            "server.max_headers",
            format!("{max_headers} is out of range; expected 1 to 10000"),
        ));
    }
    let max_connections = server_raw
        .max_connections
        .unwrap_or(defaults::MAX_CONNECTIONS);
    if max_connections == 0 || max_connections > 1_000_000 {
        errors.push(at(
            "server.max_connections",
            format!("{max_connections} is out of range; expected 1 to 1000000"),
        ));
    }
    let development = match server_raw.mode.as_deref() {
        None | Some("production") => false,
        Some("development") => true,
        Some(other) => {
            errors.push(at(
                "server.mode",
                format!(
                    "`{other}` is not one of production, development (or start with `tqserver --dev`)"
                ),
            ));
            false
        }
    } || crate::config::development_forced();
    let compression = std::sync::Arc::new(match &server_raw.compression {
        Some(raw) => compression(
            raw,
            &Default::default(),
            "server.compression",
            &at,
            &mut errors,
        ),
        None => Default::default(),
    });
    let trusted_proxies = trusted_proxies(
        server_raw.trusted_proxies.as_deref().unwrap_or_default(),
        &at,
        &mut errors,
    );
    let (tls, tls_certificates) = tls::tls(
        server_raw.tls.as_ref(),
        listen.ip(),
        port,
        &root,
        server_file,
        &text,
        &mut errors,
    );
    let http2_raw = server_raw.http2.unwrap_or_default();
    let max_concurrent_streams = http2_raw
        .max_concurrent_streams
        .unwrap_or(defaults::HTTP2_MAX_CONCURRENT_STREAMS);
    if max_concurrent_streams == 0 || max_concurrent_streams > 10_000 {
        errors.push(at(
            "server.http2.max_concurrent_streams",
            format!("{max_concurrent_streams} is out of range; expected 1 to 10000"),
        ));
    }
    let server = ServerSettings {
        listen,
        development,
        read_timeout: dur(server_raw.read_timeout, defaults::READ_TIMEOUT),
        write_timeout: dur(server_raw.write_timeout, defaults::WRITE_TIMEOUT),
        idle_timeout: dur(server_raw.idle_timeout, defaults::IDLE_TIMEOUT),
        max_header_bytes: max_header_bytes.max(8192),
        max_headers: max_headers.max(1),
        max_body_bytes: server_raw
            .max_body_bytes
            .map(|s| s.0)
            .unwrap_or(defaults::MAX_BODY_BYTES),
        max_connections: max_connections.clamp(1, 1_000_000),
        grace_period: dur(server_raw.grace_period, defaults::GRACE_PERIOD),
        drain_delay: dur(server_raw.drain_delay, defaults::DRAIN_DELAY),
        threads: server_raw.threads.unwrap_or(0),
        http2: Http2Settings {
            max_concurrent_streams: max_concurrent_streams.clamp(1, 10_000),
            h2c: http2_raw.h2c.unwrap_or(false),
            enabled: http2_raw.enabled.unwrap_or(true),
        },
        pid_file: match server_raw.pid_file.as_deref() {
            Some("") | Some("off") => None,
            Some(path) => Some(root.join(path)),
            None => Some(root.join(defaults::PID_FILE)),
        },
        compression,
        trusted_proxies,
        tls,
    };

    let workers_dir = root.join(
        raw.workers
            .and_then(|w| w.directory)
            .unwrap_or_else(|| defaults::WORKERS_DIRECTORY.to_owned()),
    );
    let server_php = raw.php.unwrap_or_default();
    let socket_dir = match server_php.socket_dir {
        Some(dir) => root.join(dir),
        None => default_socket_dir(),
    };
    let cache_dir = match server_php.cache_dir {
        Some(dir) => root.join(dir),
        None => default_cache_dir(),
    };

    let logging = logging(&raw.logging.unwrap_or_default(), &root, &at, &mut errors);
    let admin_raw = raw.admin.unwrap_or_default();
    let ready_max_queue = queue_limit(admin_raw.ready_max_queue).unwrap_or_default();
    let admin = match admin_listen(&admin_raw, &root) {
        Ok(admin) => admin,
        Err(message) => {
            errors.push(at("admin.listen", message));
            None
        }
    };

    let mut http = http_app::http_apps_settings(server_raw.http_apps.as_ref(), &at, &mut errors);
    if development {
        http.mode = crate::config::WorkerMode::Development;
    }
    let mut apps = Vec::new();
    let mut http_apps = Vec::new();
    let mut php_versions = HashMap::new();
    match std::fs::read_dir(&workers_dir) {
        Err(err) => errors.push(at(
            "workers.directory",
            format!("cannot read {}: {err}", workers_dir.display()),
        )),
        Ok(entries) => {
            let mut folders: Vec<_> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join("config/worker.yaml").is_file())
                .collect();
            folders.sort();
            for folder in folders {
                match load_app(&folder, &socket_dir, &mut php_versions, &server.compression) {
                    Ok(Some(LoadedApp::Php(mut app))) => {
                        if development {
                            crate::dev::php_settings(&mut app);
                        }
                        apps.push(Arc::new(*app))
                    }
                    Ok(Some(LoadedApp::Http(app))) => http_apps.push(Arc::new(*app)),
                    Ok(None) => {}
                    Err(mut app_errors) => errors.append(&mut app_errors),
                }
            }
        }
    }

    let mut routes: BTreeMap<&str, &str> = BTreeMap::new();
    let named_routes = apps
        .iter()
        .map(|app| (&app.name, &app.route, &app.file))
        .chain(
            http_apps
                .iter()
                .map(|app| (&app.name, &app.route, &app.file)),
        );
    for (name, route, file) in named_routes {
        if let Some(other) = routes.insert(route, name) {
            errors.push(ConfigError::at_key(
                file,
                &std::fs::read_to_string(file).unwrap_or_default(),
                "path",
                format!(
                    "route `{}` is already taken by app `{other}`",
                    display_route(route),
                ),
            ));
        }
    }
    let mut listeners: BTreeMap<String, &str> = BTreeMap::new();
    for app in &apps {
        if let Some(fastcgi) = &app.fastcgi {
            let key = format!("{:?}", fastcgi.listen);
            if let Some(other) = listeners.insert(key, &app.name) {
                errors.push(ConfigError::new(
                    &app.file,
                    format!("fastcgi.listen is already used by app `{other}`"),
                ));
            }
        }
    }

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        file: server_file.to_owned(),
        root,
        server,
        workers_dir,
        socket_dir,
        cache_dir,
        logging,
        admin,
        ready_max_queue,
        apps,
        tls_certificates,
        http_apps,
        http,
    })
}

/// `admin.listen`: a TCP address (`127.0.0.1:9180`), `unix:PATH`, or a
/// socket path (absolute, or with a `/` or ending in `.sock`: relative to
/// the server root). None when `admin.enabled: false`.
pub(super) fn admin_listen(raw: &RawAdmin, root: &Path) -> Result<Option<ListenAddr>, String> {
    if raw.enabled == Some(false) {
        return Ok(None);
    }
    let text = raw.listen.as_deref().unwrap_or(defaults::ADMIN_LISTEN);
    let listen = if let Some(path) = text.strip_prefix("unix:") {
        ListenAddr::Unix(root.join(path))
    } else if let Ok(addr) = text.parse::<SocketAddr>() {
        ListenAddr::Tcp(addr)
    } else if text.contains('/') || text.ends_with(".sock") {
        ListenAddr::Unix(root.join(text))
    } else {
        return Err(format!(
            "`{text}` is not an address such as 127.0.0.1:9180 or a socket path such as /run/tqserver/admin.sock"
        ));
    };
    // sun_path holds 108 bytes with the terminating NUL.
    if let ListenAddr::Unix(path) = &listen
        && path.as_os_str().len() > 107
    {
        return Err(format!(
            "{} is longer than a unix socket path may be (107 bytes); set admin.listen to a shorter path or an address such as 127.0.0.1:9180",
            path.display()
        ));
    }
    Ok(Some(listen))
}

pub(super) fn logging(
    raw: &crate::config::raw::RawLogging,
    root: &Path,
    at: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> LoggingConfig {
    let level = raw.level.clone().unwrap_or_else(|| "info".to_owned());
    if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
        errors.push(at(
            "logging.level",
            format!("`{level}` is not one of error, warn, info, debug, trace"),
        ));
    }
    let json = match raw.format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            errors.push(at(
                "logging.format",
                format!("`{other}` is not one of text, json"),
            ));
            false
        }
    };
    let access_log = raw
        .access_log
        .as_ref()
        .and_then(|a| access_log(a, root, "logging.access_log", at, errors));
    LoggingConfig {
        level,
        json,
        file: raw.file.as_deref().map(|f| root.join(f)),
        access_log,
        slow_log_threshold: raw
            .slow_log
            .as_ref()
            .filter(|s| s.enabled != Some(false))
            .and_then(|s| s.threshold)
            .map(|d| d.0),
        slow_log_file: raw
            .slow_log
            .as_ref()
            .and_then(|s| s.file.as_deref())
            .map(|f| root.join(f)),
    }
}

pub(super) fn access_log(
    raw: &RawAccessLog,
    root: &Path,
    key: &str,
    at: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> Option<AccessLogConfig> {
    if raw.enabled == Some(false) {
        return None;
    }
    let json = match raw.format.as_deref() {
        None | Some("combined") => false,
        Some("json") => true,
        Some(other) => {
            errors.push(at(
                &format!("{key}.format"),
                format!("`{other}` is not one of combined, json"),
            ));
            false
        }
    };
    Some(AccessLogConfig {
        json,
        file: raw
            .file
            .as_deref()
            .filter(|f| *f != "-" && *f != "stdout")
            .map(|f| root.join(f)),
    })
}

pub(super) fn default_cache_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        PathBuf::from("/var/cache/tqserver")
    } else if let Some(cache) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(cache).join("tqserver")
    } else if let Some(home) = std::env::var_os("HOME") {
        PathBuf::from(home).join(".cache/tqserver")
    } else {
        std::env::temp_dir().join(format!("tqserver-cache-{}", nix::unistd::geteuid()))
    }
}

pub(super) fn default_socket_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        PathBuf::from("/run/tqserver")
    } else if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(runtime).join("tqserver")
    } else {
        std::env::temp_dir().join(format!("tqserver-{}", nix::unistd::geteuid()))
    }
}
