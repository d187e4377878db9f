//! Raw files → typed [`Config`]. Every problem in every file is collected, so
//! `tqserver check` shows them all at once.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pool::{Manager, PoolConfig, SocketKind, WorkerCommand};

use super::raw::{
    RawAccessLog, RawAdmin, RawFastcgi, RawFrontController, RawPool, RawRule, RawSecurity,
    RawServerFile, RawWorkerFile,
};
use super::yaml::{self, ConfigError, ConfigErrors, suggest};
use super::{
    AccessLogConfig, Config, FastcgiConfig, ListenAddr, LoggingConfig, PhpConfig, QueueLimit,
    ResponseBuffer, SecurityConfig, ServerSettings, SlowLogConfig, SymlinkPolicy, WorkerConfig,
    defaults,
};
use crate::rules::{DenyStatus, PathRule, PathRules, Pattern, RuleAction};

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

/// Loads `config/server.yaml` and every enabled worker under the workers
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
    let server = ServerSettings {
        listen,
        read_timeout: dur(server_raw.read_timeout, defaults::READ_TIMEOUT),
        write_timeout: dur(server_raw.write_timeout, defaults::WRITE_TIMEOUT),
        idle_timeout: dur(server_raw.idle_timeout, defaults::IDLE_TIMEOUT),
        max_header_bytes: max_header_bytes.max(8192),
        max_headers: max_headers.max(1),
        max_body_bytes: server_raw
            .max_body_bytes
            .map(|s| s.0)
            .unwrap_or(defaults::MAX_BODY_BYTES),
        grace_period: dur(server_raw.grace_period, defaults::GRACE_PERIOD),
        drain_delay: dur(server_raw.drain_delay, defaults::DRAIN_DELAY),
        threads: server_raw.threads.unwrap_or(0),
        pid_file: match server_raw.pid_file.as_deref() {
            Some("") | Some("off") => None,
            Some(path) => Some(root.join(path)),
            None => Some(root.join(defaults::PID_FILE)),
        },
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

    let mut workers = Vec::new();
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
                match load_worker(&folder, &socket_dir, &mut php_versions) {
                    Ok(Some(worker)) => workers.push(Arc::new(worker)),
                    Ok(None) => {}
                    Err(mut worker_errors) => errors.append(&mut worker_errors),
                }
            }
        }
    }

    let mut routes: BTreeMap<&str, &WorkerConfig> = BTreeMap::new();
    for worker in &workers {
        if let Some(other) = routes.insert(&worker.route, worker) {
            errors.push(ConfigError::at_key(
                &worker.file,
                &std::fs::read_to_string(&worker.file).unwrap_or_default(),
                "path",
                format!(
                    "route `{}` is already taken by worker `{}`",
                    display_route(&worker.route),
                    other.name
                ),
            ));
        }
    }
    let mut listeners: BTreeMap<String, &str> = BTreeMap::new();
    for worker in &workers {
        if let Some(fastcgi) = &worker.fastcgi {
            let key = format!("{:?}", fastcgi.listen);
            if let Some(other) = listeners.insert(key, &worker.name) {
                errors.push(ConfigError::new(
                    &worker.file,
                    format!("fastcgi.listen is already used by worker `{other}`"),
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
        workers,
    })
}

/// `admin.listen`: a TCP address (`127.0.0.1:9180`), `unix:PATH`, or a
/// socket path (absolute, or with a `/` or ending in `.sock`: relative to
/// the server root). None when `admin.enabled: false`.
fn admin_listen(raw: &RawAdmin, root: &Path) -> Result<Option<ListenAddr>, String> {
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

fn logging(
    raw: &super::raw::RawLogging,
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

fn access_log(
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

/// Loads one worker folder. `Ok(None)` for a disabled worker.
fn load_worker(
    folder: &Path,
    socket_dir: &Path,
    php_versions: &mut HashMap<PathBuf, Result<String, String>>,
) -> Result<Option<WorkerConfig>, Vec<ConfigError>> {
    let file = folder.join("config/worker.yaml");
    let (raw, text) = yaml::load::<RawWorkerFile>(&file).map_err(|e| vec![e])?;
    if raw.enabled == Some(false) {
        return Ok(None);
    }
    let name = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut errors = Vec::new();
    let at = |key: &str, message: String| ConfigError::at_key(&file, &text, key, message);

    match raw.kind.as_deref() {
        None | Some("php") => {}
        Some(other) => errors.push(at(
            "type",
            format!("`{other}` is not a supported worker type (only `php`)"),
        )),
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        errors.push(ConfigError::new(
            &file,
            format!("worker folder name `{name}` may only use letters, digits, '-', '_' and '.'"),
        ));
    }

    let route = match raw.path.as_deref() {
        None => {
            errors.push(at(
                "path",
                "missing: the URL path this worker serves, e.g. /blog or /".to_owned(),
            ));
            String::new()
        }
        Some(path) => match normalize_route(path) {
            Ok(route) => route,
            Err(message) => {
                errors.push(at("path", message));
                String::new()
            }
        },
    };

    let document_root = folder.join(
        raw.document_root
            .as_deref()
            .unwrap_or(defaults::DOCUMENT_ROOT),
    );
    let document_root = match std::fs::canonicalize(&document_root) {
        Ok(path) if path.is_dir() => path,
        Ok(path) => {
            errors.push(at(
                "document_root",
                format!("{} is not a directory", path.display()),
            ));
            path
        }
        Err(err) => {
            errors.push(at(
                "document_root",
                format!("{}: {err}", document_root.display()),
            ));
            document_root
        }
    };

    let php_raw = raw.php.unwrap_or_default();
    let limit_extensions: Vec<String> = php_raw
        .limit_extensions
        .clone()
        .unwrap_or_else(|| defaults::LIMIT_EXTENSIONS.map(String::from).to_vec())
        .into_iter()
        .map(|ext| ext.to_ascii_lowercase())
        .collect();
    for ext in &limit_extensions {
        if !ext.starts_with('.') || ext.len() < 2 || ext[1..].contains(['.', '/']) {
            errors.push(at(
                "php.limit_extensions",
                format!("`{ext}` is not an extension such as .php"),
            ));
        }
    }
    if limit_extensions.is_empty() {
        errors.push(at(
            "php.limit_extensions",
            "must list at least one extension, e.g. [.php]".to_owned(),
        ));
    }

    let front_controller = match raw.front_controller {
        Some(RawFrontController::Off) => None,
        Some(RawFrontController::Script(script)) => Some(script),
        None => Some(defaults::FRONT_CONTROLLER.to_owned()),
    }
    .map(|s| s.trim_start_matches('/').to_owned());
    if let Some(script) = &front_controller
        && (script.split('/').any(|seg| seg == ".." || seg.is_empty())
            || !limit_extensions
                .iter()
                .any(|ext| script.to_ascii_lowercase().ends_with(ext.as_str())))
    {
        errors.push(at(
            "front_controller",
            format!("`{script}` must be a script inside the document root with an extension from php.limit_extensions"),
        ));
    }
    let index = raw
        .index
        .unwrap_or_else(|| defaults::INDEX.map(String::from).to_vec());

    // PHP binary and version.
    let binary_name = php_raw
        .binary
        .clone()
        .unwrap_or_else(|| defaults::PHP_BINARY.to_owned());
    let binary = match find_binary(&binary_name, folder) {
        Some(binary) => binary,
        None => {
            errors.push(at(
                "php.binary",
                format!(
                    "`{binary_name}` not found{}; install it with `apt-get install php-cgi` (Debian package php-cgi)",
                    if binary_name.contains('/') { "" } else { " on PATH" }
                ),
            ));
            PathBuf::from(&binary_name)
        }
    };
    let version = if binary.is_file() {
        match php_versions
            .entry(binary.clone())
            .or_insert_with(|| php_version(&binary))
        {
            Ok(version) => version.clone(),
            Err(message) => {
                errors.push(at("php.binary", message.clone()));
                String::new()
            }
        }
    } else {
        String::new()
    };

    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if let Some(ini) = &php_raw.config_file {
        let ini = folder.join(ini);
        if !ini.is_file() {
            errors.push(at(
                "php.config_file",
                format!("{} does not exist", ini.display()),
            ));
        }
        args.push("-c".into());
        args.push(ini.into());
    }
    for (key, value) in php_raw.settings.iter().flatten() {
        if key.is_empty() || key.contains(['=', '\n', ' ']) || value.0.contains('\n') {
            errors.push(at(
                &format!("php.settings.{key}"),
                "setting names may not contain '=', spaces or newlines, values no newlines"
                    .to_owned(),
            ));
            continue;
        }
        args.push("-d".into());
        args.push(format!("{key}={}", value.0).into());
    }

    let running_as_root = nix::unistd::geteuid().is_root();
    let user_name = php_raw
        .user
        .clone()
        .unwrap_or_else(|| defaults::PHP_USER.to_owned());
    let credentials = if running_as_root {
        match nix::unistd::User::from_name(&user_name) {
            // PHP running as root would turn any hole in an app into root.
            Ok(Some(user)) if user.uid.is_root() => {
                errors.push(at(
                    "php.user",
                    format!(
                        "`{user_name}` is root (uid 0); workers never run as root: name an unprivileged user such as www-data"
                    ),
                ));
                None
            }
            Ok(Some(user)) => {
                let gid = match &php_raw.group {
                    None if user.gid.as_raw() == 0 => {
                        errors.push(at(
                            "php.user",
                            format!(
                                "`{user_name}` has gid 0 (root's group) as its group; set php.group to an unprivileged group"
                            ),
                        ));
                        None
                    }
                    None => Some(user.gid.as_raw()),
                    Some(group) => match nix::unistd::Group::from_name(group) {
                        Ok(Some(found)) if found.gid.as_raw() == 0 => {
                            errors.push(at(
                                "php.group",
                                format!(
                                    "`{group}` is gid 0 (root's group); workers never run with it"
                                ),
                            ));
                            None
                        }
                        Ok(Some(found)) => Some(found.gid.as_raw()),
                        _ => {
                            errors.push(at("php.group", format!("no such group `{group}`")));
                            None
                        }
                    },
                };
                gid.map(|gid| (user.uid.as_raw(), gid))
            }
            _ => {
                errors.push(at(
                    "php.user",
                    format!("no such user `{user_name}` (workers never run as root)"),
                ));
                None
            }
        }
    } else {
        None
    };

    // As root, workers run as php.user: php-cgi starts in the document root,
    // so that user must be able to enter it (a site under a 0700 home
    // directory cannot start otherwise).
    if let Some((uid, gid)) = credentials
        && document_root.is_dir()
    {
        match pool::access::first_blocked(&document_root, uid, gid) {
            Ok(None) => {}
            Ok(Some(blocked)) => errors.push(at(
                "document_root",
                format!(
                    "php.user `{user_name}` {blocked}, so its workers cannot start in {root}; \
                     the user needs x on every directory above the document root and r and x \
                     on the document root: give it access (chmod o+x {dir}, or setfacl -m u:{user_name}:x {dir}), \
                     move the site, or set php.user to a user that can",
                    root = document_root.display(),
                    dir = blocked.dir.display(),
                ),
            )),
            Err(err) => errors.push(at(
                "document_root",
                format!(
                    "cannot check that php.user `{user_name}` can enter {}: {err}",
                    document_root.display()
                ),
            )),
        }
    }

    let socket = match php_raw.socket.as_deref() {
        None | Some("unix") => SocketKind::Unix {
            dir: socket_dir.to_owned(),
        },
        Some("tcp") => {
            let (start, end) = match php_raw.port_range.as_deref() {
                None => defaults::PORT_RANGE,
                Some(range) => match parse_port_range(range) {
                    Some(range) => range,
                    None => {
                        errors.push(at(
                            "php.port_range",
                            format!("`{range}` is not a range such as 9010-9099"),
                        ));
                        defaults::PORT_RANGE
                    }
                },
            };
            SocketKind::Tcp {
                host: IpAddr::from([127, 0, 0, 1]),
                ports: start..end.saturating_add(1),
            }
        }
        Some(other) => {
            errors.push(at(
                "php.socket",
                format!("`{other}` is not one of unix, tcp"),
            ));
            SocketKind::Unix {
                dir: socket_dir.to_owned(),
            }
        }
    };

    let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        // Recycling is tqserver's job (max_requests), not php-cgi's.
        ("PHP_FCGI_MAX_REQUESTS".into(), "0".into()),
    ];
    if let SocketKind::Tcp { .. } = socket {
        env.push(("FCGI_WEB_SERVER_ADDRS".into(), "127.0.0.1".into()));
    }
    for (key, value) in php_raw.env.iter().flatten() {
        if key == "PHP_FCGI_CHILDREN" {
            errors.push(at(
                &format!("php.env.{key}"),
                "tqserver manages processes itself; PHP_FCGI_CHILDREN must not be set".to_owned(),
            ));
            continue;
        }
        env.retain(|(k, _)| k != key.as_str());
        env.push((key.into(), value.0.clone().into()));
    }

    let pool = pool_config(
        &name,
        php_raw.pool.as_ref(),
        &at,
        &mut errors,
        WorkerCommand {
            program: binary.clone(),
            args,
            env,
            cwd: Some(document_root.clone()),
            credentials,
            socket,
        },
    );

    let security_raw = raw.security.unwrap_or_default();
    let static_raw = raw.static_files.unwrap_or_default();
    let fastcgi = raw
        .fastcgi
        .as_ref()
        .and_then(|f| fastcgi_config(f, folder, credentials, &at, &mut errors));
    let access_log = raw
        .access_log
        .as_ref()
        .and_then(|a| access_log(a, folder, "access_log", &at, &mut errors));
    let symlinks = symlink_policy(&security_raw, &at, &mut errors);
    let at_rule = |index: usize, field: Option<&str>, message: String| {
        let key = match field {
            Some(field) => format!("rules[{index}].{field}"),
            None => format!("rules[{index}]"),
        };
        ConfigError {
            line: yaml::line_of_list_item(&text, "rules", index, field),
            ..ConfigError::at_key(&file, &text, &key, message)
        }
    };
    let rules = path_rules(
        raw.rules.as_deref().unwrap_or_default(),
        &at_rule,
        &mut errors,
    );
    let ready_max_queue = queue_limit(php_raw.pool.as_ref().and_then(|p| p.ready_max_queue));
    let slow_log = raw.slow_log.as_ref().map(|s| SlowLogConfig {
        enabled: s.enabled != Some(false),
        threshold: s.threshold.map(|d| d.0),
        file: s.file.as_deref().map(|f| folder.join(f)),
    });

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Some(WorkerConfig {
        name,
        file,
        route,
        folder: folder.to_owned(),
        document_root,
        front_controller,
        index,
        limit_extensions,
        static_files: static_raw.enabled.unwrap_or(true),
        cache_control: static_raw.cache_control,
        security: SecurityConfig {
            allow_dotfiles: security_raw.allow_dotfiles.unwrap_or(false),
            allowed_dot_paths: security_raw
                .allowed_dot_paths
                .unwrap_or_else(|| defaults::ALLOWED_DOT_PATHS.map(String::from).to_vec()),
            symlinks,
        },
        php: PhpConfig {
            binary,
            version,
            user: credentials.map(|_| user_name),
            // Settings that choose for OPcache themselves win.
            opcache_file_cache: php_raw.opcache_file_cache.unwrap_or(true)
                && !php_raw.settings.iter().flatten().any(|(key, value)| {
                    key == "opcache.file_cache" || (key == "opcache.enable" && value.0 == "0")
                }),
            cache_dir: None,
            request_buffering: php_raw.request_buffering.unwrap_or(true),
            response_buffer: ResponseBuffer {
                enabled: php_raw.response_buffering.unwrap_or(true),
                memory_bytes: php_raw
                    .response_buffer_memory
                    .map_or(defaults::RESPONSE_BUFFER_MEMORY, |size| size.0),
                max_bytes: php_raw
                    .max_response_buffer
                    .map_or(defaults::MAX_RESPONSE_BUFFER, |size| size.0),
            },
        },
        pool,
        fastcgi,
        access_log,
        rules,
        ready_max_queue,
        slow_log,
    }))
}

/// `security.symlinks`, or its older spelling `allow_symlinks_outside_root`.
fn symlink_policy(
    raw: &RawSecurity,
    at: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> SymlinkPolicy {
    match (raw.symlinks.as_deref(), raw.allow_symlinks_outside_root) {
        (Some(_), Some(_)) => {
            errors.push(at(
                "security.allow_symlinks_outside_root",
                "set only security.symlinks; allow_symlinks_outside_root is its older spelling (true is `follow`, false is `beneath`)".to_owned(),
            ));
            SymlinkPolicy::default()
        }
        (Some(text), None) => SymlinkPolicy::parse(text).unwrap_or_else(|| {
            let hint = suggest(text, &SymlinkPolicy::NAMES)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            errors.push(at(
                "security.symlinks",
                format!("`{text}` is not one of owner, beneath, follow{hint}"),
            ));
            SymlinkPolicy::default()
        }),
        (None, Some(true)) => SymlinkPolicy::Follow,
        (None, Some(false)) => SymlinkPolicy::Beneath,
        (None, None) => SymlinkPolicy::default(),
    }
}

/// `rules:`: each entry needs one pattern (`path` or `glob`) and one action
/// (`deny: 403|404` or `static_only: true`).
fn path_rules(
    raw: &[RawRule],
    at: &dyn Fn(usize, Option<&str>, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> PathRules {
    let mut rules = Vec::new();
    for (index, rule) in raw.iter().enumerate() {
        let pattern = match (&rule.path, &rule.glob) {
            (Some(_), Some(_)) => {
                errors.push(at(
                    index,
                    None,
                    "give either `path` (a prefix) or `glob`, not both".to_owned(),
                ));
                None
            }
            (None, None) => {
                errors.push(at(
                    index,
                    None,
                    "needs `path` (a prefix such as /data/) or `glob` (such as /images/**)"
                        .to_owned(),
                ));
                None
            }
            (Some(path), None) => Pattern::prefix(path)
                .map_err(|message| errors.push(at(index, Some("path"), message)))
                .ok(),
            (None, Some(glob)) => Pattern::glob(glob)
                .map_err(|message| errors.push(at(index, Some("glob"), message)))
                .ok(),
        };
        let action = match (rule.deny, rule.static_only) {
            (Some(_), Some(true)) => {
                errors.push(at(
                    index,
                    None,
                    "give either `deny` or `static_only: true`, not both (a deny already stops scripts)"
                        .to_owned(),
                ));
                None
            }
            (Some(403), _) => Some(RuleAction::Deny(DenyStatus::Forbidden)),
            (Some(404), _) => Some(RuleAction::Deny(DenyStatus::NotFound)),
            (Some(other), _) => {
                errors.push(at(
                    index,
                    Some("deny"),
                    format!("`{other}` is not 403 or 404"),
                ));
                None
            }
            (None, Some(true)) => Some(RuleAction::StaticOnly),
            (None, _) => {
                errors.push(at(
                    index,
                    None,
                    "says nothing to do: add `deny: 403`, `deny: 404` or `static_only: true`"
                        .to_owned(),
                ));
                None
            }
        };
        if let (Some(pattern), Some(action)) = (pattern, action) {
            rules.push(PathRule { pattern, action });
        }
    }
    PathRules(rules)
}

fn pool_config(
    name: &str,
    raw: Option<&RawPool>,
    at: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
    command: WorkerCommand,
) -> PoolConfig {
    let empty = RawPool::default();
    let raw = raw.unwrap_or(&empty);
    let manager = match raw.manager.as_deref().unwrap_or(defaults::MANAGER) {
        "static" => Manager::Static,
        "dynamic" => Manager::Dynamic,
        "ondemand" => Manager::Ondemand,
        other => {
            let hint = suggest(other, &["static", "dynamic", "ondemand"])
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            errors.push(at(
                "php.pool.manager",
                format!("`{other}` is not one of static, dynamic, ondemand{hint}"),
            ));
            Manager::Dynamic
        }
    };
    let max_workers = raw.max_workers.unwrap_or_else(defaults::max_workers);
    let min_workers = match manager {
        Manager::Ondemand => 0,
        _ => raw
            .min_workers
            .unwrap_or(defaults::MIN_WORKERS.min(max_workers)),
    };
    let start_workers = raw
        .start_workers
        .unwrap_or(defaults::START_WORKERS.clamp(min_workers, max_workers.max(min_workers)));
    if max_workers == 0 {
        errors.push(at("php.pool.max_workers", "must be at least 1".to_owned()));
    }
    if max_workers > 4096 {
        errors.push(at(
            "php.pool.max_workers",
            "must be at most 4096".to_owned(),
        ));
    }
    if manager == Manager::Ondemand && raw.min_workers.is_some_and(|m| m > 0) {
        errors.push(at(
            "php.pool.min_workers",
            "ondemand starts with no workers; use manager: dynamic for a minimum".to_owned(),
        ));
    }
    if min_workers > max_workers {
        errors.push(at(
            "php.pool.min_workers",
            format!("{min_workers} is more than max_workers ({max_workers})"),
        ));
    }
    if manager == Manager::Dynamic && !(min_workers..=max_workers).contains(&start_workers) {
        errors.push(at(
            "php.pool.start_workers",
            format!("{start_workers} must lie between min_workers ({min_workers}) and max_workers ({max_workers})"),
        ));
    }
    let min_spare = raw.min_spare.unwrap_or(0);
    if let Some(max_spare) = raw.max_spare
        && max_spare < min_spare
    {
        errors.push(at(
            "php.pool.max_spare",
            format!("{max_spare} is less than min_spare ({min_spare})"),
        ));
    }
    let max_spawn_rate = raw.max_spawn_rate.unwrap_or(defaults::MAX_SPAWN_RATE);
    if max_spawn_rate == 0 {
        errors.push(at(
            "php.pool.max_spawn_rate",
            "must be at least 1".to_owned(),
        ));
    }
    let request_timeout = dur(raw.request_timeout, defaults::REQUEST_TIMEOUT);
    if request_timeout.is_zero() {
        errors.push(at(
            "php.pool.request_timeout",
            "must be more than 0".to_owned(),
        ));
    }
    let mut config = PoolConfig::with_command(name, command);
    config.manager = manager;
    config.min_workers = min_workers;
    config.max_workers = max_workers.max(1);
    config.start_workers = start_workers;
    config.min_spare = min_spare;
    config.max_spare = raw.max_spare;
    config.max_spawn_rate = max_spawn_rate.max(1);
    config.max_requests = raw.max_requests.unwrap_or(0);
    config.idle_timeout = dur(raw.idle_timeout, defaults::IDLE_TIMEOUT_POOL);
    config.request_timeout = request_timeout.max(Duration::from_millis(1));
    config.max_queue = raw.max_queue.unwrap_or(defaults::MAX_QUEUE);
    config.queue_timeout = dur(raw.queue_timeout, defaults::QUEUE_TIMEOUT);
    config.spawn_timeout = dur(raw.spawn_timeout, defaults::SPAWN_TIMEOUT);
    config.kill_grace = dur(raw.kill_grace, defaults::KILL_GRACE);
    config
}

fn fastcgi_config(
    raw: &RawFastcgi,
    folder: &Path,
    credentials: Option<(u32, u32)>,
    at: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> Option<FastcgiConfig> {
    let listen = raw.listen.as_deref()?;
    let listen = if let Some(path) = listen.strip_prefix("unix:") {
        ListenAddr::Unix(folder.join(path))
    } else if listen.starts_with('/') || listen.starts_with('.') {
        ListenAddr::Unix(folder.join(listen))
    } else {
        match listen.parse::<SocketAddr>() {
            Ok(addr) => ListenAddr::Tcp(addr),
            Err(_) => {
                errors.push(at(
                    "fastcgi.listen",
                    format!("`{listen}` is not 127.0.0.1:9001, [::1]:9001 or a unix socket path"),
                ));
                return None;
            }
        }
    };
    let owner = raw
        .owner
        .as_deref()
        .and_then(|name| match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => Some(user.uid.as_raw()),
            _ => {
                errors.push(at("fastcgi.owner", format!("no such user `{name}`")));
                None
            }
        });
    let group = raw
        .group
        .as_deref()
        .and_then(|name| match nix::unistd::Group::from_name(name) {
            Ok(Some(group)) => Some(group.gid.as_raw()),
            _ => {
                errors.push(at("fastcgi.group", format!("no such group `{name}`")));
                None
            }
        });
    let mode = raw.mode.as_ref().and_then(|mode| {
        match u32::from_str_radix(mode.0.trim_start_matches("0o"), 8) {
            Ok(mode) if mode <= 0o777 => Some(mode),
            _ => {
                errors.push(at(
                    "fastcgi.mode",
                    format!("`{}` is not an octal mode such as 0660", mode.0),
                ));
                None
            }
        }
    });
    let mut allowed_clients = Vec::new();
    for client in raw.allowed_clients.iter().flatten() {
        match client.parse::<IpAddr>() {
            Ok(ip) => allowed_clients.push(ip),
            Err(_) => errors.push(at(
                "fastcgi.allowed_clients",
                format!("`{client}` is not an IP address"),
            )),
        }
    }
    let mut path_key = |key: &str, value: &Option<String>| {
        value.as_ref().map(|p| {
            if !p.starts_with('/') {
                errors.push(at(key, format!("`{p}` must start with /")));
            }
            p.clone()
        })
    };
    let status_path = path_key("fastcgi.status_path", &raw.status_path);
    let ping_path = path_key("fastcgi.ping_path", &raw.ping_path);
    // As php-fpm's listen.owner/group default to the pool's user, so the web
    // server (www-data on Debian) can connect.
    let owner = owner.or(credentials.map(|(uid, _)| uid));
    let group = group.or(credentials.map(|(_, gid)| gid));
    Some(FastcgiConfig {
        listen,
        owner,
        group,
        mode,
        allowed_clients,
        status_path,
        ping_path,
        ping_response: raw
            .ping_response
            .clone()
            .unwrap_or_else(|| "pong".to_owned()),
        check_document_root: raw.check_document_root.unwrap_or(true),
        max_connections: raw.max_connections.unwrap_or(1024),
    })
}

fn queue_limit(value: Option<super::raw::RawQueueLimit>) -> Option<QueueLimit> {
    value.map(|limit| limit.0.map_or(QueueLimit::Off, QueueLimit::Max))
}

fn dur(value: Option<super::raw::RawDuration>, default: Duration) -> Duration {
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

/// "/blog/" → "/blog"; "/" → "".
pub fn normalize_route(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with /"));
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed
        .split('/')
        .skip(1)
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        || trimmed.contains(['?', '#', '%', '\\'])
        || trimmed.chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(format!(
            "`{path}` is not a clean URL path (no //, ., .., ?, #, %, spaces)"
        ));
    }
    // Requests are routed on their normal form, in which every other byte
    // is percent-encoded (http/normalize.rs): a route must be spelt the same.
    if let Some(c) = trimmed
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "/-._~!$&'()*+,;=:@".contains(c)))
    {
        return Err(format!(
            "`{path}` contains `{c}`; a route may use ASCII letters, digits and -._~!$&'()*+,;=:@"
        ));
    }
    Ok(trimmed.to_owned())
}

pub fn display_route(route: &str) -> &str {
    if route.is_empty() { "/" } else { route }
}

fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let (start, end) = text.split_once('-')?;
    let start: u16 = start.trim().parse().ok()?;
    let end: u16 = end.trim().parse().ok()?;
    (start > 0 && start <= end).then_some((start, end))
}

/// `name` on PATH, or a path relative to the worker folder.
pub fn find_binary(name: &str, folder: &Path) -> Option<PathBuf> {
    if name.contains('/') {
        let path = folder.join(name);
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs `php-cgi -v` and returns the version ("8.2.29").
pub fn php_version(binary: &Path) -> Result<String, String> {
    let output = std::process::Command::new(binary)
        .arg("-v")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|err| format!("cannot run `{} -v`: {err}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let first = text.lines().next().unwrap_or_default();
    let mut words = first.split_whitespace();
    if words.next() != Some("PHP") {
        return Err(format!(
            "`{} -v` did not print a PHP version (got `{}`); is it php-cgi?",
            binary.display(),
            first.trim()
        ));
    }
    let version = words.next().unwrap_or_default().to_owned();
    if !first.contains("cgi-fcgi") {
        return Err(format!(
            "{} is not the CGI/FastCGI build of PHP (`{}`); install the Debian package php-cgi and use php-cgi",
            binary.display(),
            first.trim()
        ));
    }
    Ok(version)
}

fn default_cache_dir() -> PathBuf {
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

fn default_socket_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        PathBuf::from("/run/tqserver")
    } else if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(runtime).join("tqserver")
    } else {
        std::env::temp_dir().join(format!("tqserver-{}", nix::unistd::geteuid()))
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

    /// A site with server.yaml `server_yaml` and one worker `app` whose
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
        assert_eq!(config.workers[0].ready_max_queue, None);
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
        assert_eq!(config.workers[0].ready_max_queue, Some(QueueLimit::Off));

        let dir = site(
            "admin:\n  ready_max_queue: off\n",
            "path: /\nphp:\n  pool:\n    ready_max_queue: 0\n",
        );
        let config = load_site(&dir).unwrap();
        assert_eq!(config.ready_max_queue, QueueLimit::Off);
        assert_eq!(config.workers[0].ready_max_queue, Some(QueueLimit::Max(0)));
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
    fn port_ranges() {
        assert_eq!(parse_port_range("9010-9099"), Some((9010, 9099)));
        assert_eq!(parse_port_range("9099-9010"), None);
    }
}
