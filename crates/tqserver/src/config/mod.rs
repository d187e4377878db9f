//! Configuration in two layers: [`raw`] mirrors the YAML files, [`validate`]
//! turns them into the typed [`Config`] the rest of tqserver uses (durations
//! as `Duration`, paths resolved, limits checked, the PHP binary found).
//! Defaults live in [`defaults`] and are documented in the README.
//!
//! Layout on disk (the seed's):
//! ```text
//! config/server.yaml
//! workers/<name>/config/worker.yaml
//! workers/<name>/public/...          (document_root)
//! ```

pub mod edge;
pub mod raw;
pub mod validate;
pub mod yaml;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use validate::load;
pub use yaml::{ConfigError, ConfigErrors};

/// Every default, in one place.
pub mod defaults {
    use std::time::Duration;

    pub const HOST: &str = "0.0.0.0";
    pub const PORT: u16 = 8080;
    /// `server.tls.port`.
    pub const TLS_PORT: u16 = 8443;
    pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
    pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
    pub const MAX_HEADER_BYTES: usize = 64 * 1024;
    pub const MAX_HEADERS: usize = 100;
    pub const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
    /// Streams one HTTP/2 connection may have open at once (nginx's
    /// `http2_max_concurrent_streams` is 128 too).
    pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 128;
    /// HTTP connections served at once; beyond, new ones wait in the
    /// kernel's listen backlog. Room for the benchmark's 10,000 idle
    /// keep-alive connections, and a bound well below a systemd unit's
    /// 65,536 file descriptors (dist/tqserver.service).
    pub const MAX_CONNECTIONS: usize = 16_384;
    /// Most connections to the admin endpoint at once (not configurable:
    /// pollers and scrapers need a handful).
    pub const ADMIN_MAX_CONNECTIONS: usize = 256;
    pub const GRACE_PERIOD: Duration = Duration::from_secs(30);
    /// Off: a stop closes the listeners at once, as before there was a drain.
    pub const DRAIN_DELAY: Duration = Duration::ZERO;
    pub const WORKERS_DIRECTORY: &str = "workers";
    /// Relative to the server root, next to the pid file: one per site, so
    /// two servers on one machine never collide (a fixed port would).
    pub const ADMIN_LISTEN: &str = "tqserver.sock";
    /// A PHP response held in memory for a slow client, per request (the
    /// rest goes to a temporary file).
    pub const RESPONSE_BUFFER_MEMORY: u64 = 1024 * 1024;
    /// Most of a PHP response held for a slow client (nginx's
    /// `fastcgi_max_temp_file_size` default).
    pub const MAX_RESPONSE_BUFFER: u64 = 1024 * 1024 * 1024;
    /// Relative to the server root; `tqserver reload` finds the server here.
    pub const PID_FILE: &str = "tqserver.pid";
    /// Let's Encrypt's production directory (`server.tls.acme.directory`).
    pub const ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
    /// Relative to the server root, beside the pid file: the ACME account
    /// and certificates of this site.
    pub const ACME_STORAGE: &str = "acme";

    pub const DOCUMENT_ROOT: &str = "public";
    pub const FRONT_CONTROLLER: &str = "index.php";
    pub const INDEX: [&str; 2] = ["index.php", "index.html"];
    pub const LIMIT_EXTENSIONS: [&str; 1] = [".php"];
    pub const ALLOWED_DOT_PATHS: [&str; 1] = [".well-known"];
    pub const PHP_BINARY: &str = "php-cgi";
    pub const PHP_USER: &str = "www-data";
    pub const PORT_RANGE: (u16, u16) = (9010, 9999);

    pub const MANAGER: &str = "dynamic";
    pub const MIN_WORKERS: usize = 1;
    pub const START_WORKERS: usize = 2;
    /// Default max_workers: twice the CPUs, at least 4.
    pub fn max_workers() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get() * 2)
            .unwrap_or(4)
            .max(4)
    }
    pub const MAX_SPAWN_RATE: usize = 32;
    pub const IDLE_TIMEOUT_POOL: Duration = Duration::from_secs(10);
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
    pub const MAX_QUEUE: usize = 1024;
    pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);
    pub const KILL_GRACE: Duration = Duration::from_secs(2);

    /// Media types compressed on the fly: text and text-like formats.
    /// Images, fonts in WOFF/WOFF2, archives and media are already
    /// compressed and left out.
    pub const COMPRESSION_TYPES: [&str; 16] = [
        "text/html",
        "text/css",
        "text/plain",
        "text/xml",
        "text/javascript",
        "text/csv",
        "text/markdown",
        "application/javascript",
        "application/json",
        "application/ld+json",
        "application/manifest+json",
        "application/xml",
        "application/rss+xml",
        "application/atom+xml",
        "application/wasm",
        "image/svg+xml",
    ];
    /// Smaller bodies are sent as they are: a few hundred bytes gain little
    /// and cost a dictionary and a frame.
    pub const COMPRESSION_MIN_SIZE: u64 = 1024;
    /// `type: http` apps.
    pub const HTTP_APP_PORTS: (u16, u16) = (20000, 20999);
    pub const HTTP_APP_INSTANCES: usize = 1;
    pub const HEALTH_PATH: &str = "/health";
    /// From spawn to the first 2xx of the health path.
    pub const START_TIMEOUT: Duration = Duration::from_secs(30);
    /// One health request while running.
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
    /// How long an instance being stopped may finish its requests.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const BUILD_TIMEOUT: Duration = Duration::from_secs(300);
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server.yaml this was loaded from.
    pub file: PathBuf,
    pub root: PathBuf,
    pub server: ServerSettings,
    pub workers_dir: PathBuf,
    pub socket_dir: PathBuf,
    /// Where OPcache file caches of the pools go (one folder per pool).
    pub cache_dir: PathBuf,
    pub logging: LoggingConfig,
    /// The admin endpoint (`admin.listen`); None when turned off.
    pub admin: Option<ListenAddr>,
    /// `/readyz` fails while more requests than this wait in an app's queue
    /// (`admin.ready_max_queue`; an app's `php.pool.ready_max_queue` wins).
    pub ready_max_queue: QueueLimit,
    /// Enabled apps (one per `workers/<name>` folder), in name order.
    pub apps: Vec<Arc<AppConfig>>,
    /// The certificates of `server.tls`, loaded and checked. Not part of
    /// [`ServerSettings`]: a reload swaps them in without a restart.
    pub tls_certificates: Option<Arc<crate::tls::Certificates>>,
    /// Enabled `type: http` apps, in name order.
    pub http_apps: Vec<Arc<HttpAppConfig>>,
    /// What the http apps share (`server.http_apps`).
    pub http: HttpAppsSettings,
}

/// `server.http_apps`, and the mode instances are told they run in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAppsSettings {
    /// Inclusive range of ports given to instances.
    pub ports: (u16, u16),
    /// `WORKER_MODE` of every instance.
    pub mode: WorkerMode,
}

impl Default for HttpAppsSettings {
    fn default() -> Self {
        Self {
            ports: defaults::HTTP_APP_PORTS,
            mode: WorkerMode::Production,
        }
    }
}

/// Whether the server runs in development mode (`WORKER_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerMode {
    #[default]
    Production,
    Development,
}

impl WorkerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerMode::Production => "production",
            WorkerMode::Development => "development",
        }
    }
}

/// A `type: http` app: a program tqserver builds, runs, supervises and
/// reverse-proxies the app's route to.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpAppConfig {
    pub name: String,
    /// The worker.yaml this came from.
    pub file: PathBuf,
    /// URL prefix without trailing slash; empty for an app at `/`.
    pub route: String,
    /// The app folder: `command` and `build` run here.
    pub folder: PathBuf,
    /// argv of one instance (`command`).
    pub command: Vec<String>,
    /// argv run before instances start (`build`).
    pub build: Option<Vec<String>>,
    /// Globs relative to the folder whose changes rebuild and swap.
    pub watch: Vec<crate::rules::Pattern>,
    /// `env`, on top of the `WORKER_*` variables and PATH, HOME, LANG.
    pub env: Vec<(String, String)>,
    pub instances: usize,
    pub health_path: String,
    pub start_timeout: Duration,
    pub health_timeout: Duration,
    pub health_interval: Duration,
    /// No response head within this: 504.
    pub request_timeout: Duration,
    pub drain_timeout: Duration,
    pub build_timeout: Duration,
    /// `user` when tqserver runs as root.
    pub user: Option<String>,
    pub credentials: Option<(u32, u32)>,
    pub access_log: Option<AccessLogConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Longest time to receive a request's headers (slowloris guard).
    pub read_timeout: Duration,
    /// Longest time a response may take to be written to the client.
    pub write_timeout: Duration,
    /// How long an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    /// HTTP connections served at once (`server.max_connections`).
    pub max_connections: usize,
    /// How long in-flight requests may finish on shutdown.
    pub grace_period: Duration,
    /// On a stop, how long `/readyz` fails while the listeners still serve,
    /// so a balancer takes this node out before its port closes.
    pub drain_delay: Duration,
    pub pid_file: Option<PathBuf>,
    /// Threads serving requests; 0 is one per CPU.
    pub threads: usize,
    /// `server.compression` (an app's own `compression` wins).
    pub compression: Arc<edge::CompressionConfig>,
    /// Peers whose forwarding headers give the client's address and scheme.
    pub trusted_proxies: Vec<edge::Cidr>,
    /// Development mode (`server.mode: development` or `tqserver --dev`):
    /// PHP code changes are served at once and HTML pages reload themselves
    /// in the browser (see [`crate::dev`]).
    pub development: bool,
    pub http2: Http2Settings,
    /// `server.tls`; None: no TLS port.
    pub tls: Option<TlsSettings>,
}

/// `server.tls`, but its certificates ([`Config::tls_certificates`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub listen: SocketAddr,
    /// Plain HTTP requests are answered with a 308 to the TLS port (but
    /// ACME's `/.well-known/acme-challenge/`).
    pub redirect_http: bool,
    /// The `Strict-Transport-Security` value sent on responses over TLS;
    /// None: not sent.
    pub hsts: Option<http::HeaderValue>,
    /// Certificates from an ACME CA (`server.tls.acme`).
    pub acme: Option<AcmeConfig>,
}

/// Set by `tqserver --dev`: development mode whatever server.yaml says,
/// for this process's whole life (reloads included).
static FORCE_DEVELOPMENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `tqserver --dev`: every configuration loaded from now on is in
/// development mode.
pub fn force_development() {
    FORCE_DEVELOPMENT.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn development_forced() -> bool {
    FORCE_DEVELOPMENT.load(std::sync::atomic::Ordering::Relaxed)
}

/// `server.http2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Settings {
    /// Streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Whether the plain HTTP port also takes HTTP/2 with prior knowledge.
    pub h2c: bool,
    /// Whether the TLS port offers HTTP/2 (ALPN `h2`).
    pub enabled: bool,
}

/// `server.tls.acme`: one certificate for `domains`, from the CA at
/// `directory`, kept in `storage` and renewed before it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// Lower case DNS names; the first names the certificate's folder.
    pub domains: Vec<String>,
    /// `mailto:` URLs.
    pub contact: Vec<String>,
    /// An `https://` URL.
    pub directory: String,
    /// CA certificates trusted for the directory's HTTPS (instead of the
    /// system's).
    pub ca_root: Option<PathBuf>,
    pub storage: PathBuf,
    /// Renew when this little is left; None: a third of the lifetime.
    pub renew_before: Option<Duration>,
    pub challenge: AcmeChallenge,
}

/// How the CA checks that this server answers for a name
/// (`server.tls.acme.challenge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcmeChallenge {
    /// A file under `/.well-known/acme-challenge/` on port 80.
    #[default]
    Http01,
    /// A certificate in a TLS handshake on port 443 (RFC 8737).
    TlsAlpn01,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    pub level: String,
    pub json: bool,
    pub file: Option<PathBuf>,
    pub access_log: Option<AccessLogConfig>,
    pub slow_log_threshold: Option<Duration>,
    pub slow_log_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub json: bool,
    /// None: standard output.
    pub file: Option<PathBuf>,
}

/// One app.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    pub name: String,
    /// The worker.yaml this came from.
    pub file: PathBuf,
    /// URL prefix without trailing slash; empty for an app at `/`.
    pub route: String,
    pub folder: PathBuf,
    /// Canonical path of the document root.
    pub document_root: PathBuf,
    /// Script (relative to the document root) that takes every URL that is
    /// neither a file nor a directory; None turns that fallback off.
    pub front_controller: Option<String>,
    pub index: Vec<String>,
    /// Extensions that execute, lower case with the dot (".php").
    pub limit_extensions: Vec<String>,
    pub static_files: bool,
    pub cache_control: Option<String>,
    pub security: SecurityConfig,
    pub php: PhpConfig,
    pub pool: pool::PoolConfig,
    pub fastcgi: Option<FastcgiConfig>,
    pub access_log: Option<AccessLogConfig>,
    /// Per-path deny and static-only rules (`rules:`).
    pub rules: crate::rules::PathRules,
    /// This app's `php.pool.ready_max_queue`; None: the server's.
    pub ready_max_queue: Option<QueueLimit>,
    /// This app's own slow log settings; None: the server's.
    pub slow_log: Option<SlowLogConfig>,
    /// This app's `compression`, over the server's; None: the server's.
    pub compression: Option<Arc<edge::CompressionConfig>>,
    /// Where X-Accel-Redirect may point (`internal`).
    pub internal: Vec<edge::InternalLocation>,
    /// Directories X-Sendfile may name files in (`x_sendfile`), absolute.
    pub x_sendfile: Vec<PathBuf>,
}

/// A bound on a queue's length that readiness checks, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueLimit {
    #[default]
    Off,
    /// Not ready while more than this many requests wait.
    Max(usize),
}

/// An app's `slow_log`: each setting it leaves out is the server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowLogConfig {
    /// `enabled: false` turns the slow log off for this app.
    pub enabled: bool,
    pub threshold: Option<Duration>,
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityConfig {
    pub allow_dotfiles: bool,
    /// Dot-named path segments that stay reachable (".well-known").
    pub allowed_dot_paths: Vec<String>,
    pub symlinks: SymlinkPolicy,
}

/// Which symlinks under the document root are followed
/// (`security.symlinks`). A link that stays inside the root is followed in
/// every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SymlinkPolicy {
    /// Also a link that leaves the root when the link and what it leads to
    /// have the same owner (nginx's `disable_symlinks if_not_owner`, Apache's
    /// `SymLinksIfOwnerMatch`): Debian's packaged apps work, a link planted
    /// by the web user to a root-owned file does not.
    #[default]
    Owner,
    /// Never leave the root (`allow_symlinks_outside_root: false`).
    Beneath,
    /// Follow any link (`allow_symlinks_outside_root: true`).
    Follow,
}

impl SymlinkPolicy {
    pub const NAMES: [&str; 3] = ["owner", "beneath", "follow"];

    pub fn as_str(self) -> &'static str {
        match self {
            SymlinkPolicy::Owner => "owner",
            SymlinkPolicy::Beneath => "beneath",
            SymlinkPolicy::Follow => "follow",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "owner" => Some(SymlinkPolicy::Owner),
            "beneath" => Some(SymlinkPolicy::Beneath),
            "follow" => Some(SymlinkPolicy::Follow),
            _ => None,
        }
    }
}

impl std::fmt::Display for SymlinkPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `php.runtime`: how PHP worker processes come to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhpRuntime {
    /// php-cgi, exec'd once per worker.
    Cgi,
    /// tqserver-php: PHP started once in a zygote per app, workers forked
    /// from it (they share its OPcache).
    Embed,
}

impl PhpRuntime {
    pub fn as_str(self) -> &'static str {
        match self {
            PhpRuntime::Cgi => "cgi",
            PhpRuntime::Embed => "embed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhpConfig {
    /// Which program runs PHP (`php.runtime`).
    pub runtime: PhpRuntime,
    /// Worker mode (`php.worker`): the script each worker runs once, which
    /// handles requests in a loop (absolute, inside the document root).
    pub worker: Option<PathBuf>,
    /// php-cgi, or tqserver-php for the embed runtime.
    pub binary: PathBuf,
    /// As `php-cgi -v` reports it, e.g. "8.2.29".
    pub version: String,
    pub user: Option<String>,
    /// Give each pool a private `opcache.file_cache`, so a new worker (start,
    /// scale-up, recycle, crash) starts warm (off when the settings already
    /// choose for OPcache).
    pub opcache_file_cache: bool,
    /// This process's cache folder (set at start, under `Config::cache_dir`).
    pub cache_dir: Option<PathBuf>,
    /// Read a request's whole body before taking a worker (else stream it
    /// to PHP as it arrives, holding the worker meanwhile).
    pub request_buffering: bool,
    pub response_buffer: ResponseBuffer,
}

/// How much of a PHP response tqserver holds for a client slower than PHP,
/// so the worker is free as soon as PHP is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseBuffer {
    /// Off: the worker is held until the client has read the response.
    pub enabled: bool,
    /// Held in memory per response; beyond, in an unnamed temporary file.
    pub memory_bytes: u64,
    /// Most bytes held per response (memory and file); beyond, reading from
    /// PHP waits for the client.
    pub max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastcgiConfig {
    pub listen: ListenAddr,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub mode: Option<u32>,
    /// Client addresses allowed on a TCP listener; empty: any.
    pub allowed_clients: Vec<std::net::IpAddr>,
    pub status_path: Option<String>,
    pub ping_path: Option<String>,
    pub ping_response: String,
    /// Refuse SCRIPT_FILENAME outside the document root (default on).
    pub check_document_root: bool,
    pub max_connections: usize,
}

impl AppConfig {
    /// Whether a file name has an extension that executes.
    pub fn is_executable(&self, name: &str) -> bool {
        let lower = name.len();
        self.limit_extensions.iter().any(|ext| {
            lower > ext.len()
                && name.is_char_boundary(lower - ext.len())
                && name[lower - ext.len()..].eq_ignore_ascii_case(ext)
        })
    }
}
