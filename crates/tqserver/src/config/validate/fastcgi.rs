//! `fastcgi`: an app's FastCGI listener (address, socket access, clients).

#[allow(unused_imports)]
use super::*;

pub(super) fn fastcgi_config(
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
