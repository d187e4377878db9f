//! One app's worker.yaml: its route, document root, PHP settings, security,
//! per-path rules and logs (its pool and listener are pool.rs and fastcgi.rs).

#[allow(unused_imports)]
use super::*;

/// One app folder's validated configuration, by `type`.
pub(super) enum LoadedApp {
    Php(Box<AppConfig>),
    Http(Box<HttpAppConfig>),
}

/// Loads one app's folder (`workers/<name>`). `Ok(None)` for a disabled app.
pub(super) fn load_app(
    folder: &Path,
    socket_dir: &Path,
    php_versions: &mut HashMap<PathBuf, Result<String, String>>,
    server_compression: &crate::config::edge::CompressionConfig,
) -> Result<Option<LoadedApp>, Vec<ConfigError>> {
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
    if let Err(error) = app_name(&name, &file) {
        errors.push(error);
    }
    let at = |key: &str, message: String| ConfigError::at_key(&file, &text, key, message);

    match raw.kind.as_deref() {
        None | Some("php") => {}
        Some("http") => {
            return super::http_app::load_http_app(folder, name, raw, &file, &text)
                .map(|app| Some(LoadedApp::Http(Box::new(app))));
        }
        Some(other) => errors.push(at("type", format!("`{other}` is not one of php, http"))),
    }
    for key in super::http_app::http_only_keys(&raw) {
        errors.push(at(
            key,
            format!("`{key}` is a setting of `type: http` apps; remove it, or set `type: http`"),
        ));
    }

    let route = match raw.path.as_deref() {
        None => {
            errors.push(at(
                "path",
                "missing: the URL path this app serves, e.g. /blog or /".to_owned(),
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
        // In worker mode, URLs that are no file reach the worker through
        // its own script unless a front controller is named.
        None => Some(
            php_raw
                .worker
                .clone()
                .unwrap_or_else(|| defaults::FRONT_CONTROLLER.to_owned()),
        ),
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

    // The runtime, its binary and PHP's version. Worker mode runs on the
    // embed runtime only, which it implies.
    let runtime = match php_raw.runtime.as_deref() {
        None if php_raw.worker.is_some() => PhpRuntime::Embed,
        Some("cgi") if php_raw.worker.is_some() => {
            errors.push(at(
                "php.worker",
                "worker mode needs php.runtime: embed (php-cgi cannot keep an app booted); remove php.runtime or set it to embed".to_owned(),
            ));
            PhpRuntime::Cgi
        }
        None | Some("cgi") => PhpRuntime::Cgi,
        Some("embed") => PhpRuntime::Embed,
        Some(other) => {
            errors.push(at(
                "php.runtime",
                format!("`{other}` is not one of cgi (php-cgi processes), embed (tqserver-php, forked from a zygote)"),
            ));
            PhpRuntime::Cgi
        }
    };
    let binary = match runtime {
        PhpRuntime::Cgi => {
            let binary_name = php_raw
                .binary
                .clone()
                .unwrap_or_else(|| defaults::PHP_BINARY.to_owned());
            match find_binary(&binary_name, folder) {
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
            }
        }
        PhpRuntime::Embed => {
            if php_raw.binary.is_some() {
                errors.push(at(
                    "php.binary",
                    "php.binary names a php-cgi, which php.runtime: embed does not run; remove php.binary or use php.runtime: cgi".to_owned(),
                ));
            }
            match find_runtime() {
                Some(binary) => binary,
                None => {
                    errors.push(at(
                        "php.runtime",
                        format!(
                            "embed needs {EMBED_RUNTIME}, which is neither beside tqserver nor on PATH; build it with `cargo build --release -p tq-php-runtime` (it needs Debian's libphp8.2-embed and php8.2-dev) or use php.runtime: cgi"
                        ),
                    ));
                    PathBuf::from(EMBED_RUNTIME)
                }
            }
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
    let worker_script = php_raw
        .worker
        .as_deref()
        .and_then(|script| worker_script(script, &document_root, &at, &mut errors));
    if let Some(script) = &worker_script {
        args.push("--worker".into());
        args.push(script.into());
        args.push("--document-root".into());
        args.push(document_root.clone().into());
    }
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
        credentials(
            &user_name,
            php_raw.group.as_deref(),
            ("php.user", "php.group"),
            &at,
            &mut errors,
        )
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
            launch: match runtime {
                PhpRuntime::Cgi => ::pool::Launch::Exec,
                PhpRuntime::Embed => ::pool::Launch::Zygote,
            },
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
    let compression = raw.compression.as_ref().map(|raw| {
        Arc::new(compression(
            raw,
            server_compression,
            "compression",
            &at,
            &mut errors,
        ))
    });
    let internal = internal_locations(
        raw.internal.as_deref().unwrap_or_default(),
        folder,
        &document_root,
        &at,
        &mut errors,
    );
    let x_sendfile = sendfile_directories(
        raw.x_sendfile.as_deref().unwrap_or_default(),
        folder,
        &document_root,
        &at,
        &mut errors,
    );

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Some(LoadedApp::Php(Box::new(AppConfig {
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
            runtime,
            worker: worker_script,
            binary,
            version,
            user: credentials.map(|_| user_name),
            // Settings that choose for OPcache themselves win.
            // Workers forked from one zygote share its OPcache: a file cache
            // would only add writes.
            opcache_file_cache: runtime == PhpRuntime::Cgi
                && php_raw.opcache_file_cache.unwrap_or(true)
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
        compression,
        internal,
        x_sendfile,
    }))))
}

/// An app's name (its folder's) may only use letters, digits, -, _ and .
pub(super) fn app_name(name: &str, file: &Path) -> Result<(), ConfigError> {
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Ok(());
    }
    Err(ConfigError::new(
        file,
        format!("app folder name `{name}` may only use letters, digits, '-', '_' and '.'"),
    ))
}

/// The uid and gid of `user_name` (and `group`) for processes started as
/// root; None (with an error) for root, root's group or an unknown name.
/// `keys` are the config keys named in errors (`php.user`, `php.group`).
pub(super) fn credentials(
    user_name: &str,
    group: Option<&str>,
    (user_key, group_key): (&str, &str),
    at: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> Option<(u32, u32)> {
    match nix::unistd::User::from_name(user_name) {
        // PHP running as root would turn any hole in an app into root.
        Ok(Some(user)) if user.uid.is_root() => {
            errors.push(at(
                user_key,
                format!(
                    "`{user_name}` is root (uid 0); workers never run as root: name an unprivileged user such as www-data"
                ),
            ));
            None
        }
        Ok(Some(user)) => {
            let gid = match group {
                None if user.gid.as_raw() == 0 => {
                    errors.push(at(
                        user_key,
                        format!(
                            "`{user_name}` has gid 0 (root's group) as its group; set {group_key} to an unprivileged group"
                        ),
                    ));
                    None
                }
                None => Some(user.gid.as_raw()),
                Some(group) => match nix::unistd::Group::from_name(group) {
                    Ok(Some(found)) if found.gid.as_raw() == 0 => {
                        errors.push(at(
                            group_key,
                            format!("`{group}` is gid 0 (root's group); workers never run with it"),
                        ));
                        None
                    }
                    Ok(Some(found)) => Some(found.gid.as_raw()),
                    _ => {
                        errors.push(at(group_key, format!("no such group `{group}`")));
                        None
                    }
                },
            };
            gid.map(|gid| (user.uid.as_raw(), gid))
        }
        _ => {
            errors.push(at(
                user_key,
                format!("no such user `{user_name}` (workers never run as root)"),
            ));
            None
        }
    }
}

/// `php.worker`: a file inside the document root (relative to it), as an
/// absolute path.
fn worker_script(
    script: &str,
    document_root: &Path,
    at: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> Option<PathBuf> {
    let relative = script.trim_start_matches('/');
    if relative.is_empty() || relative.split('/').any(|seg| seg == "..") {
        errors.push(at(
            "php.worker",
            format!("`{script}` must name a script inside the document root, e.g. worker.php or public/index.php relative to it"),
        ));
        return None;
    }
    let path = document_root.join(relative);
    match std::fs::canonicalize(&path) {
        Ok(real) if real.is_file() && real.starts_with(document_root) => Some(real),
        Ok(real) if !real.starts_with(document_root) => {
            errors.push(at(
                "php.worker",
                format!(
                    "{} leads outside the document root {}",
                    path.display(),
                    document_root.display()
                ),
            ));
            None
        }
        Ok(_) => {
            errors.push(at(
                "php.worker",
                format!("{} is not a file", path.display()),
            ));
            None
        }
        Err(err) => {
            errors.push(at(
                "php.worker",
                format!(
                    "{}: {err}; the worker script is relative to the document root ({})",
                    path.display(),
                    document_root.display()
                ),
            ));
            None
        }
    }
}

/// `security.symlinks`, or its older spelling `allow_symlinks_outside_root`.
pub(super) fn symlink_policy(
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
pub(super) fn path_rules(
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
