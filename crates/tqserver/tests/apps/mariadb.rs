//! A private MariaDB server for the WordPress tests: its own data directory
//! in a temporary folder, a unix socket, no TCP, no systemd. One per test
//! process (nextest runs each test in its own process; `cargo test` shares
//! it between the tests of the binary), each test with its own database.
//!
//! The server is started from a thread that lives as long as the process
//! and gets a parent-death signal, so it never outlives the test process,
//! even one killed by a timeout; at a normal exit an `atexit` hook stops it
//! and removes its directory.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::setup::{ensure_packages, is_root, run_ok};

pub struct Mariadb {
    dir: PathBuf,
    socket: PathBuf,
}

/// A database and a user that may use only it.
#[derive(Debug, Clone)]
pub struct Database {
    pub name: String,
    pub user: String,
    pub password: String,
    pub socket: PathBuf,
}

static SERVER: OnceLock<Mariadb> = OnceLock::new();
static CHILD: Mutex<Option<Child>> = Mutex::new(None);
/// The server's folder, removed at exit.
static STARTED_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Server options for a small, fast, throw-away server.
const SERVER_OPTIONS: &[&str] = &[
    "--skip-networking",
    "--skip-name-resolve",
    "--innodb-buffer-pool-size=64M",
    "--innodb-log-file-size=16M",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_unicode_ci",
];

/// The process's MariaDB server, started on first use.
pub fn shared() -> &'static Mariadb {
    SERVER.get_or_init(Mariadb::start)
}

impl Mariadb {
    fn start() -> Self {
        ensure_packages();
        let dir = tempfile::Builder::new()
            .prefix("tqmariadb")
            .tempdir()
            .expect("create MariaDB's directory")
            .keep();
        // www-data must reach the socket.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod MariaDB's directory");
        // From here on, the process's exit removes the folder (and stops the
        // server, once there is one), also when a step below fails.
        STARTED_DIR
            .set(dir.clone())
            .expect("MariaDB starts once per process");
        // SAFETY: registers a plain extern "C" function (nix has no safe
        // atexit).
        unsafe { libc::atexit(stop_at_exit) };
        let datadir = dir.join("data");
        let socket = dir.join("mysqld.sock");
        // Its own tmpdir: temporary tables are files named after the server's
        // pid, and /tmp is shared with everything else on the machine.
        let tmpdir = dir.join("tmp");
        std::fs::create_dir_all(&tmpdir).expect("create MariaDB's tmpdir");
        let tmpdir = format!("--tmpdir={}", tmpdir.display());
        let mut install = Command::new("mariadb-install-db");
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", datadir.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(&tmpdir)
            .args(SERVER_OPTIONS);
        if is_root() {
            install.arg("--user=root");
        }
        run_ok(&mut install, Duration::from_secs(120));

        let mut server = Command::new("mariadbd");
        server
            .arg("--no-defaults")
            .arg(format!("--datadir={}", datadir.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .arg(&tmpdir)
            .args(SERVER_OPTIONS);
        if is_root() {
            server.arg("--user=root");
        }
        server
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the hook runs between fork and exec, where only
        // async-signal-safe calls are sound: set_pdeathsig is one prctl
        // call that only sets this child's parent-death signal.
        unsafe {
            server.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                Ok(())
            });
        }
        // The parent-death signal fires when the *thread* that forked the
        // child ends, so fork from a thread that never does.
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("mariadb-parent".into())
            .spawn(move || {
                let _ = sender.send(server.spawn());
                loop {
                    std::thread::park();
                }
            })
            .expect("start the MariaDB parent thread");
        let child = receiver
            .recv()
            .expect("the MariaDB parent thread answers")
            .expect("start mariadbd");
        *CHILD.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);

        let server = Self { dir, socket };
        server.wait_ready(Duration::from_secs(60));
        server
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = CHILD.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "mariadbd exited during start-up ({status}):\n{}",
                    self.error_log()
                );
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not open its socket within {timeout:?}:\n{}",
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Runs SQL as MariaDB's root; returns the rows, tab-separated.
    pub fn query(&self, sql: &str) -> String {
        run_ok(
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket.display()))
                .args(["--user=root", "--batch", "--skip-column-names", "--execute"])
                .arg(sql),
            Duration::from_secs(30),
        )
    }

    /// Creates a fresh database with its own user.
    pub fn create_database(&self, name: &str) -> Database {
        let password = format!("{name}-secret");
        self.query(&format!(
            "DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}`; \
             CREATE OR REPLACE USER '{name}'@'localhost' IDENTIFIED BY '{password}'; \
             GRANT ALL ON `{name}`.* TO '{name}'@'localhost';"
        ));
        Database {
            name: name.to_owned(),
            user: name.to_owned(),
            password,
            socket: self.socket.clone(),
        }
    }
}

/// Stops the server (SIGTERM, then SIGKILL) and removes its directory.
extern "C" fn stop_at_exit() {
    let child = CHILD.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mut child) = child {
        crate::support::stop_child(&mut child, Duration::from_secs(5));
    }
    if let Some(dir) = STARTED_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
