//! Network namespaces and the processes that run in them, for tests that
//! need a small network of their own (a balancer and several nodes).
//!
//! Everything is made with `ip` (iproute2) and cleaned up by guards: a
//! [`Netns`] is deleted on drop (with every interface in it), a [`Process`]
//! is killed with its process group on drop, and gets SIGKILL by itself if
//! the test's thread dies first. Namespaces are named `<prefix><pid>-...`,
//! and [`remove_stale`] deletes those of test processes that no longer exist
//! (a test killed by a timeout cannot run its guards). Needs root.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `ip netns add NAME` and its loopback up.
    pub fn create(name: &str) -> Result<Self, String> {
        run_ip(&["netns", "add", name])?;
        let netns = Self {
            name: name.to_owned(),
        };
        netns.ip(&["link", "set", "lo", "up"]);
        Ok(netns)
    }

    /// `ip -n NAME ARGS...`; panics if it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        if let Err(err) = run_ip(&all) {
            panic!("{err}");
        }
    }

    /// `ip netns exec NAME PROGRAM`, to add arguments to and spawn with
    /// [`Process::spawn`]. `ip netns exec` execs the program, so the child's
    /// pid is the program's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(program.as_ref());
        command
    }

    /// Runs `f` on a thread whose network namespace is this one: its sockets
    /// connect to the addresses of this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)
                .unwrap_or_else(|err| panic!("open {}: {err}", path.display()));
            // SAFETY: the descriptor is open for the whole call; setns
            // changes the namespace of this thread only, which runs nothing
            // but `f`. (nix's safe `sched::setns` needs its `sched` feature,
            // which the workspace does not enable.)
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
            f()
        })
    }

    /// [`Netns::spawn`] and wait for the result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        match self.spawn(f).join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run_ip(&["netns", "delete", &self.name]);
    }
}

fn run_ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run ip: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Deletes namespaces named `<prefix><pid>-...` whose test process is gone.
pub fn remove_stale(prefix: &str) {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run_ip(&["netns", "delete", name]);
        }
    }
}

/// `binary` on PATH (or in /usr/sbin and /sbin, where Debian puts haproxy
/// and ip, which a non-root PATH may lack).
pub fn which(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// A child process in its own process group, its output in a log file;
/// the whole group is killed on drop.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Self {
        let file = std::fs::File::create(log).expect("create a log file");
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .process_group(0);
        // SAFETY: the hook runs between fork and exec, where only
        // async-signal-safe calls are sound: set_pdeathsig is one prctl
        // call, allocating nothing and touching no memory of the parent. The
        // child dies with the thread that spawned it (the test's), even when
        // the test is killed before its guards run.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        // Our own child, not reaped yet (the Child is still held), so the
        // pid is not reused.
        if let Some(pid) = self.pid() {
            crate::support::kill(pid, signal);
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            // Short: tests take the moment of the exit from this.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The group is the child's own (process_group(0)), and the child
            // is not reaped yet, so its id is still its group's.
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}
