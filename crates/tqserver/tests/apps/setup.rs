//! What the app suites need on the machine: Debian packages, installed once
//! per machine (`scripts/deps.sh apps`, under a lock, since nextest runs the
//! tests as parallel processes), and small process helpers with bounded
//! waits.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::children_named;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The PHP runtime an app runs on: `php.runtime` in its worker.yaml.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// Exec'd php-cgi workers (the default).
    Cgi,
    /// Workers forked from a tqserver-php zygote.
    Embed,
}

impl Runtime {
    /// The `runtime:` line of worker.yaml's `php:` section.
    pub fn yaml(self) -> &'static str {
        match self {
            Self::Cgi => "  runtime: cgi\n",
            Self::Embed => "  runtime: embed\n",
        }
    }

    /// Checks that this runtime is there (with the extensions the apps use);
    /// panics with what to do otherwise.
    pub fn ensure(self) {
        ensure_packages();
        if self == Self::Cgi {
            return;
        }
        // Beside tqserver, where tqserver looks first.
        let runtime = Path::new(crate::support::BIN).with_file_name("tqserver-php");
        assert!(
            runtime.exists(),
            "{} is missing: build it with `cargo build -p tq-php-runtime` (scripts/test's workspace build does)",
            runtime.display()
        );
        // Debian enables an extension for every SAPI it knows, embed included.
        for ini in [
            "10-opcache.ini",
            "15-xml.ini",
            "20-gd.ini",
            "20-mbstring.ini",
            "20-mysqli.ini",
        ] {
            let path = Path::new("/etc/php/8.2/embed/conf.d").join(ini);
            assert!(path.exists(), "{} is missing after deps.sh", path.display());
        }
    }
}

impl Runtime {
    /// Asserts that the app's workers under `server` are this runtime's:
    /// php-cgi children of tqserver, or tqserver-php workers forked from a
    /// tqserver-php zygote.
    pub fn assert_serves(self, server: &crate::support::Server) {
        let php_cgi = children_named(server.pid(), "php-cgi");
        let forked: Vec<u32> = children_named(server.pid(), "tqserver-php")
            .into_iter()
            .flat_map(|zygote| children_named(zygote, "tqserver-php"))
            .collect();
        let (ours, others) = match self {
            Self::Cgi => (&php_cgi, &forked),
            Self::Embed => (&forked, &php_cgi),
        };
        assert!(
            !ours.is_empty() && others.is_empty(),
            "{self:?} should serve: php-cgi workers {php_cgi:?}, forked workers {forked:?}"
        );
    }
}

/// Installs the Debian packages (when missing) and checks that everything
/// the suites use is there. Panics, with what is missing, otherwise.
pub fn ensure_packages() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // One apt-get at a time on this machine: parallel test processes
        // would otherwise fight over dpkg's lock.
        let file = File::create(std::env::temp_dir().join("tqserver-apps-deps.lock"))
            .expect("create the deps lock file");
        // Released when `lock` drops.
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .unwrap_or_else(|(_, errno)| panic!("lock the deps lock file: {errno}"));
        let script = repo_root().join("scripts/deps.sh");
        let output = run(Command::new(&script).arg("apps"), Duration::from_secs(600));
        assert!(
            output.status.success(),
            "{} apps failed:\n{}{}",
            script.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        drop(lock);
        for path in [
            "/usr/share/wordpress/wp-settings.php",
            "/usr/share/wordpress/wp-content/themes/twentytwentythree/theme.json",
            "/usr/share/php/Illuminate/autoload.php",
            "/usr/share/php/Illuminate/Foundation/Application.php",
            "/usr/share/dokuwiki/doku.php",
            "/usr/sbin/mariadbd",
            "/usr/bin/mariadb-install-db",
            "/usr/bin/mariadb",
        ] {
            assert!(Path::new(path).exists(), "{path} is missing after deps.sh");
        }
        let modules = run(Command::new("php-cgi").arg("-m"), Duration::from_secs(30));
        let modules = String::from_utf8_lossy(&modules.stdout);
        for module in ["mysqli", "gd", "mbstring", "xml", "Zend OPcache"] {
            assert!(
                modules.lines().any(|line| line == module),
                "php-cgi lacks the {module} extension:\n{modules}"
            );
        }
    });
}

/// Runs a command to completion within `timeout` (killed after it), with
/// output captured.
pub fn run(command: &mut Command, timeout: Duration) -> Output {
    let described = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {described}: {e}"));
    // Drain the pipes on threads so a chatty child cannot block on them.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            break status;
        }
        if Instant::now() > deadline {
            // The process group this child leads (not reaped yet).
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            panic!("{described} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(command: &mut Command, timeout: Duration) -> String {
    let described = format!("{command:?}");
    let output = run(command, timeout);
    assert!(
        output.status.success(),
        "{described} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether the tests run as root (then workers run as www-data, and what
/// they write must belong to www-data).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Makes `path` (recursively) owned by the user workers run as.
pub fn give_to_workers(path: &Path) {
    if is_root() {
        run_ok(
            Command::new("chown")
                .arg("-R")
                .arg("www-data:www-data")
                .arg(path),
            Duration::from_secs(60),
        );
    }
}

/// Makes a tree readable (and directories searchable) by everyone.
pub fn make_readable(path: &Path) {
    run_ok(
        Command::new("chmod").arg("-R").arg("a+rX").arg(path),
        Duration::from_secs(60),
    );
}

/// Copies a directory tree (following symlinks, so the copy stands alone).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy's directory");
    run_ok(
        Command::new("cp")
            .arg("-rL")
            .arg(format!("{}/.", from.display()))
            .arg(to),
        Duration::from_secs(120),
    );
}

/// Prints a server's log when the test fails, so a failure shows what
/// tqserver saw.
pub struct LogOnPanic<'a> {
    pub name: &'a str,
    pub log: &'a dyn Fn() -> String,
}

impl Drop for LogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = (self.log)();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("---- last lines of the {} log ----", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
