//! `server.compression` and an app's `compression` over it,
//! `server.trusted_proxies`, and an app's `internal` and `x_sendfile`.

#[allow(unused_imports)]
use super::*;
use crate::config::edge::{Cidr, Coding, CompressionConfig, InternalLocation};
use crate::config::raw::{RawCompression, RawInternal};

/// `compression` (`key` is where it sits: `server.compression` or
/// `compression`): each key left out is `base`'s.
pub(super) fn compression(
    raw: &RawCompression,
    base: &CompressionConfig,
    key: &str,
    at: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> CompressionConfig {
    let mut config = base.clone();
    if let Some(enabled) = raw.enabled {
        config.enabled = enabled;
    }
    if let Some(precompressed) = raw.precompressed {
        config.precompressed = precompressed;
    }
    if let Some(size) = raw.min_size {
        config.min_size = size.0;
    }
    if let Some(types) = &raw.types {
        config.types = Vec::new();
        for (index, text) in types.iter().enumerate() {
            let lower = text.trim().to_ascii_lowercase();
            let valid = lower.split_once('/').is_some_and(|(top, sub)| {
                !top.is_empty()
                    && !sub.is_empty()
                    && !lower.contains([';', ' ', ','])
                    && (sub == "*" || !sub.contains('*'))
                    && top != "*"
            });
            if !valid {
                errors.push(at(
                    &format!("{key}.types[{index}]"),
                    format!(
                        "`{text}` is not a media type such as text/html or text/* (no parameters)"
                    ),
                ));
                continue;
            }
            config.types.push(lower);
        }
    }
    if let Some(algorithms) = &raw.algorithms {
        config.algorithms = Vec::new();
        for (index, text) in algorithms.iter().enumerate() {
            match Coding::parse(text) {
                Some(coding) if !config.algorithms.contains(&coding) => {
                    config.algorithms.push(coding)
                }
                Some(_) => errors.push(at(
                    &format!("{key}.algorithms[{index}]"),
                    format!("`{text}` is listed twice"),
                )),
                None => errors.push(at(
                    &format!("{key}.algorithms[{index}]"),
                    format!("`{text}` is not one of br, zstd, gzip"),
                )),
            }
        }
    }
    if let Some(levels) = &raw.levels {
        if let Some(br) = levels.br {
            if br > 11 {
                errors.push(at(
                    &format!("{key}.levels.br"),
                    format!("{br} is out of range; expected 0 to 11 (4 or 5 for dynamic pages)"),
                ));
            }
            config.levels.br = br.min(11);
        }
        if let Some(zstd) = levels.zstd {
            if !(1..=19).contains(&zstd) {
                errors.push(at(
                    &format!("{key}.levels.zstd"),
                    format!("{zstd} is out of range; expected 1 to 19 (3 for dynamic pages)"),
                ));
            }
            config.levels.zstd = zstd.clamp(1, 19);
        }
        if let Some(gzip) = levels.gzip {
            if !(1..=9).contains(&gzip) {
                errors.push(at(
                    &format!("{key}.levels.gzip"),
                    format!("{gzip} is out of range; expected 1 to 9 (5 or 6 for dynamic pages)"),
                ));
            }
            config.levels.gzip = gzip.clamp(1, 9);
        }
    }
    config
}

/// `server.trusted_proxies`: CIDRs or single addresses.
pub(super) fn trusted_proxies(
    raw: &[String],
    at: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> Vec<Cidr> {
    let mut proxies = Vec::new();
    for (index, text) in raw.iter().enumerate() {
        match Cidr::parse(text.trim()) {
            Ok(cidr) => proxies.push(cidr),
            Err(message) => errors.push(at(&format!("server.trusted_proxies[{index}]"), message)),
        }
    }
    proxies
}

/// An app's `internal:` locations. A root must be a directory outside the
/// document root: inside it, its files would be reachable by their own URL.
pub(super) fn internal_locations(
    raw: &[RawInternal],
    folder: &Path,
    document_root: &Path,
    at: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> Vec<InternalLocation> {
    let mut locations = Vec::new();
    for (index, entry) in raw.iter().enumerate() {
        let key = |field: &str| format!("internal[{index}].{field}");
        let location = match entry.location.as_deref() {
            Some(location) if location.starts_with('/') && !location.contains(['?', '#']) => {
                let mut location = location.to_owned();
                if !location.ends_with('/') {
                    location.push('/');
                }
                location
            }
            Some(other) => {
                errors.push(at(
                    &key("location"),
                    format!("`{other}` is not a URL prefix such as /protected/"),
                ));
                continue;
            }
            None => {
                errors.push(at(
                    &key("location"),
                    "missing: the URL prefix PHP names in X-Accel-Redirect, such as /protected/"
                        .to_owned(),
                ));
                continue;
            }
        };
        let Some(root) = entry.root.as_deref() else {
            errors.push(at(
                &key("root"),
                "missing: the directory (relative to the app's folder) the location serves"
                    .to_owned(),
            ));
            continue;
        };
        match private_directory(root, folder, document_root) {
            Ok(root) => locations.push(InternalLocation { location, root }),
            Err(message) => errors.push(at(&key("root"), message)),
        }
    }
    locations
}

/// An app's `x_sendfile:` directories.
pub(super) fn sendfile_directories(
    raw: &[String],
    folder: &Path,
    document_root: &Path,
    at: &dyn Fn(&str, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for (index, dir) in raw.iter().enumerate() {
        match private_directory(dir, folder, document_root) {
            Ok(dir) => dirs.push(dir),
            Err(message) => errors.push(at(&format!("x_sendfile[{index}]"), message)),
        }
    }
    dirs
}

/// A directory (relative to the app's folder, or absolute) that exists and
/// is not the document root or inside it; canonical.
fn private_directory(text: &str, folder: &Path, document_root: &Path) -> Result<PathBuf, String> {
    let path = folder.join(text);
    let canonical = std::fs::canonicalize(&path).map_err(|err| {
        format!(
            "{}: {err}; create the directory or fix the path",
            path.display()
        )
    })?;
    if !canonical.is_dir() {
        return Err(format!("{} is not a directory", canonical.display()));
    }
    if canonical.starts_with(document_root) {
        return Err(format!(
            "{} is inside the document root {}, where clients reach its files directly; move it out",
            canonical.display(),
            document_root.display()
        ));
    }
    Ok(canonical)
}
