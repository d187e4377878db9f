//! What validation asks of the machine: where a binary is, and which PHP
//! version it is.

#[allow(unused_imports)]
use super::*;

/// `name` on PATH, or a path relative to the app's folder.
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

/// The embed runtime's binary.
pub const EMBED_RUNTIME: &str = "tqserver-php";

/// tqserver-php beside the running tqserver (as cargo builds them), else on
/// PATH.
pub fn find_runtime() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(EMBED_RUNTIME)))
        .filter(|path| path.is_file());
    beside.or_else(|| find_binary(EMBED_RUNTIME, Path::new("/")))
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
