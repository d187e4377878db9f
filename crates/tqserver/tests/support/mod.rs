//! Test harness: builds a site (config/server.yaml, workers/<name>/...) in a
//! temporary directory, starts the real `tqserver` binary on a free port
//! against real php-cgi, and talks raw HTTP/1.1 to it, so a test controls
//! every byte of a request (`..`, `%00`, odd headers).
//!
//! A test about what PHP sees or may run takes a [`Runtime`] and is run on
//! both (`php.runtime: cgi` and `embed`) by [`on_both_runtimes!`]: its site
//! is `Site::on(runtime)`, which sets `php.runtime` in every worker.yaml.
//!
//! Also the kit every test shares: [`wait_until`] and [`holds_within`] to
//! wait for a condition with a deadline (never a fixed sleep as
//! synchronisation), with [`Started`] (a request has reached PHP),
//! [`server_caught_up`] (the server has read what clients sent) and
//! [`Server::wait_busy`] as conditions; [`holds_throughout`] for what must
//! stay true for a while; [`kill`] to signal a process (nix, no `unsafe`),
//! and process lookups in /proc ([`children_named`], [`is_alive`]).
#![allow(dead_code)]

pub mod fcgi;
pub mod netns;
pub mod nginx;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_tqserver");

/// How often the waits below look again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Waits until `check` holds and returns how long that took; fails the test,
/// naming `what`, if it does not hold within `timeout`.
pub fn wait_until(what: &str, timeout: Duration, check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    assert!(
        holds_within(timeout, check),
        "timed out after {timeout:?} waiting for {what}"
    );
    started.elapsed()
}

/// Whether `check` holds within `timeout` (looked at every 10 ms, and once
/// more at the deadline), for tests that report a failure themselves.
pub fn holds_within(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// Whether `check` holds at every look (every 10 ms) for all of `duration`,
/// for a test whose point is that something stays so for a while: the
/// duration is the subject of the test, not a guess at how long something
/// takes.
pub fn holds_throughout(duration: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + duration;
    loop {
        if !check() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// Whether the server listening on TCP `port` has taken in everything sent
/// to it: no connection waits in its accept queue and no byte waits unread
/// in any of its connections (the receive queues in /proc/net/tcp and tcp6,
/// of the listening socket and of each connection on that local port). A
/// test waits for this to know the server has seen what its clients sent.
pub fn server_caught_up(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().all(|table| {
        let Ok(text) = std::fs::read_to_string(table) else {
            return true;
        };
        // "sl local_address rem_address st tx_queue:rx_queue ...", addresses
        // and queues in hex; a listening socket's rx_queue is its accept
        // queue, a connection's the bytes the server has not read yet.
        text.lines().skip(1).all(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|local| local.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port != Some(port) {
                return true;
            }
            fields
                .get(4)
                .and_then(|queues| queues.split_once(':'))
                .is_some_and(|(_, rx)| u64::from_str_radix(rx, 16) == Ok(0))
        })
    })
}

/// A file a PHP script writes as it starts (its pid, a line per request), so
/// that a test waits until requests have reached PHP instead of sleeping.
/// In /tmp, which workers running as www-data can write; removed on drop.
pub struct Started {
    path: PathBuf,
}

impl Started {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = PathBuf::from(format!(
            "/tmp/tq-started-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        Self { path }
    }

    /// The PHP statement that records a start.
    pub fn php(&self) -> String {
        format!(
            "file_put_contents('{}', getmypid() . \"\\n\", FILE_APPEND | LOCK_EX);",
            self.path.display()
        )
    }

    /// The pids of the scripts that have started so far.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.parse().ok())
            .collect()
    }

    /// Waits until `count` scripts have started; returns their pids.
    pub fn wait(&self, count: usize) -> Vec<u32> {
        wait_until(
            &format!("{count} script(s) to start"),
            Duration::from_secs(10),
            || self.pids().len() >= count,
        );
        self.pids()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends `signal` to process `pid`. One that is already gone is no error
/// (a test often races a process's own exit); anything else fails the test.
pub fn kill(pid: u32, signal: Signal) {
    let target = Pid::from_raw(i32::try_from(pid).expect("a pid fits in pid_t"));
    match nix::sys::signal::kill(target, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => panic!("cannot send {signal} to {pid}: {err}"),
    }
}

/// Whether the tests run as root (then workers run as www-data).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A free TCP port on 127.0.0.1 (released just before use).
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `count` consecutive free TCP ports on 127.0.0.1 (released
/// just before use).
///
/// Handed out in turn from 12000-19999, below the kernel's ephemeral range,
/// by a counter that all test processes share through a locked file. Not
/// bind(0): nextest runs every test in its own process, and a port the
/// kernel had just handed one test could come back to another running beside
/// it, whose requests then reached the first test's server (a readiness
/// check cannot tell two tqservers apart). Ports still bound are skipped.
pub fn free_ports(count: u16) -> u16 {
    const FIRST: u16 = 12_000;
    const SPAN: u16 = 8_000;
    let counter = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open("/tmp/tqtest-next-port");
    let Ok(counter) = counter else {
        // Another user's counter file: the kernel's choice will do for one.
        assert_eq!(count, 1, "no port counter for a range");
        return TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    };
    // Held until returned (dropped): one process at a time reads and moves
    // the counter.
    let mut counter = nix::fcntl::Flock::lock(counter, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, err)| err)
        .expect("lock /tmp/tqtest-next-port");
    let mut text = String::new();
    let _ = counter.read_to_string(&mut text);
    let mut next = text.trim().parse::<u16>().unwrap_or(0) % SPAN;
    for _ in 0..SPAN {
        if next + count > SPAN {
            next = 0;
        }
        let first = FIRST + next;
        next += count;
        if (first..first + count).all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok()) {
            use std::io::Seek;
            counter.set_len(0).unwrap();
            counter.rewind().unwrap();
            counter.write_all(next.to_string().as_bytes()).unwrap();
            return first;
        }
    }
    panic!("no {count} free ports in {FIRST}-{}", FIRST + SPAN - 1);
}

/// The PHP runtime a site's apps run on (`php.runtime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// php-cgi, exec'd per worker (the default).
    Cgi,
    /// tqserver-php workers forked from a zygote.
    Embed,
}

impl Runtime {
    /// `yaml`, a worker.yaml, with `php.runtime` set to this runtime: a line
    /// first in its `php:` section (at that section's indentation), or a
    /// `php:` section of its own. A yaml that names a runtime already, and
    /// any yaml for `Cgi` (the default), is left as it is.
    pub fn worker_yaml(self, yaml: &str) -> String {
        if self == Runtime::Cgi || yaml.contains("\n  runtime:") {
            return yaml.to_owned();
        }
        let mut lines: Vec<&str> = yaml.lines().collect();
        match lines.iter().position(|line| line.trim_end() == "php:") {
            Some(php) => {
                let indent = lines
                    .get(php + 1)
                    .map(|next| &next[..next.len() - next.trim_start().len()])
                    .filter(|indent| !indent.is_empty())
                    .unwrap_or("  ");
                let runtime = format!("{indent}runtime: embed");
                lines.insert(php + 1, &runtime);
                lines.join("\n") + "\n"
            }
            None => format!("{}\nphp:\n  runtime: embed\n", yaml.trim_end()),
        }
    }
}

/// Runs each `fn name(runtime: Runtime)` listed as two tests, `cgi::name`
/// and `embed::name` (`cargo nextest run -E 'test(/::embed::/)'` runs the
/// embed half).
#[allow(unused_macros)]
macro_rules! on_both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod cgi {
            $(#[test]
            fn $name() {
                super::$name($crate::support::Runtime::Cgi)
            })*
        }
        mod embed {
            $(#[test]
            fn $name() {
                super::$name($crate::support::Runtime::Embed)
            })*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_runtimes;

/// A site on disk.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The runtime every worker.yaml written by [`Site::worker`] and
    /// [`Site::write_worker_yaml`] names.
    pub runtime: Runtime,
    server_settings: String,
    server_extra: String,
    /// Admin endpoint port, when a test turns it on.
    pub admin_port: Option<u16>,
    /// No `admin:` section at all: the default endpoint.
    admin_default: bool,
}

impl Site {
    /// A site whose apps run on php-cgi.
    pub fn new() -> Self {
        Self::on(Runtime::Cgi)
    }

    /// A site whose apps run on `runtime`.
    pub fn on(runtime: Runtime) -> Self {
        let dir = tempfile::Builder::new().prefix("tqtest").tempdir().unwrap();
        // Workers run as www-data when the tests run as root.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let site = Self {
            dir,
            port: free_port(),
            runtime,
            server_settings: String::new(),
            server_extra: String::new(),
            admin_port: None,
            admin_default: false,
        };
        site.write_server_yaml();
        site
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.root().join("config/server.yaml")
    }

    /// `tqserver check` on this site: whether it passed, and its stderr.
    pub fn check(&self) -> (bool, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_tqserver"))
            .arg("check")
            .arg("--config")
            .arg(self.config_path())
            .output()
            .expect("run tqserver check");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Extra YAML appended to server.yaml (top-level sections).
    pub fn server_yaml(mut self, extra: &str) -> Self {
        self.server_extra = extra.to_owned();
        self.write_server_yaml();
        self
    }

    /// Extra keys of the `server:` section, each line indented by two.
    pub fn server_settings(mut self, lines: &str) -> Self {
        self.server_settings = lines.to_owned();
        self.write_server_yaml();
        self
    }

    /// Turns the admin endpoint on, on a free port.
    pub fn with_admin(mut self) -> Self {
        self.admin_port = Some(free_port());
        self.write_server_yaml();
        self
    }

    /// Leaves the admin endpoint at its default (no `admin:` section).
    pub fn default_admin(mut self) -> Self {
        self.admin_default = true;
        self.write_server_yaml();
        self
    }

    fn write_server_yaml(&self) {
        let admin = match self.admin_port {
            Some(port) => format!("admin:\n  listen: 127.0.0.1:{port}\n"),
            None if self.admin_default => String::new(),
            None => "admin:\n  enabled: false\n".to_owned(),
        };
        let text = format!(
            "server:\n  host: 127.0.0.1\n  port: {}\n  grace_period: 10s\n{}{admin}{}",
            self.port, self.server_settings, self.server_extra
        );
        self.write("config/server.yaml", &text);
    }

    /// Adds a worker folder with its worker.yaml (on the site's runtime).
    pub fn worker(self, name: &str, yaml: &str) -> Self {
        self.write_worker_yaml(name, yaml);
        std::fs::create_dir_all(self.root().join(format!("workers/{name}/public"))).unwrap();
        self.chmod_tree();
        self
    }

    /// Writes a file of a worker's document root.
    pub fn file(self, worker: &str, path: &str, content: impl AsRef<[u8]>) -> Self {
        self.write(&format!("workers/{worker}/public/{path}"), content);
        self.chmod_tree();
        self
    }

    /// (Re)writes a worker's worker.yaml, on the site's runtime.
    pub fn write_worker_yaml(&self, name: &str, yaml: &str) {
        self.write(
            &format!("workers/{name}/config/worker.yaml"),
            self.runtime.worker_yaml(yaml),
        );
    }

    pub fn write(&self, relative: &str, content: impl AsRef<[u8]>) {
        let path = self.root().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
    }

    fn chmod_tree(&self) {
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(self.root())
            .status();
    }

    /// Starts tqserver and waits until it serves.
    pub fn start(self) -> Server {
        Server::start(self, &[])
    }

    /// Starts tqserver with extra environment variables.
    pub fn start_with_env(self, env: &[(&str, &str)]) -> Server {
        Server::start(self, env)
    }

    /// Starts `tqserver ARGS... --config ...`.
    pub fn start_with_args(self, args: &[&str]) -> Server {
        Server::start_with(self, args, &[])
    }
}

/// A running tqserver; killed (and its workers checked gone) on drop.
pub struct Server {
    pub site: Site,
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    fn start(site: Site, env: &[(&str, &str)]) -> Self {
        Self::start_with(site, &[], env)
    }

    fn start_with(site: Site, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = site.root().join("tqserver.log");
        let child = spawn_server_with(&site.config_path(), &log, args, env);
        let mut server = Self {
            site,
            child: Some(child),
            log,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "tqserver exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            if TcpStream::connect(("127.0.0.1", self.site.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tqserver did not start listening:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.site.port
    }

    /// A worker's document root as PHP sees it (canonical).
    pub fn docroot(&self, worker: &str) -> String {
        self.site
            .root()
            .join(format!("workers/{worker}/public"))
            .canonicalize()
            .unwrap()
            .display()
            .to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        holds_within(timeout, || self.log().contains(needle))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request(format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        ))
    }

    /// Sends raw bytes on a new connection and reads one response.
    pub fn request(&self, raw: impl AsRef<[u8]>) -> Response {
        let mut conn = self.connect();
        conn.send(raw.as_ref());
        conn.read_response(false)
    }

    pub fn connect(&self) -> Conn {
        Conn::open(self.port())
    }

    /// GET from the admin endpoint.
    pub fn admin(&self, path: &str) -> Response {
        let port = self
            .site
            .admin_port
            .expect("Site::with_admin() for admin requests");
        let mut conn = Conn::open(port);
        conn.send(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        conn.read_response(false)
    }

    /// The value of one sample in /metrics (Prometheus text), e.g.
    /// `tqserver_requests_total{worker="app",code="200"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let text = self.admin("/metrics").text();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
    }

    /// How many of `app`'s workers are busy (from /metrics, so the site
    /// needs `with_admin()`).
    pub fn busy_workers(&self, app: &str) -> f64 {
        self.metric(&format!(
            "tqserver_workers{{worker=\"{app}\",state=\"busy\"}}"
        ))
        .unwrap_or(0.0)
    }

    /// Waits until `count` of `app`'s workers are busy (`with_admin()`).
    pub fn wait_busy(&self, app: &str, count: usize) {
        wait_until(
            &format!("{count} busy worker(s) in {app}"),
            Duration::from_secs(10),
            || self.busy_workers(app) == count as f64,
        );
    }

    /// PHP worker processes of this tqserver: php-cgi processes whose
    /// parent it is, and tqserver-php workers forked by its zygotes.
    pub fn worker_pids(&self) -> Vec<u32> {
        let mut pids = children_named(self.pid(), "php-cgi");
        for zygote in self.zygote_pids() {
            pids.extend(children_named(zygote, "tqserver-php"));
        }
        pids.sort();
        pids
    }

    /// The embed runtime's zygotes (tqserver-php processes whose parent is
    /// this tqserver).
    pub fn zygote_pids(&self) -> Vec<u32> {
        children_named(self.pid(), "tqserver-php")
    }

    /// Sends a signal to tqserver.
    pub fn signal(&self, signal: Signal) {
        if self.child.is_some() {
            kill(self.pid(), signal);
        }
    }

    /// Waits for tqserver to exit; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        holds_within(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// SIGKILLs tqserver and returns the worker pids it had.
    pub fn kill9(&mut self) -> Vec<u32> {
        let pids = self.worker_pids();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        pids
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let mut pids = self.worker_pids();
        pids.extend(self.zygote_pids());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            // What the server said, for a failure seen only in CI.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!("--- the last lines of tqserver's log ---\n{tail}\n---");
            return;
        }
        // A test run on embed that never started a zygote ran on php-cgi.
        if self.site.runtime == Runtime::Embed {
            assert!(
                self.log().contains("zygote started PHP"),
                "no zygote started on php.runtime: embed:\n{}",
                self.log()
            );
        }
        // The parent-death signal must take every worker with it (a forked
        // worker after its zygote; a deadline with room for a loaded
        // machine, not a wait).
        if !wait_gone(&pids, Duration::from_secs(5)) {
            let left: Vec<String> = pids
                .iter()
                .filter(|pid| is_alive(**pid))
                .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
                .collect();
            panic!("PHP processes outlived tqserver: {left:#?}");
        }
    }
}

/// Stops a child process the polite way: SIGTERM, up to `grace` to exit,
/// then SIGKILL.
pub fn stop_child(child: &mut Child, grace: Duration) {
    // Our own child, not reaped yet: its pid is still its own.
    kill(child.id(), Signal::SIGTERM);
    if !holds_within(grace, || matches!(child.try_wait(), Ok(Some(_)))) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

pub fn spawn_server(config: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    spawn_server_with(config, log, &[], env)
}

pub fn spawn_server_with(config: &Path, log: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let log_file = std::fs::File::create(log).unwrap();
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("start tqserver")
}

/// Whether every pid is gone (or a zombie) within `timeout`.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    holds_within(timeout, || pids.iter().all(|pid| !is_alive(*pid)))
}

pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // Field 3, after the parenthesised command name.
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !matches!(
                state.and_then(|s| s.chars().next()),
                Some('Z') | Some('X') | None
            )
        }
        Err(_) => false,
    }
}

/// Live processes named `name` whose parent is `parent`.
pub fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == parent && comm == name && state != "Z" {
            pids.push(pid);
        }
    }
    pids.sort();
    pids
}

/// Live PHP processes (php-cgi, tqserver-php) anywhere on the machine.
pub fn all_php_processes() -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| matches!(c.trim(), "php-cgi" | "tqserver-php"))
            && is_alive(pid)
        {
            pids.push(pid);
        }
    }
    pids
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Parses "KEY=value" lines (what the test scripts print).
    pub fn vars(&self) -> BTreeMap<String, String> {
        self.text()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// One client connection; can carry several requests (keep-alive).
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to tqserver");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Self {
            reader: BufReader::new(stream),
        }
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    /// Everything the server sends until it closes, as it comes (a body's
    /// framing included).
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).expect("read to the end");
        rest
    }

    /// Reads one response; `head_only` for a response to HEAD.
    pub fn read_response(&mut self, head_only: bool) -> Response {
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .expect("read status line");
        assert!(
            status_line.starts_with("HTTP/1."),
            "not an HTTP response: {status_line:?}"
        );
        let status: u16 = status_line[9..12].parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 304 || status == 204 || (100..200).contains(&status) {
            return response;
        }
        if let Some(length) = response.header("content-length") {
            let mut body = vec![0; length.parse().unwrap()];
            self.reader.read_exact(&mut body).unwrap();
            response.body = body;
        } else if response
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size).unwrap();
                let size = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk).unwrap();
                if size == 0 {
                    break;
                }
                response.body.extend_from_slice(&chunk[..size]);
            }
        } else {
            self.reader.read_to_end(&mut response.body).unwrap();
        }
        response
    }
}

/// Builds a multipart/form-data body with one file field.
pub fn multipart(boundary: &str, field: &str, filename: &str, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// A basic worker.yaml for a worker at `path` with a static pool of `n`.
pub fn worker_yaml(path: &str, workers: usize) -> String {
    format!(
        "path: {path}\nphp:\n  settings:\n    upload_max_filesize: 32M\n    post_max_size: 32M\n  pool:\n    manager: static\n    max_workers: {workers}\n"
    )
}

/// MD5 via the system's md5sum, to compare with PHP's md5().
pub fn md5(data: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A test CA in `dir`: `ca.key` and `ca.pem` (P-256, valid two days).
pub fn make_test_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=tqserver test CA",
        ],
    );
}

/// Runs `openssl ARGS` in `dir` (certificates for the TLS and ACME tests);
/// fails the test with openssl's message if it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
