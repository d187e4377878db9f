//! A `type: http` app's worker.yaml: its route, command, build, watched
//! files, environment, instances, health check, timeouts and user. PHP's keys
//! are errors here, and these keys are errors on a PHP app.

#[allow(unused_imports)]
use super::*;
use crate::config::raw::RawScalar;

/// Variables tqserver sets itself, which `env` may not override.
const RESERVED_ENV: [&str; 4] = ["WORKER_PORT", "WORKER_NAME", "WORKER_ROUTE", "WORKER_MODE"];

/// The keys of `raw` that only a `type: http` app has.
pub(super) fn http_only_keys(raw: &RawWorkerFile) -> Vec<&'static str> {
    [
        ("command", raw.command.is_some()),
        ("build", raw.build.is_some()),
        ("watch", raw.watch.is_some()),
        ("env", raw.env.is_some()),
        ("instances", raw.instances.is_some()),
        ("health_path", raw.health_path.is_some()),
        ("start_timeout", raw.start_timeout.is_some()),
        ("health_timeout", raw.health_timeout.is_some()),
        ("health_interval", raw.health_interval.is_some()),
        ("request_timeout", raw.request_timeout.is_some()),
        ("drain_timeout", raw.drain_timeout.is_some()),
        ("build_timeout", raw.build_timeout.is_some()),
        ("user", raw.user.is_some()),
        ("group", raw.group.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect()
}

/// The keys of `raw` that only a PHP app has.
fn php_only_keys(raw: &RawWorkerFile) -> Vec<&'static str> {
    [
        ("document_root", raw.document_root.is_some()),
        ("front_controller", raw.front_controller.is_some()),
        ("index", raw.index.is_some()),
        ("php", raw.php.is_some()),
        ("static", raw.static_files.is_some()),
        ("security", raw.security.is_some()),
        ("fastcgi", raw.fastcgi.is_some()),
        ("slow_log", raw.slow_log.is_some()),
        ("rules", raw.rules.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect()
}

pub(super) fn load_http_app(
    folder: &Path,
    name: String,
    raw: RawWorkerFile,
    file: &Path,
    text: &str,
) -> Result<HttpAppConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let at = |key: &str, message: String| ConfigError::at_key(file, text, key, message);
    if let Err(error) = app_name(&name, file) {
        errors.push(error);
    }
    for key in php_only_keys(&raw) {
        errors.push(at(
            key,
            format!("`{key}` is a setting of PHP apps, which a `type: http` app does not have; remove it (the app serves its route itself)"),
        ));
    }
    let route = match raw.path.as_deref() {
        None => {
            errors.push(at(
                "path",
                "missing: the URL path this app serves, e.g. /api or /".to_owned(),
            ));
            String::new()
        }
        Some(path) => normalize_route(path).unwrap_or_else(|message| {
            errors.push(at("path", message));
            String::new()
        }),
    };
    let command = match raw.command {
        None => {
            errors.push(at(
                "type",
                "a `type: http` app needs `command`: the program and its arguments as a list, e.g. [bin/app] or [node, server.js]".to_owned(),
            ));
            Vec::new()
        }
        Some(command) if command.is_empty() || command[0].is_empty() => {
            errors.push(at(
                "command",
                "must name a program, e.g. [bin/app] or [node, server.js]".to_owned(),
            ));
            Vec::new()
        }
        Some(command) => command,
    };
    let build = match raw.build {
        Some(build) if build.is_empty() || build[0].is_empty() => {
            errors.push(at(
                "build",
                "must name a program, e.g. [go, build, -o, bin/app, .]; leave it out for no build"
                    .to_owned(),
            ));
            None
        }
        other => other,
    };
    // A program named without a slash must be on PATH now; one in the app
    // folder may be what `build` makes.
    for (key, argv) in [("command", Some(&command)), ("build", build.as_ref())] {
        let Some(program) = argv.and_then(|argv| argv.first()) else {
            continue;
        };
        if !program.contains('/') && find_binary(program, folder).is_none() {
            errors.push(at(
                key,
                format!("`{program}` not found on PATH; install it, or name it by its path"),
            ));
        } else if program.contains('/') && build.is_none() && !folder.join(program).is_file() {
            errors.push(at(
                key,
                format!(
                    "{} does not exist (and there is no `build` to make it)",
                    folder.join(program).display()
                ),
            ));
        }
    }
    let watch = raw
        .watch
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(index, glob)| {
            let rooted = format!("/{}", glob.trim_start_matches("./"));
            crate::rules::Pattern::glob(&rooted)
                .map_err(|message| {
                    errors.push(ConfigError {
                        line: yaml::line_of_list_item(text, "watch", index, None),
                        ..at(
                            &format!("watch[{index}]"),
                            format!(
                                "{message} (globs are relative to the app folder, e.g. **/*.go)"
                            ),
                        )
                    })
                })
                .ok()
        })
        .collect();
    let env = env(raw.env.as_ref(), &at, &mut errors);
    let instances = raw.instances.unwrap_or(defaults::HTTP_APP_INSTANCES);
    if !(1..=64).contains(&instances) {
        errors.push(at(
            "instances",
            format!("{instances} is out of range; expected 1 to 64"),
        ));
    }
    let health_path = raw
        .health_path
        .unwrap_or_else(|| defaults::HEALTH_PATH.to_owned());
    if !health_path.starts_with('/') || health_path.chars().any(|c| c.is_control() || c == ' ') {
        errors.push(at(
            "health_path",
            format!("`{health_path}` is not a path such as /health"),
        ));
    }
    let user_name = raw
        .user
        .clone()
        .unwrap_or_else(|| defaults::PHP_USER.to_owned());
    let credentials = if nix::unistd::geteuid().is_root() {
        credentials(
            &user_name,
            raw.group.as_deref(),
            ("user", "group"),
            &at,
            &mut errors,
        )
    } else {
        None
    };
    let access_log = raw
        .access_log
        .as_ref()
        .and_then(|a| access_log(a, folder, "access_log", &at, &mut errors));
    let positive = |key: &'static str, value: Option<crate::config::raw::RawDuration>, default| {
        let value = dur(value, default);
        (value.is_zero(), key, value)
    };
    let timeouts = [
        positive("start_timeout", raw.start_timeout, defaults::START_TIMEOUT),
        positive(
            "health_timeout",
            raw.health_timeout,
            defaults::HEALTH_TIMEOUT,
        ),
        positive(
            "health_interval",
            raw.health_interval,
            defaults::HEALTH_INTERVAL,
        ),
        positive(
            "request_timeout",
            raw.request_timeout,
            defaults::REQUEST_TIMEOUT,
        ),
        positive("build_timeout", raw.build_timeout, defaults::BUILD_TIMEOUT),
    ];
    for (zero, key, _) in &timeouts {
        if *zero {
            errors.push(at(key, "must be more than 0".to_owned()));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(HttpAppConfig {
        name,
        file: file.to_owned(),
        route,
        folder: folder.to_owned(),
        command,
        build,
        watch,
        env,
        instances,
        health_path,
        start_timeout: timeouts[0].2,
        health_timeout: timeouts[1].2,
        health_interval: timeouts[2].2,
        request_timeout: timeouts[3].2,
        build_timeout: timeouts[4].2,
        drain_timeout: dur(raw.drain_timeout, defaults::DRAIN_TIMEOUT),
        user: credentials.map(|_| user_name),
        credentials,
        access_log,
    })
}

fn env(
    raw: Option<&BTreeMap<String, RawScalar>>,
    at: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (key, value) in raw.into_iter().flatten() {
        if RESERVED_ENV.contains(&key.as_str()) {
            errors.push(at(
                &format!("env.{key}"),
                format!("{key} is set by tqserver for each instance; remove it"),
            ));
        } else if key.is_empty() || key.contains(['=', '\0']) || value.0.contains('\0') {
            errors.push(at(
                &format!("env.{key}"),
                "a variable name may not be empty or contain '='".to_owned(),
            ));
        } else {
            env.push((key.clone(), value.0.clone()));
        }
    }
    env
}

/// `server.http_apps.ports`.
pub(super) fn http_apps_settings(
    raw: Option<&crate::config::raw::RawHttpApps>,
    at: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> HttpAppsSettings {
    let mut settings = HttpAppsSettings::default();
    if let Some(range) = raw.and_then(|raw| raw.ports.as_deref()) {
        match parse_port_range(range) {
            Some((start, end)) if start > 0 => settings.ports = (start, end),
            _ => errors.push(at(
                "server.http_apps.ports",
                format!("`{range}` is not a range of ports such as 20000-20999"),
            )),
        }
    }
    settings
}
