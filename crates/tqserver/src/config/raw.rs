//! The YAML files as written: serde structs that mirror `config/server.yaml`
//! and `workers/<name>/config/worker.yaml` key for key. Every key is optional
//! here; defaults and checks live in `validate`. Unknown keys are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerFile {
    pub server: Option<RawServer>,
    pub workers: Option<RawWorkers>,
    pub php: Option<RawServerPhp>,
    pub logging: Option<RawLogging>,
    pub admin: Option<RawAdmin>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Directory that relative paths start from (default: the parent of the
    /// directory holding server.yaml).
    pub root: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub read_timeout: Option<RawDuration>,
    pub write_timeout: Option<RawDuration>,
    pub idle_timeout: Option<RawDuration>,
    pub max_header_bytes: Option<RawSize>,
    pub max_headers: Option<usize>,
    pub max_body_bytes: Option<RawSize>,
    pub max_connections: Option<usize>,
    pub grace_period: Option<RawDuration>,
    pub drain_delay: Option<RawDuration>,
    pub pid_file: Option<String>,
    pub threads: Option<usize>,
    /// `production` (the default) or `development`.
    pub mode: Option<String>,
    pub compression: Option<RawCompression>,
    /// CIDRs whose X-Forwarded-For, Forwarded and X-Forwarded-Proto count.
    pub trusted_proxies: Option<Vec<String>>,
    pub tls: Option<RawTls>,
    pub http2: Option<RawHttp2>,
    pub http_apps: Option<RawHttpApps>,
}

/// `server.http2`: HTTP/2 on the HTTP front.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp2 {
    pub max_concurrent_streams: Option<u32>,
    /// HTTP/2 with prior knowledge (no TLS) on `server.port`.
    pub h2c: Option<bool>,
    /// HTTP/2 offered over TLS (ALPN), on by default.
    pub enabled: Option<bool>,
}

/// `server.compression`, and an app's `compression` over it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompression {
    pub enabled: Option<bool>,
    pub types: Option<Vec<String>>,
    pub min_size: Option<RawSize>,
    pub algorithms: Option<Vec<String>>,
    pub levels: Option<RawCompressionLevels>,
    pub precompressed: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompressionLevels {
    pub br: Option<u32>,
    pub zstd: Option<i32>,
    pub gzip: Option<u32>,
}

/// One entry of an app's `internal:` (X-Accel-Redirect targets).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInternal {
    pub location: Option<String>,
    pub root: Option<String>,
}

/// `server.tls`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub port: Option<u16>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub certificates: Option<Vec<RawCertificate>>,
    pub redirect_http: Option<bool>,
    pub hsts: Option<RawHsts>,
    pub acme: Option<RawAcme>,
}

/// An item of `server.tls.certificates`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// `server.tls.hsts`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHsts {
    pub max_age: Option<RawDuration>,
    pub include_subdomains: Option<bool>,
    pub preload: Option<bool>,
}

/// `server.tls.acme`: certificates from an ACME CA (Let's Encrypt).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub domains: Option<Vec<String>>,
    /// E-mail addresses the CA may write to (expiry notices).
    pub contact: Option<Vec<String>>,
    /// The CA's directory URL.
    pub directory: Option<String>,
    /// A PEM file of CA certificates trusted for the directory's HTTPS.
    pub ca_root: Option<String>,
    /// Where the account and the certificates are kept.
    pub storage: Option<String>,
    /// Renew when this little of a certificate's lifetime is left.
    pub renew_before: Option<RawDuration>,
    /// `http-01` or `tls-alpn-01`.
    pub challenge: Option<String>,
}

/// `server.http_apps`: what `type: http` apps share.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpApps {
    /// Ports handed to instances, e.g. `20000-20999`.
    pub ports: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkers {
    pub directory: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerPhp {
    /// Where worker sockets are created (a private directory).
    pub socket_dir: Option<String>,
    /// Where OPcache file caches are kept.
    pub cache_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub level: Option<String>,
    pub format: Option<String>,
    pub file: Option<String>,
    pub access_log: Option<RawAccessLog>,
    pub slow_log: Option<RawSlowLog>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub enabled: Option<bool>,
    pub format: Option<String>,
    pub file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlowLog {
    pub enabled: Option<bool>,
    pub threshold: Option<RawDuration>,
    pub file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    pub ready_max_queue: Option<RawQueueLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkerFile {
    pub path: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub enabled: Option<bool>,
    pub document_root: Option<String>,
    pub front_controller: Option<RawFrontController>,
    pub index: Option<Vec<String>>,
    pub php: Option<RawPhp>,
    #[serde(rename = "static")]
    pub static_files: Option<RawStatic>,
    pub security: Option<RawSecurity>,
    pub fastcgi: Option<RawFastcgi>,
    pub access_log: Option<RawAccessLog>,
    pub slow_log: Option<RawSlowLog>,
    pub rules: Option<Vec<RawRule>>,
    pub compression: Option<RawCompression>,
    pub internal: Option<Vec<RawInternal>>,
    pub x_sendfile: Option<Vec<String>>,
    // `type: http` apps only (validate/http_app.rs).
    pub command: Option<Vec<String>>,
    pub build: Option<Vec<String>>,
    pub watch: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, RawScalar>>,
    pub instances: Option<usize>,
    pub health_path: Option<String>,
    pub start_timeout: Option<RawDuration>,
    pub health_timeout: Option<RawDuration>,
    pub health_interval: Option<RawDuration>,
    pub request_timeout: Option<RawDuration>,
    pub drain_timeout: Option<RawDuration>,
    pub build_timeout: Option<RawDuration>,
    pub user: Option<String>,
    pub group: Option<String>,
}

/// One entry of `rules:`: a `path` (prefix) or a `glob`, and what to do.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub path: Option<String>,
    pub glob: Option<String>,
    /// 403 or 404.
    pub deny: Option<u16>,
    pub static_only: Option<bool>,
}

/// `front_controller: index.php` or `front_controller: false`.
#[derive(Debug)]
pub enum RawFrontController {
    Script(String),
    Off,
}

impl<'de> Deserialize<'de> for RawFrontController {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawFrontController;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a script path such as index.php, or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                if v {
                    Err(E::custom("use a script path such as index.php, or false"))
                } else {
                    Ok(RawFrontController::Off)
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawFrontController::Script(v.to_owned()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPhp {
    pub runtime: Option<String>,
    pub worker: Option<String>,
    pub binary: Option<String>,
    pub config_file: Option<String>,
    pub settings: Option<BTreeMap<String, RawScalar>>,
    pub limit_extensions: Option<Vec<String>>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub env: Option<BTreeMap<String, RawScalar>>,
    pub socket: Option<String>,
    pub port_range: Option<String>,
    pub opcache_file_cache: Option<bool>,
    pub request_buffering: Option<bool>,
    pub response_buffering: Option<bool>,
    pub response_buffer_memory: Option<RawSize>,
    pub max_response_buffer: Option<RawSize>,
    pub pool: Option<RawPool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub manager: Option<String>,
    pub min_workers: Option<usize>,
    pub max_workers: Option<usize>,
    pub start_workers: Option<usize>,
    pub min_spare: Option<usize>,
    pub max_spare: Option<usize>,
    pub max_spawn_rate: Option<usize>,
    pub max_requests: Option<u64>,
    pub request_timeout: Option<RawDuration>,
    pub idle_timeout: Option<RawDuration>,
    pub max_queue: Option<usize>,
    pub queue_timeout: Option<RawDuration>,
    pub spawn_timeout: Option<RawDuration>,
    pub kill_grace: Option<RawDuration>,
    pub ready_max_queue: Option<RawQueueLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatic {
    pub enabled: Option<bool>,
    pub cache_control: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecurity {
    pub allow_dotfiles: Option<bool>,
    pub allowed_dot_paths: Option<Vec<String>>,
    /// `owner`, `beneath` or `follow`.
    pub symlinks: Option<String>,
    /// The older spelling: `true` is `symlinks: follow`, `false` `beneath`.
    pub allow_symlinks_outside_root: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFastcgi {
    pub listen: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<RawScalar>,
    pub allowed_clients: Option<Vec<String>>,
    pub status_path: Option<String>,
    pub ping_path: Option<String>,
    pub ping_response: Option<String>,
    pub check_document_root: Option<bool>,
    pub max_connections: Option<usize>,
}

/// A YAML scalar taken as text (`memory_limit: 128M`, `display_errors: 0`,
/// `opcache.enable: true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawScalar(pub String);

impl<'de> Deserialize<'de> for RawScalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawScalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawScalar(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(RawScalar(if v { "1" } else { "0" }.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawScalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawScalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(RawScalar(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawScalar(String::new()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A number of requests, or `off` (also `false`) for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawQueueLimit(pub Option<usize>);

impl<'de> Deserialize<'de> for RawQueueLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawQueueLimit;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of requests, or off")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v.trim() {
                    "off" => Ok(RawQueueLimit(None)),
                    other => other.parse().map(|n| RawQueueLimit(Some(n))).map_err(|_| {
                        E::custom(format!("`{v}` is not a number of requests or off"))
                    }),
                }
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                if v {
                    Err(E::custom("use a number of requests, or off"))
                } else {
                    Ok(RawQueueLimit(None))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                usize::try_from(v)
                    .map(|n| RawQueueLimit(Some(n)))
                    .map_err(|_| E::custom("too large"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                usize::try_from(v)
                    .map(|n| RawQueueLimit(Some(n)))
                    .map_err(|_| E::custom("a queue length cannot be negative"))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `30s`, `500ms`, `2m`, `1h`, or a plain number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDuration(pub Duration);

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (expected e.g. 30s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86400.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}` (use ms, s, m, h or d)"
            ));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{text}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 30s, 500ms, 2m, or a number of seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(RawDuration).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawDuration(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(|v| RawDuration(Duration::from_secs(v)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                if v.is_finite() && v >= 0.0 {
                    Ok(RawDuration(Duration::from_secs_f64(v)))
                } else {
                    Err(E::custom("a duration must be a non-negative number"))
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `64M`, `512K`, `1G`, or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSize(pub u64);

pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (expected e.g. 64M, 512K, 1048576)"))?;
    let factor: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use K, M or G)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 64M, 512K, or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_size(v).map(RawSize).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(RawSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("12X").is_err());
    }
}
